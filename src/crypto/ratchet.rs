//! The Double Ratchet with the AgentMesh constants (agentmesh-wire.md §9).
//!
//! Decryption is atomic, unlike both reference implementations: the would-be
//! next state is computed on a copy and committed only after the AEAD tag
//! verifies, so a forged, corrupted, duplicated or replayed frame leaves the
//! session byte-for-byte as it was.

use crate::crypto::aead;
use crate::crypto::kdf;
use crate::crypto::keys::{KeyPair, LowOrderPoint};
use crate::entropy::Entropy;
use std::collections::{BTreeMap, HashMap};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Most keys one chain may skip for a single message.
pub const MAX_SKIP: u32 = 100;
/// Most skipped keys kept in total; the oldest are evicted first.
pub const MAX_SKIPPED_TOTAL: usize = 2000;
pub const HEADER_LEN: usize = 40;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
const SNAPSHOT_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatchetError {
    #[error("Send chain not initialized. Receive a message first.")]
    SendChainNotInitialized,
    #[error("message {n} would skip {skip} message keys in one chain; the limit is {MAX_SKIP} (session unchanged)")]
    TooManySkipped { n: u32, skip: u64 },
    #[error("message authentication failed: forged, corrupted or from another session (session unchanged)")]
    AuthenticationFailed,
    #[error(
        "message {n} of this chain was already received: duplicate or replay (session unchanged)"
    )]
    Duplicate { n: u32 },
    #[error("ciphertext is {0} bytes; at least {min} are required (nonce + tag)", min = NONCE_LEN + TAG_LEN)]
    Truncated(usize),
    #[error("message header is {0} bytes; it must be {HEADER_LEN}")]
    BadHeader(usize),
    #[error("peer ratchet key is a low-order point (session unchanged)")]
    LowOrderPoint,
    #[error("message counter exhausted; open a new session")]
    CounterExhausted,
    #[error("session snapshot is corrupt or from an unknown version: {0}")]
    Snapshot(&'static str),
}

impl From<LowOrderPoint> for RatchetError {
    fn from(_: LowOrderPoint) -> Self {
        RatchetError::LowOrderPoint
    }
}

/// Message header: sender's ratchet key, previous chain length, number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub dh: [u8; 32],
    pub pn: u32,
    pub n: u32,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..32].copy_from_slice(&self.dh);
        b[32..36].copy_from_slice(&self.pn.to_be_bytes());
        b[36..].copy_from_slice(&self.n.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, RatchetError> {
        let b: &[u8; HEADER_LEN] = b.try_into().map_err(|_| RatchetError::BadHeader(b.len()))?;
        let mut dh = [0u8; 32];
        dh.copy_from_slice(&b[..32]);
        Ok(Header {
            dh,
            pn: u32::from_be_bytes([b[32], b[33], b[34], b[35]]),
            n: u32::from_be_bytes([b[36], b[37], b[38], b[39]]),
        })
    }
}

/// The part of the session that changes on every message. Small and cheap
/// to clone, which is what makes atomic decryption affordable.
#[derive(Clone)]
struct State {
    rk: Zeroizing<[u8; 32]>,
    dhs: KeyPair,
    dhr: Option<[u8; 32]>,
    cks: Option<Zeroizing<[u8; 32]>>,
    ckr: Option<Zeroizing<[u8; 32]>>,
    ns: u32,
    nr: u32,
    pn: u32,
    /// The sending half of the last DH ratchet step is still to be taken:
    /// `cks` is empty and `dhs` is the key pair the receiving half used.
    /// A new peer key starts the receiving chain at once; the new ratchet
    /// key pair and sending chain (a key generation and a DH, two thirds of
    /// the step) wait until a send needs them or the host is idle
    /// ([`Ratchet::prepare_send`]), which takes them off the path of a
    /// message being received. The keys, the headers and the order in which
    /// randomness is drawn are those of taking the whole step at once.
    send_step: bool,
}

