//! The offload protocol's messages (kars-mesh-plugin.md §7.1, §7.2): what
//! the client, the controller and the sandbox say to each other.
//!
//! One type per message, each a variant of [`OffloadMsg`] (tagged by
//! `type`). Constructors build exactly what the engine sends; parsing
//! accepts exactly what the engine accepts. That is why most fields are
//! `Option` and read leniently (a field of the wrong JSON type reads as
//! absent, see `wire::lenient`): the readers these types replace fall back
//! to a default for such a field instead of dropping the message. A field is
//! required (non-`Option`) only where its absence already made the reader
//! ignore the message, so a parse error there changes nothing.

use crate::wire::payload::{variants_from, Family, PayloadType};
use crate::wire::transfer::{ChunkMsg, ManifestMsg};
use serde::{Deserialize, Serialize};

mod files;
mod legacy;
mod report;
mod request;
mod run;

pub use files::{FileTooLarge, FileTransfer, FileTransferAck};
pub use legacy::{MeshPing, MeshPong, OffloadTask, TaskReceived};
pub use report::{ErrorPhase, OffloadError, OffloadStatus, StatusPhase, READY_MESSAGE};
pub use request::{CleanupReason, OffloadCleanup, OffloadRequest, Preferences};
pub use run::{
    NotReturned, OffloadDone, OffloadHello, OffloadProgress, OffloadStart, TokensUsed,
    MAX_NOT_RETURNED, STAGE_EXECUTING, STAGE_WAITING,
};

/// Every offload message, by its wire `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OffloadMsg {
    #[serde(rename = "offload_request")]
    Request(OffloadRequest),
    #[serde(rename = "offload_status")]
    Status(OffloadStatus),
    #[serde(rename = "offload_error")]
    Error(OffloadError),
    #[serde(rename = "offload_cleanup")]
    Cleanup(OffloadCleanup),
    #[serde(rename = "offload_hello")]
    Hello(OffloadHello),
    #[serde(rename = "offload_progress")]
    Progress(OffloadProgress),
    #[serde(rename = "offload_start")]
    Start(OffloadStart),
    #[serde(rename = "offload_done")]
    Done(OffloadDone),
    #[serde(rename = "file_transfer")]
    FileTransfer(FileTransfer),
    #[serde(rename = "file_transfer_ack")]
    FileTransferAck(FileTransferAck),
    /// A large message's manifest; it travels among the offload's messages
    /// and is handled where they are.
    #[serde(rename = "mesh:transfer_manifest")]
    TransferManifest(ManifestMsg),
    #[serde(rename = "mesh:transfer_chunk")]
    TransferChunk(ChunkMsg),
    /// The kars sandbox's legacy path (`legacy.rs`).
    #[serde(rename = "mesh:ping")]
    Ping(MeshPing),
    #[serde(rename = "mesh:pong")]
    Pong(MeshPong),
    #[serde(rename = "offload_task")]
    Task(OffloadTask),
    #[serde(rename = "task_received")]
    TaskReceived(TaskReceived),
}

variants_from!(OffloadMsg {
    Request(OffloadRequest),
    Status(OffloadStatus),
    Error(OffloadError),
    Cleanup(OffloadCleanup),
    Hello(OffloadHello),
    Progress(OffloadProgress),
    Start(OffloadStart),
    Done(OffloadDone),
    FileTransfer(FileTransfer),
    FileTransferAck(FileTransferAck),
    TransferManifest(ManifestMsg),
    TransferChunk(ChunkMsg),
    Ping(MeshPing),
    Pong(MeshPong),
    Task(OffloadTask),
    TaskReceived(TaskReceived),
});

