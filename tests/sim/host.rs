//! The engine's host, natively: a virtual clock the world advances, storage
//! that only `Store`/`Erase` commands change (applied in order, exactly as
//! a real host must before it carries out the next command), a seeded CSPRNG
//! stand-in, and collected logs.

use kars_mesh::engine::{Command, Host, LogLevel};
use kars_mesh::entropy::{Entropy, SeededEntropy};
use std::collections::BTreeMap;

/// Most log lines kept per host (older ones are dropped).
const LOG_LIMIT: usize = 20_000;

pub struct SimHost {
    /// Virtual wall clock, Unix milliseconds.
    pub now: u64,
    /// Durable storage. Survives an engine crash; nothing but `Store` and
    /// `Erase` commands write it.
    pub storage: BTreeMap<String, Vec<u8>>,
    rng: SeededEntropy,
    pub logs: Vec<(u64, LogLevel, String)>,
    pub stores: u64,
    pub stored_bytes: u64,
}

impl SimHost {
    pub fn new(seed: u64, now: u64) -> Self {
        SimHost {
            now,
            storage: BTreeMap::new(),
            rng: SeededEntropy::new(seed),
            logs: Vec::new(),
            stores: 0,
            stored_bytes: 0,
        }
    }

    /// Carry out a storage command; `false` for any other command.
    pub fn apply_storage(&mut self, c: &Command) -> bool {
        match c {
            Command::Store(k, v) => {
                self.stores += 1;
                self.stored_bytes += v.len() as u64;
                self.storage.insert(k.clone(), v.clone());
                true
            }
            Command::Erase(k) => {
                self.storage.remove(k);
                true
            }
            _ => false,
        }
    }

    pub fn logs_at_least(&self, level: LogLevel) -> impl Iterator<Item = &(u64, LogLevel, String)> {
        let rank = |l: LogLevel| match l {
            LogLevel::Debug => 0,
            LogLevel::Info => 1,
            LogLevel::Warn => 2,
            LogLevel::Error => 3,
        };
        self.logs
            .iter()
            .filter(move |(_, l, _)| rank(*l) >= rank(level))
    }
}

impl Entropy for SimHost {
    fn fill(&mut self, out: &mut [u8]) {
        self.rng.fill(out);
    }
}

impl Host for SimHost {
    fn now_ms(&mut self) -> u64 {
        self.now
    }

    fn storage_get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.storage.get(key).cloned()
    }

    fn storage_list(&mut self, prefix: &str) -> Vec<String> {
        self.storage
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        if self.logs.len() >= LOG_LIMIT {
            self.logs.drain(..LOG_LIMIT / 10);
        }
        self.logs.push((self.now, level, message.to_string()));
    }
}