/// Take the sending half of a DH ratchet step if it is owed. Nothing changes
/// unless it succeeds.
fn take_send_step(st: &mut State, rng: &mut dyn Entropy) -> Result<bool, RatchetError> {
    if !st.send_step {
        return Ok(false);
    }
    let dhr = st.dhr.ok_or(RatchetError::SendChainNotInitialized)?;
    let dhs = KeyPair::generate(rng);
    let (rk, cks) = kdf::root(&st.rk, &*dhs.agree(&dhr)?);
    st.dhs = dhs;
    st.rk = rk;
    st.cks = Some(cks);
    st.send_step = false;
    Ok(true)
}

type SkippedId = ([u8; 32], u32);

/// Skipped message keys, bounded, evicted oldest-first.
#[derive(Default)]
struct SkippedKeys {
    next_seq: u64,
    by_id: HashMap<SkippedId, (u64, Zeroizing<[u8; 32]>)>,
    order: BTreeMap<u64, SkippedId>,
}

impl SkippedKeys {
    fn get(&self, id: &SkippedId) -> Option<&Zeroizing<[u8; 32]>> {
        self.by_id.get(id).map(|(_, k)| k)
    }

    fn remove(&mut self, id: &SkippedId) {
        if let Some((seq, _)) = self.by_id.remove(id) {
            self.order.remove(&seq);
        }
    }

