//! Sources, transforms and sinks of the engine, and the contract they share.
//!
//! This crate owns what an operator *is* ([`Operator`], [`Source`]), what
//! travels between operators ([`Message`], [`Batch`]) and how an operator
//! emits ([`Collector`]). It must not know about the pipeline file, the graph
//! or how tasks are scheduled: that is the `engine` crate. The runtime builds
//! operators through [`registry`] from already validated options.
//!
//! ```no_run
//! # async fn demo(batch: operators::Batch, out: &mut operators::Collector) -> Result<(), operators::OperatorError> {
//! // inside Operator::process: pass every batch through unchanged
//! out.emit(operators::OUT, batch).await
//! # }
//! ```

pub mod api;
pub mod backoff;
pub mod batch;
pub mod duration;
pub mod flow;
pub mod keyset;
pub mod lock;
pub mod plan;
pub mod queued;
pub mod registry;
pub mod rejects;
pub mod sinks;
pub mod sources;
pub mod staged;
pub mod storage;
pub mod transforms;

pub use api::{
    BuildContext, Collector, OUT, Operator, OperatorError, OperatorStats, OutPort, Resume, Rotation, Snapshot, Source,
    SourceState,
};
pub use batch::{Barrier, Batch, Message};
pub use plan::Plan;
pub use registry::{KindSpec, Role};
