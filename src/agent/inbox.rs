//! The persisted inbox: one sealed record per message, keyed by relay frame
//! id (so a redelivery rewrites the same record instead of adding a second),
//! with read marks, the evidence each message came with, and messages held
//! back until an earlier one from the same sender arrives.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Read messages kept; older read ones are erased.
pub const KEEP_READ: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Evidence {
    /// Decrypted and authenticated under a Double Ratchet session.
    Encrypted,
    /// Plaintext from a DID the user trusts for that (the paired controller).
    Plaintext,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub id: String,
    pub from: String,
    #[serde(default)]
    pub ts: Option<String>,
    pub received_at: u64,
    pub evidence: Evidence,
    pub payload: serde_json::Value,
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub held: bool,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub epoch: Option<u64>,
    /// Arrival order (delivery order for released messages).
    pub n: u64,
}

impl Entry {
    /// Keyed by sender and frame id, hashed: fixed length whatever the id,
    /// and one sender cannot overwrite another's record by reusing an id.
    pub fn storage_key(&self) -> String {
        let mut input = Vec::with_capacity(self.from.len() + 1 + self.id.len());
        input.extend_from_slice(self.from.as_bytes());
        input.push(0);
        input.extend_from_slice(self.id.as_bytes());
        let h = crate::crypto::kdf::sha256(&input);
        format!(
            "{}{}",
            crate::store::keys::INBOX,
            crate::wire::hex::encode(&h[..16])
        )
    }
}

/// Lifecycle counters since the engine started, for the `mesh_inbox`
/// diagnostics block: they tell "never received" apart from "taken by
/// another consumer" and "already read".
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    /// New entries put in the inbox (not redeliveries).
    pub received_total: u64,
    /// Always 0: waiters here never take a message out of the inbox.
    pub consumed_by_waiter: u64,
    /// Messages routed to another consumer (pairing) instead of the inbox.
    pub consumed_by_predicate: u64,
    /// Read entries erased by the retention limit (never unread ones).
    pub fifo_dropped: u64,
    /// Messages refused because their sender had too many unread.
    pub refused_over_quota: u64,
    /// Entries marked read.
    pub read_total: u64,
    pub last_received_at: Option<String>,
    pub last_read_at: Option<String>,
}

#[derive(Default)]
pub struct Inbox {
    entries: BTreeMap<u64, Entry>,
    next_n: u64,
    pub counters: Counters,
}

impl Inbox {
    pub fn load(entries: Vec<Entry>) -> Self {
        let mut inbox = Inbox::default();
        for e in entries {
            inbox.next_n = inbox.next_n.max(e.n + 1);
            inbox.entries.insert(e.n, e);
        }
        inbox
    }

    pub fn next_n(&mut self) -> u64 {
        let n = self.next_n;
        self.next_n += 1;
        n
    }

    pub fn contains(&self, from: &str, id: &str) -> bool {
        self.entries.values().any(|e| e.id == id && e.from == from)
    }

    /// A message with this sequence number (in this epoch) is already here.
    pub fn has_seq(&self, from: &str, epoch: Option<u64>, seq: u64) -> bool {
        self.entries
            .values()
            .any(|e| e.from == from && e.seq == Some(seq) && e.epoch == epoch)
    }

    pub fn unread_from(&self, from: &str) -> usize {
        self.entries
            .values()
            .filter(|e| !e.read && e.from == from)
            .count()
    }

    /// Highest delivered (not held) sequence number from `from` in `epoch`.
    pub fn max_released_seq(&self, from: &str, epoch: Option<u64>) -> Option<u64> {
        self.entries
            .values()
            .filter(|e| !e.held && e.from == from && e.epoch == epoch)
            .filter_map(|e| e.seq)
            .max()
    }

    pub fn remove(&mut self, n: u64) -> Option<Entry> {
        self.entries.remove(&n)
    }

    pub fn insert(&mut self, e: Entry) {
        self.entries.insert(e.n, e);
    }

    /// Unread, deliverable entries, oldest first, optionally from one sender.
    pub fn unread(&self, from: Option<&str>) -> Vec<&Entry> {
        self.entries
            .values()
            .filter(|e| !e.read && !e.held && from.is_none_or(|f| e.from == f))
            .collect()
    }

    pub fn unread_count(&self) -> usize {
        self.entries.values().filter(|e| !e.read && !e.held).count()
    }

    pub fn mark_read(&mut self, n: u64) -> Option<&Entry> {
        let e = self.entries.get_mut(&n)?;
        e.read = true;
        Some(e)
    }

    /// Held entries from `from`, by sequence number.
    pub fn held_from(&self, from: &str) -> BTreeMap<u64, u64> {
        self.entries
            .values()
            .filter(|e| e.held && e.from == from)
            .filter_map(|e| e.seq.map(|s| (s, e.n)))
            .collect()
    }

    /// Deliver a held entry under a fresh arrival number `fresh`.
    pub fn release(&mut self, n: u64, fresh: u64) -> Option<&Entry> {
        let mut e = self.entries.remove(&n)?;
        e.held = false;
        e.n = fresh;
        self.entries.insert(fresh, e);
        self.entries.get(&fresh)
    }

    pub fn oldest_held(&self) -> Option<&Entry> {
        self.entries.values().find(|e| e.held)
    }

    /// Read entries beyond the retention limit, oldest first: their keys to erase.
    pub fn prune(&mut self) -> Vec<String> {
        let read: Vec<u64> = self
            .entries
            .values()
            .filter(|e| e.read)
            .map(|e| e.n)
            .collect();
        if read.len() <= KEEP_READ {
            return Vec::new();
        }
        let cut = read.len() - KEEP_READ;
        self.counters.fifo_dropped += cut as u64;
        read[..cut]
            .iter()
            .filter_map(|n| self.entries.remove(n))
            .map(|e| e.storage_key())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Deliverable (not held) entries in arrival order, read or not.
    pub fn deliverable(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().filter(|e| !e.held)
    }

    pub fn read_count(&self) -> usize {
        self.entries.values().filter(|e| e.read && !e.held).count()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
