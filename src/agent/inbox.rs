//! The persisted inbox: two sealed records per message, keyed by sender and
//! relay frame id (so a redelivery rewrites the same records instead of
//! adding more): the small entry (read mark, evidence, held-back state) and
//! its payload. Only entries live in memory; a payload is read back when a
//! tool shows it, so a peer sending large messages fills storage up to its
//! quota, never the engine's memory (red-team finding 1).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Read messages kept; older read ones are erased.
pub const KEEP_READ: usize = 1000;
/// Unread messages kept per sender; beyond that new ones are refused.
pub const MAX_UNREAD_PER_SENDER: usize = 5000;
/// Bytes of unread payload kept per sender; beyond that new ones are refused
/// (a kars sender re-sends until receipted, so nothing is lost once read).
pub const MAX_UNREAD_BYTES_PER_SENDER: u64 = 32 * 1024 * 1024;
/// Bytes of payload kept in all; read entries are erased first to make room.
pub const MAX_INBOX_BYTES: u64 = 256 * 1024 * 1024;
/// Longest `from_agent` claim kept beside an entry.
const FROM_AGENT_CHARS: usize = 200;

/// Why a new message does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    SenderCount,
    SenderBytes,
    TotalBytes,
}

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
    /// Only on a new entry until it is stored, and in records written before
    /// payloads had their own (`split` false); `Null` in memory otherwise.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub payload: serde_json::Value,
    /// The payload is in its own record (`payload_key`).
    #[serde(default)]
    pub split: bool,
    /// Size of the payload's JSON text.
    #[serde(default)]
    pub bytes: u64,
    /// The payload's `from_agent`, kept for `mesh_await`'s name matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_agent: Option<String>,
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
    /// A new entry holding its payload until `Agent::store_entry` stores it.
    pub fn new(
        id: &str,
        from: &str,
        received_at: u64,
        evidence: Evidence,
        payload: serde_json::Value,
    ) -> Self {
        let mut e = Entry {
            id: id.to_string(),
            from: from.to_string(),
            ts: None,
            received_at,
            evidence,
            payload,
            split: true,
            bytes: 0,
            from_agent: None,
            read: false,
            held: false,
            seq: None,
            epoch: None,
            n: 0,
        };
        e.measure();
        e
    }

    /// Note the payload's size and `from_agent` claim, which stay in memory
    /// when the payload does not.
    pub fn measure(&mut self) {
        self.bytes = serde_json::to_vec(&self.payload)
            .map(|v| v.len() as u64)
            .unwrap_or(0);
        self.from_agent = self
            .payload
            .get("from_agent")
            .and_then(serde_json::Value::as_str)
            .map(|s| s.chars().take(FROM_AGENT_CHARS).collect());
    }

    fn hashed(&self) -> String {
        let mut input = Vec::with_capacity(self.from.len() + 1 + self.id.len());
        input.extend_from_slice(self.from.as_bytes());
        input.push(0);
        input.extend_from_slice(self.id.as_bytes());
        let h = crate::crypto::kdf::sha256(&input);
        crate::wire::hex::encode(&h[..16])
    }

    /// Keyed by sender and frame id, hashed: fixed length whatever the id,
    /// and one sender cannot overwrite another's record by reusing an id.
    pub fn storage_key(&self) -> String {
        format!("{}{}", crate::store::keys::INBOX, self.hashed())
    }

    /// Where the payload lives.
    pub fn payload_key(&self) -> String {
        format!("{}{}", crate::store::keys::INBOX_PAYLOAD, self.hashed())
    }

    /// Every record of this entry, for erasing it.
    pub fn storage_keys(&self) -> Vec<String> {
        if self.split {
            vec![self.storage_key(), self.payload_key()]
        } else {
            vec![self.storage_key()]
        }
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

    /// A message with this sequence number (in this epoch) is here, held
    /// back for an earlier one.
    pub fn holds_seq(&self, from: &str, epoch: Option<u64>, seq: u64) -> bool {
        self.entries
            .values()
            .any(|e| e.held && e.from == from && e.seq == Some(seq) && e.epoch == epoch)
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
            .flat_map(|e| e.storage_keys())
            .collect()
    }

    /// Payload bytes kept, in all.
    pub fn total_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.bytes).sum()
    }

    /// Make room for a new message of `bytes` from `from`: read entries are
    /// erased, oldest first, while the total would be over its limit; the
    /// keys to erase come back with the verdict. Unread messages are never
    /// dropped to make room: the new one is refused instead.
    pub fn make_room(&mut self, from: &str, bytes: u64) -> (Result<(), Refusal>, Vec<String>) {
        let (mut count, mut sender_bytes) = (0usize, 0u64);
        for e in self.entries.values().filter(|e| !e.read && e.from == from) {
            count += 1;
            sender_bytes += e.bytes;
        }
        if count >= MAX_UNREAD_PER_SENDER {
            return (Err(Refusal::SenderCount), Vec::new());
        }
        if sender_bytes.saturating_add(bytes) > MAX_UNREAD_BYTES_PER_SENDER {
            return (Err(Refusal::SenderBytes), Vec::new());
        }
        let mut total = self.total_bytes();
        let mut erased = Vec::new();
        while total.saturating_add(bytes) > MAX_INBOX_BYTES {
            let Some(n) = self.entries.values().find(|e| e.read).map(|e| e.n) else {
                return (Err(Refusal::TotalBytes), erased);
            };
            if let Some(e) = self.entries.remove(&n) {
                total = total.saturating_sub(e.bytes);
                self.counters.fifo_dropped += 1;
                erased.extend(e.storage_keys());
            }
        }
        (Ok(()), erased)
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
