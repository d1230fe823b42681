//! The engine: reads a pipeline file ([`config`]), turns it into a DAG
//! ([`graph`]), runs it ([`runtime`]) and reports on it ([`report`],
//! [`observe`]). The `engine` binary (`main.rs`) is a thin CLI over these.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pipeline = engine::config::load(std::path::Path::new("pipelines/babynames.toml"))?;
//! let report = engine::runtime::run(&pipeline, Default::default(), |_| {}).await;
//! println!("{}", engine::report::summary(&report));
//! # Ok(()) }
//! ```

pub mod config;
pub mod graph;
pub mod observe;
pub mod report;
pub mod runtime;
