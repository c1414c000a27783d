//! kars-mesh core: AgentMesh identity, X3DH, the Double Ratchet, wire
//! encodings and the protocol engine. No I/O happens here: the clock,
//! randomness and storage reads come in through the [`io::Host`] trait, and the I/O
//! to perform goes out as engine commands. The same code runs natively (tests,
//! benchmarks) and as a WebAssembly component (`component`, wasm32 only).

pub mod agent;
pub mod codec;
pub mod crypto;
pub mod engine;
pub mod entropy;
pub mod io;
pub mod mesh;
pub mod offload;
pub mod pairing;
pub mod port;
pub mod store;
pub mod toolkit;
pub mod tools;
pub mod wire;

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code, unreachable_pub)]
mod component;
