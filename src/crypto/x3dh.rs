//! X3DH session agreement with the AgentMesh parameters (agentmesh-wire.md §8):
//! DH1 = IK_A·SPK_B, DH2 = EK_A·IK_B, DH3 = EK_A·SPK_B, DH4 = EK_A·OPK_B,
//! SK = HKDF(0x00*32, 0xFF*32 || DH1..DH4, "AgentMesh_X3DH_v1"),
//! AD = IK_A || IK_B (X25519 publics).

use crate::crypto::identity::{did_from_ed25519, verify, x25519_from_ed25519, Identity};
use crate::crypto::kdf;
use crate::crypto::keys::{KeyPair, LowOrderPoint};
use crate::entropy::Entropy;
use zeroize::Zeroizing;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X3dhError {
    #[error("prekey bundle signature does not verify against identity_key_ed; refusing to open a session")]
    BadSignedPrekeySignature,
    #[error("prekey bundle identity_key_ed belongs to {actual}, not to the peer {expected}")]
    IdentityMismatch { expected: String, actual: String },
    #[error("prekey bundle identity_key is not the X25519 form of identity_key_ed")]
    ExchangeKeyMismatch,
    #[error("prekey bundle identity_key_ed is not a valid Ed25519 key")]
    InvalidIdentityKey,
    #[error("peer key is a low-order point; the key agreement would be predictable")]
    LowOrderPoint,
    #[error("One-time pre-key {0} not found or already consumed.")]
    UnknownOneTimePrekey(u32),
    #[error("signed prekey {0} is not known to this agent")]
    UnknownSignedPrekey(u32),
}

impl From<LowOrderPoint> for X3dhError {
    fn from(_: LowOrderPoint) -> Self {
        X3dhError::LowOrderPoint
    }
}

/// A peer's published keys as fetched from the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrekeyBundle {
    pub identity_key: [u8; 32],
    pub identity_key_ed: [u8; 32],
    pub signed_prekey_id: u32,
    pub signed_prekey: [u8; 32],
    pub signed_prekey_signature: [u8; 64],
    pub one_time_prekey: Option<(u32, [u8; 32])>,
}

impl PrekeyBundle {
    /// The registry checks nothing; every binding is ours to check: the SPK
    /// signature, the Ed25519 key hashing to the DID we asked for, and the
    /// X25519 identity key being derived from that Ed25519 key.
    pub fn verify_for(&self, peer_did: &str) -> Result<(), X3dhError> {
        let owner = did_from_ed25519(&self.identity_key_ed);
        if owner != peer_did {
            return Err(X3dhError::IdentityMismatch {
                expected: peer_did.to_string(),
                actual: owner,
            });
        }
        let mont =
            x25519_from_ed25519(&self.identity_key_ed).ok_or(X3dhError::InvalidIdentityKey)?;
        if mont != self.identity_key {
            return Err(X3dhError::ExchangeKeyMismatch);
        }
        if !verify(
            &self.identity_key_ed,
            &self.signed_prekey,
            &self.signed_prekey_signature,
        ) {
            return Err(X3dhError::BadSignedPrekeySignature);
        }
        Ok(())
    }
}

/// What the initiator sends inside its KNOCK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Establishment {
    pub identity_key: [u8; 32],
    pub ephemeral_key: [u8; 32],
    pub one_time_prekey_id: Option<u32>,
}

/// The agreed secret and associated data.
pub struct Agreement {
    pub shared_secret: Zeroizing<[u8; 32]>,
    /// The same agreement under the npm SDK 4.0.0's legacy KDF
    /// (`kdf::x3dh_legacy`): what such a peer computed.
    pub legacy_shared_secret: Zeroizing<[u8; 32]>,
    pub associated_data: [u8; 64],
}

impl Agreement {
    /// The secret under the spec KDF, or under the legacy one.
    pub fn secret(&self, legacy: bool) -> &Zeroizing<[u8; 32]> {
        if legacy {
            &self.legacy_shared_secret
        } else {
            &self.shared_secret
        }
    }
}

impl std::fmt::Debug for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Agreement { .. }")
    }
}

/// Initiator side. The bundle must already be verified (`verify_for`).
/// Takes 32 bytes of entropy for the ephemeral key.
pub fn initiate(
    own: &Identity,
    bundle: &PrekeyBundle,
    rng: &mut dyn Entropy,
) -> Result<(Agreement, Establishment), X3dhError> {
    let ek = KeyPair::generate(rng);
    let mut dh = Zeroizing::new([0u8; 128]);
    dh[..32].copy_from_slice(own.exchange().agree(&bundle.signed_prekey)?.as_ref());
    dh[32..64].copy_from_slice(ek.agree(&bundle.identity_key)?.as_ref());
    dh[64..96].copy_from_slice(ek.agree(&bundle.signed_prekey)?.as_ref());
    let len = match &bundle.one_time_prekey {
        Some((_, opk)) => {
            dh[96..128].copy_from_slice(ek.agree(opk)?.as_ref());
            128
        }
        None => 96,
    };
    let agreement = Agreement {
        shared_secret: kdf::x3dh(&dh[..len]),
        legacy_shared_secret: kdf::x3dh_legacy(&dh[..len]),
        associated_data: ad(own.x25519_public(), &bundle.identity_key),
    };
    let est = Establishment {
        identity_key: *own.x25519_public(),
        ephemeral_key: *ek.public(),
        one_time_prekey_id: bundle.one_time_prekey.as_ref().map(|(id, _)| *id),
    };
    Ok((agreement, est))
}

/// Responder side, given our signed prekey and the one-time prekey the
/// establishment names (already looked up by the caller).
pub fn respond(
    own: &Identity,
    signed_prekey: &KeyPair,
    one_time_prekey: Option<&KeyPair>,
    est: &Establishment,
) -> Result<Agreement, X3dhError> {
    let mut dh = Zeroizing::new([0u8; 128]);
    dh[..32].copy_from_slice(signed_prekey.agree(&est.identity_key)?.as_ref());
    dh[32..64].copy_from_slice(own.exchange().agree(&est.ephemeral_key)?.as_ref());
    dh[64..96].copy_from_slice(signed_prekey.agree(&est.ephemeral_key)?.as_ref());
    let len = match one_time_prekey {
        Some(opk) => {
            dh[96..128].copy_from_slice(opk.agree(&est.ephemeral_key)?.as_ref());
            128
        }
        None => 96,
    };
    Ok(Agreement {
        shared_secret: kdf::x3dh(&dh[..len]),
        legacy_shared_secret: kdf::x3dh_legacy(&dh[..len]),
        associated_data: ad(&est.identity_key, own.x25519_public()),
    })
}

fn ad(initiator: &[u8; 32], responder: &[u8; 32]) -> [u8; 64] {
    let mut ad = [0u8; 64];
    ad[..32].copy_from_slice(initiator);
    ad[32..].copy_from_slice(responder);
    ad
}
