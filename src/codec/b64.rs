//! Both base64 alphabets. AgentMesh needs standard padded base64 in relay
//! frames and unpadded base64url in registry JSON; receivers in the reference
//! code accept either, so `decode` does too. `decode_lenient` mirrors Node's
//! `Buffer.from(s, "base64url")`, which skips characters outside the alphabet
//! (the original pairing-token parser relied on that).

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum B64Error {
    #[error("invalid base64: unexpected character at position {0}")]
    BadChar(usize),
    #[error("invalid base64: length {0} is not a valid encoding length")]
    BadLength(usize),
    #[error("decoded to {actual} bytes where {expected} are required")]
    WrongSize { expected: usize, actual: usize },
}

pub fn encode_std(bytes: &[u8]) -> String {
    encode(bytes, STD, true)
}

pub fn encode_url(bytes: &[u8]) -> String {
    encode(bytes, URL, false)
}

/// Input bytes per call of [`encode_piece`] (a multiple of 3); characters
/// per call of [`decode_piece`] (a multiple of 4). Why pieces: V8 runs a
/// wasm function in its baseline compiler (Liftoff) until the function has
/// used up its tiering budget, and only calls that start after that run
/// optimized code (wasm has no on-stack replacement), so one call over a
/// 30 MiB file would run its whole loop unoptimized. Many short calls
/// switch to the optimized code after the first few.
const ENCODE_PIECE: usize = 48 * 1024;
const DECODE_PIECE: usize = 64 * 1024;

/// Whole groups of three bytes: `dst` is exactly 4/3 of `src`.
#[inline(never)]
fn encode_piece(src: &[u8], dst: &mut [u8], table: &[u8; 64]) {
    for (s, d) in src.chunks_exact(3).zip(dst.chunks_exact_mut(4)) {
        let n = (s[0] as u32) << 16 | (s[1] as u32) << 8 | s[2] as u32;
        d[0] = table[(n >> 18) as usize & 63];
        d[1] = table[(n >> 12) as usize & 63];
        d[2] = table[(n >> 6) as usize & 63];
        d[3] = table[n as usize & 63];
    }
}

/// Whole groups of four characters into `dst` (exactly 3/4 of `src`); the
/// position in `src` of the first character outside both alphabets.
#[inline(never)]
fn decode_piece(src: &[u8], dst: &mut [u8]) -> Result<(), usize> {
    for (q, (c, d)) in src.chunks_exact(4).zip(dst.chunks_exact_mut(3)).enumerate() {
        let (a, b, cc, e) = (
            DECODE[c[0] as usize],
            DECODE[c[1] as usize],
            DECODE[c[2] as usize],
            DECODE[c[3] as usize],
        );
        // Valid values are below 64; INVALID (0xFF) sets the high bits.
        if (a | b | cc | e) & 0xC0 != 0 {
            let bad = c
                .iter()
                .position(|&x| DECODE[x as usize] == INVALID)
                .unwrap_or(0);
            return Err(q * 4 + bad);
        }
        let n = (a as u32) << 18 | (b as u32) << 12 | (cc as u32) << 6 | e as u32;
        d[0] = (n >> 16) as u8;
        d[1] = (n >> 8) as u8;
        d[2] = n as u8;
    }
    Ok(())
}

fn encode(bytes: &[u8], table: &[u8; 64], pad: bool) -> String {
    // Sized once and filled by index: this runs over every message body.
    let full = bytes.len() / 3;
    let rem = bytes.len() % 3;
    let tail = match (rem, pad) {
        (0, _) => 0,
        (_, true) => 4,
        (1, false) => 2,
        _ => 3,
    };
    let mut out = vec![b'='; full * 4 + tail];
    // In pieces, by a function that is never inlined: see ENCODE_PIECE.
    for (src, dst) in bytes[..full * 3]
        .chunks(ENCODE_PIECE)
        .zip(out.chunks_mut(ENCODE_PIECE / 3 * 4))
    {
        encode_piece(src, dst, table);
    }
    let at = full * 4;
    match bytes.chunks_exact(3).remainder() {
        [a] => {
            let n = (*a as u32) << 16;
            out[at] = table[(n >> 18) as usize & 63];
            out[at + 1] = table[(n >> 12) as usize & 63];
        }
        [a, b] => {
            let n = (*a as u32) << 16 | (*b as u32) << 8;
            out[at] = table[(n >> 18) as usize & 63];
            out[at + 1] = table[(n >> 12) as usize & 63];
            out[at + 2] = table[(n >> 6) as usize & 63];
        }
        _ => {}
    }
    // Only ASCII from the tables (and '=') was written.
    String::from_utf8(out).unwrap_or_default()
}

const INVALID: u8 = 0xFF;

const fn decode_table() -> [u8; 256] {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        t[STD[i] as usize] = i as u8;
        t[URL[i] as usize] = i as u8;
        i += 1;
    }
    t
}

static DECODE: [u8; 256] = decode_table();

