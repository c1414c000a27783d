//! Everything we keep per peer, persisted as one sealed record so a send or a
//! receive commits atomically: the ratchet session (and any candidate from a
//! newer KNOCK), delivery sequence numbers, the outbox of messages awaiting
//! the peer's receipt, and the ids of recently consumed relay frames.

use crate::crypto::ratchet::{Header, Ratchet, RatchetError};
use crate::entropy::Entropy;
use crate::store::{b64bytes, text_or_b64};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Relay frame ids remembered per peer for de-duplication. The relay only
/// redelivers frames we have not acked (we ack right after committing), and
/// sender re-sends are caught by sequence number, so a short window is
/// enough; it is rewritten with the peer record on every message.
pub const SEEN_MAX: usize = 64;
/// The relay keeps unacked frames for 72 h; so do our marks.
pub const SEEN_TTL_MS: u64 = 72 * 3600 * 1000;
/// Idempotency keys remembered per peer.
pub const SENT_KEYS_MAX: usize = 1024;
/// Most messages awaiting a receipt per peer; beyond that sends are refused.
pub const OUTBOX_MAX: usize = 5000;
/// Session openings remembered per peer as used (a replay is refused).
/// Only openings that authenticated a message count, so strangers' forged
/// KNOCKs cannot push real ones out.
pub const USED_OPENINGS_MAX: usize = 256;

/// What identifies a session opening: the initiator's identity key and its
/// ephemeral key. A KNOCK with the same pair always yields the same session,
/// whatever frame id it travels under.
pub fn opening_id(identity_key: &[u8; 32], ephemeral_key: &[u8; 32]) -> String {
    let mut input = [0u8; 64];
    input[..32].copy_from_slice(identity_key);
    input[32..].copy_from_slice(ephemeral_key);
    crate::wire::hex::encode(&crate::crypto::kdf::sha256(&input)[..16])
}

/// A message we sent and keep until the peer's receipt (kars peers only).
#[derive(Serialize, Deserialize, Clone)]
pub struct OutEntry {
    pub seq: u64,
    pub frame_id: String,
    /// The frame as sent; re-sent verbatim until the session changes. A
    /// large one (over FRAME_STORED_MAX, the chunks of a file) is kept in
    /// memory only: storing it beside the plaintext had the sender seal
    /// about three times a file's size. After a restart such an entry has
    /// no frame and is sealed again from its plaintext, under the current
    /// session and with its sequence number, as after a session change (the
    /// peer drops a copy it already has by that number).
    #[serde(default, skip_serializing_if = "frame_left_out")]
    pub frame: String,
    /// Where in our sending chain the frame went (its header's `dh` and
    /// `n`), so a restart steps the chain past it even when the frame itself
    /// was not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_under: Option<SentUnder>,
    /// Plaintext, sealed with the record, to re-encrypt under a new session.
    #[serde(with = "text_or_b64")]
    pub plaintext: Vec<u8>,
    pub created_ms: u64,
    pub last_sent_ms: u64,
    pub attempts: u32,
    /// Kept until the peer's receipt (kars peers); otherwise until sent on
    /// an open link.
    #[serde(default)]
    pub needs_receipt: bool,
    /// The caller's idempotency key, if it gave one.
    #[serde(default)]
    pub key: Option<String>,
    /// A part of a file (`mesh:transfer_chunk`): only such an entry's
    /// record may keep its frame instead of its plaintext
    /// ([`OutEntry::keeps_frame_only`]). Not stored: an entry read back
    /// without its plaintext is one.
    #[serde(skip)]
    pub file_part: bool,
    /// Its record is in storage under its frame id (set when it is written
    /// or read back; in memory only). Saving the peer writes the entries
    /// without it instead of looking every entry up in `Peer::persisted_out`,
    /// which made each send cost more the more sends awaited a receipt.
    #[serde(skip)]
    pub stored: bool,
}

/// Frames longer than this are not stored with their outbox entry.
pub const FRAME_STORED_MAX: usize = 64 * 1024;

/// An outbox entry's record: its fields (JSON) and the frame stored after
/// them, if it keeps one apart.
pub type RecordParts<'a> = (Zeroizing<Vec<u8>>, Option<&'a [u8]>);

