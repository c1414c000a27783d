//! Controller → client: `offload_status` (the phases, and where the
//! sandbox is) and `offload_error` (also the sandbox's, at the end of a
//! failed run).

use super::cut;
use crate::wire::lenient::{absent, opt};
use crate::wire::limits::MAX_ERROR_CHARS;
use serde::{Deserialize, Serialize};

/// A phase the controller reports in `offload_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPhase {
    Validating,
    Spawning,
    Scheduled,
    Ready,
}

impl StatusPhase {
    pub const fn as_str(self) -> &'static str {
        match self {
            StatusPhase::Validating => "validating",
            StatusPhase::Spawning => "spawning",
            StatusPhase::Scheduled => "scheduled",
            StatusPhase::Ready => "ready",
        }
    }
}

/// The `message` of a `ready` status, as the controller has always sent it.
pub const READY_MESSAGE: &str = "sandbox ready";

/// `offload_status` (controller → client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffloadStatus {
    /// Required: the client takes a status only for its active request, so
    /// one without a request id was never the offload's.
    pub request_id: String,
    /// Any string: the client ignores a phase it does not know, but still
    /// consumes the message.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub phase: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub message: Option<String>,
    /// With `ready` only.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub sandbox_name: Option<String>,
    /// With `ready` only; checked by the client to be a `did:mesh:`.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub sandbox_did: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
}

impl OffloadStatus {
    /// A phase change in the controller's words.
    pub fn news(request_id: &str, phase: StatusPhase, message: &str, timestamp: &str) -> Self {
        OffloadStatus {
            request_id: request_id.into(),
            phase: Some(phase.as_str().into()),
            message: Some(message.into()),
            sandbox_name: None,
            sandbox_did: None,
            timestamp: Some(timestamp.into()),
        }
    }

    /// `ready`: the sandbox is up, and this is where it is.
    pub fn ready(
        request_id: &str,
        sandbox_name: &str,
        sandbox_did: Option<String>,
        timestamp: &str,
    ) -> Self {
        OffloadStatus {
            sandbox_name: Some(sandbox_name.into()),
            sandbox_did,
            ..OffloadStatus::news(request_id, StatusPhase::Ready, READY_MESSAGE, timestamp)
        }
    }
}

/// The phase an `offload_error` names: the controller's refusals, its
/// spawn failures, and the end of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPhase {
    Validating,
    Spawning,
    Execution,
}

impl ErrorPhase {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorPhase::Validating => "validating",
            ErrorPhase::Spawning => "spawning",
            ErrorPhase::Execution => "execution",
        }
    }
}

/// `offload_error` (controller → client, and sandbox → client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffloadError {
    /// The client needs it to match from the controller; from the sandbox
    /// an error without one is still the offload's.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub request_id: Option<String>,
    /// Absent: the client says "unknown error".
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub error: Option<String>,
    /// `execution` tells the client the cluster ended a run (rather than
    /// refused it).
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub phase: Option<String>,
    /// Sandbox only.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from_agent: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
}

impl OffloadError {
    /// The controller's refusal or report (no `from_agent`). The error is
    /// cut to `MAX_ERROR_CHARS`.
    pub fn controller(request_id: &str, phase: ErrorPhase, error: &str, timestamp: &str) -> Self {
        OffloadError {
            request_id: Some(request_id.into()),
            error: Some(cut(error, MAX_ERROR_CHARS)),
            phase: Some(phase.as_str().into()),
            from_agent: None,
            timestamp: Some(timestamp.into()),
        }
    }

    /// The sandbox's end of a run that failed. The error is cut to
    /// `MAX_ERROR_CHARS`.
    pub fn sandbox(request_id: &str, error: &str, from_agent: &str, timestamp: &str) -> Self {
        OffloadError {
            from_agent: Some(from_agent.into()),
            ..OffloadError::controller(request_id, ErrorPhase::Execution, error, timestamp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::offload_msg::test_util::*;
    use crate::wire::offload_msg::OffloadMsg;
    use crate::wire::payload::Family;
    use serde_json::json;

    #[test]
    fn offload_status() {
        let (rid, phase, message) = (RID, "spawning", "starting sandbox offload-1");
        // src/offload/controller.rs (then src/agent/controller.rs), Agent::ctl_status; `ctl_send` adds the
        // timestamp.
        let mut literal = json!({"type": "offload_status", "request_id": rid, "phase": phase, "message": message});
        literal["timestamp"] = json!(TS);
        same(
            OffloadStatus::news(rid, StatusPhase::Spawning, message, TS),
            literal.clone(),
        );
        misspelt(&literal, "offload_state");
        missing(&literal, "request_id");

        let (name, did) = ("offload-1", "did:mesh:0123456789abcdef0123456789abcdef");
        // src/offload/controller.rs (then src/agent/controller.rs), Agent::controller_job_ready (and
        // answer_repeated_request with `o.sandbox_did`); plus ctl_send's timestamp.
        let mut literal = json!({"type": "offload_status", "request_id": rid, "phase": "ready", "message": "sandbox ready", "sandbox_name": name, "sandbox_did": did});
        literal["timestamp"] = json!(TS);
        same(
            OffloadStatus::ready(rid, name, Some(did.into()), TS),
            literal.clone(),
        );
        missing(&literal, "request_id");
        // An unknown phase is still a status (the client ignores it).
        let odd = json!({"type": "offload_status", "request_id": rid, "phase": "warming"});
        assert!(
            matches!(OffloadMsg::parse(&odd), Ok(OffloadMsg::Status(s)) if s.phase.as_deref() == Some("warming"))
        );
    }

    #[test]
    fn offload_error() {
        let (rid, phase, error) = (RID, "validating", "No free sandbox slot.");
        // src/offload/controller.rs (then src/agent/controller.rs), Agent::ctl_error; plus ctl_send's timestamp.
        let mut literal =
            json!({"type": "offload_error", "request_id": rid, "error": error, "phase": phase});
        literal["timestamp"] = json!(TS);
        same(
            OffloadError::controller(rid, ErrorPhase::Validating, error, TS),
            literal.clone(),
        );
        misspelt(&literal, "offload_err");

        let (name, code) = ("offload-1", 137);
        // src/offload/controller.rs (then src/agent/controller.rs), Agent::controller_job_exited; plus
        // ctl_send's timestamp.
        let mut literal = json!({"type": "offload_error", "request_id": rid, "error": format!("the sandbox {} stopped (exit code {}) before the offload was cleaned up", name, code), "phase": "execution"});
        literal["timestamp"] = json!(TS);
        let text = format!(
            "the sandbox {name} stopped (exit code {code}) before the offload was cleaned up"
        );
        same(
            OffloadError::controller(rid, ErrorPhase::Execution, &text, TS),
            literal,
        );

        let long = "e".repeat(5000);
        let error = long.as_str();
        // src/offload/sandbox.rs (then src/agent/sandbox.rs), Agent::sandbox_error.
        let literal = json!({
            "type": "offload_error", "request_id": rid, "error": error.chars().take(4000).collect::<String>(),
            "phase": "execution", "from_agent": name, "timestamp": TS,
        });
        same(OffloadError::sandbox(rid, error, name, TS), literal.clone());
        // From the sandbox an error needs no request id: nothing is required.
        let bare = json!({"type": "offload_error"});
        assert!(
            matches!(OffloadMsg::parse(&bare), Ok(OffloadMsg::Error(e)) if e.request_id.is_none() && e.error.is_none())
        );
    }
}