/// Strict decode accepting both alphabets, with or without padding.
pub fn decode(s: &str) -> Result<Vec<u8>, B64Error> {
    let bytes = s.as_bytes();
    let body_len = bytes.iter().rposition(|&c| c != b'=').map_or(0, |p| p + 1);
    let pad = bytes.len() - body_len;
    if pad > 2 || (pad > 0 && bytes.len() % 4 != 0) {
        return Err(B64Error::BadLength(bytes.len()));
    }
    let body = &bytes[..body_len];
    if body.len() % 4 == 1 {
        return Err(B64Error::BadLength(bytes.len()));
    }
    // One pass: four characters to three bytes into a buffer sized once.
    let whole = body.len() / 4;
    // Room for the 1 or 2 bytes of a final partial group too, so adding them
    // does not copy the whole buffer.
    let mut out = Vec::with_capacity(whole * 3 + 2);
    out.resize(whole * 3, 0);
    for (k, (src, dst)) in body[..whole * 4]
        .chunks(DECODE_PIECE)
        .zip(out.chunks_mut(DECODE_PIECE / 4 * 3))
        .enumerate()
    {
        decode_piece(src, dst).map_err(|at| B64Error::BadChar(k * DECODE_PIECE + at))?;
    }
    let base = whole * 4;
    let rem = &body[base..];
    let mut vals = [0u8; 3];
    for (i, &c) in rem.iter().enumerate() {
        let v = DECODE[c as usize];
        if v == INVALID {
            return Err(B64Error::BadChar(base + i));
        }
        vals[i] = v;
    }
    out.extend_from_slice(&pack(&vals[..rem.len()]));
    Ok(out)
}

/// Node-style lenient decode: characters outside both alphabets are skipped,
/// decoding stops at the first '='.
pub fn decode_lenient(s: &str) -> Vec<u8> {
    let vals: Vec<u8> = s
        .bytes()
        .take_while(|&c| c != b'=')
        .filter_map(|c| match DECODE[c as usize] {
            INVALID => None,
            v => Some(v),
        })
        .collect();
    let usable = if vals.len() % 4 == 1 {
        vals.len() - 1
    } else {
        vals.len()
    };
    pack(&vals[..usable])
}

/// Decode exactly `N` bytes, naming the field on error.
pub fn decode_array<const N: usize>(s: &str) -> Result<[u8; N], B64Error> {
    let v = decode(s)?;
    v.try_into().map_err(|v: Vec<u8>| B64Error::WrongSize {
        expected: N,
        actual: v.len(),
    })
}

fn pack(vals: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(vals.len() * 3 / 4);
    for c in vals.chunks(4) {
        let mut n = 0u32;
        for (i, &v) in c.iter().enumerate() {
            n |= (v as u32) << (18 - 6 * i);
        }
        let take = match c.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => 0,
        };
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_longer_than_a_piece() {
        // Encoding three bytes at a time: the text of a long input is the
        // texts of its 3-byte groups joined, whatever the pieces.
        for len in [
            ENCODE_PIECE - 1,
            ENCODE_PIECE,
            ENCODE_PIECE + 2,
            2 * DECODE_PIECE + 7,
            5 * ENCODE_PIECE + 1,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 131 % 256) as u8).collect();
            let text = encode_std(&data);
            let by_groups: String = data.chunks(3).map(encode_std).collect();
            assert_eq!(text, by_groups, "{len} bytes");
            assert_eq!(decode(&text).unwrap(), data, "{len} bytes");
            assert_eq!(decode(&encode_url(&data)).unwrap(), data, "{len} bytes");
        }
        // A bad character is reported where it is, in any piece.
        let text = encode_std(&vec![9u8; 3 * DECODE_PIECE]);
        for at in [0, DECODE_PIECE - 1, DECODE_PIECE, 2 * DECODE_PIECE + 5] {
            let mut bad = text.clone().into_bytes();
            bad[at] = b'*';
            let bad = String::from_utf8(bad).unwrap();
            assert_eq!(decode(&bad), Err(B64Error::BadChar(at)), "at {at}");
        }
    }

    #[test]
    fn both_alphabets_padding_and_errors() {
        for len in 0..70usize {
            let data: Vec<u8> = (0..len as u8)
                .map(|i| i.wrapping_mul(37).wrapping_add(250))
                .collect();
            let std = encode_std(&data);
            let url = encode_url(&data);
            assert_eq!(decode(&std).unwrap(), data);
            assert_eq!(decode(&url).unwrap(), data);
            assert_eq!(decode(std.trim_end_matches('=')).unwrap(), data);
            assert_eq!(decode_lenient(&url), data);
        }
        assert_eq!(decode("ab*d"), Err(B64Error::BadChar(2)));
        assert_eq!(decode("abcde*"), Err(B64Error::BadChar(5)));
        assert_eq!(decode("abcde"), Err(B64Error::BadLength(5)));
        assert_eq!(decode("ab==="), Err(B64Error::BadLength(5)));
        assert_eq!(decode("a=bc"), Err(B64Error::BadChar(1)));
        assert_eq!(
            decode_array::<4>("AAAA"),
            Err(B64Error::WrongSize {
                expected: 4,
                actual: 3
            })
        );
    }
}
