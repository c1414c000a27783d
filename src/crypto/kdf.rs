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

/// What [`sha256`] feeds the hasher per call of [`absorb`].
const ABSORB_PIECE: usize = 64 * 1024;

/// SHA-256 of `data`, fed to the hasher in pieces of [`ABSORB_PIECE`] bytes
/// through a function that is never inlined. Why: V8 runs a wasm function in
/// its baseline compiler (Liftoff) until the function has used up its
/// tiering budget, and only the calls that start after that run optimized
/// code (wasm has no on-stack replacement). One call hashing a 30 MiB file
/// in a single loop therefore ran entirely in Liftoff: 0.9 s in a fresh
/// engine, where the same bytes hashed by many calls take about 0.1 s.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256Stream::default();
    h.update(data);
    h.finish()
}

/// SHA-256 of data given a part at a time, so that a large file can be
/// hashed over several engine calls; each part is fed as [`sha256`] feeds
/// its input.
#[derive(Clone, Default)]
pub struct Sha256Stream(Sha256);

impl Sha256Stream {
    pub fn update(&mut self, data: &[u8]) {
        for piece in data.chunks(ABSORB_PIECE) {
            absorb(&mut self.0, piece);
        }
    }

    pub fn finish(self) -> [u8; 32] {
        use sha2::Digest;
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.0.finalize());
        out
    }
}

#[inline(never)]
fn absorb(h: &mut Sha256, piece: &[u8]) {
    use sha2::Digest;
    h.update(piece);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn sha256_in_pieces_is_sha256() {
        // FIPS 180-2 "abc", and inputs around and across the piece size.
        assert_eq!(
            crate::wire::hex::encode(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for n in [
            0,
            ABSORB_PIECE - 1,
            ABSORB_PIECE,
            ABSORB_PIECE + 1,
            3 * ABSORB_PIECE + 17,
        ] {
            let data: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
            assert_eq!(sha256(&data)[..], Sha256::digest(&data)[..], "{n} bytes");
            // Given in uneven parts, over several calls.
            let mut s = Sha256Stream::default();
            for part in [&data[..n / 3], &data[n / 3..2 * n / 3], &data[2 * n / 3..]] {
                s.update(part);
            }
            assert_eq!(
                s.finish()[..],
                Sha256::digest(&data)[..],
                "{n} bytes in parts"
            );
        }
    }
}
