//! ChaCha20-Poly1305 (RFC 8439) for the message layer.
//!
//! Natively this is the `chacha20poly1305` crate (AVX2 on x86_64). On wasm32
//! that crate has only a one-block-at-a-time scalar ChaCha20, which made a
//! 64 KiB message 4-5x slower than native; with `simd128` we run ChaCha20 four
//! blocks at a time in v128 lanes and keep the crate's Poly1305. The lane code
//! is generic, so native tests run the same algorithm on plain `[u32; 4]`
//! lanes and compare it with the crate. The crate stays reachable on every
//! target as [`reference`], for the benchmark's A/B.

use poly1305::universal_hash::{KeyInit, UniversalHash};
use poly1305::Poly1305;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagMismatch;

/// The `chacha20poly1305` crate (RustCrypto): the message AEAD natively, and
/// on wasm32 only the reference that the benchmark compares the simd128
/// ChaCha20 with (`toolkit` `aead-seal` / `aead-open`), so the reason for the
/// hand-written path stays measured.
pub mod reference {
    use super::TagMismatch;
    use chacha20poly1305::aead::array::Array;
    use chacha20poly1305::aead::{AeadInOut, KeyInit};
    use chacha20poly1305::ChaCha20Poly1305;

    /// Encrypt `buf` in place; returns the tag.
    pub fn seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        let cipher = ChaCha20Poly1305::new(&Array::from(*key));
        let mut out = [0u8; 16];
        // Only fails for messages over 256 GiB.
        if let Ok(tag) = cipher.encrypt_inout_detached(&Array::from(*nonce), aad, buf.into()) {
            out.copy_from_slice(&tag);
        }
        out
    }

    /// Verify and decrypt `buf` in place. On a bad tag `buf` is left encrypted.
    pub fn open(
        key: &[u8; 32],
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), TagMismatch> {
        let cipher = ChaCha20Poly1305::new(&Array::from(*key));
        cipher
            .decrypt_inout_detached(&Array::from(*nonce), aad, buf.into(), &Array::from(*tag))
            .map_err(|_| TagMismatch)
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod backend {
    pub(super) use super::reference::{open, seal};
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod backend {
    use super::TagMismatch;

    pub(super) fn seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        super::seal_with::<super::simd::V>(key, nonce, aad, buf)
    }

    pub(super) fn open(
        key: &[u8; 32],
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), TagMismatch> {
        super::open_with::<super::simd::V>(key, nonce, aad, buf, tag)
    }
}

/// Encrypt `buf` in place; returns the tag.
pub fn seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
    backend::seal(key, nonce, aad, buf)
}

/// Verify and decrypt `buf` in place. On a bad tag `buf` is left encrypted.
pub fn open(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; 16],
) -> Result<(), TagMismatch> {
    backend::open(key, nonce, aad, buf, tag)
}

/// Four 32-bit lanes: one ChaCha20 block per lane.
pub trait Lanes: Copy {
    fn splat(x: u32) -> Self;
    fn from4(a: u32, b: u32, c: u32, d: u32) -> Self;
    fn add(self, o: Self) -> Self;
    fn xor(self, o: Self) -> Self;
    fn rotl16(self) -> Self;
    fn rotl12(self) -> Self;
    fn rotl8(self) -> Self;
    fn rotl7(self) -> Self;
    fn lanes(self) -> [u32; 4];
}