    fn insert(&mut self, id: SkippedId, key: Zeroizing<[u8; 32]>) {
        self.remove(&id);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_id.insert(id, (seq, key));
        self.order.insert(seq, id);
        while self.by_id.len() > MAX_SKIPPED_TOTAL {
            match self.order.pop_first() {
                Some((_, oldest)) => {
                    self.by_id.remove(&oldest);
                }
                None => break,
            }
        }
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

pub struct Ratchet {
    state: State,
    skipped: SkippedKeys,
    /// Channel AD: "<initiator DID>|<responder DID>" || X3DH AD.
    ad: Vec<u8>,
    /// Reused AAD buffer (AD || header) to keep the hot path allocation-free.
    aad: Vec<u8>,
}

impl std::fmt::Debug for Ratchet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ratchet")
            .field(
                "sending_key",
                &crate::codec::hex::encode(self.state.dhs.public()),
            )
            .field("ns", &self.state.ns)
            .field("nr", &self.state.nr)
            .field("pn", &self.state.pn)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// Channel AD: both directions put the initiator's DID first.
pub fn channel_ad(initiator_did: &str, responder_did: &str, x3dh_ad: &[u8; 64]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(initiator_did.len() + 1 + responder_did.len() + 64);
    ad.extend_from_slice(initiator_did.as_bytes());
    ad.push(b'|');
    ad.extend_from_slice(responder_did.as_bytes());
    ad.extend_from_slice(x3dh_ad);
    ad
}

impl Ratchet {
    /// Initiator: the first sending chain is keyed against the peer's SPK.
    /// Takes 32 bytes of entropy for the first ratchet key.
    pub fn new_initiator(
        shared_secret: &[u8; 32],
        remote_signed_prekey: &[u8; 32],
        ad: Vec<u8>,
        rng: &mut dyn Entropy,
    ) -> Result<Self, RatchetError> {
        let dhs = KeyPair::generate(rng);
        let (rk, cks) = kdf::root(shared_secret, &*dhs.agree(remote_signed_prekey)?);
        Ok(Self::from_state(
            State {
                rk,
                dhs,
                dhr: Some(*remote_signed_prekey),
                cks: Some(cks),
                ckr: None,
                ns: 0,
                nr: 0,
                pn: 0,
                send_step: false,
            },
            ad,
        ))
    }

    /// Responder: our SPK pair is the first ratchet key; no chains until the
    /// first message arrives.
    pub fn new_responder(shared_secret: &[u8; 32], signed_prekey: KeyPair, ad: Vec<u8>) -> Self {
        Self::from_state(
            State {
                rk: Zeroizing::new(*shared_secret),
                dhs: signed_prekey,
                dhr: None,
                cks: None,
                ckr: None,
                ns: 0,
                nr: 0,
                pn: 0,
                send_step: false,
            },
            ad,
        )
    }

    fn from_state(state: State, ad: Vec<u8>) -> Self {
        let aad = Vec::with_capacity(ad.len() + HEADER_LEN);
        Self {
            state,
            skipped: SkippedKeys::default(),
            ad,
            aad,
        }
    }

    /// After a crash, an outbox record can be newer than the session record
    /// (the outbox entry is written first): step the sending chain past
    /// message `n` of chain `dh`, so that number is never used again.
    /// Returns whether it moved.
    pub fn fast_forward_send(&mut self, dh: &[u8; 32], n: u32) -> bool {
        // `n` is from our own sealed records, and `encrypt` never issues
        // u32::MAX; were it there, the loop below would never end.
        if self.state.dhs.public() != dh || n < self.state.ns || n == u32::MAX {
            return false;
        }
        let Some(mut ck) = self.state.cks.take() else {
            return false;
        };
        while self.state.ns <= n {
            ck = kdf::chain(&ck).1;
            self.state.ns += 1;
        }
        self.state.cks = Some(ck);
        true
    }

    pub fn can_send(&self) -> bool {
        self.state.cks.is_some() || self.state.send_step
    }

    /// Our current ratchet public key (the `dh` of the headers we send; while
    /// a step is owed, the key of the chain before it).
    pub fn sending_key(&self) -> &[u8; 32] {
        self.state.dhs.public()
    }

    /// Whether the sending half of a DH ratchet step is owed (see
    /// `State::send_step`).
    pub fn send_step_pending(&self) -> bool {
        self.state.send_step
    }

    /// Take the sending half of a DH ratchet step now, if it is owed, so the
    /// next send does not (idle time). Takes 32 bytes of entropy when it
    /// does; returns whether it did.
    pub fn prepare_send(&mut self, rng: &mut dyn Entropy) -> Result<bool, RatchetError> {
        take_send_step(&mut self.state, rng)
    }

    pub fn skipped_count(&self) -> usize {
        self.skipped.len()
    }

    /// Encrypt one message. Output: nonce(12) || ciphertext || tag(16).
    /// Takes 32 bytes of entropy for a new ratchet key when a DH ratchet
    /// step's sending half is owed, then 12 for the nonce.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        rng: &mut dyn Entropy,
    ) -> Result<(Header, Vec<u8>), RatchetError> {
        take_send_step(&mut self.state, rng)?;
        let ck = self
            .state
            .cks
            .as_ref()
            .ok_or(RatchetError::SendChainNotInitialized)?;
        let next_ns = self
            .state
            .ns
            .checked_add(1)
            .ok_or(RatchetError::CounterExhausted)?;
        let (mk, next_ck) = kdf::chain(ck);
        let header = Header {
            dh: *self.state.dhs.public(),
            pn: self.state.pn,
            n: self.state.ns,
        };
        self.state.cks = Some(next_ck);
        self.state.ns = next_ns;

        let mut out = vec![0u8; NONCE_LEN + plaintext.len() + TAG_LEN];
        rng.fill(&mut out[..NONCE_LEN]);
        out[NONCE_LEN..NONCE_LEN + plaintext.len()].copy_from_slice(plaintext);
        self.fill_aad(&header);
        let (nonce, rest) = out.split_at_mut(NONCE_LEN);
        let (body, tag_out) = rest.split_at_mut(plaintext.len());
        let tag = aead::seal(&mk, &to12(nonce), &self.aad, body);
        tag_out.copy_from_slice(&tag);
        Ok((header, out))
    }

    /// Decrypt one message, atomically. A message that starts a new DH
    /// ratchet step takes only its receiving half (the sending half waits:
    /// `State::send_step`); it takes 32 bytes of entropy only if the step
    /// before it still owed its sending half.
    pub fn decrypt(
        &mut self,
        header: &Header,
        data: &[u8],
        rng: &mut dyn Entropy,
    ) -> Result<Vec<u8>, RatchetError> {
        if data.len() < NONCE_LEN + TAG_LEN {
            return Err(RatchetError::Truncated(data.len()));
        }
        // (1) A key skipped earlier. It is removed only once the tag verifies.
        let id = (header.dh, header.n);
        if let Some(mk) = self.skipped.get(&id) {
            let mk = mk.clone();
            let pt = self.open(&mk, header, data)?;
            self.skipped.remove(&id);
            return Ok(pt);
        }

        let same_chain = self
            .state
            .dhr
            .is_some_and(|r| bool::from(r.ct_eq(&header.dh)));
        if same_chain && header.n < self.state.nr {
            return Err(RatchetError::Duplicate { n: header.n });
        }

        // (2)-(4) on a copy; commit only after the tag check.
        let mut next = self.state.clone();
        let mut new_skipped: Vec<(SkippedId, Zeroizing<[u8; 32]>)> = Vec::new();
        if !same_chain {
            // A step still owing its sending half is completed first, where
            // a ratchet taking whole steps would already have taken it.
            take_send_step(&mut next, rng)?;
            skip(&mut next, header.pn, header.n, &mut new_skipped)?;
            next.pn = next.ns;
            next.ns = 0;
            next.nr = 0;
            next.dhr = Some(header.dh);
            let (rk, ckr) = kdf::root(&next.rk, &*next.dhs.agree(&header.dh)?);
            next.rk = rk;
            next.ckr = Some(ckr);
            next.cks = None;
            next.send_step = true;
        }
        skip(&mut next, header.n, header.n, &mut new_skipped)?;
        let ckr = next
            .ckr
            .as_ref()
            .ok_or(RatchetError::AuthenticationFailed)?;
        let (mk, next_ckr) = kdf::chain(ckr);
        next.ckr = Some(next_ckr);
        next.nr = next
            .nr
            .checked_add(1)
            .ok_or(RatchetError::CounterExhausted)?;

        let pt = self.open(&mk, header, data)?;
        self.state = next;
        for (id, key) in new_skipped {
            self.skipped.insert(id, key);
        }
        Ok(pt)
    }

    fn open(
        &mut self,
        mk: &[u8; 32],
        header: &Header,
        data: &[u8],
    ) -> Result<Vec<u8>, RatchetError> {
        self.fill_aad(header);
        let (nonce, rest) = data.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let tag: &[u8; TAG_LEN] = tag
            .try_into()
            .map_err(|_| RatchetError::AuthenticationFailed)?;
        let mut pt = body.to_vec();
        match aead::open(mk, &to12(nonce), &self.aad, &mut pt, tag) {
            Ok(()) => Ok(pt),
            Err(_) => Err(RatchetError::AuthenticationFailed),
        }
    }

    fn fill_aad(&mut self, header: &Header) {
        self.aad.clear();
        self.aad.extend_from_slice(&self.ad);
        self.aad.extend_from_slice(&header.to_bytes());
    }

    /// Versioned binary snapshot holding every secret of the session; seal
    /// it before it leaves memory.
    pub fn to_snapshot(&self) -> Zeroizing<Vec<u8>> {
        let s = &self.state;
        let mut b = Zeroizing::new(Vec::with_capacity(
            256 + self.ad.len() + self.skipped.len() * 68,
        ));
        b.push(SNAPSHOT_VERSION);
        b.extend_from_slice(s.rk.as_ref());
        b.extend_from_slice(s.dhs.secret_bytes());
        b.extend_from_slice(s.dhs.public());
        // Bit 3 (a sending half owed) is never set by versions before it,
        // which refuse it as an unknown flag.
        let flags = s.dhr.is_some() as u8
            | (s.cks.is_some() as u8) << 1
            | (s.ckr.is_some() as u8) << 2
            | (s.send_step as u8) << 3;
        b.push(flags);
        for k in [s.dhr.as_ref(), s.cks.as_deref(), s.ckr.as_deref()]
            .into_iter()
            .flatten()
        {
            b.extend_from_slice(k);
        }
        for v in [s.ns, s.nr, s.pn] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&(self.ad.len() as u16).to_be_bytes());
        b.extend_from_slice(&self.ad);
        b.extend_from_slice(&(self.skipped.len() as u16).to_be_bytes());
        for id in self.skipped.order.values() {
            if let Some((_, key)) = self.skipped.by_id.get(id) {
                b.extend_from_slice(&id.0);
                b.extend_from_slice(&id.1.to_be_bytes());
                b.extend_from_slice(key.as_ref());
            }
        }
        b
    }

    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, RatchetError> {
        let mut r = Reader(bytes);
        if r.take(1)?[0] != SNAPSHOT_VERSION {
            return Err(RatchetError::Snapshot("unknown version"));
        }
        let rk = Zeroizing::new(r.arr()?);
        let mut secret = r.arr()?;
        let dhs = KeyPair::from_parts(secret, r.arr()?);
        secret.zeroize();
        let flags = r.take(1)?[0];
        if flags & !15 != 0 {
            return Err(RatchetError::Snapshot("unknown flags"));
        }
        let send_step = flags & 8 != 0;
        if send_step && (flags & 1 == 0 || flags & 2 != 0) {
            // Owing a sending half means a peer key and no sending chain.
            return Err(RatchetError::Snapshot("inconsistent flags"));
        }
        let dhr = if flags & 1 != 0 { Some(r.arr()?) } else { None };
        let cks = if flags & 2 != 0 {
            Some(Zeroizing::new(r.arr()?))
        } else {
            None
        };
        let ckr = if flags & 4 != 0 {
            Some(Zeroizing::new(r.arr()?))
        } else {
            None
        };
        let (ns, nr, pn) = (r.u32()?, r.u32()?, r.u32()?);
        let ad_len = r.u16()? as usize;
        let ad = r.take(ad_len)?.to_vec();
        let count = r.u16()? as usize;
        if count > MAX_SKIPPED_TOTAL {
            return Err(RatchetError::Snapshot("too many skipped keys"));
        }
        let mut ratchet = Self::from_state(
            State {
                rk,
                dhs,
                dhr,
                cks,
                ckr,
                ns,
                nr,
                pn,
                send_step,
            },
            ad,
        );
        for _ in 0..count {
            let dh = r.arr()?;
            let n = r.u32()?;
            ratchet.skipped.insert((dh, n), Zeroizing::new(r.arr()?));
        }
        if !r.0.is_empty() {
            return Err(RatchetError::Snapshot("trailing bytes"));
        }
        Ok(ratchet)
    }
}

