//! The AgentMesh client: prekeys, per-peer sessions, the relay link policy
//! and the registry requests. Driven by the engine; no I/O here.

pub mod budget;
pub mod link;
pub mod prekeys;
pub mod registry;
pub mod session;