impl Family for OffloadMsg {
    const FAMILY: &'static str = "offload";
    const TYPES: &'static [&'static str] = &[
        PayloadType::OffloadRequest.as_str(),
        PayloadType::OffloadStatus.as_str(),
        PayloadType::OffloadError.as_str(),
        PayloadType::OffloadCleanup.as_str(),
        PayloadType::OffloadHello.as_str(),
        PayloadType::OffloadProgress.as_str(),
        PayloadType::OffloadStart.as_str(),
        PayloadType::OffloadDone.as_str(),
        PayloadType::FileTransfer.as_str(),
        PayloadType::FileTransferAck.as_str(),
        PayloadType::TransferManifest.as_str(),
        PayloadType::TransferChunk.as_str(),
        PayloadType::MeshPing.as_str(),
        PayloadType::MeshPong.as_str(),
        PayloadType::OffloadTask.as_str(),
        PayloadType::TaskReceived.as_str(),
    ];
}

impl OffloadMsg {
    pub fn payload_type(&self) -> PayloadType {
        match self {
            OffloadMsg::Request(_) => PayloadType::OffloadRequest,
            OffloadMsg::Status(_) => PayloadType::OffloadStatus,
            OffloadMsg::Error(_) => PayloadType::OffloadError,
            OffloadMsg::Cleanup(_) => PayloadType::OffloadCleanup,
            OffloadMsg::Hello(_) => PayloadType::OffloadHello,
            OffloadMsg::Progress(_) => PayloadType::OffloadProgress,
            OffloadMsg::Start(_) => PayloadType::OffloadStart,
            OffloadMsg::Done(_) => PayloadType::OffloadDone,
            OffloadMsg::FileTransfer(_) => PayloadType::FileTransfer,
            OffloadMsg::FileTransferAck(_) => PayloadType::FileTransferAck,
            OffloadMsg::TransferManifest(_) => PayloadType::TransferManifest,
            OffloadMsg::TransferChunk(_) => PayloadType::TransferChunk,
            OffloadMsg::Ping(_) => PayloadType::MeshPing,
            OffloadMsg::Pong(_) => PayloadType::MeshPong,
            OffloadMsg::Task(_) => PayloadType::OffloadTask,
            OffloadMsg::TaskReceived(_) => PayloadType::TaskReceived,
        }
    }

    /// The `request_id` the message names, if it names one as a string
    /// (`p["request_id"].as_str()`): the routing and the sandbox's
    /// same-request checks look only at this.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            OffloadMsg::Request(m) => Some(&m.request_id),
            OffloadMsg::Status(m) => Some(&m.request_id),
            OffloadMsg::Cleanup(m) => Some(&m.request_id),
            OffloadMsg::Start(m) => Some(&m.request_id),
            OffloadMsg::Error(m) => m.request_id.as_deref(),
            OffloadMsg::Hello(m) => m.request_id.as_deref(),
            OffloadMsg::Progress(m) => m.request_id.as_deref(),
            OffloadMsg::Done(m) => m.request_id.as_deref(),
            OffloadMsg::FileTransfer(m) => m.request_id.as_deref(),
            OffloadMsg::FileTransferAck(m) => m.request_id.as_deref(),
            OffloadMsg::TransferManifest(m) => m.request_id.as_deref(),
            OffloadMsg::TransferChunk(m) => m.request_id.as_deref(),
            OffloadMsg::Task(m) => Some(&m.request_id),
            OffloadMsg::TaskReceived(m) => Some(&m.request_id),
            // A ping and its pong name a nonce, not a request.
            OffloadMsg::Ping(_) | OffloadMsg::Pong(_) => None,
        }
    }
}

/// At most `n` characters of `s`.
fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The helpers every offload message's tests use: (a) the typed message
/// serializes to the literal, (b) the literal parses back to it, (c) a
/// misspelt type or a missing required field is named.
#[cfg(test)]
pub(crate) mod test_util {
    use super::OffloadMsg;
    use crate::wire::payload::{Family, ParseError, PayloadType};
    use serde_json::{json, Value};

    pub(crate) const RID: &str = "5f0c2a4e-1b2c-4d3e-8f90-0123456789ab";
    pub(crate) const TS: &str = "2026-01-02T03:04:05.678Z";

