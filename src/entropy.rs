//! Randomness is always passed in, never reached for: the component takes it
//! from the host CSPRNG, tests script it byte for byte.

use sha2::{Digest, Sha256};

/// A source of cryptographically secure random bytes.
pub trait Entropy {
    fn fill(&mut self, out: &mut [u8]);

    fn array32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.fill(&mut b);
        b
    }
}

/// Deterministic stream for simulations and benchmarks: SHA-256 in counter
/// mode over a seed. Not for production keys.
#[derive(Clone)]
pub struct SeededEntropy {
    seed: [u8; 32],
    counter: u64,
    buf: [u8; 32],
    used: usize,
}

impl SeededEntropy {
    pub fn new(seed: u64) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        Self {
            seed: s,
            counter: 0,
            buf: [0; 32],
            used: 32,
        }
    }
}

impl Entropy for SeededEntropy {
    fn fill(&mut self, out: &mut [u8]) {
        for b in out.iter_mut() {
            if self.used == 32 {
                let mut h = Sha256::new();
                h.update(self.seed);
                h.update(self.counter.to_le_bytes());
                self.buf.copy_from_slice(&h.finalize());
                self.counter += 1;
                self.used = 0;
            }
            *b = self.buf[self.used];
            self.used += 1;
        }
    }
}

/// Hands out pre-recorded byte strings in order; for known-answer tests.
/// Asking for a length other than the next recorded one is a test bug and
/// yields zeros, which makes the vector comparison fail loudly.
#[derive(Default)]
pub struct ScriptedEntropy {
    queue: std::collections::VecDeque<Vec<u8>>,
    pub mismatches: usize,
}

impl ScriptedEntropy {
    pub fn push(&mut self, bytes: &[u8]) {
        self.queue.push_back(bytes.to_vec());
    }
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl Entropy for ScriptedEntropy {
    fn fill(&mut self, out: &mut [u8]) {
        match self.queue.pop_front() {
            Some(b) if b.len() == out.len() => out.copy_from_slice(&b),
            _ => {
                self.mismatches += 1;
                out.fill(0);
            }
        }
    }
}
