//! An agent's long-term identity: an Ed25519 key from a 32-byte seed, the
//! X25519 identity key derived from the same seed, the routable `did:mesh:`
//! DID and the display-only base58 AMID (agentmesh-wire.md §1).

use crate::codec::{base58, hex};
use crate::crypto::kdf::sha256;
use crate::crypto::keys::KeyPair;
use crate::entropy::Entropy;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha512};
use zeroize::{Zeroize, Zeroizing};

pub const DID_PREFIX: &str = "did:mesh:";

pub struct Identity {
    signing: SigningKey,
    ed_public: [u8; 32],
    exchange: KeyPair,
    did: String,
}

impl Identity {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let ed_public = signing.verifying_key().to_bytes();
        // X25519 private = clamp(SHA-512(seed)[0..32]); x25519-dalek clamps.
        let mut h = Sha512::digest(seed);
        let mut x = [0u8; 32];
        x.copy_from_slice(&h[..32]);
        h.as_mut_slice().zeroize();
        let exchange = KeyPair::from_secret(clamp(x));
        x.zeroize();
        let did = did_from_ed25519(&ed_public);
        Self {
            signing,
            ed_public,
            exchange,
            did,
        }
    }

    /// From a seed held as bytes of any length (a stored record, decoded
    /// hex): `None` unless 32. Copied into a wiped array in place: a
    /// `[u8; 32]` moved into `Zeroizing` leaves its first copy behind.
    pub fn from_seed_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 32 {
            return None;
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(bytes);
        Some(Self::from_seed(&seed))
    }

    pub fn generate(rng: &mut dyn Entropy) -> Self {
        let seed = Zeroizing::new(rng.array32());
        Self::from_seed(&seed)
    }

    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    pub fn did(&self) -> &str {
        &self.did
    }

    pub fn amid(&self) -> String {
        amid_from_ed25519(&self.ed_public)
    }

    pub fn ed25519_public(&self) -> &[u8; 32] {
        &self.ed_public
    }

    pub fn x25519_public(&self) -> &[u8; 32] {
        self.exchange.public()
    }

    pub fn exchange(&self) -> &KeyPair {
        &self.exchange
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("did", &self.did)
            .finish_non_exhaustive()
    }
}

fn clamp(mut b: [u8; 32]) -> [u8; 32] {
    b[0] &= 248;
    b[31] &= 127;
    b[31] |= 64;
    b
}

/// `did:mesh:` + the first 16 bytes of SHA-256(Ed25519 public key) in lowercase hex.
pub fn did_from_ed25519(public: &[u8; 32]) -> String {
    let h = sha256(public);
    let mut s = String::with_capacity(DID_PREFIX.len() + 32);
    s.push_str(DID_PREFIX);
    s.push_str(&hex::encode(&h[..16]));
    s
}

/// base58btc of SHA-256(public)[0..20]. For display and legacy texts only.
pub fn amid_from_ed25519(public: &[u8; 32]) -> String {
    base58::encode(&sha256(public)[..20])
}

/// True when `did` is exactly `did:mesh:` + 32 lowercase hex characters.
pub fn is_mesh_did(did: &str) -> bool {
    did.strip_prefix(DID_PREFIX).is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    })
}

/// The X25519 (Montgomery) form of an Ed25519 public key, as libsodium's
/// `crypto_sign_ed25519_pk_to_curve25519`; `None` for an invalid point.
pub fn x25519_from_ed25519(public: &[u8; 32]) -> Option<[u8; 32]> {
    VerifyingKey::from_bytes(public)
        .ok()
        .map(|vk| vk.to_montgomery().to_bytes())
}

/// Verify an Ed25519 signature by a raw public key.
pub fn verify(public: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    match VerifyingKey::from_bytes(public) {
        Ok(vk) => vk
            .verify(message, &Signature::from_bytes(signature))
            .is_ok(),
        Err(_) => false,
    }
}

/// Seed of the original plugin's pinned identities:
/// SHA-256("kars-mesh-identity-v1:" + trim(app id)).
pub fn seed_from_app_id(app_id: &str) -> Zeroizing<[u8; 32]> {
    let mut input = String::from("kars-mesh-identity-v1:");
    input.push_str(app_id.trim());
    Zeroizing::new(sha256(input.as_bytes()))
}

/// Key-encryption key of the original `~/.kars/identity.json` (schema 2).
/// Derived from public facts, so used only to import an old identity, never
/// to seal anything new.
pub fn legacy_identity_kek(hostname: &str, homedir: &str) -> Zeroizing<[u8; 32]> {
    let input = format!("kars:mesh-identity:{hostname}:{homedir}");
    Zeroizing::new(sha256(input.as_bytes()))
}
