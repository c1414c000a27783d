//! The run, between the client and its sandbox: `offload_hello`,
//! `offload_progress`, the client's go-ahead `offload_start`, and
//! `offload_done`.

use super::cut;
use crate::wire::lenient::{absent, object, opt};
use crate::wire::limits::{ECHOED_NAME_CHARS, MAX_SUMMARY_CHARS, TASK_PREVIEW_CHARS};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `offload_hello` (sandbox → client): the sandbox is up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffloadHello {
    /// Must match for a hello that comes before the controller's `ready`.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub request_id: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from_agent: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub task_preview: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub started_at: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub message: Option<String>,
}

impl OffloadHello {
    /// The sandbox `name` greets its requester: the task's first
    /// `TASK_PREVIEW_CHARS` characters, and when it started.
    pub fn new(request_id: &str, name: &str, task: &str, started_at: &str) -> Self {
        OffloadHello {
            request_id: Some(request_id.into()),
            from_agent: Some(name.into()),
            task_preview: Some(cut(task, TASK_PREVIEW_CHARS)),
            started_at: Some(started_at.into()),
            message: Some(format!("Sandbox {name} is up and working on the task.")),
        }
    }
}

/// The `stage` of a report on the run, and what the client assumes
/// without one (the original's only stage).
pub const STAGE_EXECUTING: &str = "executing";
/// Ours: the sandbox is up but runs nothing yet (inputs or the go-ahead
/// still missing). Never taken as the task running.
pub const STAGE_WAITING: &str = "waiting";

/// `offload_progress` (sandbox → client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffloadProgress {
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub request_id: Option<String>,
    /// Absent: `executing`.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub stage: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub message: Option<String>,
    /// Only what the executor reported; absent otherwise (never made up
    /// from time). A client reads a fractional value as absent too.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub pct: Option<u64>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub elapsed_seconds: Option<u64>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from_agent: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
}

impl OffloadProgress {
    /// A report on the run; `pct` only when the executor gave one.
    pub fn executing(
        request_id: &str,
        message: &str,
        pct: Option<u64>,
        elapsed_seconds: u64,
        from_agent: &str,
        timestamp: &str,
    ) -> Self {
        OffloadProgress {
            request_id: Some(request_id.into()),
            stage: Some(STAGE_EXECUTING.into()),
            message: Some(message.into()),
            pct,
            elapsed_seconds: Some(elapsed_seconds),
            from_agent: Some(from_agent.into()),
            timestamp: Some(timestamp.into()),
        }
    }

    /// The sandbox is alive and waits (for inputs or the go-ahead).
    pub fn waiting(
        request_id: &str,
        message: &str,
        elapsed_seconds: u64,
        from_agent: &str,
        timestamp: &str,
    ) -> Self {
        OffloadProgress {
            stage: Some(STAGE_WAITING.into()),
            ..Self::executing(
                request_id,
                message,
                None,
                elapsed_seconds,
                from_agent,
                timestamp,
            )
        }
    }
}

/// `offload_start` (client → sandbox): the go-ahead, after the inputs. The
/// sandbox runs nothing until it names the SHA-256 of the sandbox's task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffloadStart {
    /// Required: the sandbox ignores a go-ahead for another (or no) request.
    pub request_id: String,
    /// Absent: it matches no task, and the sandbox reports the mismatch.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub task_sha256: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub files: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from_agent: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
}

impl OffloadStart {
    pub fn new(
        request_id: &str,
        task_sha256: &str,
        files: Vec<String>,
        from_agent: &str,
        timestamp: &str,
    ) -> Self {
        OffloadStart {
            request_id: request_id.into(),
            task_sha256: Some(task_sha256.into()),
            files: Some(files),
            from_agent: Some(from_agent.into()),
            timestamp: Some(timestamp.into()),
        }
    }
}

/// `offload_done.tokens_used`: the built-in and `--exec` executors use no
/// model, so both are 0; the field is kept for the original's readers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensUsed {
    pub prompt: u64,
    pub completion: u64,
}

/// `offload_done` (sandbox → client): the run is over; its outputs went
/// before as `file_transfer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffloadDone {
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub request_id: Option<String>,
    /// Absent: an empty summary.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub summary: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub output_files: Option<Vec<String>>,
    /// Always `[]`: files travel as `file_transfer`, never inline.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub output_file_contents: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "object", skip_serializing_if = "absent")]
    pub tokens_used: Option<TokensUsed>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub duration_seconds: Option<u64>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from_agent: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
    /// Outputs the sandbox did not send, and why (ours; absent when every
    /// output went, and from the original sandbox, which said nothing).
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub not_returned: Option<Vec<NotReturned>>,
}

/// An output file that was not sent: its name, size when known, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotReturned {
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub size_bytes: Option<u64>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub reason: Option<String>,
}

/// Entries an `offload_done` lists at most (a command may leave thousands
/// of files; the count of the rest goes in the last entry's reason).
pub const MAX_NOT_RETURNED: usize = 20;
/// A reason is cut to this many characters.
const NOT_RETURNED_REASON_CHARS: usize = 300;

impl NotReturned {
    pub fn new(name: &str, size_bytes: Option<u64>, reason: &str) -> Self {
        NotReturned {
            name: Some(cut(name, ECHOED_NAME_CHARS)),
            size_bytes,
            reason: Some(cut(reason, NOT_RETURNED_REASON_CHARS)),
        }
    }
}

