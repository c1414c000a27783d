//! The `type` of a payload, and the one way every message family is parsed.
//!
//! Parsing is two steps on purpose. First the `type` is looked up among the
//! family's names: a type nobody knows (or a misspelt one) is
//! `ParseError::UnknownType`, never a message with every field defaulted.
//! Only then are the fields read, so a known type with a missing required
//! field is `ParseError::MissingField` and names the field. Routing needs
//! only the first step ([`PayloadType::of`]): who consumes a message is
//! decided by its type (and sender), never by whether its fields parse, as
//! it always was.

use crate::wire::limits::MAX_TYPE_CHARS;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Why a JSON value is not a message of the family asked for. Texts never
/// quote a peer's field values; an unknown type is shown escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("no string `type`")]
    NoType,
    #[error("`{}` is not a {family} message type", crate::wire::escape_for_log(.kind, MAX_TYPE_CHARS))]
    UnknownType {
        family: &'static str,
        /// The peer's `type`, at most `MAX_TYPE_CHARS` characters.
        kind: String,
    },
    #[error("`{kind}` lacks the required field `{field}`")]
    MissingField { kind: &'static str, field: String },
    #[error("`{kind}`: a required field has the wrong JSON type")]
    BadField { kind: &'static str },
}

impl ParseError {
    /// A serde error on a message whose `type` is known: which field is
    /// missing (our own field name, safe to show), or that one is of the
    /// wrong type (serde's text would quote the peer's value).
    fn from_fields(kind: &'static str, e: &serde_json::Error) -> Self {
        let text = e.to_string();
        match text
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            Some(field) => ParseError::MissingField {
                kind,
                field: field.to_string(),
            },
            None => ParseError::BadField { kind },
        }
    }
}

/// The `type` of a value, checked against `known`: the matching name, or
/// why there is none.
fn known_type(
    v: &Value,
    family: &'static str,
    known: &'static [&'static str],
) -> Result<&'static str, ParseError> {
    let obj = v.as_object().ok_or(ParseError::NotAnObject)?;
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or(ParseError::NoType)?;
    known
        .iter()
        .find(|k| **k == kind)
        .copied()
        .ok_or_else(|| ParseError::UnknownType {
            family,
            kind: kind.chars().take(MAX_TYPE_CHARS).collect(),
        })
}

/// A family of messages: one serde enum tagged by `type`, whose variants'
/// names are exactly `TYPES`.
pub trait Family: Serialize + DeserializeOwned {
    /// Named in errors ("offload", "pairing", ...).
    const FAMILY: &'static str;
    /// Every `type` the family's enum accepts, as on the wire.
    const TYPES: &'static [&'static str];

    /// Read a message from a borrowed value (its strings are copied).
    fn parse(v: &Value) -> Result<Self, ParseError> {
        let kind = known_type(v, Self::FAMILY, Self::TYPES)?;
        Self::deserialize(v).map_err(|e| ParseError::from_fields(kind, &e))
    }

    /// Read a message from an owned value: its strings move, which matters
    /// for a 40 MB `file_data` or a 2 MB chunk.
    fn from_value(v: Value) -> Result<Self, ParseError> {
        let kind = known_type(&v, Self::FAMILY, Self::TYPES)?;
        serde_json::from_value(v).map_err(|e| ParseError::from_fields(kind, &e))
    }

    /// Read a message from JSON text.
    fn from_text(text: &str) -> Result<Self, ParseError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ParseError::NotJson(crate::wire::describe_json_error(&e)))?;
        Self::from_value(v)
    }

    /// The message as a JSON value (what `send_payload` takes).
    fn to_value(&self) -> Value {
        // Cannot fail: every family serializes to an object with string
        // keys (each family's tests serialize every variant).
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The message as compact JSON text, its keys in the order a
    /// `serde_json::Value` writes them (sorted): byte for byte what the
    /// `json!` literals these types replace wrote.
    fn to_text(&self) -> String {
        self.to_value().to_string()
    }
}

/// `From<Struct> for Family` for each newtype variant, so a message is
/// built as its struct and sent as its family (`OffloadMsg::from(s)`).
macro_rules! variants_from {
    ($family:ident { $($variant:ident($ty:ty)),* $(,)? }) => {
        $(impl From<$ty> for $family {
            fn from(m: $ty) -> Self {
                $family::$variant(m)
            }
        })*
    };
}
pub(crate) use variants_from;

/// Every payload `type` this crate sends or consumes. Routing decides on
/// this (plus the sender); the families parse the fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadType {
    /// A user's text (`mesh_send`), for the inbox.
    Message,
    /// Our cumulative delivery receipt.
    KarsReceipt,
    PairRequest,
    PairResponse,
    OffloadRequest,
    OffloadStatus,
    OffloadError,
    OffloadCleanup,
    OffloadHello,
    OffloadProgress,
    OffloadStart,
    OffloadDone,
    FileTransfer,
    FileTransferAck,
    TransferManifest,
    TransferChunk,
    /// The kars sandbox's legacy path (ping, task hand-over).
    MeshPing,
    MeshPong,
    OffloadTask,
    TaskReceived,
}

