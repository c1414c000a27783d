//! The kars in-cluster sandbox's legacy path (kars-mesh-plugin.md §7.1,
//! §7.5 step 4b), for a sandbox that never says hello: the client pings it
//! (`mesh:ping` / `mesh:pong`), uploads the inputs, and hands it the task
//! (`offload_task` / `task_received`).

use crate::wire::lenient::{absent, opt};
use serde::{Deserialize, Serialize};

/// `mesh:ping` (client → sandbox).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshPing {
    /// Required: a ping without a nonce can be answered by nothing.
    pub nonce: String,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from_agent: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
}

impl MeshPing {
    pub fn new(nonce: &str, from_agent: &str, timestamp: &str) -> Self {
        MeshPing {
            nonce: nonce.into(),
            from_agent: Some(from_agent.into()),
            timestamp: Some(timestamp.into()),
        }
    }
}

/// `mesh:pong` (sandbox → client): the ping's nonce, echoed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshPong {
    /// Required: a pong answers the ping whose nonce it echoes.
    pub nonce: String,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from_agent: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
}

impl MeshPong {
    pub fn new(nonce: &str, from_agent: &str, timestamp: &str) -> Self {
        MeshPong {
            nonce: nonce.into(),
            from_agent: Some(from_agent.into()),
            timestamp: Some(timestamp.into()),
        }
    }
}

/// `offload_task` (client → sandbox, legacy path): the task, once the
/// inputs are there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffloadTask {
    pub request_id: String,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub task: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub files: Option<Vec<String>>,
    /// The client's DID (the original sends its DID here).
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from_agent: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
}

impl OffloadTask {
    pub fn new(
        request_id: &str,
        task: &str,
        files: Vec<String>,
        from_did: &str,
        timestamp: &str,
    ) -> Self {
        OffloadTask {
            request_id: request_id.into(),
            task: Some(task.into()),
            files: Some(files),
            from_agent: Some(from_did.into()),
            timestamp: Some(timestamp.into()),
        }
    }
}

/// `task_received` (sandbox → client): the sandbox took the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReceived {
    /// Required: it must name the request it took.
    pub request_id: String,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from_agent: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub accepted_at: Option<String>,
}

impl TaskReceived {
    pub fn new(request_id: &str, from_agent: &str, accepted_at: &str) -> Self {
        TaskReceived {
            request_id: request_id.into(),
            from_agent: Some(from_agent.into()),
            accepted_at: Some(accepted_at.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::offload_msg::test_util::*;
    use serde_json::json;

    #[test]
    fn the_legacy_messages_are_the_originals() {
        let ping =
            json!({"type": "mesh:ping", "nonce": "n-1", "from_agent": "alice", "timestamp": TS});
        same(MeshPing::new("n-1", "alice", TS), ping.clone());
        missing(&ping, "nonce");
        let pong = json!({"type": "mesh:pong", "nonce": "n-1", "from_agent": "offload-5f0c2a4e", "timestamp": TS});
        same(MeshPong::new("n-1", "offload-5f0c2a4e", TS), pong.clone());
        misspelt(&pong, "mesh_pong");
        let task = json!({"type": "offload_task", "request_id": RID, "task": "sum", "files": ["a.txt"], "from_agent": "did:mesh:00", "timestamp": TS});
        same(
            OffloadTask::new(RID, "sum", vec!["a.txt".into()], "did:mesh:00", TS),
            task.clone(),
        );
        missing(&task, "request_id");
        let got = json!({"type": "task_received", "request_id": RID, "from_agent": "offload-5f0c2a4e", "accepted_at": TS});
        same(TaskReceived::new(RID, "offload-5f0c2a4e", TS), got.clone());
        missing(&got, "request_id");
    }
}
