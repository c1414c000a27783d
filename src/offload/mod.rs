//! Offloading a task to a cloud sandbox, as three state machines that talk
//! end to end: the `client` (the user's agent: `cloud_offload` and its
//! follow-ups), the `controller` (checks the pairing, starts a sandbox) and
//! the `sandbox` (runs the task for its one requester). Each owns its state
//! and reaches the mesh only through `crate::port::Port`.

pub mod client;
pub mod controller;
pub mod file_stream;
pub mod kars;
pub mod phase;
pub mod progress;
pub mod reassembly;
pub mod sandbox;

#[cfg(test)]
mod tests;