impl OutEntry {
    /// Whether the entry's record keeps its frame, not its plaintext: a
    /// file's chunk whose frame is too large to store beside its plaintext
    /// (or an entry read back that way, which has no plaintext left). The
    /// frame is ciphertext end to end and is stored after the sealed fields
    /// as it is (`seal` version 3); sealing the plaintext again cost the
    /// sender as much CPU as the rest of sending a file. Such an entry is
    /// sent again as it is after a restart, but cannot be sealed again
    /// under a new session (`Agent::reseal`), so only file parts are kept
    /// this way: a message the user sent keeps its plaintext, whatever its
    /// size.
    pub fn keeps_frame_only(&self) -> bool {
        self.frame.len() > FRAME_STORED_MAX && (self.file_part || self.plaintext.is_empty())
    }

    /// The entry's record: its fields (JSON, sealed by the caller) and, for
    /// an entry that [keeps its frame only](Self::keeps_frame_only), the
    /// frame to store after them.
    pub fn record_parts(&self) -> Result<RecordParts<'_>, serde_json::Error> {
        if !self.keeps_frame_only() {
            return Ok((Zeroizing::new(serde_json::to_vec(self)?), None));
        }
        // Every field named: a field added to OutEntry must be placed here.
        let head = OutEntry {
            seq: self.seq,
            frame_id: self.frame_id.clone(),
            frame: String::new(),
            sent_under: self.sent_under.clone(),
            plaintext: Vec::new(),
            created_ms: self.created_ms,
            last_sent_ms: self.last_sent_ms,
            attempts: self.attempts,
            needs_receipt: self.needs_receipt,
            key: self.key.clone(),
            file_part: self.file_part,
            stored: false,
        };
        Ok((
            Zeroizing::new(serde_json::to_vec(&head)?),
            Some(self.frame.as_bytes()),
        ))
    }

    /// An entry from its record: the fields, and the frame stored after
    /// them (empty when the record has none), for the peer `to` whose
    /// outbox it is in. The frame must be the one the fields name: its id,
    /// its recipient, its place in the sending chain (`dh`, `pn`, `n`). A
    /// frame moved from another record or cut short is refused here; its
    /// ciphertext is not sealed again, so a change to it that keeps its
    /// length is refused by the peer (its end-to-end tag fails) instead.
    pub fn from_record(head: &[u8], frame: &[u8], to: &str) -> Result<OutEntry, String> {
        let mut o = serde_json::from_slice::<OutEntry>(head)
            .map_err(|e| crate::wire::describe_json_error(&e))?;
        if frame.is_empty() {
            return Ok(o);
        }
        let text = std::str::from_utf8(frame).map_err(|_| "its frame is not text".to_string())?;
        let m = crate::wire::frames::parse_message_frame(text)
            .map_err(|e| format!("its frame does not parse ({e})"))?;
        let under = o.sent_under.as_ref();
        if m.id != o.frame_id
            || m.to != to
            || under.is_none_or(|s| {
                s.dh.as_slice() != m.header.dh.as_slice()
                    || s.pn != m.header.pn
                    || s.n != m.header.n
            })
        {
            return Err("its frame is not the one its fields name".into());
        }
        o.frame = text.to_string();
        Ok(o)
    }
}

fn frame_left_out(frame: &str) -> bool {
    frame.is_empty() || frame.len() > FRAME_STORED_MAX
}

/// A sent frame's place in the sending chain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SentUnder {
    #[serde(with = "b64bytes")]
    pub dh: Vec<u8>,
    /// Checked against a stored frame (entries written before it read 0).
    #[serde(default)]
    pub pn: u32,
    pub n: u32,
}

impl SentUnder {
    pub fn of(header: &Header) -> Self {
        SentUnder {
            dh: header.dh.to_vec(),
            pn: header.pn,
            n: header.n,
        }
    }
}

impl Drop for OutEntry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.plaintext);
    }
}

