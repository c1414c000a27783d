//! Encodings and messages exactly as the AgentMesh relay, registry and SDKs
//! put them on the wire (agentmesh-wire.md §2–§7).

pub mod b64;
pub mod base58;
pub mod frames;
pub mod hex;
pub mod plaintext;
pub mod registry;
pub mod time;
pub mod token;
pub mod transfer;

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