/// Store the keys of the current receiving chain up to (not including)
/// `until`. `n` only labels the error.
fn skip(
    st: &mut State,
    until: u32,
    n: u32,
    out: &mut Vec<(SkippedId, Zeroizing<[u8; 32]>)>,
) -> Result<(), RatchetError> {
    if until > st.nr && until - st.nr > MAX_SKIP {
        return Err(RatchetError::TooManySkipped {
            n,
            skip: (until - st.nr) as u64,
        });
    }
    let (Some(dhr), Some(ckr)) = (st.dhr, st.ckr.as_mut()) else {
        return Ok(());
    };
    while st.nr < until {
        let (mk, next) = kdf::chain(ckr);
        out.push(((dhr, st.nr), mk));
        *ckr = next;
        st.nr += 1;
    }
    Ok(())
}

fn to12(b: &[u8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n.copy_from_slice(&b[..12]);
    n
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RatchetError> {
        if self.0.len() < n {
            return Err(RatchetError::Snapshot("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn arr(&mut self) -> Result<[u8; 32], RatchetError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, RatchetError> {
        let t = self.take(4)?;
        Ok(u32::from_be_bytes([t[0], t[1], t[2], t[3]]))
    }
    fn u16(&mut self) -> Result<u16, RatchetError> {
        let t = self.take(2)?;
        Ok(u16::from_be_bytes([t[0], t[1]]))
    }
}
