//! The persisted inbox: two sealed records per message, keyed by sender and
//! relay frame id (so a redelivery rewrites the same records instead of
//! adding more): the small entry (read mark, evidence, held-back state) and
//! its payload. Only entries live in memory; a payload is read back when a
//! tool shows it, so a peer sending large messages fills storage up to its
//! quota, never the engine's memory (red-team finding 1).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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

/// The inbox's entries by arrival number, with indexes kept beside them so
/// that each arriving message costs the same whatever the inbox holds: the
/// checks a message meets (duplicate id or sequence number, quotas, room,
/// held copies) and the counts the tools show were each a scan of every
/// entry, eight or more per message, which made receiving into an inbox of
/// thousands of entries several times slower than into an empty one.
#[derive(Default)]
pub struct Inbox {
    entries: BTreeMap<u64, Entry>,
    next_n: u64,
    pub counters: Counters,
    index: Index,
}

/// Derived from `entries` alone; every change to an entry goes through
/// `Inbox::insert` and `Inbox::remove`, which keep it in step. The maps key on a
/// sender's number, not a copy of its DID per entry.
#[derive(Default, Debug)]
struct Index {
    /// Every sender with entries here, by DID.
    senders: BTreeMap<String, Sender>,
    next_sender: u64,
    /// (sender number, frame id) → entries with it (one, unless records
    /// written by an older build hold two).
    ids: BTreeMap<(u64, String), u32>,
    /// (sender number, epoch, sequence number) → how many entries hold
    /// it, held back and delivered.
    seqs: BTreeMap<(u64, Option<u64>, u64), SeqCount>,
    /// Arrival numbers of unread, deliverable entries.
    unread: BTreeSet<u64>,
    /// Arrival numbers of read entries (held or not), oldest first.
    read: BTreeSet<u64>,
    /// Arrival numbers of held-back entries.
    held: BTreeSet<u64>,
    /// Read and deliverable.
    read_deliverable: usize,
    total_bytes: u64,
}

#[derive(Default, Debug, Clone, Copy, PartialEq)]
struct Sender {
    no: u64,
    entries: usize,
    /// Unread entries (held or not) and their payload bytes.
    unread: usize,
    unread_bytes: u64,
}

#[derive(Default, Debug, Clone, Copy, PartialEq)]
struct SeqCount {
    held: u32,
    released: u32,
}

impl Index {
    fn sender_no(&self, from: &str) -> Option<u64> {
        self.senders.get(from).map(|s| s.no)
    }

    fn add(&mut self, e: &Entry) {
        if !self.senders.contains_key(&e.from) {
            let no = self.next_sender;
            self.next_sender += 1;
            self.senders.insert(
                e.from.clone(),
                Sender {
                    no,
                    ..Sender::default()
                },
            );
        }
        let Some(s) = self.senders.get_mut(&e.from) else {
            return;
        };
        s.entries += 1;
        if !e.read {
            s.unread += 1;
            s.unread_bytes = s.unread_bytes.saturating_add(e.bytes);
        }
        let no = s.no;
        *self.ids.entry((no, e.id.clone())).or_default() += 1;
        if let Some(seq) = e.seq {
            let c = self.seqs.entry((no, e.epoch, seq)).or_default();
            if e.held {
                c.held += 1;
            } else {
                c.released += 1;
            }
        }
        if e.held {
            self.held.insert(e.n);
        } else if e.read {
            self.read_deliverable += 1;
        } else {
            self.unread.insert(e.n);
        }
        if e.read {
            self.read.insert(e.n);
        }
        self.total_bytes = self.total_bytes.saturating_add(e.bytes);
    }

    fn remove(&mut self, e: &Entry) {
        let Some(s) = self.senders.get_mut(&e.from) else {
            return;
        };
        let no = s.no;
        s.entries = s.entries.saturating_sub(1);
        if !e.read {
            s.unread = s.unread.saturating_sub(1);
            s.unread_bytes = s.unread_bytes.saturating_sub(e.bytes);
        }
        if s.entries == 0 {
            self.senders.remove(&e.from);
        }
        let key = (no, e.id.clone());
        if let Some(c) = self.ids.get_mut(&key) {
            *c -= 1;
            if *c == 0 {
                self.ids.remove(&key);
            }
        }
        if let Some(seq) = e.seq {
            let key = (no, e.epoch, seq);
            if let Some(c) = self.seqs.get_mut(&key) {
                if e.held {
                    c.held = c.held.saturating_sub(1);
                } else {
                    c.released = c.released.saturating_sub(1);
                }
                if c.held == 0 && c.released == 0 {
                    self.seqs.remove(&key);
                }
            }
        }
        if e.held {
            self.held.remove(&e.n);
        } else if e.read {
            self.read_deliverable = self.read_deliverable.saturating_sub(1);
        } else {
            self.unread.remove(&e.n);
        }
        if e.read {
            self.read.remove(&e.n);
        }
        self.total_bytes = self.total_bytes.saturating_sub(e.bytes);
    }
}

