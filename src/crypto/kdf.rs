//! The AgentMesh key derivations, with the exact constants of the reference
//! implementations (agentmesh-wire.md §8, §9).

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

pub const X3DH_INFO: &[u8] = b"AgentMesh_X3DH_v1";
pub const RATCHET_INFO: &[u8] = b"AgentMesh_Ratchet_v1";

/// X3DH: HKDF-SHA256(salt = 0x00*32, ikm = 0xFF*32 || DH1..DH4, info, 32).
/// (The legacy SDK used 0xFF*32 as the salt instead; see `x3dh_kdf_kat`.)
pub fn x3dh(dh_concat: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 + dh_concat.len()));
    ikm.extend_from_slice(&[0xFF; 32]);
    ikm.extend_from_slice(dh_concat);
    let hk = Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF's 255*32 limit, so expand cannot fail.
    let _ = hk.expand(X3DH_INFO, out.as_mut());
    out
}

/// The X3DH KDF of the published npm SDK 4.0.0 (and TS before AGT PR
/// #3128): HKDF-SHA256(salt = 0xFF*32, ikm = DH1..DH4, info, 32). Never what
/// we initiate with by default; accepted from a peer whose first message
/// decrypts only under it (`x3dh_kdf_kat.output_legacy`).
pub fn x3dh_legacy(dh_concat: &[u8]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(&[0xFF; 32]), dh_concat);
    let mut out = Zeroizing::new([0u8; 32]);
    let _ = hk.expand(X3DH_INFO, out.as_mut());
    out
}

/// KDF_RK: HKDF-SHA256(salt = rk, ikm = dh, info, 64) split into (rk', ck).
pub fn root(rk: &[u8; 32], dh: &[u8; 32]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let hk = Hkdf::<Sha256>::new(Some(rk), dh);
    let mut okm = Zeroizing::new([0u8; 64]);
    let _ = hk.expand(RATCHET_INFO, okm.as_mut());
    let mut new_rk = Zeroizing::new([0u8; 32]);
    let mut ck = Zeroizing::new([0u8; 32]);
    new_rk.copy_from_slice(&okm[..32]);
    ck.copy_from_slice(&okm[32..]);
    (new_rk, ck)
}

/// KDF_CK: message key = HMAC(ck, 0x01), next chain key = HMAC(ck, 0x02).
pub fn chain(ck: &[u8; 32]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    // One keyed state, cloned, saves re-deriving the HMAC pads twice.
    let keyed =
        <Hmac<Sha256> as KeyInit>::new_from_slice(ck).unwrap_or_else(|_| unreachable_hmac());
    let mut m = keyed.clone();
    m.update(&[0x01]);
    let mut n = keyed;
    n.update(&[0x02]);
    let mut mk = Zeroizing::new([0u8; 32]);
    let mut next = Zeroizing::new([0u8; 32]);
    mk.copy_from_slice(&m.finalize().into_bytes());
    next.copy_from_slice(&n.finalize().into_bytes());
    (mk, next)
}

// HMAC accepts keys of any length; this branch cannot be taken.
#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    #[allow(clippy::panic)]
    {
        panic!("HMAC rejected a 32-byte key")
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(data));
    out
}
