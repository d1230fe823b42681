//! Simulators of the external APIs the engine talks to, served over real
//! HTTP on a local port. They are part of the product: the engine's tests
//! run against them, and users can point their own CI at them.
//!
//! Each simulator follows the facts in `shared/reference/` (bodies, status
//! codes, headers, limits) and offers failure injection plus read-back
//! endpoints under `/_sim/` that the real API does not have.

pub mod hubspot;
pub mod kaggle;