#[derive(Serialize, Deserialize)]
struct CandidateRecord {
    knock_id: String,
    #[serde(with = "b64bytes")]
    snapshot: Vec<u8>,
    created_ms: u64,
    #[serde(default)]
    opening: String,
    #[serde(default)]
    legacy_kdf: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct PeerRecord {
    did: String,
    #[serde(default, with = "b64bytes")]
    active: Vec<u8>,
    #[serde(default)]
    initiated_by_us: bool,
    #[serde(default)]
    candidates: Vec<CandidateRecord>,
    #[serde(default)]
    kars: bool,
    #[serde(default)]
    out_seq: u64,
    #[serde(default)]
    in_next: u64,
    #[serde(default)]
    outbox: Vec<OutEntry>,
    /// Records written before the marks were packed (`seen_marks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seen: Vec<LegacySeenMark>,
    /// The marks packed: [`SeenMark::PACKED`] bytes each, base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    seen_marks: String,
    #[serde(default)]
    knock_sent: Option<String>,
    #[serde(default)]
    pending_knock: Option<String>,
    #[serde(default)]
    confirmed: bool,
    #[serde(default)]
    identity_ed: Option<String>,
    #[serde(default)]
    out_epoch: u64,
    #[serde(default)]
    in_epoch: Option<u64>,
    #[serde(default)]
    sent_keys: Vec<(String, String)>,
    #[serde(default)]
    used_openings: Vec<String>,
    #[serde(default)]
    glare_lost: Vec<String>,
    #[serde(default)]
    legacy_kdf: bool,
    #[serde(default)]
    reads_ack: bool,
}

/// A consumed relay frame as 0.1.0 records kept it: its id in full.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct LegacySeenMark {
    id: String,
    at: u64,
    #[serde(default)]
    seq: Option<u64>,
}

/// A consumed relay frame: a digest of its id, when, and the sender's
/// sequence number. The peer record is rewritten with every message, and
/// 64 marks with full ids and JSON field names were about 5.4 KB of a
/// 7 KB record, sealed six times per round trip; packed they are 1.4 KB.
/// Eight bytes of SHA-256 make a false match among 64 marks a 2^-58
/// chance, and only the peer itself chooses its frame ids, so only it
/// could lose a message to a made-up collision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenMark {
    pub digest: [u8; 8],
    /// Milliseconds; kept to the second.
    pub at: u64,
    pub seq: Option<u64>,
}

impl SeenMark {
    /// Packed size: digest, seconds (u32), sequence number (u32, with
    /// `u32::MAX` for none; a larger one is kept as none, which only costs
    /// a duplicate's repeated receipt: the peer's next receipt covers it).
    pub const PACKED: usize = 16;

    pub fn digest_of(frame_id: &str) -> [u8; 8] {
        let h = crate::crypto::kdf::sha256(frame_id.as_bytes());
        let mut d = [0u8; 8];
        d.copy_from_slice(&h[..8]);
        d
    }

    fn pack_all(marks: &[SeenMark]) -> String {
        if marks.is_empty() {
            return String::new();
        }
        let mut b = Vec::with_capacity(marks.len() * Self::PACKED);
        for m in marks {
            b.extend_from_slice(&m.digest);
            let secs = u32::try_from(m.at / 1000).unwrap_or(u32::MAX);
            b.extend_from_slice(&secs.to_be_bytes());
            let seq = m
                .seq
                .and_then(|s| u32::try_from(s).ok())
                .filter(|&s| s != u32::MAX)
                .unwrap_or(u32::MAX);
            b.extend_from_slice(&seq.to_be_bytes());
        }
        crate::wire::b64::encode_std(&b)
    }

    fn unpack_all(s: &str) -> Result<Vec<SeenMark>, RatchetError> {
        if s.is_empty() {
            return Ok(Vec::new());
        }
        let b = crate::wire::b64::decode(s).map_err(|_| RatchetError::Snapshot("seen marks"))?;
        if b.len() % Self::PACKED != 0 {
            return Err(RatchetError::Snapshot("seen marks"));
        }
        Ok(b.chunks_exact(Self::PACKED)
            .map(|c| {
                let mut digest = [0u8; 8];
                digest.copy_from_slice(&c[..8]);
                let secs = u32::from_be_bytes([c[8], c[9], c[10], c[11]]);
                let seq = u32::from_be_bytes([c[12], c[13], c[14], c[15]]);
                SeenMark {
                    digest,
                    at: u64::from(secs) * 1000,
                    seq: (seq != u32::MAX).then_some(u64::from(seq)),
                }
            })
            .collect())
    }
}

pub struct Candidate {
    pub knock_id: String,
    pub ratchet: Ratchet,
    pub created_ms: u64,
    /// `opening_id` of the KNOCK that made it.
    pub opening: String,
    /// Made with the npm SDK 4.0.0's legacy X3DH KDF.
    pub legacy_kdf: bool,
}

/// How a frame decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decrypted {
    Active,
    /// Under a candidate that replaced the active session.
    Promoted,
    /// Under a candidate that was kept aside (glare, we keep ours).
    Candidate,
}

