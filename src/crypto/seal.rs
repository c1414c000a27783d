//! Sealing of state at rest: AES-256-GCM with a version byte and the record
//! type bound into the associated data, so a record cannot be replayed under
//! another type (a session snapshot passed off as an identity, say).
//!
//! Layout: version(1) || nonce(12) || ciphertext || tag(16).
//! Version 1 AAD: "kars-mesh/seal/v1" || 0x00 || record type.
//! Version 2 AAD: "kars-mesh/seal/v2" || 0x00 || record type || 0x00 ||
//! storage key: a record is also bound to the key it is stored under, so
//! one record moved over another (two sessions swapped, an old inbox entry
//! put in a new one's place) fails authentication. Records are written as
//! version 2; version 1 is read only to migrate state written before.

use crate::entropy::Entropy;
use aes_gcm::aead::array::Array;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use zeroize::{Zeroize, Zeroizing};

pub const VERSION: u8 = 1;
/// Records bound to their storage key.
pub const VERSION_BOUND: u8 = 2;
const NONCE: usize = 12;
const TAG: usize = 16;
const AAD_PREFIX: &[u8] = b"kars-mesh/seal/v1\0";
const AAD_PREFIX_BOUND: &[u8] = b"kars-mesh/seal/v2\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("state key must be 32 bytes, got {0}")]
    BadKey(usize),
    #[error("sealed record is {0} bytes, too short to be valid; the file is truncated")]
    Truncated(usize),
    #[error("sealed record has format version {0}; this build reads versions {VERSION} and {VERSION_BOUND}. Upgrade kars-mesh")]
    UnknownVersion(u8),
    #[error("sealed record has format version 1 (not bound to its storage key) although this state was migrated to version 2: it was put back from an older copy")]
    Unbound,
    #[error("sealed record failed authentication: wrong state key, wrong record type, or the file was modified")]
    Authentication,
}

fn key(k: &[u8]) -> Result<Aes256Gcm, SealError> {
    let arr: [u8; 32] = k.try_into().map_err(|_| SealError::BadKey(k.len()))?;
    let mut arr = Zeroizing::new(arr);
    let cipher = Aes256Gcm::new(&Array::from(*arr));
    arr.zeroize();
    Ok(cipher)
}

fn aad(record_type: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_PREFIX.len() + record_type.len());
    a.extend_from_slice(AAD_PREFIX);
    a.extend_from_slice(record_type.as_bytes());
    a
}

pub fn seal(
    state_key: &[u8],
    record_type: &str,
    plaintext: &[u8],
    rng: &mut dyn Entropy,
) -> Result<Vec<u8>, SealError> {
    seal_with(state_key, VERSION, &aad(record_type), plaintext, rng)
}

pub fn unseal(
    state_key: &[u8],
    record_type: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.len() < 1 + NONCE + TAG {
        return Err(SealError::Truncated(sealed.len()));
    }
    if sealed[0] != VERSION {
        return Err(SealError::UnknownVersion(sealed[0]));
    }
    open_with(state_key, &aad(record_type), sealed)
}

fn aad_bound(record_type: &str, storage_key: &str) -> Vec<u8> {
    let mut a =
        Vec::with_capacity(AAD_PREFIX_BOUND.len() + record_type.len() + 1 + storage_key.len());
    a.extend_from_slice(AAD_PREFIX_BOUND);
    a.extend_from_slice(record_type.as_bytes());
    a.push(0);
    a.extend_from_slice(storage_key.as_bytes());
    a
}

fn seal_with(
    state_key: &[u8],
    version: u8,
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut dyn Entropy,
) -> Result<Vec<u8>, SealError> {
    let cipher = key(state_key)?;
    let mut out = Vec::with_capacity(1 + NONCE + plaintext.len() + TAG);
    out.push(version);
    let mut nonce = [0u8; NONCE];
    rng.fill(&mut nonce);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(&Array::from(nonce), aad, (&mut out[1 + NONCE..]).into())
        .map_err(|_| SealError::Authentication)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn open_with(state_key: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let cipher = key(state_key)?;
    let mut nonce = [0u8; NONCE];
    nonce.copy_from_slice(&sealed[1..1 + NONCE]);
    let body_end = sealed.len() - TAG;
    let mut pt = Zeroizing::new(sealed[1 + NONCE..body_end].to_vec());
    let tag =
        Array::try_from(&sealed[body_end..]).map_err(|_| SealError::Truncated(sealed.len()))?;
    cipher
        .decrypt_inout_detached(&Array::from(nonce), aad, pt.as_mut_slice().into(), &tag)
        .map_err(|_| SealError::Authentication)?;
    Ok(pt)
}

/// Seal a record bound to its type and its storage key (version 2).
pub fn seal_bound(
    state_key: &[u8],
    record_type: &str,
    storage_key: &str,
    plaintext: &[u8],
    rng: &mut dyn Entropy,
) -> Result<Vec<u8>, SealError> {
    seal_with(
        state_key,
        VERSION_BOUND,
        &aad_bound(record_type, storage_key),
        plaintext,
        rng,
    )
}

/// Open a record stored under `storage_key`: version 2 always, version 1
/// only while `accept_v1` (state not yet migrated).
pub fn unseal_bound(
    state_key: &[u8],
    record_type: &str,
    storage_key: &str,
    sealed: &[u8],
    accept_v1: bool,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.len() < 1 + NONCE + TAG {
        return Err(SealError::Truncated(sealed.len()));
    }
    match sealed[0] {
        VERSION_BOUND => open_with(state_key, &aad_bound(record_type, storage_key), sealed),
        VERSION if accept_v1 => unseal(state_key, record_type, sealed),
        VERSION => Err(SealError::Unbound),
        v => Err(SealError::UnknownVersion(v)),
    }
}
