//! Sources: operators with no input. Each reads in steps (see
//! [`crate::Source`]) and records where each row came from.

pub mod csv;
pub mod file;
pub mod kaggle;
pub mod nats;
pub mod segments;