pub struct Peer {
    pub did: String,
    pub active: Option<Ratchet>,
    pub initiated_by_us: bool,
    pub candidates: Vec<Candidate>,
    /// The peer speaks the kars delivery envelope (sequence + receipts).
    pub kars: bool,
    pub out_seq: u64,
    pub in_next: u64,
    pub outbox: Vec<OutEntry>,
    pub seen: Vec<SeenMark>,
    /// Id of the KNOCK that opened our current session, while unconfirmed.
    pub knock_sent: Option<String>,
    /// That KNOCK's frame, re-sent on reconnect until a kars peer confirms
    /// (any other peer gets it once: `hand_over_unreceipted`).
    pub pending_knock: Option<String>,
    /// The peer has used the active session: a message decrypted under it.
    pub confirmed: bool,
    /// The peer's Ed25519 key, once verified against its DID.
    pub identity_ed: Option<[u8; 32]>,
    /// Random numbering epoch of our messages to this peer.
    pub out_epoch: u64,
    /// The peer's numbering epoch as last seen.
    pub in_epoch: Option<u64>,
    /// Outbox entries written as their own records (`outbox/<did>/<id>`), so
    /// a send writes one entry instead of rewriting every pending one.
    pub persisted_out: std::collections::BTreeSet<String>,
    /// Recent idempotency keys of sends to this peer, with their frame ids.
    pub sent_keys: Vec<(String, String)>,
    /// Openings (`opening_id`) whose session authenticated a message: a
    /// KNOCK replaying one is refused, so a recorded opening can never
    /// replace the live session (red-team finding 4).
    pub used_openings: Vec<String>,
    /// KNOCK ids whose candidates crossed our own KNOCK and lost: the peer
    /// went on to use the session we opened. Their late frames still
    /// decrypt, but they never replace our session (the peer has dropped
    /// theirs).
    pub glare_lost: Vec<String>,
    /// The peer derives X3DH secrets with the npm SDK 4.0.0's legacy KDF
    /// (learned from a session it opened): our KNOCKs to it use it too.
    pub legacy_kdf: bool,
    /// The peer's latest data envelope listed `CAP_NESTED_ACK`: receipts
    /// to it ride in our data messages. Follows every envelope, so a peer
    /// moved back to an older version gets receipts of their own again.
    pub reads_ack: bool,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("did", &self.did)
            .field("active", &self.active.is_some())
            .field("candidates", &self.candidates.len())
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

impl Peer {
    pub fn new(did: &str) -> Self {
        Peer {
            did: did.to_string(),
            active: None,
            initiated_by_us: false,
            candidates: Vec::new(),
            kars: false,
            out_seq: 0,
            in_next: 0,
            outbox: Vec::new(),
            seen: Vec::new(),
            knock_sent: None,
            pending_knock: None,
            confirmed: false,
            identity_ed: None,
            out_epoch: 0,
            in_epoch: None,
            persisted_out: std::collections::BTreeSet::new(),
            sent_keys: Vec::new(),
            used_openings: Vec::new(),
            glare_lost: Vec::new(),
            legacy_kdf: false,
            reads_ack: false,
        }
    }

    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let rec = PeerRecord {
            did: self.did.clone(),
            active: self
                .active
                .as_ref()
                .map(|r| r.to_snapshot().to_vec())
                .unwrap_or_default(),
            initiated_by_us: self.initiated_by_us,
            candidates: self
                .candidates
                .iter()
                .map(|c| CandidateRecord {
                    knock_id: c.knock_id.clone(),
                    snapshot: c.ratchet.to_snapshot().to_vec(),
                    created_ms: c.created_ms,
                    opening: c.opening.clone(),
                    legacy_kdf: c.legacy_kdf,
                })
                .collect(),
            kars: self.kars,
            out_seq: self.out_seq,
            in_next: self.in_next,
            // Entries live in their own records; this field only reads
            // records written before that.
            outbox: Vec::new(),
            seen: Vec::new(),
            seen_marks: SeenMark::pack_all(&self.seen),
            knock_sent: self.knock_sent.clone(),
            pending_knock: self.pending_knock.clone(),
            confirmed: self.confirmed,
            identity_ed: self.identity_ed.map(|k| crate::wire::b64::encode_std(&k)),
            out_epoch: self.out_epoch,
            in_epoch: self.in_epoch,
            sent_keys: self.sent_keys.clone(),
            used_openings: self.used_openings.clone(),
            glare_lost: self.glare_lost.clone(),
            legacy_kdf: self.legacy_kdf,
            reads_ack: self.reads_ack,
        };
        let out = Zeroizing::new(serde_json::to_vec(&rec).unwrap_or_default());
        let mut rec = rec;
        zeroize::Zeroize::zeroize(&mut rec.active);
        for c in rec.candidates.iter_mut() {
            zeroize::Zeroize::zeroize(&mut c.snapshot);
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RatchetError> {
        let rec: PeerRecord =
            serde_json::from_slice(bytes).map_err(|_| RatchetError::Snapshot("peer record"))?;
        let active = if rec.active.is_empty() {
            None
        } else {
            Some(Ratchet::from_snapshot(&rec.active)?)
        };
        let mut candidates = Vec::new();
        for c in &rec.candidates {
            candidates.push(Candidate {
                knock_id: c.knock_id.clone(),
                ratchet: Ratchet::from_snapshot(&c.snapshot)?,
                created_ms: c.created_ms,
                opening: c.opening.clone(),
                legacy_kdf: c.legacy_kdf,
            });
        }
        let mut seen: Vec<SeenMark> = rec
            .seen
            .iter()
            .map(|m| SeenMark {
                digest: SeenMark::digest_of(&m.id),
                at: m.at,
                seq: m.seq,
            })
            .collect();
        // Best-effort marks: a damaged set (sealed records cannot be
        // damaged unnoticed, so only a bug of ours) costs the window, not
        // the session.
        seen.extend(SeenMark::unpack_all(&rec.seen_marks).unwrap_or_default());
        Ok(Peer {
            did: rec.did.clone(),
            active,
            initiated_by_us: rec.initiated_by_us,
            candidates,
            kars: rec.kars,
            out_seq: rec.out_seq,
            in_next: rec.in_next,
            outbox: rec.outbox.clone(),
            seen,
            knock_sent: rec.knock_sent.clone(),
            pending_knock: rec.pending_knock.clone(),
            confirmed: rec.confirmed,
            identity_ed: rec
                .identity_ed
                .as_deref()
                .and_then(|k| crate::wire::b64::decode_array::<32>(k).ok()),
            out_epoch: rec.out_epoch,
            in_epoch: rec.in_epoch,
            persisted_out: std::collections::BTreeSet::new(),
            sent_keys: rec.sent_keys.clone(),
            used_openings: rec.used_openings.clone(),
            glare_lost: rec.glare_lost.clone(),
            legacy_kdf: rec.legacy_kdf,
            reads_ack: rec.reads_ack,
        })
    }

    pub fn has_used_opening(&self, opening: &str) -> bool {
        self.used_openings.iter().any(|o| o == opening)
    }

    fn remember_opening(&mut self, opening: String) {
        if opening.is_empty() || self.has_used_opening(&opening) {
            return;
        }
        self.used_openings.push(opening);
        if self.used_openings.len() > USED_OPENINGS_MAX {
            let excess = self.used_openings.len() - USED_OPENINGS_MAX;
            self.used_openings.drain(..excess);
        }
    }

    pub fn remember_key(&mut self, key: &str, frame_id: &str) {
        if self.sent_key(key).is_none() {
            self.sent_keys.push((key.to_string(), frame_id.to_string()));
            if self.sent_keys.len() > SENT_KEYS_MAX {
                let excess = self.sent_keys.len() - SENT_KEYS_MAX;
                self.sent_keys.drain(..excess);
            }
        }
    }

    pub fn sent_key(&self, key: &str) -> Option<&str> {
        self.sent_keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, f)| f.as_str())
    }

