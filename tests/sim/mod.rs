//! Deterministic simulation harness for the sans-I/O engine.
//!
//! * [`host::SimHost`]: the engine's `Host` (virtual clock, in-memory
//!   storage written only by `Store`/`Erase` commands, seeded entropy, logs).
//! * [`registry::Registry`]: the core-5.0.0 registry (`registry/app.py`,
//!   `registry/store.py`) as a pure function of requests.
//! * [`relay::Relay`]: the core-5.0.0 relay (`relay/app.py`, `relay/store.py`)
//!   as a pure state machine over connections and frames.
//! * [`world::World`]: N engines wired to both through a virtual network with
//!   fault injection (drop, duplicate, reorder, relay restart, agent crash
//!   between any two commands), driven by one priority queue of virtual time.
//! * [`scenario`]: what the scenario tests share: traffic flows, the
//!   end-to-end delivery check and the failure report.
//!
//! Everything is seeded; no wall clock, no threads, no hash-order iteration.

// Test-private module: `pub` is for the sibling modules and the
// tests/sim_*.rs files, each of which uses only part of it.
#![allow(dead_code, unreachable_pub)]

pub mod host;
pub mod registry;
pub mod relay;
pub mod scenario;
pub mod world;

/// SplitMix64: small, fast, deterministic; good enough for scheduling.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        self.next_u64() % n
    }

    /// Uniform in `lo..hi` (`lo < hi`), or `lo` when the range is empty.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.below(hi - lo)
        }
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for c in b.chunks_mut(8) {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        b
    }
}

/// FNV-1a, for trace fingerprints (determinism checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn feed(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn feed_u64(&mut self, v: u64) {
        self.feed(&v.to_le_bytes());
    }
}
