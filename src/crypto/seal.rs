//! Sealing of state at rest: AES-256-GCM with a version byte and the record
//! type bound into the associated data, so a record cannot be replayed under
//! another type (a session snapshot passed off as an identity, say).
//!
//! Layout: version(1) || nonce(12) || ciphertext || tag(16).
//! AAD: "kars-mesh/seal/v1" || 0x00 || record type.

use crate::entropy::Entropy;
use aes_gcm::aead::array::Array;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use zeroize::{Zeroize, Zeroizing};

pub const VERSION: u8 = 1;
const NONCE: usize = 12;
const TAG: usize = 16;
const AAD_PREFIX: &[u8] = b"kars-mesh/seal/v1\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("state key must be 32 bytes, got {0}")]
    BadKey(usize),
    #[error("sealed record is {0} bytes, too short to be valid; the file is truncated")]
    Truncated(usize),
    #[error("sealed record has format version {0}; this build reads version {VERSION}. Upgrade kars-mesh")]
    UnknownVersion(u8),
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
    let cipher = key(state_key)?;
    let mut out = Vec::with_capacity(1 + NONCE + plaintext.len() + TAG);
    out.push(VERSION);
    let mut nonce = [0u8; NONCE];
    rng.fill(&mut nonce);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(
            &Array::from(nonce),
            &aad(record_type),
            (&mut out[1 + NONCE..]).into(),
        )
        .map_err(|_| SealError::Authentication)?;
    out.extend_from_slice(&tag);
    Ok(out)
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
    let cipher = key(state_key)?;
    let mut nonce = [0u8; NONCE];
    nonce.copy_from_slice(&sealed[1..1 + NONCE]);
    let body_end = sealed.len() - TAG;
    let mut pt = Zeroizing::new(sealed[1 + NONCE..body_end].to_vec());
    let tag =
        Array::try_from(&sealed[body_end..]).map_err(|_| SealError::Truncated(sealed.len()))?;
    cipher
        .decrypt_inout_detached(
            &Array::from(nonce),
            &aad(record_type),
            pt.as_mut_slice().into(),
            &tag,
        )
        .map_err(|_| SealError::Authentication)?;
    Ok(pt)
}