    /// The active session can encrypt (a responder can once it has received).
    /// The frames about to go out on an open link are the relay's to deliver
    /// when this peer sends no receipts: drop its entries (and, for a peer
    /// that is not a kars agent, the KNOCK kept for repeats) from the record
    /// *before* the write, so no later start, reconnect or relay restart
    /// sends them again. Such a peer cannot tell a repeat from an attack: the
    /// AGT clients fail a duplicate and tear the session down. A crash
    /// between the commit and the write loses those frames; a repeat would
    /// desynchronise the peer for good. An entry with no frame is not about
    /// to go out (it waits to be sealed again, under a new session after a
    /// lost record): it stays. Returns whether anything changed.
    pub fn hand_over_unreceipted(&mut self) -> bool {
        let before = self.outbox.len();
        self.outbox
            .retain(|o| o.needs_receipt || o.frame.is_empty());
        let mut changed = self.outbox.len() != before;
        if !self.kars && self.pending_knock.is_some() {
            self.pending_knock = None;
            changed = true;
        }
        changed
    }

    pub fn can_send(&self) -> bool {
        self.active.as_ref().is_some_and(|r| r.can_send())
    }

    /// Whether the active session owes the sending half of a ratchet step.
    pub fn send_step_pending(&self) -> bool {
        self.active.as_ref().is_some_and(|r| r.send_step_pending())
    }

