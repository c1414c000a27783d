//! Encodings and messages exactly as the AgentMesh relay, registry and SDKs
//! put them on the wire (agentmesh-wire.md §2–§7).
//!
//! Every message is a typed serde value, one enum per family, tagged by
//! `type` (`payload::Family`): `relay_frame` (the relay's frames),
//! `pairing_msg`, `offload_msg` (with `transfer`'s chunked transfer) and
//! `delivery` (user messages, the kars envelope and receipts). Routing looks
//! only at `payload::PayloadType`; an unknown `type` is an explicit
//! `payload::ParseError::UnknownType`. Protocol limits live in `limits`.

pub mod delivery;
pub mod frames;
pub mod lenient;
pub mod limits;
pub mod offload_msg;
pub mod pairing_msg;
pub mod payload;
pub mod plaintext;
pub mod registry;
pub mod relay_frame;
pub mod token;
pub mod transfer;

// The encodings are ground (`crate::codec`); named here too, where the wire
// code and its tests have always found them.
pub use crate::codec::{b64, base58, hex, time};

/// Why a message from the network was refused. Texts name the field and
/// never include key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what} is not valid JSON of the expected shape: {detail}")]
    Json { what: &'static str, detail: String },
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}`: {source}")]
    Field {
        field: &'static str,
        source: b64::B64Error,
    },
    #[error("expected a `{expected}` frame, got `{actual}`")]
    UnexpectedType {
        expected: &'static str,
        actual: String,
    },
}

impl WireError {
    pub(crate) fn json(what: &'static str, e: &serde_json::Error) -> Self {
        // Only the kind and position: serde_json's own text can quote input.
        WireError::Json {
            what,
            detail: describe_json_error(e),
        }
    }
}

/// A serde_json error without any of the input it may quote.
pub(crate) fn describe_json_error(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected field type or missing field",
        serde_json::error::Category::Eof => "truncated",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

/// Text a peer chose, made safe to put in a log line or in front of a model:
/// at most `max` characters, and every control, line-breaking or
/// direction-changing character written as a visible `\u{..}` escape, so a
/// peer cannot forge a second log line, a terminal escape or reorder text.
pub fn escape_for_log(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 8);
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        let dangerous = c.is_control()
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
            )
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c);
        if dangerous {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod escape_tests {
    use super::escape_for_log;

    #[test]
    fn controls_and_bidi_overrides_become_visible() {
        assert_eq!(
            escape_for_log("a\nb\u{1b}[2J\u{202e}c", 100),
            "a\\u{a}b\\u{1b}[2J\\u{202e}c"
        );
        assert_eq!(escape_for_log("abcdef", 3), "abc…");
        assert_eq!(escape_for_log("déjà ✓", 10), "déjà ✓");
    }
}