impl Lanes for [u32; 4] {
    fn splat(x: u32) -> Self {
        [x; 4]
    }
    fn from4(a: u32, b: u32, c: u32, d: u32) -> Self {
        [a, b, c, d]
    }
    fn add(self, o: Self) -> Self {
        std::array::from_fn(|i| self[i].wrapping_add(o[i]))
    }
    fn xor(self, o: Self) -> Self {
        std::array::from_fn(|i| self[i] ^ o[i])
    }
    fn rotl16(self) -> Self {
        self.map(|x| x.rotate_left(16))
    }
    fn rotl12(self) -> Self {
        self.map(|x| x.rotate_left(12))
    }
    fn rotl8(self) -> Self {
        self.map(|x| x.rotate_left(8))
    }
    fn rotl7(self) -> Self {
        self.map(|x| x.rotate_left(7))
    }
    fn lanes(self) -> [u32; 4] {
        self
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use core::arch::wasm32::*;

    #[derive(Clone, Copy)]
    pub(super) struct V(v128);

    impl super::Lanes for V {
        fn splat(x: u32) -> Self {
            V(u32x4_splat(x))
        }
        fn from4(a: u32, b: u32, c: u32, d: u32) -> Self {
            V(u32x4(a, b, c, d))
        }
        fn add(self, o: Self) -> Self {
            V(i32x4_add(self.0, o.0))
        }
        fn xor(self, o: Self) -> Self {
            V(v128_xor(self.0, o.0))
        }
        fn rotl16(self) -> Self {
            // Byte-aligned rotations are one shuffle instead of two shifts and an or.
            V(i8x16_shuffle::<
                2,
                3,
                0,
                1,
                6,
                7,
                4,
                5,
                10,
                11,
                8,
                9,
                14,
                15,
                12,
                13,
            >(self.0, self.0))
        }
        fn rotl12(self) -> Self {
            V(v128_or(i32x4_shl(self.0, 12), u32x4_shr(self.0, 20)))
        }
        fn rotl8(self) -> Self {
            V(i8x16_shuffle::<
                3,
                0,
                1,
                2,
                7,
                4,
                5,
                6,
                11,
                8,
                9,
                10,
                15,
                12,
                13,
                14,
            >(self.0, self.0))
        }
        fn rotl7(self) -> Self {
            V(v128_or(i32x4_shl(self.0, 7), u32x4_shr(self.0, 25)))
        }
        fn lanes(self) -> [u32; 4] {
            [
                u32x4_extract_lane::<0>(self.0),
                u32x4_extract_lane::<1>(self.0),
                u32x4_extract_lane::<2>(self.0),
                u32x4_extract_lane::<3>(self.0),
            ]
        }
    }
}

#[inline(always)]
fn qr<L: Lanes>(x: &mut [L; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = x[a].add(x[b]);
    x[d] = x[d].xor(x[a]).rotl16();
    x[c] = x[c].add(x[d]);
    x[b] = x[b].xor(x[c]).rotl12();
    x[a] = x[a].add(x[b]);
    x[d] = x[d].xor(x[a]).rotl8();
    x[c] = x[c].add(x[d]);
    x[b] = x[b].xor(x[c]).rotl7();
}

/// Four consecutive ChaCha20 blocks (counters `counter..counter+4`).
fn blocks4<L: Lanes>(key: &[u32; 8], nonce: &[u32; 3], counter: u32, out: &mut [u8; 256]) {
    let c = counter;
    let init: [L; 16] = [
        L::splat(0x6170_7865),
        L::splat(0x3320_646e),
        L::splat(0x7962_2d32),
        L::splat(0x6b20_6574),
        L::splat(key[0]),
        L::splat(key[1]),
        L::splat(key[2]),
        L::splat(key[3]),
        L::splat(key[4]),
        L::splat(key[5]),
        L::splat(key[6]),
        L::splat(key[7]),
        L::from4(c, c.wrapping_add(1), c.wrapping_add(2), c.wrapping_add(3)),
        L::splat(nonce[0]),
        L::splat(nonce[1]),
        L::splat(nonce[2]),
    ];
    let mut x = init;
    for _ in 0..10 {
        qr(&mut x, 0, 4, 8, 12);
        qr(&mut x, 1, 5, 9, 13);
        qr(&mut x, 2, 6, 10, 14);
        qr(&mut x, 3, 7, 11, 15);
        qr(&mut x, 0, 5, 10, 15);
        qr(&mut x, 1, 6, 11, 12);
        qr(&mut x, 2, 7, 8, 13);
        qr(&mut x, 3, 4, 9, 14);
    }
    for (i, (v, s)) in x.iter().zip(init.iter()).enumerate() {
        let w = v.add(*s).lanes();
        for (b, word) in w.iter().enumerate() {
            let at = b * 64 + i * 4;
            out[at..at + 4].copy_from_slice(&word.to_le_bytes());
        }
    }
}

fn words<const N: usize>(b: &[u8]) -> [u32; N] {
    std::array::from_fn(|i| {
        u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    })
}

/// XOR the ChaCha20 keystream (starting at block `counter`) into `buf`.
fn xor_keystream<L: Lanes>(key: &[u8; 32], nonce: &[u8; 12], counter: u32, buf: &mut [u8]) {
    let (k, n) = (words::<8>(key), words::<3>(nonce));
    let mut ks = [0u8; 256];
    let mut ctr = counter;
    for chunk in buf.chunks_mut(256) {
        blocks4::<L>(&k, &n, ctr, &mut ks);
        ctr = ctr.wrapping_add(4);
        let whole = chunk.len() & !7;
        let (head, tail) = chunk.split_at_mut(whole);
        for (d, s) in head.chunks_exact_mut(8).zip(ks.chunks_exact(8)) {
            let v = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
                ^ u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
            d.copy_from_slice(&v.to_le_bytes());
        }
        for (i, d) in tail.iter_mut().enumerate() {
            *d ^= ks[whole + i];
        }
    }
    zeroize::Zeroize::zeroize(&mut ks);
}

fn tag_for<L: Lanes>(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], ct: &[u8]) -> [u8; 16] {
    let mut block0 = [0u8; 256];
    blocks4::<L>(&words::<8>(key), &words::<3>(nonce), 0, &mut block0);
    let mut otk = [0u8; 32];
    otk.copy_from_slice(&block0[..32]);
    let mut mac = Poly1305::new(&poly1305::Key::from(otk));
    zeroize::Zeroize::zeroize(&mut otk);
    zeroize::Zeroize::zeroize(&mut block0);
    mac.update_padded(aad);
    mac.update_padded(ct);
    let mut lens = [0u8; 16];
    lens[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
    lens[8..].copy_from_slice(&(ct.len() as u64).to_le_bytes());
    mac.update_padded(&lens);
    let mut out = [0u8; 16];
    out.copy_from_slice(&mac.finalize());
    out
}

pub fn seal_with<L: Lanes>(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    buf: &mut [u8],
) -> [u8; 16] {
    xor_keystream::<L>(key, nonce, 1, buf);
    tag_for::<L>(key, nonce, aad, buf)
}

pub fn open_with<L: Lanes>(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; 16],
) -> Result<(), TagMismatch> {
    let expected = tag_for::<L>(key, nonce, aad, buf);
    if !bool::from(expected.ct_eq(tag)) {
        return Err(TagMismatch);
    }
    xor_keystream::<L>(key, nonce, 1, buf);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::{Entropy, SeededEntropy};
    use chacha20poly1305::aead::array::Array;
    use chacha20poly1305::aead::AeadInOut;
    use chacha20poly1305::ChaCha20Poly1305;

    #[test]
    fn rfc8439_section_2_8_2() {
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [
            0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
        ];
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let mut msg = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let tag = seal_with::<[u32; 4]>(&key, &nonce, &aad, &mut msg);
        assert_eq!(
            crate::codec::hex::encode(&tag),
            "1ae10b594f09e26a7e902ecbd0600691"
        );
        assert_eq!(
            crate::codec::hex::encode(&msg[..16]),
            "d31a8d34648e60db7b86afbc53ef7ec2"
        );
    }

    #[test]
    fn lanes_match_the_crate_for_every_length() {
        let mut rng = SeededEntropy::new(3);
        for len in (0..600).chain([1023, 1024, 1025, 65536, 65537]) {
            let key = rng.array32();
            let mut nonce = [0u8; 12];
            rng.fill(&mut nonce);
            let mut data = vec![0u8; len];
            rng.fill(&mut data);
            let aad = &key[..(len % 33)];
            let mut ours = data.clone();
            let tag = seal_with::<[u32; 4]>(&key, &nonce, aad, &mut ours);
            let mut theirs = data.clone();
            let c = ChaCha20Poly1305::new(&Array::from(key));
            let t2 = c
                .encrypt_inout_detached(&Array::from(nonce), aad, theirs.as_mut_slice().into())
                .unwrap();
            assert_eq!(ours, theirs, "ciphertext, len {len}");
            assert_eq!(&tag[..], &t2[..], "tag, len {len}");
            open_with::<[u32; 4]>(&key, &nonce, aad, &mut ours, &tag).unwrap();
            assert_eq!(ours, data);
            let mut bad = tag;
            bad[0] ^= 1;
            let mut again = theirs.clone();
            assert_eq!(
                open_with::<[u32; 4]>(&key, &nonce, aad, &mut again, &bad),
                Err(TagMismatch)
            );
            assert_eq!(again, theirs, "a failed open leaves the buffer as it was");
        }
    }
}
