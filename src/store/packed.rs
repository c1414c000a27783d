//! Records that are mostly base64 text, stored with that text decoded.
//!
//! A file crosses the mesh as the JSON text of its `file_transfer` message
//! cut into 512 KiB chunks, nearly all of it one run of standard base64.
//! Each chunk is a sealed record on its way: in the sender's outbox until
//! the peer's receipt, and in the receiver's reassembly until the file is
//! whole. Sealing (AES-256-GCM in software: wasm has no AES instructions)
//! and writing are what these records cost, byte for byte, so the longest
//! base64 run of the text is kept as the bytes it encodes: three bytes for
//! every four characters, a quarter less to seal and write.
//!
//! Lossless: four characters of the standard alphabet are exactly 24 bits,
//! so a run of whole groups decodes and encodes back to the same text.
//!
//! Layout (the first byte is 0, which no JSON text starts with, so a reader
//! tells this form from a record written before it as JSON):
//!
//! ```text
//! 0x00 | 0x01 | head_len u32 LE | prefix_len u32 LE | run_chars u32 LE
//!      | head | prefix | run decoded (run_chars / 4 * 3 bytes) | suffix
//! ```
//!
//! `head` is the record's own small JSON (an outbox entry's fields), kept
//! apart from the text it carries.

use crate::codec::b64;
use zeroize::{Zeroize, Zeroizing};

/// First byte of a packed record.
pub const MAGIC: u8 = 0x00;
const VERSION: u8 = 0x01;
const FIXED: usize = 2 + 4 * 3;
/// Shorter runs are not worth a decode.
const MIN_RUN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("packed record is {0} bytes, shorter than its own lengths say; it is truncated")]
    Truncated(usize),
    #[error("packed record has format {0}; this build reads format 1. Upgrade kars-mesh")]
    UnknownVersion(u8),
    #[error("packed record's base64 run does not decode back ({0})")]
    Run(String),
}

/// Whether `record` is in the packed form (else it is the older JSON).
pub fn is_packed(record: &[u8]) -> bool {
    record.first() == Some(&MAGIC)
}

/// The standard alphabet only: the run must encode back with `encode_std`.
const fn std_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
        c += 1;
    }
    t
}
static STD: [bool; 256] = std_table();

/// Start and length (whole groups of four) of the longest standard base64
/// run in `text`; length 0 when it is shorter than [`MIN_RUN`].
fn longest_run(text: &[u8]) -> (usize, usize) {
    let (mut best_at, mut best_len) = (0, 0);
    let mut at = 0;
    while at < text.len() {
        if !STD[text[at] as usize] {
            at += 1;
            continue;
        }
        let start = at;
        while at < text.len() && STD[text[at] as usize] {
            at += 1;
        }
        if at - start > best_len {
            (best_at, best_len) = (start, at - start);
        }
    }
    let len = best_len & !3;
    if len < MIN_RUN {
        (0, 0)
    } else {
        (best_at, len)
    }
}

fn len_u32(n: usize) -> [u8; 4] {
    // Records are far below 4 GiB (a payload is at most a few MiB).
    u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes()
}

/// `head` and `text` as one packed record.
pub fn pack(head: &[u8], text: &[u8]) -> Zeroizing<Vec<u8>> {
    let (at, run) = longest_run(text);
    let mut out = Zeroizing::new(Vec::with_capacity(
        FIXED + head.len() + text.len() - run / 4,
    ));
    out.extend_from_slice(&[MAGIC, VERSION]);
    out.extend_from_slice(&len_u32(head.len()));
    out.extend_from_slice(&len_u32(at));
    out.extend_from_slice(&len_u32(run));
    out.extend_from_slice(head);
    out.extend_from_slice(&text[..at]);
    if run > 0 {
        // Only standard alphabet characters in whole groups: cannot fail.
        let run_text = std::str::from_utf8(&text[at..at + run]).unwrap_or_default();
        let mut bytes = b64::decode(run_text).unwrap_or_default();
        out.extend_from_slice(&bytes);
        bytes.zeroize();
    }
    out.extend_from_slice(&text[at + run..]);
    out
}