impl Inbox {
    pub fn load(entries: Vec<Entry>) -> Self {
        let mut inbox = Inbox::default();
        for e in entries {
            inbox.next_n = inbox.next_n.max(e.n + 1);
            inbox.insert(e);
        }
        inbox
    }

    /// Every entry goes in through here (replacing one with the same number).
    pub fn insert(&mut self, e: Entry) {
        if let Some(old) = self.entries.remove(&e.n) {
            self.index.remove(&old);
        }
        self.index.add(&e);
        self.entries.insert(e.n, e);
    }

    /// Every entry comes out through here.
    pub fn remove(&mut self, n: u64) -> Option<Entry> {
        let e = self.entries.remove(&n)?;
        self.index.remove(&e);
        Some(e)
    }

    pub fn next_n(&mut self) -> u64 {
        let n = self.next_n;
        self.next_n += 1;
        n
    }

    pub fn contains(&self, from: &str, id: &str) -> bool {
        self.index
            .sender_no(from)
            .is_some_and(|no| self.index.ids.contains_key(&(no, id.to_string())))
    }

    fn seq_count(&self, from: &str, epoch: Option<u64>, seq: u64) -> SeqCount {
        self.index
            .sender_no(from)
            .and_then(|no| self.index.seqs.get(&(no, epoch, seq)).copied())
            .unwrap_or_default()
    }

    /// A message with this sequence number (in this epoch) is already here.
    pub fn has_seq(&self, from: &str, epoch: Option<u64>, seq: u64) -> bool {
        self.seq_count(from, epoch, seq) != SeqCount::default()
    }

    /// A message with this sequence number (in this epoch) is here, held
    /// back for an earlier one.
    pub fn holds_seq(&self, from: &str, epoch: Option<u64>, seq: u64) -> bool {
        self.seq_count(from, epoch, seq).held > 0
    }

    /// Highest delivered (not held) sequence number from `from` in `epoch`.
    pub fn max_released_seq(&self, from: &str, epoch: Option<u64>) -> Option<u64> {
        let no = self.index.sender_no(from)?;
        self.index
            .seqs
            .range((no, epoch, 0)..=(no, epoch, u64::MAX))
            .rev()
            .find(|(_, c)| c.released > 0)
            .map(|((_, _, seq), _)| *seq)
    }

    /// Unread, deliverable entries in arrival order.
    pub fn unread_entries(&self) -> impl Iterator<Item = &Entry> {
        self.index.unread.iter().filter_map(|n| self.entries.get(n))
    }

    /// Unread, deliverable entries, oldest first, optionally from one sender.
    pub fn unread(&self, from: Option<&str>) -> Vec<&Entry> {
        self.unread_entries()
            .filter(|e| from.is_none_or(|f| e.from == f))
            .collect()
    }

    pub fn unread_count(&self) -> usize {
        self.index.unread.len()
    }

    pub fn mark_read(&mut self, n: u64) -> Option<&Entry> {
        let mut e = self.remove(n)?;
        e.read = true;
        self.insert(e);
        self.entries.get(&n)
    }

    /// Held entries from `from`, by sequence number.
    pub fn held_from(&self, from: &str) -> BTreeMap<u64, u64> {
        self.index
            .held
            .iter()
            .filter_map(|n| self.entries.get(n))
            .filter(|e| e.from == from)
            .filter_map(|e| e.seq.map(|s| (s, e.n)))
            .collect()
    }

    /// Deliver a held entry under a fresh arrival number `fresh`.
    pub fn release(&mut self, n: u64, fresh: u64) -> Option<&Entry> {
        let mut e = self.remove(n)?;
        e.held = false;
        e.n = fresh;
        self.insert(e);
        self.entries.get(&fresh)
    }

    pub fn oldest_held(&self) -> Option<&Entry> {
        self.index.held.first().and_then(|n| self.entries.get(n))
    }

