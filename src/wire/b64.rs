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

fn encode(bytes: &[u8], table: &[u8; 64], pad: bool) -> String {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    let mut chunks = bytes.chunks_exact(3);
    for c in &mut chunks {
        let n = (c[0] as u32) << 16 | (c[1] as u32) << 8 | c[2] as u32;
        out.extend_from_slice(&[
            table[(n >> 18) as usize & 63],
            table[(n >> 12) as usize & 63],
            table[(n >> 6) as usize & 63],
            table[n as usize & 63],
        ]);
    }
    match chunks.remainder() {
        [a] => {
            let n = (*a as u32) << 16;
            out.extend_from_slice(&[
                table[(n >> 18) as usize & 63],
                table[(n >> 12) as usize & 63],
            ]);
            if pad {
                out.extend_from_slice(b"==");
            }
        }
        [a, b] => {
            let n = (*a as u32) << 16 | (*b as u32) << 8;
            out.extend_from_slice(&[
                table[(n >> 18) as usize & 63],
                table[(n >> 12) as usize & 63],
                table[(n >> 6) as usize & 63],
            ]);
            if pad {
                out.push(b'=');
            }
        }
        _ => {}
    }
    // Only ASCII from the tables above was pushed.
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
    let mut vals = Vec::with_capacity(body.len());
    for (i, &c) in body.iter().enumerate() {
        let v = DECODE[c as usize];
        if v == INVALID {
            return Err(B64Error::BadChar(i));
        }
        vals.push(v);
    }
    Ok(pack(&vals))
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
