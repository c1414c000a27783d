//! De-duplication marks for plaintext frames, kept in one bounded record.
//! A plaintext sender has no session, and its `from` is whatever it claims:
//! one record per claimed sender would let anyone grow our storage by
//! inventing DIDs (red-team finding 6). The relay redelivers only frames we
//! have not acked, and we ack right after the mark is stored, so a short
//! window is enough.

use serde::{Deserialize, Serialize};

/// Marks kept in all, oldest dropped first.
pub(super) const PLAIN_SEEN_MAX: usize = 512;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct PlainSeen {
    /// Hex of the first 16 bytes of SHA-256(from, 0, frame id), with when.
    marks: Vec<(String, u64)>,
}

fn mark(from: &str, id: &str) -> String {
    let mut input = Vec::with_capacity(from.len() + 1 + id.len());
    input.extend_from_slice(from.as_bytes());
    input.push(0);
    input.extend_from_slice(id.as_bytes());
    crate::wire::hex::encode(&crate::crypto::kdf::sha256(&input)[..16])
}

impl PlainSeen {
    pub(super) fn contains(&self, from: &str, id: &str) -> bool {
        let m = mark(from, id);
        self.marks.iter().any(|(x, _)| *x == m)
    }

    pub(super) fn insert(&mut self, from: &str, id: &str, now_ms: u64) {
        self.marks.push((mark(from, id), now_ms));
        if self.marks.len() > PLAIN_SEEN_MAX {
            let excess = self.marks.len() - PLAIN_SEEN_MAX;
            self.marks.drain(..excess);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.marks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_whatever_the_number_of_senders() {
        let mut s = PlainSeen::default();
        for i in 0..2000 {
            s.insert(&format!("did:mesh:{i:032x}"), "f", i);
        }
        assert_eq!(s.len(), PLAIN_SEEN_MAX);
        assert!(s.contains(&format!("did:mesh:{:032x}", 1999), "f"));
        assert!(!s.contains(&format!("did:mesh:{:032x}", 0), "f"));
        assert!(!s.contains(&format!("did:mesh:{:032x}", 1999), "g"));
    }
}
