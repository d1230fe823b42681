//! `kind = "blackhole"`: accepts and discards everything; for benchmarks and
//! dry runs. Rows are still counted by the runtime.

use async_trait::async_trait;
use serde::Deserialize;

use crate::api::{BuildContext, Collector, Operator, OperatorError};
use crate::batch::Batch;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {
    /// Sleep this long per batch: a deliberately slow sink, to see
    /// backpressure at work (tests, demos).
    #[serde(default)]
    pub delay_ms: u64,
}

pub struct Blackhole {
    delay: std::time::Duration,
}

pub fn build(_ctx: &BuildContext, cfg: BlackholeConfig) -> Result<Blackhole, OperatorError> {
    Ok(Blackhole { delay: std::time::Duration::from_millis(cfg.delay_ms) })
}

#[async_trait]
impl Operator for Blackhole {
    async fn process(&mut self, _batch: Batch, _out: &mut Collector) -> Result<(), OperatorError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(())
    }
}