    /// Take the active session's owed ratchet step now (idle time), in
    /// memory only: the record on disk keeps owing it until the next save,
    /// and a restart in between takes a fresh one. Returns whether it did.
    pub fn prepare_send(&mut self, rng: &mut dyn Entropy) -> bool {
        self.active
            .as_mut()
            .is_some_and(|r| r.prepare_send(rng).unwrap_or(false))
    }

    pub fn has_seen(&self, frame_id: &str) -> bool {
        let d = SeenMark::digest_of(frame_id);
        self.seen.iter().any(|m| m.digest == d)
    }

    /// `Some(seq)` when the frame was consumed before.
    pub fn seen_seq(&self, frame_id: &str) -> Option<Option<u64>> {
        let d = SeenMark::digest_of(frame_id);
        self.seen.iter().find(|m| m.digest == d).map(|m| m.seq)
    }

    pub fn mark_seen(&mut self, frame_id: &str, now_ms: u64, seq: Option<u64>) {
        self.seen
            .retain(|m| now_ms.saturating_sub(m.at) < SEEN_TTL_MS);
        self.seen.push(SeenMark {
            digest: SeenMark::digest_of(frame_id),
            at: now_ms,
            seq,
        });
        if self.seen.len() > SEEN_MAX {
            let excess = self.seen.len() - SEEN_MAX;
            self.seen.drain(..excess);
        }
    }

    /// Decrypt under the active session, else under a candidate. A candidate
    /// that authenticates replaces the active session, except in glare: both
    /// sides knocked at once and our session, not yet used by the peer, was
    /// initiated by the smaller DID (`we_are_smaller`), so ours wins on both
    /// sides. A session the peer has used is replaced: a new KNOCK after that
    /// means the peer lost it. Unless the candidate is the peer's side of a
    /// glare it lost: once the peer uses the session we opened it has given
    /// its own up, so a late frame under that one (delayed, duplicated,
    /// pushed late by the relay) is read but replaces nothing; replacing
    /// would leave the two sides in different sessions for good. Such a
    /// candidate comes from a KNOCK we had before the peer first used ours
    /// (`glare_lost`), or, when its KNOCK itself came late, it carries the
    /// delivery envelope of the peer state we already talk to
    /// (`same_incarnation`): a peer that lost its session lost that too.
    pub fn decrypt(
        &mut self,
        header: &Header,
        ct: &[u8],
        we_are_smaller: bool,
        rng: &mut dyn Entropy,
    ) -> Result<(Vec<u8>, Decrypted), RatchetError> {
        let mut first_err = None;
        if let Some(active) = self.active.as_mut() {
            match active.decrypt(header, ct, rng) {
                Ok(pt) => {
                    if !self.confirmed && self.initiated_by_us {
                        self.glare_lost =
                            self.candidates.iter().map(|c| c.knock_id.clone()).collect();
                    }
                    self.confirmed = true;
                    return Ok((pt, Decrypted::Active));
                }
                Err(e) => first_err = Some(e),
            }
        }
        for i in 0..self.candidates.len() {
            if let Ok(pt) = self.candidates[i].ratchet.decrypt(header, ct, rng) {
                // The opening is proven: it can open no second session.
                let opening = self.candidates[i].opening.clone();
                self.remember_opening(opening);
                // Only a kars peer ever moves to a session we opened: an AGT
                // client keeps its own, so its KNOCK's session always wins.
                let lost = self.kars
                    && self.active.is_some()
                    && self.initiated_by_us
                    && self.confirmed
                    && (self.glare_lost.contains(&self.candidates[i].knock_id)
                        || self.same_incarnation(&pt));
                let keep = self.kars
                    && we_are_smaller
                    && self.active.is_some()
                    && self.initiated_by_us
                    && !self.confirmed;
                if keep || lost {
                    return Ok((pt, Decrypted::Candidate));
                }
                let c = self.candidates.remove(i);
                // The peer's X3DH KDF is known now; our own KNOCKs to it
                // use the same from here on.
                self.legacy_kdf = c.legacy_kdf;
                self.candidates.clear();
                self.glare_lost.clear();
                self.active = Some(c.ratchet);
                self.initiated_by_us = false;
                self.knock_sent = None;
                self.pending_knock = None;
                self.confirmed = true;
                return Ok((pt, Decrypted::Promoted));
            }
        }
        Err(first_err.unwrap_or(RatchetError::AuthenticationFailed))
    }