impl PayloadType {
    pub const ALL: [PayloadType; 20] = [
        PayloadType::Message,
        PayloadType::KarsReceipt,
        PayloadType::PairRequest,
        PayloadType::PairResponse,
        PayloadType::OffloadRequest,
        PayloadType::OffloadStatus,
        PayloadType::OffloadError,
        PayloadType::OffloadCleanup,
        PayloadType::OffloadHello,
        PayloadType::OffloadProgress,
        PayloadType::OffloadStart,
        PayloadType::OffloadDone,
        PayloadType::FileTransfer,
        PayloadType::FileTransferAck,
        PayloadType::TransferManifest,
        PayloadType::TransferChunk,
        PayloadType::MeshPing,
        PayloadType::MeshPong,
        PayloadType::OffloadTask,
        PayloadType::TaskReceived,
    ];

    /// The name on the wire (the families' serde renames are tested
    /// against these).
    pub const fn as_str(self) -> &'static str {
        match self {
            PayloadType::Message => "message",
            PayloadType::KarsReceipt => "kars_receipt",
            PayloadType::PairRequest => "pair_request",
            PayloadType::PairResponse => "pair_response",
            PayloadType::OffloadRequest => "offload_request",
            PayloadType::OffloadStatus => "offload_status",
            PayloadType::OffloadError => "offload_error",
            PayloadType::OffloadCleanup => "offload_cleanup",
            PayloadType::OffloadHello => "offload_hello",
            PayloadType::OffloadProgress => "offload_progress",
            PayloadType::OffloadStart => "offload_start",
            PayloadType::OffloadDone => "offload_done",
            PayloadType::FileTransfer => "file_transfer",
            PayloadType::FileTransferAck => "file_transfer_ack",
            PayloadType::TransferManifest => "mesh:transfer_manifest",
            PayloadType::TransferChunk => "mesh:transfer_chunk",
            PayloadType::MeshPing => "mesh:ping",
            PayloadType::MeshPong => "mesh:pong",
            PayloadType::OffloadTask => "offload_task",
            PayloadType::TaskReceived => "task_received",
        }
    }

    /// The type a wire name stands for; `None` for any other string
    /// (exact, case-sensitive match, as before).
    pub fn from_name(s: &str) -> Option<PayloadType> {
        PayloadType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The type of a payload: `UnknownType` for a `type` no family has
    /// (a peer's own message kind, or a misspelling), `NoType` without a
    /// string `type`, `NotAnObject` for a bare string or array.
    pub fn of(v: &Value) -> Result<PayloadType, ParseError> {
        let obj = v.as_object().ok_or(ParseError::NotAnObject)?;
        let kind = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or(ParseError::NoType)?;
        PayloadType::from_name(kind).ok_or_else(|| ParseError::UnknownType {
            family: "payload",
            kind: kind.chars().take(MAX_TYPE_CHARS).collect(),
        })
    }
}

impl std::fmt::Display for PayloadType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_name_maps_back_to_its_type() {
        for t in PayloadType::ALL {
            assert_eq!(PayloadType::from_name(t.as_str()), Some(t));
            assert_eq!(PayloadType::of(&json!({"type": t.as_str()})), Ok(t));
        }
        let mut names: Vec<&str> = PayloadType::ALL.iter().map(|t| t.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PayloadType::ALL.len());
    }

    #[test]
    fn unknown_missing_and_non_object_types_are_explicit() {
        assert_eq!(
            PayloadType::of(&json!({"type": "Offload_Status"})),
            Err(ParseError::UnknownType {
                family: "payload",
                kind: "Offload_Status".into()
            })
        );
        assert_eq!(
            PayloadType::of(&json!({"type": 5})),
            Err(ParseError::NoType)
        );
        assert_eq!(
            PayloadType::of(&json!({"content": "hi"})),
            Err(ParseError::NoType)
        );
        assert_eq!(PayloadType::of(&json!("hi")), Err(ParseError::NotAnObject));
        // A peer's long type is cut, and shown escaped.
        let long = format!("x\n{}", "y".repeat(500));
        let Err(e) = PayloadType::of(&json!({ "type": long })) else {
            panic!("a long unknown type parsed");
        };
        let shown = e.to_string();
        assert!(shown.starts_with("`x\\u{a}yyy") && !shown.contains('\n'));
        assert!(
            matches!(e, ParseError::UnknownType { kind, .. } if kind.chars().count() == MAX_TYPE_CHARS)
        );
    }
}
