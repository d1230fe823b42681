//! Sinks: operators whose output leaves the engine.

pub mod blackhole;
pub mod file;
pub mod hubspot;
pub mod nats;
pub mod sql;
