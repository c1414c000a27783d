//! Handle-based access to the protocol building blocks, shared by the
//! component's `toolkit` export, native tests and the native benchmark.
//! Secrets never leave: callers hold small integer handles.

use crate::crypto::aead;
use crate::crypto::identity::Identity;
use crate::crypto::keys::KeyPair;
use crate::crypto::ratchet::{channel_ad, Header, Ratchet, RatchetError};
use crate::crypto::seal::{self, SealError};
use crate::crypto::x3dh::{self, X3dhError};
use crate::entropy::Entropy;
use crate::wire::registry::{self, PublishedPrekeys};
use crate::wire::token::{self, TokenError};
use crate::wire::{frames, time, WireError};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolkitError {
    #[error("no identity with handle {0}")]
    NoIdentity(u32),
    #[error("no session with handle {0}")]
    NoSession(u32),
    #[error("seed must be 32 bytes, got {0}")]
    BadSeed(usize),
    #[error("{what} must be {expected} bytes, got {got}")]
    BadLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("sealed bytes must end with a 16-byte tag, got {0} bytes")]
    NoTag(usize),
    #[error("AEAD tag mismatch")]
    AeadTag,
    #[error("identity {0} has no signed prekey yet; call prekeys-generate first")]
    NoSignedPrekey(u32),
    #[error("peer DID {0:?} is not a did:mesh: DID (did:mesh: + 32 lowercase hex)")]
    BadDid(String),
    #[error("frame is addressed from {actual}, but this session's peer is {expected}")]
    WrongSender { expected: String, actual: String },
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    X3dh(#[from] X3dhError),
    #[error(transparent)]
    Ratchet(#[from] RatchetError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Time(#[from] time::TimeError),
}

/// Which ChaCha20-Poly1305 `aead_seal` / `aead_open` run: the benchmark's A/B
/// of the message AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AeadImpl {
    /// What messages use (on wasm32 with simd128: the hand-written ChaCha20).
    Messages,
    /// The `chacha20poly1305` crate.
    Chacha20Crate,
}

struct Agent {
    identity: Identity,
    signed_prekey: Option<(u32, KeyPair, [u8; 64])>,
    one_time: BTreeMap<u32, KeyPair>,
    next_spk_id: u32,
    next_opk_id: u32,
}

pub struct Session {
    pub ratchet: Ratchet,
    pub own_did: String,
    pub peer_did: String,
}

/// Result of `session_initiate`.
pub struct Initiated {
    pub session: u32,
    pub establishment_json: String,
}

#[derive(Default)]
pub struct Toolkit {
    agents: HashMap<u32, Agent>,
    sessions: HashMap<u32, Session>,
    next_handle: u32,
}

impl Toolkit {
    fn handle(&mut self) -> u32 {
        self.next_handle = self.next_handle.wrapping_add(1);
        self.next_handle
    }

    fn agent(&self, id: u32) -> Result<&Agent, ToolkitError> {
        self.agents.get(&id).ok_or(ToolkitError::NoIdentity(id))
    }

    pub fn session(&mut self, id: u32) -> Result<&mut Session, ToolkitError> {
        self.sessions
            .get_mut(&id)
            .ok_or(ToolkitError::NoSession(id))
    }

    fn add_identity(&mut self, identity: Identity) -> u32 {
        let h = self.handle();
        self.agents.insert(
            h,
            Agent {
                identity,
                signed_prekey: None,
                one_time: BTreeMap::new(),
                next_spk_id: 0,
                next_opk_id: 0,
            },
        );
        h
    }

    pub fn identity_import(&mut self, seed: &[u8]) -> Result<u32, ToolkitError> {
        let seed: &[u8; 32] = seed
            .try_into()
            .map_err(|_| ToolkitError::BadSeed(seed.len()))?;
        Ok(self.add_identity(Identity::from_seed(seed)))
    }