    /// (a) the typed message is the literal; (b) the literal parses to it,
    /// borrowed and owned, and from text.
    pub(crate) fn same(msg: impl Into<OffloadMsg>, literal: Value) {
        let msg = msg.into();
        assert_eq!(msg.to_value(), literal);
        assert_eq!(OffloadMsg::parse(&literal).as_ref(), Ok(&msg));
        assert_eq!(
            OffloadMsg::from_text(&literal.to_string()).as_ref(),
            Ok(&msg)
        );
        assert_eq!(OffloadMsg::from_value(literal.clone()), Ok(msg.clone()));
        assert_eq!(msg.payload_type().as_str(), literal["type"]);
        assert_eq!(msg.request_id(), literal["request_id"].as_str());
    }

    /// (c) a misspelt `type` is named, never read as another message.
    pub(crate) fn misspelt(literal: &Value, wrong: &str) {
        let mut v = literal.clone();
        v["type"] = json!(wrong);
        assert_eq!(
            OffloadMsg::parse(&v),
            Err(ParseError::UnknownType {
                family: "offload",
                kind: wrong.into()
            })
        );
    }

    /// (c) a required field's absence is named.
    pub(crate) fn missing(literal: &Value, field: &str) {
        let mut v = literal.clone();
        v.as_object_mut().unwrap().remove(field);
        let kind = literal["type"].as_str().unwrap();
        assert_eq!(
            OffloadMsg::parse(&v),
            Err(ParseError::MissingField {
                kind: PayloadType::from_name(kind).unwrap().as_str(),
                field: field.into()
            })
        );
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use crate::wire::payload::ParseError;
    use serde_json::json;

    #[test]
    fn transfer_manifest_and_chunk_travel_as_offload_messages() {
        let text = json!({"d": "x".repeat(crate::wire::transfer::CHUNK_CHARS + 10)}).to_string();
        let parts = crate::wire::transfer::split(&text, "t1", "file_transfer", "sb", TS)
            .unwrap()
            .unwrap();
        let Ok(OffloadMsg::TransferManifest(m)) = OffloadMsg::parse(&parts[0]) else {
            panic!("not a manifest");
        };
        assert_eq!(OffloadMsg::from(m.clone()).to_value(), parts[0]);
        let Ok(OffloadMsg::TransferChunk(c)) = OffloadMsg::from_value(parts[1].clone()) else {
            panic!("not a chunk");
        };
        assert_eq!(OffloadMsg::from(c).to_value(), parts[1]);
        misspelt(&parts[0], "mesh:transfer-manifest");
        misspelt(&parts[1], "transfer_chunk");
    }

    #[test]
    fn every_message_answers_which_request_it_names() {
        // src/offload/client.rs (then src/agent/offload.rs), on_sandbox_news, drops sandbox news naming
        // another request whatever its type (`p["request_id"].as_str()`).
        for t in OffloadMsg::TYPES {
            let v = json!({"type": t, "request_id": "other", "nonce": "n"});
            let m = OffloadMsg::parse(&v).unwrap();
            // A ping and its pong name a nonce, never a request.
            let named = !matches!(m, OffloadMsg::Ping(_) | OffloadMsg::Pong(_));
            assert_eq!(m.request_id(), named.then_some("other"), "{t}");
            // A request id that is not a string is none (where optional).
            let v = json!({"type": t, "request_id": 5});
            if let Ok(m) = OffloadMsg::parse(&v) {
                assert_eq!(m.request_id(), None, "{t}");
            }
        }
    }

    #[test]
    fn names_agree_with_payload_types_and_non_messages_are_refused() {
        for name in OffloadMsg::TYPES {
            assert!(PayloadType::from_name(name).is_some(), "{name}");
        }
        assert_eq!(
            OffloadMsg::parse(&json!({"type": "pair_request"})),
            Err(ParseError::UnknownType {
                family: "offload",
                kind: "pair_request".into()
            })
        );
        assert_eq!(OffloadMsg::parse(&json!([1])), Err(ParseError::NotAnObject));
        assert_eq!(OffloadMsg::parse(&json!({})), Err(ParseError::NoType));
        assert!(matches!(
            OffloadMsg::from_text("{"),
            Err(ParseError::NotJson(_))
        ));
    }
}