    /// Read entries beyond the retention limit, oldest first: their keys to erase.
    pub fn prune(&mut self) -> Vec<String> {
        let read = self.index.read.len();
        if read <= KEEP_READ {
            return Vec::new();
        }
        let cut = read - KEEP_READ;
        self.counters.fifo_dropped += cut as u64;
        let oldest: Vec<u64> = self.index.read.iter().take(cut).copied().collect();
        oldest
            .into_iter()
            .filter_map(|n| self.remove(n))
            .flat_map(|e| e.storage_keys())
            .collect()
    }

    /// Payload bytes kept, in all.
    pub fn total_bytes(&self) -> u64 {
        self.index.total_bytes
    }

    /// Make room for a new message of `bytes` from `from`: read entries are
    /// erased, oldest first, while the total would be over its limit; the
    /// keys to erase come back with the verdict. Unread messages are never
    /// dropped to make room: the new one is refused instead.
    pub fn make_room(&mut self, from: &str, bytes: u64) -> (Result<(), Refusal>, Vec<String>) {
        let (count, sender_bytes) = self
            .index
            .senders
            .get(from)
            .map_or((0, 0), |s| (s.unread, s.unread_bytes));
        if count >= MAX_UNREAD_PER_SENDER {
            return (Err(Refusal::SenderCount), Vec::new());
        }
        if sender_bytes.saturating_add(bytes) > MAX_UNREAD_BYTES_PER_SENDER {
            return (Err(Refusal::SenderBytes), Vec::new());
        }
        let mut erased = Vec::new();
        while self.index.total_bytes.saturating_add(bytes) > MAX_INBOX_BYTES {
            let Some(n) = self.index.read.first().copied() else {
                return (Err(Refusal::TotalBytes), erased);
            };
            if let Some(e) = self.remove(n) {
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

    /// Read, deliverable entries in arrival order.
    pub fn read_entries(&self) -> impl Iterator<Item = &Entry> {
        self.index
            .read
            .iter()
            .filter_map(|n| self.entries.get(n))
            .filter(|e| !e.held)
    }

    pub fn read_count(&self) -> usize {
        self.index.read_deliverable
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scans the index replaced, kept as the reference it must agree with.
    mod reference {
        use super::super::Entry;
        use std::collections::BTreeMap;

        pub(super) fn contains(es: &BTreeMap<u64, Entry>, from: &str, id: &str) -> bool {
            es.values().any(|e| e.id == id && e.from == from)
        }
        /// Entries from `from` holding `seq` in epoch `ep`.
        fn with_seq<'a>(
            es: &'a BTreeMap<u64, Entry>,
            from: &'a str,
            ep: Option<u64>,
            seq: u64,
        ) -> impl Iterator<Item = &'a Entry> {
            es.values()
                .filter(move |e| e.from == from && e.seq == Some(seq) && e.epoch == ep)
        }
        pub(super) fn has_seq(
            es: &BTreeMap<u64, Entry>,
            from: &str,
            ep: Option<u64>,
            seq: u64,
        ) -> bool {
            with_seq(es, from, ep, seq).next().is_some()
        }
        pub(super) fn holds_seq(
            es: &BTreeMap<u64, Entry>,
            from: &str,
            ep: Option<u64>,
            seq: u64,
        ) -> bool {
            with_seq(es, from, ep, seq).any(|e| e.held)
        }
        pub(super) fn max_released(
            es: &BTreeMap<u64, Entry>,
            from: &str,
            ep: Option<u64>,
        ) -> Option<u64> {
            es.values()
                .filter(|e| !e.held && e.from == from && e.epoch == ep)
                .filter_map(|e| e.seq)
                .max()
        }
        pub(super) fn held_from(es: &BTreeMap<u64, Entry>, from: &str) -> BTreeMap<u64, u64> {
            es.values()
                .filter(|e| e.held && e.from == from)
                .filter_map(|e| e.seq.map(|s| (s, e.n)))
                .collect()
        }
        pub(super) fn sender_unread(es: &BTreeMap<u64, Entry>, from: &str) -> (usize, u64) {
            es.values()
                .filter(|e| !e.read && e.from == from)
                .fold((0, 0), |(c, b), e| (c + 1, b + e.bytes))
        }
    }

    /// xorshift64*: reproducible without a dependency.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }

    const SENDERS: [&str; 3] = ["did:mesh:a", "did:mesh:b", "did:mesh:c"];

    fn entry(r: &mut Rng, n: u64) -> Entry {
        let from = SENDERS[r.below(3) as usize];
        let mut e = Entry::new(
            &format!("id-{}", r.below(40)),
            from,
            r.below(1000),
            Evidence::Encrypted,
            serde_json::Value::Null,
        );
        e.n = n;
        e.seq = (r.below(5) != 0).then(|| r.below(30));
        e.epoch = (r.below(3) != 0).then(|| r.below(2));
        e.held = r.below(4) == 0;
        e.read = !e.held && r.below(3) == 0;
        // Now and then big enough for make_room to have to erase.
        e.bytes = if r.below(50) == 0 {
            MAX_INBOX_BYTES / 3
        } else {
            r.below(5000)
        };
        e
    }

    fn rebuilt(inbox: &Inbox) -> Index {
        let mut i = Index::default();
        for e in inbox.entries.values() {
            i.add(e);
        }
        i
    }

    /// The index with sender numbers (which depend on the order entries
    /// came in) replaced by the senders' DIDs.
    fn canonical(i: &Index) -> String {
        let did = |no: u64| {
            i.senders
                .iter()
                .find(|(_, s)| s.no == no)
                .map(|(d, _)| d.clone())
                .unwrap_or_else(|| format!("unknown sender {no}"))
        };
        let ids: BTreeMap<(String, String), u32> = i
            .ids
            .iter()
            .map(|((no, id), c)| ((did(*no), id.clone()), *c))
            .collect();
        let seqs: BTreeMap<(String, Option<u64>, u64), SeqCount> = i
            .seqs
            .iter()
            .map(|((no, ep, seq), c)| ((did(*no), *ep, *seq), *c))
            .collect();
        let senders: BTreeMap<&String, (usize, usize, u64)> = i
            .senders
            .iter()
            .map(|(d, s)| (d, (s.entries, s.unread, s.unread_bytes)))
            .collect();
        format!(
            "{senders:?} {ids:?} {seqs:?} {:?} {:?} {:?} {} {}",
            i.unread, i.read, i.held, i.read_deliverable, i.total_bytes
        )
    }

    fn agrees(inbox: &Inbox, step: usize) {
        let es = &inbox.entries;
        assert_eq!(
            canonical(&inbox.index),
            canonical(&rebuilt(inbox)),
            "index after step {step}"
        );
        for from in SENDERS {
            for k in 0..40 {
                let id = format!("id-{k}");
                assert_eq!(
                    inbox.contains(from, &id),
                    reference::contains(es, from, &id)
                );
            }
            for ep in [None, Some(0), Some(1)] {
                for seq in 0..30 {
                    assert_eq!(
                        inbox.has_seq(from, ep, seq),
                        reference::has_seq(es, from, ep, seq)
                    );
                    assert_eq!(
                        inbox.holds_seq(from, ep, seq),
                        reference::holds_seq(es, from, ep, seq)
                    );
                }
                assert_eq!(
                    inbox.max_released_seq(from, ep),
                    reference::max_released(es, from, ep)
                );
            }
            assert_eq!(inbox.held_from(from), reference::held_from(es, from));
            let want: Vec<u64> = es
                .values()
                .filter(|e| !e.read && !e.held && e.from == from)
                .map(|e| e.n)
                .collect();
            let got: Vec<u64> = inbox.unread(Some(from)).iter().map(|e| e.n).collect();
            assert_eq!(got, want);
            let su = inbox
                .index
                .senders
                .get(from)
                .map_or((0, 0), |s| (s.unread, s.unread_bytes));
            assert_eq!(su, reference::sender_unread(es, from));
            // A sender's number lives exactly as long as its entries.
            assert_eq!(
                inbox.index.senders.get(from).map(|s| s.entries),
                Some(es.values().filter(|e| e.from == from).count()).filter(|&n| n > 0)
            );
        }
        let unread: Vec<u64> = inbox
            .deliverable()
            .filter(|e| !e.read)
            .map(|e| e.n)
            .collect();
        let all: Vec<u64> = inbox.unread(None).iter().map(|e| e.n).collect();
        assert_eq!(all, unread);
        assert_eq!(
            inbox.unread_entries().map(|e| e.n).collect::<Vec<_>>(),
            unread
        );
        assert_eq!(inbox.unread_count(), unread.len());
        let read: Vec<u64> = inbox
            .deliverable()
            .filter(|e| e.read)
            .map(|e| e.n)
            .collect();
        assert_eq!(inbox.read_entries().map(|e| e.n).collect::<Vec<_>>(), read);
        assert_eq!(inbox.read_count(), read.len());
        assert_eq!(
            inbox.total_bytes(),
            es.values().map(|e| e.bytes).sum::<u64>()
        );
        assert_eq!(
            inbox.oldest_held().map(|e| e.n),
            es.values().find(|e| e.held).map(|e| e.n)
        );
    }

    /// Every way an entry changes keeps the index equal to one built from
    /// scratch, and every query equal to the scan it replaced.
    #[test]
    fn index_agrees_with_a_scan_through_every_change() {
        for seed in 1..=6u64 {
            let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut inbox = Inbox::default();
            for step in 0..1500 {
                let known: Vec<u64> = inbox.entries.keys().copied().collect();
                let pick = |r: &mut Rng| {
                    if known.is_empty() {
                        0
                    } else {
                        known[r.below(known.len() as u64) as usize]
                    }
                };
                match r.below(10) {
                    0..=3 => {
                        let n = inbox.next_n();
                        let e = entry(&mut r, n);
                        inbox.insert(e);
                    }
                    4 => {
                        // Replace an entry under its own number (a rewrite).
                        let n = pick(&mut r);
                        let e = entry(&mut r, n);
                        inbox.insert(e);
                    }
                    5 => {
                        let n = pick(&mut r);
                        inbox.remove(n);
                    }
                    6 => {
                        let n = pick(&mut r);
                        inbox.mark_read(n);
                    }
                    7 => {
                        if let Some(n) = inbox.oldest_held().map(|e| e.n) {
                            let fresh = inbox.next_n();
                            inbox.release(n, fresh);
                        }
                    }
                    8 => {
                        inbox.prune();
                        assert!(inbox.index.read.len() <= KEEP_READ);
                    }
                    _ => {
                        let from = SENDERS[r.below(3) as usize];
                        let (verdict, _) = inbox.make_room(from, MAX_INBOX_BYTES / 4);
                        if verdict.is_ok() {
                            assert!(inbox.total_bytes() + MAX_INBOX_BYTES / 4 <= MAX_INBOX_BYTES);
                        }
                    }
                }
                agrees(&inbox, step);
                if step % 500 == 499 {
                    // A restart: the same entries loaded afresh.
                    let next = inbox.next_n;
                    inbox = Inbox::load(inbox.entries.values().cloned().collect());
                    assert!(inbox.next_n <= next);
                    inbox.next_n = next;
                    agrees(&inbox, step);
                }
            }
        }
    }

    /// Retention and room keep the oldest read entries last, as before.
    #[test]
    fn prune_and_make_room_take_the_oldest_read_first() {
        let mut inbox = Inbox::default();
        for k in 0..(2 * KEEP_READ as u64 + 40) {
            let n = inbox.next_n();
            let mut e = Entry::new(
                &format!("m{k}"),
                "did:mesh:a",
                k,
                Evidence::Encrypted,
                serde_json::Value::Null,
            );
            e.n = n;
            e.bytes = 10;
            e.read = k % 2 == 0;
            inbox.insert(e);
        }
        let read_before: Vec<u64> = inbox.read_entries().map(|e| e.n).collect();
        let erased = inbox.prune();
        let cut = read_before.len() - KEEP_READ;
        assert_eq!(erased.len(), cut * 2, "entry and payload of each");
        let read_after: Vec<u64> = inbox.read_entries().map(|e| e.n).collect();
        assert_eq!(read_after, read_before[cut..].to_vec());
        // An unread entry fills the inbox to 10 bytes short of its limit;
        // a message of 30 needs the space of two read entries.
        let n = inbox.next_n();
        let mut big = Entry::new(
            "big",
            "did:mesh:c",
            0,
            Evidence::Encrypted,
            serde_json::Value::Null,
        );
        big.n = n;
        big.bytes = MAX_INBOX_BYTES - inbox.total_bytes() - 10;
        inbox.insert(big);
        let (v, erased) = inbox.make_room("did:mesh:b", 30);
        assert_eq!(v, Ok(()));
        assert_eq!(erased.len(), 4);
        assert_eq!(
            inbox.read_entries().next().map(|e| e.n),
            Some(read_after[2])
        );
    }
}