impl OffloadDone {
    /// The summary is cut to `MAX_SUMMARY_CHARS`.
    pub fn new(
        request_id: &str,
        summary: &str,
        output_files: Vec<String>,
        duration_seconds: u64,
        from_agent: &str,
        timestamp: &str,
    ) -> Self {
        OffloadDone {
            request_id: Some(request_id.into()),
            summary: Some(cut(summary, MAX_SUMMARY_CHARS)),
            output_files: Some(output_files),
            output_file_contents: Some(Vec::new()),
            tokens_used: Some(TokensUsed::default()),
            duration_seconds: Some(duration_seconds),
            from_agent: Some(from_agent.into()),
            timestamp: Some(timestamp.into()),
            not_returned: None,
        }
    }

    /// Name the outputs that were not sent (none: the field stays absent,
    /// and the message is the original's byte for byte). At most
    /// `MAX_NOT_RETURNED` entries; the last one counts the rest.
    pub fn with_not_returned(mut self, mut list: Vec<NotReturned>) -> Self {
        if list.len() > MAX_NOT_RETURNED {
            let rest = list.len() - (MAX_NOT_RETURNED - 1);
            list.truncate(MAX_NOT_RETURNED - 1);
            list.push(NotReturned::new(
                &format!("{rest} more"),
                None,
                "also not returned (not listed one by one)",
            ));
        }
        self.not_returned = (!list.is_empty()).then_some(list);
        self
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
    fn offload_hello() {
        let name = "offload-1a2b";
        let task = "t".repeat(300);
        let now = TS;
        // src/offload/sandbox.rs (then src/agent/sandbox.rs), Agent::start_sandbox.
        let preview: String = task.chars().take(200).collect();
        let literal = json!({
            "type": "offload_hello", "request_id": RID, "from_agent": name,
            "task_preview": preview, "started_at": now,
            "message": format!("Sandbox {} is up and working on the task.", name),
        });
        same(OffloadHello::new(RID, name, &task, now), literal.clone());
        misspelt(&literal, "offload_helo");
        // Nothing is required: an early hello without a request id is held
        // by nobody, but it is a hello.
        assert!(matches!(
            OffloadMsg::parse(&json!({"type": "offload_hello"})),
            Ok(OffloadMsg::Hello(_))
        ));
    }

    #[test]
    fn offload_progress() {
        let (message, pct, elapsed, name) = ("indexing (running for 20 s)", 12u64, 20u64, "sb");
        // src/offload/sandbox.rs (then src/agent/sandbox.rs), Agent::sandbox_progress_due.
        let literal = json!({
            "type": "offload_progress", "request_id": RID, "stage": "executing",
            "message": message, "pct": pct, "elapsed_seconds": elapsed, "from_agent": name,
            "timestamp": TS,
        });
        same(
            OffloadProgress::executing(RID, message, Some(pct), elapsed, name, TS),
            literal.clone(),
        );
        misspelt(&literal, "progress");
        // No percentage from the executor: none on the wire (the original's
        // other fields unchanged).
        let mut bare = literal.clone();
        bare.as_object_mut().map(|o| o.remove("pct"));
        same(
            OffloadProgress::executing(RID, message, None, elapsed, name, TS),
            bare.clone(),
        );
        // Waiting: our stage, never a percentage.
        let mut waiting = bare;
        waiting["stage"] = json!("waiting");
        same(
            OffloadProgress::waiting(RID, message, elapsed, name, TS),
            waiting,
        );
        // The client reads a fractional pct as none (as `as_u64` did).
        let odd = json!({"type": "offload_progress", "pct": 12.5, "stage": 3});
        assert!(
            matches!(OffloadMsg::parse(&odd), Ok(OffloadMsg::Progress(p)) if p.pct.is_none() && p.stage.is_none())
        );
    }

    #[test]
    fn offload_start() {
        let rid = RID;
        let task_sha256 = "ab".repeat(32);
        let names = vec!["a.txt", "b.csv"];
        let from_agent = "alice";
        // src/offload/client.rs (then src/agent/offload.rs), Agent::send_inputs.
        let literal = json!({
            "type": "offload_start", "request_id": rid, "task_sha256": task_sha256,
            "files": names, "from_agent": from_agent, "timestamp": TS,
        });
        let files = names.iter().map(|n| n.to_string()).collect();
        same(
            OffloadStart::new(rid, &task_sha256, files, from_agent, TS),
            literal.clone(),
        );
        misspelt(&literal, "offload_go");
        missing(&literal, "request_id");
        // No task hash still parses: the sandbox answers the mismatch.
        let v = json!({"type": "offload_start", "request_id": rid});
        assert!(
            matches!(OffloadMsg::parse(&v), Ok(OffloadMsg::Start(s)) if s.task_sha256.is_none())
        );
    }

    #[test]
    fn offload_done() {
        let summary = "s".repeat(9000);
        let names = vec!["report.md".to_string()];
        let (duration, name) = (42u64, "offload-1");
        // src/offload/sandbox.rs (then src/agent/sandbox.rs), Agent::finish_task (the summary is cut to
        // MAX_SUMMARY_CHARS before the literal is built).
        let cut_summary: String = summary.chars().take(8000).collect();
        let literal = json!({
            "type": "offload_done", "request_id": RID, "summary": cut_summary,
            "output_files": names, "output_file_contents": [], "tokens_used": {"prompt": 0, "completion": 0},
            "duration_seconds": duration, "from_agent": name, "timestamp": TS,
        });
        same(
            OffloadDone::new(RID, &summary, names.clone(), duration, name, TS),
            literal.clone(),
        );
        misspelt(&literal, "offload_finished");
        // The client reads only the summary; odd other fields do not make
        // the message unreadable.
        let odd = json!({"type": "offload_done", "summary": "ok", "duration_seconds": 1.5, "tokens_used": "many"});
        assert!(
            matches!(OffloadMsg::parse(&odd), Ok(OffloadMsg::Done(d)) if d.summary.as_deref() == Some("ok") && d.duration_seconds.is_none())
        );
    }
}