    /// The plaintext carries the kars delivery envelope of the peer state we
    /// already follow: a message numbered in the epoch we track, or a
    /// receipt for our own epoch. Inside the AEAD, so authenticated.
    fn same_incarnation(&self, pt: &[u8]) -> bool {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(pt) else {
            return false;
        };
        let env = &v["kars"];
        let Some(epoch) = env["epoch"].as_u64() else {
            return false;
        };
        if env.get("receipt").is_some() || env.get("upto").is_some() {
            self.out_epoch != 0 && epoch == self.out_epoch
        } else {
            self.in_epoch == Some(epoch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_id(i: u64) -> String {
        format!("5f0c2a7e-9b1d-4c3e-8a6f-{i:012x}")
    }

    fn out_entry(plaintext_len: usize, n: u32) -> OutEntry {
        let header = Header {
            dh: [9; 32],
            pn: 0,
            n,
        };
        let fid = frame_id(u64::from(n));
        let frame = crate::wire::frames::message_frame(
            "did:mesh:a",
            "did:mesh:b",
            &fid,
            "2026-12-04T00:00:00Z",
            &header,
            &vec![5u8; plaintext_len + 40],
        );
        OutEntry {
            seq: u64::from(n),
            frame_id: fid,
            frame,
            sent_under: Some(SentUnder::of(&header)),
            plaintext: vec![b'x'; plaintext_len],
            created_ms: 1,
            last_sent_ms: 2,
            attempts: 1,
            needs_receipt: true,
            key: Some("k".into()),
            file_part: true,
            stored: false,
        }
    }

    /// Handing over to the relay drops what goes out now to a peer that
    /// sends no receipts; an entry with no frame is not going out (it
    /// waits to be sealed again under a new session) and stays.
    #[test]
    fn handing_over_keeps_entries_that_have_no_frame_yet() {
        let mut p = Peer::new("did:mesh:b");
        let mut going = out_entry(10, 1);
        going.needs_receipt = false;
        let mut frameless = out_entry(10, 2);
        frameless.needs_receipt = false;
        frameless.frame.clear();
        let receipted = out_entry(10, 3);
        p.outbox = vec![going, frameless, receipted];
        assert!(p.hand_over_unreceipted());
        let left: Vec<u64> = p.outbox.iter().map(|o| o.seq).collect();
        assert_eq!(left, [2, 3]);
    }

    #[test]
    fn a_large_outbox_entry_keeps_its_frame_and_not_its_plaintext() {
        // Small: one JSON record with both, as before.
        let small = out_entry(1000, 1);
        assert!(!small.keeps_frame_only());
        let (head, frame) = small.record_parts().expect("serializes");
        assert!(frame.is_none());
        let back = OutEntry::from_record(&head, b"", "did:mesh:b").expect("reads back");
        assert_eq!(back.plaintext, small.plaintext);
        assert_eq!(back.frame, small.frame);
        // A file's chunk: the fields, and the frame after them; no plaintext.
        let big = out_entry(FRAME_STORED_MAX + 1, 2);
        assert!(big.keeps_frame_only());
        let (head, frame) = big.record_parts().expect("serializes");
        assert_eq!(frame, Some(big.frame.as_bytes()));
        assert!(head.len() < 400, "head is {} bytes", head.len());
        assert!(
            !head.windows(16).any(|w| w == [b'x'; 16]),
            "no plaintext in the head"
        );
        let back =
            OutEntry::from_record(&head, big.frame.as_bytes(), "did:mesh:b").expect("reads back");
        assert_eq!(back.frame, big.frame);
        assert!(back.plaintext.is_empty());
        assert_eq!(
            (back.seq, back.key.as_deref(), back.needs_receipt),
            (2, Some("k"), true)
        );
        // Read back, it has no plaintext: saved again, it still keeps its
        // frame (else its record would hold neither).
        assert!(back.keeps_frame_only());
        // A message the user sent keeps its plaintext whatever its size:
        // it must be sealed again if the peer opens a new session.
        let mut user = out_entry(FRAME_STORED_MAX + 1, 4);
        user.file_part = false;
        assert!(!user.keeps_frame_only());
        let (head_u, frame_u) = user.record_parts().expect("serializes");
        assert!(frame_u.is_none());
        let back_u = OutEntry::from_record(&head_u, b"", "did:mesh:b").expect("reads back");
        assert_eq!(back_u.plaintext, user.plaintext);
        // Another entry's frame, one for another peer, or one cut short, is refused.
        assert_eq!(
            OutEntry::from_record(&head, big.frame.as_bytes(), "did:mesh:c")
                .err()
                .as_deref(),
            Some("its frame is not the one its fields name")
        );
        let other = out_entry(FRAME_STORED_MAX + 1, 3);
        let e = OutEntry::from_record(&head, other.frame.as_bytes(), "did:mesh:b").err();
        assert_eq!(
            e.as_deref(),
            Some("its frame is not the one its fields name")
        );
        let cut = &big.frame.as_bytes()[..big.frame.len() - 2];
        assert!(OutEntry::from_record(&head, cut, "did:mesh:b")
            .err()
            .is_some_and(|e| e.starts_with("its frame does not parse")));
    }

    #[test]
    fn seen_marks_survive_the_record_and_stay_small() {
        let mut p = Peer::new("did:mesh:abc");
        let t0 = 1_790_000_000_123;
        for i in 0..(SEEN_MAX as u64 + 10) {
            let seq = (i % 3 != 0).then_some(i);
            p.mark_seen(&frame_id(i), t0 + i, seq);
        }
        let bytes = p.to_bytes();
        let back = Peer::from_bytes(&bytes).expect("own record reads back");
        assert_eq!(back.seen.len(), SEEN_MAX);
        // The oldest ten left the window; the rest answer as before.
        assert!(!back.has_seen(&frame_id(9)));
        for i in 10..(SEEN_MAX as u64 + 10) {
            let want = (i % 3 != 0).then_some(i);
            assert_eq!(back.seen_seq(&frame_id(i)), Some(want), "mark {i}");
        }
        assert_eq!(back.seen_seq("some-other-frame"), None);
        // Packed: 16 bytes a mark (base64: 22), not ~85 of JSON.
        assert!(
            bytes.len() < 300 + SEEN_MAX * 22,
            "peer record with {SEEN_MAX} marks is {} bytes",
            bytes.len()
        );
    }

    #[test]
    fn a_sequence_number_past_u32_is_kept_as_none() {
        let mut p = Peer::new("did:mesh:abc");
        p.mark_seen("a", 1000, Some(u64::from(u32::MAX)));
        p.mark_seen("b", 1000, Some(u64::from(u32::MAX) + 7));
        p.mark_seen("c", 1000, Some(u64::from(u32::MAX) - 1));
        let back = Peer::from_bytes(&p.to_bytes()).expect("reads back");
        assert_eq!(back.seen_seq("a"), Some(None));
        assert_eq!(back.seen_seq("b"), Some(None));
        assert_eq!(back.seen_seq("c"), Some(Some(u64::from(u32::MAX) - 1)));
    }

    #[test]
    fn a_record_written_with_full_frame_ids_still_reads() {
        // The shape 0.1.0 wrote: each mark with its id in full.
        let old = serde_json::json!({
            "did": "did:mesh:abc",
            "seen": [
                {"id": frame_id(1), "at": 1_790_000_000_000u64, "seq": 4},
                {"id": frame_id(2), "at": 1_790_000_001_000u64},
            ],
        });
        let p = Peer::from_bytes(old.to_string().as_bytes()).expect("old record reads");
        assert_eq!(p.seen_seq(&frame_id(1)), Some(Some(4)));
        assert_eq!(p.seen_seq(&frame_id(2)), Some(None));
        assert!(!p.has_seen(&frame_id(3)));
        // Written back packed, with the same answers.
        let again = Peer::from_bytes(&p.to_bytes()).expect("reads back");
        let v: serde_json::Value = serde_json::from_slice(&p.to_bytes()).expect("json");
        assert!(v.get("seen").is_none(), "no full ids written: {v}");
        assert_eq!(again.seen_seq(&frame_id(1)), Some(Some(4)));
    }

    #[test]
    fn damaged_packed_marks_cost_the_marks_not_the_session() {
        let mut p = Peer::new("did:mesh:abc");
        p.out_seq = 7;
        p.mark_seen("a", 1000, Some(1));
        let mut v: serde_json::Value = serde_json::from_slice(&p.to_bytes()).expect("json");
        v["seen_marks"] = serde_json::json!("AAAA");
        let back = Peer::from_bytes(v.to_string().as_bytes()).expect("the session still reads");
        assert_eq!(back.out_seq, 7);
        assert!(back.seen.is_empty() && !back.has_seen("a"));
    }
}