    pub fn identity_generate(&mut self, rng: &mut dyn Entropy) -> u32 {
        self.add_identity(Identity::generate(rng))
    }

    pub fn identity(&self, id: u32) -> Result<&Identity, ToolkitError> {
        Ok(&self.agent(id)?.identity)
    }

    pub fn identity_drop(&mut self, id: u32) {
        self.agents.remove(&id);
    }

    pub fn connect_frame(&self, id: u32, timestamp: &str) -> Result<String, ToolkitError> {
        time::parse_millis(timestamp)?;
        Ok(frames::connect_frame(self.identity(id)?, timestamp, None))
    }

    pub fn registration_body(
        &self,
        id: u32,
        timestamp: &str,
        capabilities: &[String],
    ) -> Result<String, ToolkitError> {
        time::parse_millis(timestamp)?;
        Ok(registry::registration_body(
            self.identity(id)?,
            timestamp,
            capabilities,
            &BTreeMap::new(),
        ))
    }

    pub fn authorization_header(&self, id: u32, timestamp: &str) -> Result<String, ToolkitError> {
        time::parse_millis(timestamp)?;
        Ok(registry::authorization_header(
            self.identity(id)?,
            timestamp,
        ))
    }

    /// New SPK (32 bytes of entropy) then `count` OPKs (32 bytes each).
    pub fn prekeys_generate(
        &mut self,
        id: u32,
        count: u32,
        rng: &mut dyn Entropy,
    ) -> Result<String, ToolkitError> {
        let agent = self
            .agents
            .get_mut(&id)
            .ok_or(ToolkitError::NoIdentity(id))?;
        let spk = KeyPair::generate(rng);
        let sig = agent.identity.sign(spk.public());
        let spk_id = agent.next_spk_id;
        agent.next_spk_id += 1;
        let mut fresh = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let k = KeyPair::generate(rng);
            let kid = agent.next_opk_id;
            agent.next_opk_id += 1;
            fresh.push(kid);
            agent.one_time.insert(kid, k);
        }
        agent.signed_prekey = Some((spk_id, spk, sig));
        let Some((spk_id, spk, sig)) = agent.signed_prekey.as_ref() else {
            return Err(ToolkitError::NoSignedPrekey(id));
        };
        let published = PublishedPrekeys {
            signed_prekey_id: *spk_id,
            signed_prekey: spk.public(),
            signed_prekey_signature: sig,
            one_time: fresh
                .iter()
                .filter_map(|k| agent.one_time.get(k).map(|p| (*k, p.public())))
                .collect(),
        };
        Ok(registry::prekey_upload_body(&agent.identity, &published))
    }

    /// Verify the bundle, run X3DH and start the sending ratchet.
    /// Takes 32 bytes (ephemeral) then 32 bytes (first ratchet key).
    pub fn session_initiate(
        &mut self,
        id: u32,
        peer_did: &str,
        bundle_json: &str,
        rng: &mut dyn Entropy,
    ) -> Result<Initiated, ToolkitError> {
        check_did(peer_did)?;
        let bundle = registry::parse_bundle(bundle_json)?;
        bundle.verify_for(peer_did)?;
        let agent = self.agent(id)?;
        let (agreement, est) = x3dh::initiate(&agent.identity, &bundle, rng)?;
        let own_did = agent.identity.did().to_string();
        let ad = channel_ad(&own_did, peer_did, &agreement.associated_data);
        let ratchet =
            Ratchet::new_initiator(&agreement.shared_secret, &bundle.signed_prekey, ad, rng)?;
        let h = self.add_session(ratchet, own_did, peer_did);
        Ok(Initiated {
            session: h,
            establishment_json: frames::establishment_json(&est),
        })
    }

    /// Answer a KNOCK's establishment: consumes the named one-time prekey.
    pub fn session_respond(
        &mut self,
        id: u32,
        peer_did: &str,
        establishment_json: &str,
    ) -> Result<u32, ToolkitError> {
        check_did(peer_did)?;
        let est = frames::parse_establishment(establishment_json)?;
        let agent = self
            .agents
            .get_mut(&id)
            .ok_or(ToolkitError::NoIdentity(id))?;
        let (_, spk, _) = agent
            .signed_prekey
            .as_ref()
            .ok_or(ToolkitError::NoSignedPrekey(id))?;
        let opk = match est.one_time_prekey_id {
            Some(k) => Some(
                agent
                    .one_time
                    .get(&k)
                    .ok_or(X3dhError::UnknownOneTimePrekey(k))?,
            ),
            None => None,
        };
        let agreement = x3dh::respond(&agent.identity, spk, opk, &est)?;
        // Consumed only once the agreement succeeded.
        if let Some(k) = est.one_time_prekey_id {
            agent.one_time.remove(&k);
        }
        let own_did = agent.identity.did().to_string();
        let ad = channel_ad(peer_did, &own_did, &agreement.associated_data);
        let ratchet = Ratchet::new_responder(&agreement.shared_secret, spk.clone(), ad);
        let h = self.add_session(ratchet, own_did, peer_did);
        Ok(h)
    }

    fn add_session(&mut self, ratchet: Ratchet, own_did: String, peer_did: &str) -> u32 {
        let h = self.handle();
        self.sessions.insert(
            h,
            Session {
                ratchet,
                own_did,
                peer_did: peer_did.to_string(),
            },
        );
        h
    }

    pub fn session_encrypt(
        &mut self,
        s: u32,
        plaintext: &[u8],
        rng: &mut dyn Entropy,
    ) -> Result<(Header, Vec<u8>), ToolkitError> {
        Ok(self.session(s)?.ratchet.encrypt(plaintext, rng)?)
    }

    pub fn session_decrypt(
        &mut self,
        s: u32,
        header: &[u8],
        ciphertext: &[u8],
        rng: &mut dyn Entropy,
    ) -> Result<Vec<u8>, ToolkitError> {
        let header = Header::from_bytes(header)?;
        Ok(self.session(s)?.ratchet.decrypt(&header, ciphertext, rng)?)
    }

    /// A complete `message` frame. Takes 16 bytes (frame id), then 12 (nonce).
    pub fn session_encrypt_frame(
        &mut self,
        s: u32,
        plaintext: &[u8],
        now_ms: u64,
        rng: &mut dyn Entropy,
    ) -> Result<String, ToolkitError> {
        let id = frames::uuid_v4(rng);
        let session = self.session(s)?;
        let (header, ct) = session.ratchet.encrypt(plaintext, rng)?;
        let ts = time::format_millis(now_ms);
        Ok(frames::message_frame(
            &session.own_did,
            &session.peer_did,
            &id,
            &ts,
            &header,
            &ct,
        ))
    }

    pub fn session_decrypt_frame(
        &mut self,
        s: u32,
        frame: &str,
        rng: &mut dyn Entropy,
    ) -> Result<Vec<u8>, ToolkitError> {
        let msg = frames::parse_message_frame(frame)?;
        let session = self.session(s)?;
        if msg.from != session.peer_did {
            return Err(ToolkitError::WrongSender {
                expected: session.peer_did.clone(),
                actual: msg.from,
            });
        }
        Ok(session.ratchet.decrypt(&msg.header, &msg.ciphertext, rng)?)
    }

    /// Snapshot: own DID, peer DID, ratchet (length-prefixed).
    pub fn session_export(&mut self, s: u32) -> Result<zeroize::Zeroizing<Vec<u8>>, ToolkitError> {
        let session = self.session(s)?;
        let mut out = zeroize::Zeroizing::new(Vec::new());
        for part in [session.own_did.as_bytes(), session.peer_did.as_bytes()] {
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&session.ratchet.to_snapshot());
        Ok(out)
    }

    pub fn session_import(&mut self, snapshot: &[u8]) -> Result<u32, ToolkitError> {
        let bad = || ToolkitError::Ratchet(RatchetError::Snapshot("bad session header"));
        let mut rest = snapshot;
        let mut dids = Vec::with_capacity(2);
        for _ in 0..2 {
            if rest.len() < 2 {
                return Err(bad());
            }
            let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let part = rest.get(2..2 + n).ok_or_else(bad)?;
            dids.push(String::from_utf8(part.to_vec()).map_err(|_| bad())?);
            rest = &rest[2 + n..];
        }
        let ratchet = Ratchet::from_snapshot(rest)?;
        let peer_did = dids.pop().unwrap_or_default();
        let own_did = dids.pop().unwrap_or_default();
        let h = self.handle();
        self.sessions.insert(
            h,
            Session {
                ratchet,
                own_did,
                peer_did,
            },
        );
        Ok(h)
    }

    pub fn session_drop(&mut self, s: u32) {
        self.sessions.remove(&s);
    }

    pub fn seal(
        key: &[u8],
        record_type: &str,
        pt: &[u8],
        rng: &mut dyn Entropy,
    ) -> Result<Vec<u8>, ToolkitError> {
        Ok(seal::seal(key, record_type, pt, rng)?)
    }

    pub fn unseal(
        key: &[u8],
        record_type: &str,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ToolkitError> {
        Ok(seal::unseal(key, record_type, sealed)?)
    }

    /// ChaCha20-Poly1305 seal of caller bytes with a caller key (benchmarks
    /// only: no message goes this way); returns ciphertext || tag.
    pub fn aead_seal(
        which: AeadImpl,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, ToolkitError> {
        let (key, nonce) = (fixed::<32>("key", key)?, fixed::<12>("nonce", nonce)?);
        let mut buf = Vec::with_capacity(plaintext.len() + 16);
        buf.extend_from_slice(plaintext);
        let tag = match which {
            AeadImpl::Messages => aead::seal(&key, &nonce, aad, &mut buf),
            AeadImpl::Chacha20Crate => aead::reference::seal(&key, &nonce, aad, &mut buf),
        };
        buf.extend_from_slice(&tag);
        Ok(buf)
    }

    /// The inverse of [`Toolkit::aead_seal`].
    pub fn aead_open(
        which: AeadImpl,
        key: &[u8],
        nonce: &[u8],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, ToolkitError> {
        let (key, nonce) = (fixed::<32>("key", key)?, fixed::<12>("nonce", nonce)?);
        let split = sealed
            .len()
            .checked_sub(16)
            .ok_or(ToolkitError::BadLength {
                what: "sealed",
                expected: 16,
                got: sealed.len(),
            })?;
        let (ct, tag) = sealed.split_at(split);
        let tag = fixed::<16>("tag", tag)?;
        let mut buf = ct.to_vec();
        match which {
            AeadImpl::Messages => aead::open(&key, &nonce, aad, &mut buf, &tag),
            AeadImpl::Chacha20Crate => aead::reference::open(&key, &nonce, aad, &mut buf, &tag),
        }
        .map_err(|_| ToolkitError::AeadTag)?;
        Ok(buf)
    }

    /// The token's payload as JSON (the caller's own token, secret included).
    pub fn pairing_token_parse(t: &str) -> Result<String, ToolkitError> {
        let tok = token::parse(t)?;
        Ok(serde_json::to_string(&tok).unwrap_or_default())
    }
}

fn fixed<const N: usize>(what: &'static str, b: &[u8]) -> Result<[u8; N], ToolkitError> {
    b.try_into().map_err(|_| ToolkitError::BadLength {
        what,
        expected: N,
        got: b.len(),
    })
}

fn check_did(did: &str) -> Result<(), ToolkitError> {
    if crate::crypto::identity::is_mesh_did(did) {
        Ok(())
    } else {
        Err(ToolkitError::BadDid(did.chars().take(64).collect()))
    }
}