/// The head and the text of a packed record.
pub fn unpack(record: &[u8]) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), PackError> {
    if record.len() < FIXED {
        return Err(PackError::Truncated(record.len()));
    }
    if record[1] != VERSION {
        return Err(PackError::UnknownVersion(record[1]));
    }
    let num = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&record[2 + 4 * i..6 + 4 * i]);
        u32::from_le_bytes(b) as usize
    };
    let (head_len, prefix_len, run) = (num(0), num(1), num(2));
    if run % 4 != 0 {
        return Err(PackError::Run(format!(
            "{run} characters is not whole groups"
        )));
    }
    let run_bytes = run / 4 * 3;
    let body = &record[FIXED..];
    let need = head_len
        .checked_add(prefix_len)
        .and_then(|n| n.checked_add(run_bytes))
        .ok_or(PackError::Truncated(record.len()))?;
    if body.len() < need {
        return Err(PackError::Truncated(record.len()));
    }
    let (head, rest) = body.split_at(head_len);
    let (prefix, rest) = rest.split_at(prefix_len);
    let (decoded, suffix) = rest.split_at(run_bytes);
    let mut text = Zeroizing::new(Vec::with_capacity(prefix_len + run + suffix.len()));
    text.extend_from_slice(prefix);
    let mut encoded = b64::encode_std(decoded);
    if encoded.len() != run {
        return Err(PackError::Run(format!(
            "{} characters where {run} were packed",
            encoded.len()
        )));
    }
    text.extend_from_slice(encoded.as_bytes());
    encoded.zeroize();
    text.extend_from_slice(suffix);
    Ok((head.to_vec(), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(head: &[u8], text: &[u8]) -> usize {
        let p = pack(head, text);
        assert!(is_packed(&p));
        let (h, t) = unpack(&p).expect("unpacks");
        assert_eq!(h, head);
        assert_eq!(&t[..], text);
        p.len()
    }

    #[test]
    fn a_chunk_of_a_file_transfer_is_a_quarter_smaller_and_comes_back_exactly() {
        let bytes: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let b = b64::encode_std(&bytes);
        let text = format!("{{\"type\":\"file_transfer\",\"name\":\"a b.bin\",\"content\":\"{b}\",\"sha256\":\"00ff\"}}");
        let n = roundtrip(br#"{"seq":4}"#, text.as_bytes());
        assert!(n < text.len() * 3 / 4 + 200, "{n} of {}", text.len());
        // A middle chunk: base64 from end to end, not on a group boundary.
        let mid = &b.as_bytes()[1001..200_003];
        let n = roundtrip(b"", mid);
        assert!(n < mid.len() * 3 / 4 + 32, "{n} of {}", mid.len());
    }

    #[test]
    fn text_without_a_long_run_is_kept_as_it_is() {
        for text in [
            &b""[..],
            b"{\"a\":1}",
            "é\u{1F600} ~ \"\\u0000\"".as_bytes(),
        ] {
            let n = roundtrip(b"{}", text);
            assert_eq!(n, FIXED + 2 + text.len());
        }
        // The url alphabet is not packed (it would come back as +/).
        let url = "-_".repeat(400);
        assert_eq!(roundtrip(b"", url.as_bytes()), FIXED + url.len());
    }

    #[test]
    fn the_longest_run_is_taken_and_padding_stays_text() {
        let a = "QUJD".repeat(100);
        let b = "eHl6".repeat(300);
        let text = format!("{a}==\"{b}=\"");
        let (at, len) = longest_run(text.as_bytes());
        assert_eq!((at, len), (a.len() + 3, b.len()));
        roundtrip(b"h", text.as_bytes());
    }

    #[test]
    fn a_damaged_record_is_refused_not_misread() {
        let text = "QUJD".repeat(200);
        let p = pack(b"{}", text.as_bytes());
        assert!(matches!(
            unpack(&p[..p.len() - 10]),
            Err(PackError::Truncated(_))
        ));
        assert!(matches!(unpack(&p[..5]), Err(PackError::Truncated(_))));
        let mut v = p.to_vec();
        v[1] = 9;
        assert_eq!(unpack(&v), Err(PackError::UnknownVersion(9)));
        let mut v = p.to_vec();
        v[10] = 3; // run length no longer whole groups
        assert!(matches!(unpack(&v), Err(PackError::Run(_))));
        let mut v = p.to_vec();
        v[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(unpack(&v), Err(PackError::Truncated(_))));
        assert!(!is_packed(b"{\"data\":\"x\"}"));
    }
}
