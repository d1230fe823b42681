//! `kind = "blackhole"`: accepts and discards everything; for benchmarks and
//! dry runs. Rows are still counted by the runtime.

use async_trait::async_trait;
use serde::Deserialize;

use crate::api::{BuildContext, Collector, Operator, OperatorError};
use crate::batch::Batch;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {}

pub struct Blackhole;

pub fn build(_ctx: &BuildContext, _cfg: BlackholeConfig) -> Result<Blackhole, OperatorError> {
    Ok(Blackhole)
}

#[async_trait]
impl Operator for Blackhole {
    async fn process(&mut self, _batch: Batch, _out: &mut Collector) -> Result<(), OperatorError> {
        Ok(())
    }
}
