//! The engine: reads a pipeline file ([`config`]), turns it into a DAG
//! ([`graph`]), decides where it starts from its checkpoints
//! ([`checkpoint`]), runs it ([`runtime`]) and reports on it ([`report`],
//! [`observe`]). The `engine` binary (`main.rs`) is a thin CLI over these.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pipeline = engine::config::load(std::path::Path::new("pipelines/babynames.toml"))?;
//! let store = std::sync::Arc::new(engine::checkpoint::open_store(&pipeline)?);
//! let session = engine::checkpoint::begin(&pipeline, store, false)?;
//! eprintln!("{}", session.describe());
//! let report = engine::runtime::run(&pipeline, Default::default(), Some(std::sync::Arc::new(session)), |_| {}).await;
//! println!("{}", engine::report::summary(&report));
//! # Ok(()) }
//! ```

pub mod checkpoint;
pub mod config;
pub mod graph;
pub mod guard;
pub mod health;
pub mod live;
pub mod notify;
pub mod observe;
pub mod record;
pub mod replay;
pub mod report;
pub mod runtime;
pub mod secrets;
pub mod service;
