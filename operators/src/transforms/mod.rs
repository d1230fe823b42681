//! Transforms: one input stream in, one or more output ports out.

pub mod changes;
pub mod dedupe;
pub mod select;
pub mod validate;
