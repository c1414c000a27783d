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
        // serde_json messages quote at most a type name and position, not input.
        WireError::Json {
            what,
            detail: e.to_string(),
        }
    }
}
