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
    #[error("sealed record has format version {0}; this build reads versions {VERSION} to {VERSION_TRAILER}. Upgrade kars-mesh")]
    UnknownVersion(u8),
    #[error("sealed record has format version 1 (not bound to its storage key) although this state was migrated to version 2: it was put back from an older copy")]
    Unbound,
    #[error("sealed record failed authentication: wrong state key, wrong record type, or the file was modified")]
    Authentication,
    #[error("sealed record has a trailer (format version 3) and was read as one without")]
    Trailer,
}

/// The state key, expanded once for AES-256-GCM. The `Vault` keeps one for
/// its whole life: expanding the key for every record cost about 6 % of a
/// message's engine time, and left a copy of the round keys (from which the
/// state key is read off directly) in freed memory each time. The expanded
/// keys are wiped when it drops (`aes-gcm`'s `zeroize` feature).
pub struct SealKey(Aes256Gcm);

// Its one field wipes itself when dropped.
impl zeroize::ZeroizeOnDrop for SealKey {}

impl SealKey {
    pub fn new(k: &[u8]) -> Result<Self, SealError> {
        let arr: [u8; 32] = k.try_into().map_err(|_| SealError::BadKey(k.len()))?;
        let mut arr = Zeroizing::new(arr);
        let cipher = Aes256Gcm::new(&Array::from(*arr));
        arr.zeroize();
        Ok(Self(cipher))
    }

    /// Seal a record bound to its type and its storage key (version 2).
    pub fn seal_bound(
        &self,
        record_type: &str,
        storage_key: &str,
        plaintext: &[u8],
        rng: &mut dyn Entropy,
    ) -> Result<Vec<u8>, SealError> {
        seal_with(
            &self.0,
            VERSION_BOUND,
            &aad_bound(record_type, storage_key),
            plaintext,
            rng,
        )
    }

    /// Open a record stored under `storage_key`: version 2 always, version 1
    /// only while `accept_v1` (state not yet migrated).
    pub fn unseal_bound(
        &self,
        record_type: &str,
        storage_key: &str,
        sealed: &[u8],
        accept_v1: bool,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < 1 + NONCE + TAG {
            return Err(SealError::Truncated(sealed.len()));
        }
        match sealed[0] {
            VERSION_BOUND => open_with(&self.0, &aad_bound(record_type, storage_key), sealed),
            VERSION if accept_v1 => open_with(&self.0, &aad(record_type), sealed),
            VERSION => Err(SealError::Unbound),
            VERSION_TRAILER => Err(SealError::Trailer),
            v => Err(SealError::UnknownVersion(v)),
        }
    }

    /// Seal `head` bound to its type, storage key and the trailer's length,
    /// and put `trailer` after it unsealed (version 3).
    pub fn seal_with_trailer(
        &self,
        record_type: &str,
        storage_key: &str,
        head: &[u8],
        trailer: &[u8],
        rng: &mut dyn Entropy,
    ) -> Result<Vec<u8>, SealError> {
        let aad = aad_trailer(record_type, storage_key, trailer.len());
        let sealed = seal_with(&self.0, VERSION_TRAILER, &aad, head, rng)?;
        let inner = sealed.len() - 1;
        let mut out = Vec::with_capacity(5 + inner + trailer.len());
        out.push(VERSION_TRAILER);
        out.extend_from_slice(
            &u32::try_from(inner)
                .map_err(|_| SealError::Truncated(inner))?
                .to_le_bytes(),
        );
        out.extend_from_slice(&sealed[1..]);
        out.extend_from_slice(trailer);
        Ok(out)
    }

