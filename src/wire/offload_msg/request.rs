//! Client → controller: `offload_request` and `offload_cleanup`.

use crate::wire::lenient::{absent, object, opt, strings_each};
use crate::wire::limits::DEFAULT_TIMEOUT_MINUTES;
use serde::{Deserialize, Serialize};
use serde_json::Number;

/// `offload_request` (client → controller): the task, the names of the
/// input files (never their contents) and the preferences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffloadRequest {
    /// Required: the controller ignores a request without one.
    pub request_id: String,
    /// Absent or not a string: the controller refuses an empty task.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub task: Option<String>,
    /// Basenames. A non-string element is kept as `None` so the controller
    /// can refuse the list; anything but an array reads as no files.
    #[serde(default, deserialize_with = "strings_each")]
    pub files: Vec<Option<String>>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub file_count: Option<u64>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub total_bytes: Option<u64>,
    /// Absent or not an object: the defaults.
    #[serde(default, deserialize_with = "object", skip_serializing_if = "absent")]
    pub preferences: Option<Preferences>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
}

/// `offload_request.preferences`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Preferences {
    /// Sent as an integer; read as any JSON number (the controller takes
    /// `30.5` and floors it), so it is kept as the number that came.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timeout_minutes: Option<Number>,
    /// Omitted when the user chose none.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub model: Option<String>,
}

impl Preferences {
    /// The timeout as the controller reads it: any number, else the default.
    pub fn timeout_minutes_f64(&self) -> f64 {
        self.timeout_minutes
            .as_ref()
            .and_then(Number::as_f64)
            .unwrap_or(DEFAULT_TIMEOUT_MINUTES as f64)
    }
}

impl OffloadRequest {
    /// What `cloud_offload` sends: `file_count` is the number of `files`.
    pub fn new(
        request_id: &str,
        task: &str,
        files: Vec<String>,
        total_bytes: u64,
        timeout_minutes: u64,
        model: Option<String>,
        timestamp: &str,
    ) -> Self {
        OffloadRequest {
            request_id: request_id.into(),
            task: Some(task.into()),
            file_count: Some(files.len() as u64),
            files: files.into_iter().map(Some).collect(),
            total_bytes: Some(total_bytes),
            preferences: Some(Preferences {
                timeout_minutes: Some(timeout_minutes.into()),
                model,
            }),
            timestamp: Some(timestamp.into()),
        }
    }

    /// The preferences, or the defaults when none came.
    pub fn preferences(&self) -> Preferences {
        self.preferences.clone().unwrap_or_default()
    }
}

/// Why the client asks the controller to tear the sandbox down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupReason {
    Done,
    Error,
    Cancelled,
    DiscoveryTimeout,
}

impl CleanupReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            CleanupReason::Done => "done",
            CleanupReason::Error => "error",
            CleanupReason::Cancelled => "cancelled",
            CleanupReason::DiscoveryTimeout => "discovery_timeout",
        }
    }
}

/// `offload_cleanup` (client → controller).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffloadCleanup {
    /// Required: without one nothing can match, and the controller ignores it.
    pub request_id: String,
    /// Only logged by the controller: any string is taken.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub reason: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
}

impl OffloadCleanup {
    pub fn new(request_id: &str, reason: CleanupReason, timestamp: &str) -> Self {
        OffloadCleanup {
            request_id: request_id.into(),
            reason: Some(reason.as_str().into()),
            timestamp: Some(timestamp.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::offload_msg::test_util::*;
    use crate::wire::offload_msg::OffloadMsg;
    use crate::wire::payload::{Family, ParseError};
    use serde_json::json;

    #[test]
    fn offload_request() {
        let (task, total, timeout_minutes) = ("summarise the logs", 1234u64, 30u64);
        let names = vec!["a.txt".to_string(), "b.csv".to_string()];
        let ts = TS;
        for model in [None, Some("gpt-x".to_string())] {
            // src/offload/client.rs (then src/agent/offload.rs), Agent::finish_submit.
            let mut prefs = json!({"timeout_minutes": timeout_minutes});
            if let Some(m) = &model {
                prefs["model"] = json!(m);
            }
            let literal = json!({
                "type": "offload_request",
                "task": task,
                "files": names,
                "file_count": names.len(),
                "total_bytes": total,
                "preferences": prefs,
                "request_id": RID,
                "timestamp": ts,
            });
            let msg =
                OffloadRequest::new(RID, task, names.clone(), total, timeout_minutes, model, ts);
            same(msg, literal.clone());
            misspelt(&literal, "offload-request");
            missing(&literal, "request_id");
        }
    }

    #[test]
    fn offload_request_is_read_as_leniently_as_the_controller_did() {
        // src/offload/controller.rs (then src/agent/controller.rs) reads task/files/preferences with
        // `as_str`/`as_array`/`as_f64` and falls back; so does the type.
        let v = json!({"type": "offload_request", "request_id": RID, "task": 7,
            "files": ["a", 3], "preferences": {"timeout_minutes": 12.5, "model": false}});
        let Ok(OffloadMsg::Request(r)) = OffloadMsg::parse(&v) else {
            panic!("not a request");
        };
        assert_eq!(r.task, None);
        assert_eq!(r.files, vec![Some("a".to_string()), None]);
        assert_eq!(r.preferences().timeout_minutes_f64(), 12.5);
        assert_eq!(r.preferences().model, None);
        let bare =
            json!({"type": "offload_request", "request_id": RID, "files": "x", "preferences": "y"});
        let Ok(OffloadMsg::Request(r)) = OffloadMsg::parse(&bare) else {
            panic!("not a request");
        };
        assert!(r.files.is_empty());
        assert_eq!(r.preferences().timeout_minutes_f64(), 30.0);
        // An array is no preferences (`p["preferences"]["timeout_minutes"]`
        // is null), never its elements read as the fields in order.
        let listed =
            json!({"type": "offload_request", "request_id": RID, "preferences": [45, "m"]});
        let Ok(OffloadMsg::Request(r)) = OffloadMsg::parse(&listed) else {
            panic!("not a request");
        };
        assert_eq!(r.preferences(), Preferences::default());
        // A request id of the wrong type is no request id.
        let bad = json!({"type": "offload_request", "request_id": 5});
        assert_eq!(
            OffloadMsg::parse(&bad),
            Err(ParseError::BadField {
                kind: "offload_request"
            })
        );
    }

    #[test]
    fn offload_cleanup() {
        let reason = "discovery_timeout";
        // src/offload/client.rs (then src/agent/offload.rs), Agent::send_cleanup.
        let literal = json!({"type": "offload_cleanup", "request_id": RID, "reason": reason, "timestamp": TS});
        same(
            OffloadCleanup::new(RID, CleanupReason::DiscoveryTimeout, TS),
            literal.clone(),
        );
        misspelt(&literal, "offload_clean");
        missing(&literal, "request_id");
        for r in [
            CleanupReason::Done,
            CleanupReason::Error,
            CleanupReason::Cancelled,
        ] {
            let v = OffloadMsg::from(OffloadCleanup::new(RID, r, TS)).to_value();
            assert_eq!(v["reason"], r.as_str());
        }
    }
}