    /// A version 3 record's head (opened) and trailer (as stored).
    pub fn unseal_with_trailer<'a>(
        &self,
        record_type: &str,
        storage_key: &str,
        record: &'a [u8],
    ) -> Result<(Zeroizing<Vec<u8>>, &'a [u8]), SealError> {
        if record.first() != Some(&VERSION_TRAILER) {
            return Err(SealError::UnknownVersion(
                record.first().copied().unwrap_or(0),
            ));
        }
        if record.len() < 5 {
            return Err(SealError::Truncated(record.len()));
        }
        let mut n = [0u8; 4];
        n.copy_from_slice(&record[1..5]);
        let inner = u32::from_le_bytes(n) as usize;
        if inner < NONCE + TAG || record.len() - 5 < inner {
            return Err(SealError::Truncated(record.len()));
        }
        let (sealed, trailer) = record[5..].split_at(inner);
        // open_with reads the nonce from byte 1 on: give it the version byte's place.
        let mut framed = Vec::with_capacity(1 + inner);
        framed.push(VERSION_TRAILER);
        framed.extend_from_slice(sealed);
        let aad = aad_trailer(record_type, storage_key, trailer.len());
        Ok((open_with(&self.0, &aad, &framed)?, trailer))
    }
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
    let k = SealKey::new(state_key)?;
    seal_with(&k.0, VERSION, &aad(record_type), plaintext, rng)
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
    open_with(&SealKey::new(state_key)?.0, &aad(record_type), sealed)
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
    cipher: &Aes256Gcm,
    version: u8,
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut dyn Entropy,
) -> Result<Vec<u8>, SealError> {
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

fn open_with(
    cipher: &Aes256Gcm,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
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

/// Records with a trailer (version 3): a sealed head, then bytes that are
/// already ciphertext end to end and are stored as they are (a file chunk's
/// frame in the sender's outbox: sealing it again cost as much CPU as the
/// rest of sending it). The trailer's length is bound in the head's AAD;
/// what it holds is checked by its reader (a frame names its id and its
/// place in the sending chain, which the head records).
///
/// Layout: 3 || sealed_len u32 LE || nonce(12) || ciphertext || tag(16) || trailer.
/// AAD: "kars-mesh/seal/v3" || 0x00 || record type || 0x00 || storage key
/// || 0x00 || trailer length u64 LE.
pub const VERSION_TRAILER: u8 = 3;
const AAD_PREFIX_TRAILER: &[u8] = b"kars-mesh/seal/v3\0";

fn aad_trailer(record_type: &str, storage_key: &str, trailer_len: usize) -> Vec<u8> {
    let mut a =
        Vec::with_capacity(AAD_PREFIX_TRAILER.len() + record_type.len() + storage_key.len() + 10);
    a.extend_from_slice(AAD_PREFIX_TRAILER);
    a.extend_from_slice(record_type.as_bytes());
    a.push(0);
    a.extend_from_slice(storage_key.as_bytes());
    a.push(0);
    a.extend_from_slice(&(trailer_len as u64).to_le_bytes());
    a
}

/// [`SealKey::seal_with_trailer`] with the key as bytes.
pub fn seal_with_trailer(
    state_key: &[u8],
    record_type: &str,
    storage_key: &str,
    head: &[u8],
    trailer: &[u8],
    rng: &mut dyn Entropy,
) -> Result<Vec<u8>, SealError> {
    SealKey::new(state_key)?.seal_with_trailer(record_type, storage_key, head, trailer, rng)
}

/// [`SealKey::unseal_with_trailer`] with the key as bytes.
pub fn unseal_with_trailer<'a>(
    state_key: &[u8],
    record_type: &str,
    storage_key: &str,
    record: &'a [u8],
) -> Result<(Zeroizing<Vec<u8>>, &'a [u8]), SealError> {
    SealKey::new(state_key)?.unseal_with_trailer(record_type, storage_key, record)
}

/// [`SealKey::seal_bound`] with the key as bytes.
pub fn seal_bound(
    state_key: &[u8],
    record_type: &str,
    storage_key: &str,
    plaintext: &[u8],
    rng: &mut dyn Entropy,
) -> Result<Vec<u8>, SealError> {
    SealKey::new(state_key)?.seal_bound(record_type, storage_key, plaintext, rng)
}

/// [`SealKey::unseal_bound`] with the key as bytes.
pub fn unseal_bound(
    state_key: &[u8],
    record_type: &str,
    storage_key: &str,
    sealed: &[u8],
    accept_v1: bool,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    SealKey::new(state_key)?.unseal_bound(record_type, storage_key, sealed, accept_v1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SeededEntropy;

    const KEY: [u8; 32] = [7; 32];

    /// Every keyed primitive wipes its key material when dropped: without
    /// their crates' `zeroize` features the expanded AES round keys (the
    /// state key is their first two), the ChaCha20 and Poly1305 keys and the
    /// HMAC pads of the ratchet's chain keys stayed in freed memory. This
    /// does not compile if one of those features is dropped.
    #[test]
    fn keyed_primitives_wipe_their_keys_when_dropped() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<SealKey>();
        wiped_on_drop::<Aes256Gcm>();
        wiped_on_drop::<chacha20poly1305::ChaCha20Poly1305>();
        // HMAC keeps its keyed state in two SHA-256 cores (`hmac` marks
        // nothing itself); those are wiped by `sha2`'s feature.
        wiped_on_drop::<sha2::Sha256>();
    }

    /// The key kept by the vault and the key passed as bytes seal the same
    /// records, and a key of the wrong length is refused by both.
    #[test]
    fn a_kept_key_and_a_key_as_bytes_read_each_other() {
        let mut rng = SeededEntropy::new(2);
        let kept = SealKey::new(&KEY).expect("32 bytes");
        let a = kept
            .seal_bound("session.v1", "session/p", b"state", &mut rng)
            .expect("seals");
        let b = seal_bound(&KEY, "session.v1", "session/p", b"state", &mut rng).expect("seals");
        assert_ne!(a, b, "a fresh nonce per record");
        for rec in [&a, &b] {
            let by_bytes = unseal_bound(&KEY, "session.v1", "session/p", rec, false);
            let by_kept = kept.unseal_bound("session.v1", "session/p", rec, false);
            assert_eq!(by_bytes.expect("opens").as_slice(), b"state");
            assert_eq!(by_kept.expect("opens").as_slice(), b"state");
        }
        let v1 = seal(&KEY, "session.v1", b"old", &mut rng).expect("seals");
        assert_eq!(
            kept.unseal_bound("session.v1", "session/p", &v1, true)
                .expect("v1 while migrating")
                .as_slice(),
            b"old"
        );
        assert_eq!(
            kept.unseal_bound("session.v1", "session/p", &v1, false)
                .err(),
            Some(SealError::Unbound)
        );
        assert_eq!(
            SealKey::new(&KEY[..16]).err().map(|e| e.to_string()),
            Some(SealError::BadKey(16).to_string())
        );
    }

    #[test]
    fn a_trailer_is_stored_as_it_is_and_bound_to_its_record() {
        let mut rng = SeededEntropy::new(1);
        let trailer = vec![0xAB; 100_000];
        let rec = seal_with_trailer(
            &KEY,
            "outbox.v1",
            "outbox/p/f1",
            b"{\"seq\":3}",
            &trailer,
            &mut rng,
        )
        .expect("seals");
        assert_eq!(rec[0], VERSION_TRAILER);
        // Only the head is sealed: the trailer follows as it is.
        assert_eq!(rec.len(), 5 + 12 + 9 + 16 + trailer.len());
        assert_eq!(&rec[rec.len() - trailer.len()..], &trailer[..]);
        let (head, t) = unseal_with_trailer(&KEY, "outbox.v1", "outbox/p/f1", &rec).expect("opens");
        assert_eq!(&head[..], b"{\"seq\":3}");
        assert_eq!(t, &trailer[..]);
        // Another key, type or storage key, or a trailer cut short or grown: refused.
        assert_eq!(
            unseal_with_trailer(&[8; 32], "outbox.v1", "outbox/p/f1", &rec).err(),
            Some(SealError::Authentication)
        );
        assert_eq!(
            unseal_with_trailer(&KEY, "outbox.v1", "outbox/p/f2", &rec).err(),
            Some(SealError::Authentication)
        );
        assert_eq!(
            unseal_with_trailer(&KEY, "session.v1", "outbox/p/f1", &rec).err(),
            Some(SealError::Authentication)
        );
        assert_eq!(
            unseal_with_trailer(&KEY, "outbox.v1", "outbox/p/f1", &rec[..rec.len() - 1]).err(),
            Some(SealError::Authentication)
        );
        let mut grown = rec.clone();
        grown.push(0);
        assert_eq!(
            unseal_with_trailer(&KEY, "outbox.v1", "outbox/p/f1", &grown).err(),
            Some(SealError::Authentication)
        );
        // A head length that does not fit, and a short record.
        let mut bad = rec.clone();
        bad[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            unseal_with_trailer(&KEY, "outbox.v1", "outbox/p/f1", &bad),
            Err(SealError::Truncated(_))
        ));
        assert!(matches!(
            unseal_with_trailer(&KEY, "outbox.v1", "outbox/p/f1", &rec[..4]),
            Err(SealError::Truncated(_))
        ));
        // Read as a record without a trailer, it is named, not misread.
        assert_eq!(
            unseal_bound(&KEY, "outbox.v1", "outbox/p/f1", &rec, false).err(),
            Some(SealError::Trailer)
        );
    }
}
