//! What a sub-machine may ask of the mesh node that holds it. The offload
//! client, the controller, the sandbox and the pairing client each own their
//! state and see the node only through [`Port`]: send a message end to end,
//! queue a paced transfer, set a timer, take an id, read the vault. The node
//! (`crate::agent::Agent`) implements it; the unit tests of each sub-machine
//! drive it alone through [`testing::FakePort`].

use crate::crypto::identity::Identity;
use crate::io::Cx;
use crate::store::Vault;
use crate::wire::offload_msg::{FileTooLarge, FileTransfer, OffloadStart};
use serde_json::Value;

/// Who set a timer that is not one of the node's fixed periodic ones; a fired
/// timer goes straight to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerOwner {
    /// An HTTP request waiting to be sent again.
    HttpRetry,
    /// A `mesh_pair` waiting for the controller's answer.
    PairWait,
    /// The active offload's deadline.
    OffloadDeadline,
    /// An `offload_status {wait_seconds}` call.
    OffloadWatcher,
    /// A sandbox's progress report, deadline and wait for its inputs.
    SandboxProgress,
    SandboxDeadline,
    SandboxInputs,
    /// A blocking `mesh_inbox` or a `mesh_await`.
    Waiter,
    /// The next step of finding or checking a kars sandbox (a registry
    /// look-up again, the wait for its hello, a ping or task sent again).
    OffloadStep,
    /// The next slice of hashing the input files `cloud_offload` read
    /// (due at once: what came meanwhile goes first).
    OffloadHash,
}

/// One item of a paced transfer (see `agent::pacer`): only a window of
/// messages to one peer waits for its receipt at a time.
pub enum Paced {
    /// A message ready to go.
    Message(Value),
    /// A `file_transfer` still without its `file_data`, and the bytes that
    /// go into it (chunked above 512 KiB).
    File {
        msg: FileTransfer,
        bytes: Vec<u8>,
        transfer_id: String,
        from_agent: String,
    },
    /// The client's go-ahead to its sandbox: once it is handed to the
    /// outbox the offload client hears `inputs_handed_over`.
    Go(OffloadStart),
}

impl Paced {
    /// A file to send, if its message fits in one chunked transfer
    /// ([`FileTransfer::check_fits`]). The pacer splits it only when its
    /// turn comes, when nobody could be told any more, so the sender checks
    /// here and says why a file cannot go.
    pub fn file(
        msg: FileTransfer,
        bytes: Vec<u8>,
        transfer_id: String,
        from_agent: String,
    ) -> Result<Self, FileTooLarge> {
        msg.check_fits(bytes.len() as u64)?;
        Ok(Paced::File {
            msg,
            bytes,
            transfer_id,
            from_agent,
        })
    }
}

/// The node, as a sub-machine sees it.
pub trait Port {
    /// This node's identity (DID, AMID, public keys).
    fn identity(&self) -> &Identity;
    /// The sealed store every record goes through.
    fn vault(&self) -> &Vault;
    /// A fresh id for a job or a file read (one sequence per node).
    fn fresh_id(&mut self) -> u64;
    /// Ids up to `id` are taken (restored records hold them).
    fn ids_taken_through(&mut self, id: u64);
    /// Send `payload` to `to`, end-to-end encrypted, re-sent until receipted.
    fn send(&mut self, cx: &mut Cx<'_>, to: &str, payload: Value);
    /// Send `payload` to `to` in plaintext (both dialects): only to a kars
    /// controller, which runs no X3DH. Not receipted; the relay holds it
    /// for an offline recipient.
    fn send_plain(&mut self, cx: &mut Cx<'_>, to: &str, payload: Value);
    /// `GET` a registry path (unauthenticated); the answer comes back to
    /// the offload client with the returned tag.
    fn registry_get(&mut self, cx: &mut Cx<'_>, path: &str) -> u64;
    /// Queue a paced transfer to `to` after what already waits for it.
    fn send_paced(&mut self, cx: &mut Cx<'_>, to: &str, items: Vec<Paced>);
    /// Nothing paced waits for `to`.
    fn paced_idle(&self, to: &str) -> bool;
    /// Forget what waits for `to` (its offload ended).
    fn drop_paced(&mut self, to: &str);
    /// A timer for `owner` at `at_ms`; its id.
    fn set_timer(&mut self, cx: &mut Cx<'_>, owner: TimerOwner, at_ms: u64) -> u64;
    fn cancel_timer(&mut self, cx: &mut Cx<'_>, id: u64);
    /// Why what is sent now waits in the outbox, when the relay link has
    /// failed and is not back (`None` while it is up or still opening):
    /// a caller must not say "sent" then.
    fn relay_trouble(&self) -> Option<String>;
}

/// A port and a host for unit tests: it records what a sub-machine sends,
/// the timers it sets, and keeps storage in a map the vault reads from.
#[cfg(test)]
pub mod testing {
    use super::*;
    use crate::io::{Command, Host, LogLevel};
    use std::collections::BTreeMap;
    use zeroize::Zeroizing;

    /// A host whose storage is what the test's commands stored.
    #[derive(Default)]
    pub struct FakeHost {
        pub now: u64,
        pub records: BTreeMap<String, Vec<u8>>,
        pub logs: Vec<(LogLevel, String)>,
        pub counter: u8,
    }

    impl crate::entropy::Entropy for FakeHost {
        fn fill(&mut self, dest: &mut [u8]) {
            for b in dest {
                self.counter = self.counter.wrapping_add(1);
                *b = self.counter;
            }
        }
    }

    impl Host for FakeHost {
        fn now_ms(&mut self) -> u64 {
            self.now
        }
        fn storage_get(&mut self, key: &str) -> Option<Vec<u8>> {
            self.records.get(key).cloned()
        }
        fn storage_list(&mut self, prefix: &str) -> Vec<String> {
            self.records
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect()
        }
        fn log(&mut self, level: LogLevel, message: &str) {
            self.logs.push((level, message.to_string()));
        }
    }

    impl FakeHost {
        /// Carry out the stores and erases among `out` (as the real host
        /// does, in order) and return the other commands.
        pub fn apply(&mut self, out: Vec<Command>) -> Vec<Command> {
            let mut rest = Vec::new();
            for c in out {
                match c {
                    Command::Store(key, value) => {
                        self.records.insert(key, value);
                    }
                    Command::Erase(key) => {
                        self.records.remove(&key);
                    }
                    other => rest.push(other),
                }
            }
            rest
        }
    }

    impl FakeHost {
        /// Carry out the stores and erases among `out`, and hand all of
        /// `out` back (for tests that check the order).
        pub fn apply_keep(&mut self, out: Vec<Command>) -> Vec<Command> {
            let _ = self.apply(out.clone());
            out
        }
    }

    /// The tool results among `out`: (call id, parsed result).
    pub fn tool_results(out: &[Command]) -> Vec<(String, Value)> {
        out.iter()
            .filter_map(|c| match c {
                Command::ToolResult {
                    call_id,
                    result_json,
                } => Some((
                    call_id.clone(),
                    serde_json::from_str(result_json).expect("tool results are JSON"),
                )),
                _ => None,
            })
            .collect()
    }

    /// A tool result's text (`content[0].text`).
    pub fn result_text(result: &Value) -> &str {
        result["content"][0]["text"].as_str().unwrap_or_default()
    }

    /// What a sub-machine asked of the node.
    pub struct FakePort {
        pub id: Identity,
        pub vault: Vault,
        pub next_id: u64,
        pub sent: Vec<(String, Value)>,
        pub plain: Vec<(String, Value)>,
        pub gets: Vec<(u64, String)>,
        pub paced: Vec<(String, Vec<Paced>)>,
        pub busy: Vec<String>,
        pub timers: Vec<(u64, TimerOwner, u64)>,
        pub cancelled: Vec<u64>,
        /// What `relay_trouble` answers.
        pub trouble: Option<String>,
    }

    impl FakePort {
        pub fn new(seed: u8) -> Self {
            let vault = Vault::new(Zeroizing::new(vec![7u8; 32]));
            FakePort {
                id: Identity::from_seed(&[seed; 32]),
                vault,
                next_id: 100,
                sent: Vec::new(),
                plain: Vec::new(),
                gets: Vec::new(),
                paced: Vec::new(),
                busy: Vec::new(),
                timers: Vec::new(),
                cancelled: Vec::new(),
                trouble: None,
            }
        }

        /// The `type`s of what was sent to `to`, in order.
        pub fn types_to(&self, to: &str) -> Vec<String> {
            self.sent
                .iter()
                .filter(|(t, _)| t == to)
                .map(|(_, v)| v["type"].as_str().unwrap_or("?").to_string())
                .collect()
        }

        /// The live timer `owner` set last.
        pub fn timer_of(&self, owner: TimerOwner) -> Option<u64> {
            self.timers
                .iter()
                .rev()
                .find(|(id, o, _)| *o == owner && !self.cancelled.contains(id))
                .map(|(id, _, _)| *id)
        }
    }

    impl Port for FakePort {
        fn relay_trouble(&self) -> Option<String> {
            self.trouble.clone()
        }
        fn identity(&self) -> &Identity {
            &self.id
        }
        fn vault(&self) -> &Vault {
            &self.vault
        }
        fn fresh_id(&mut self) -> u64 {
            self.next_id += 1;
            self.next_id
        }
        fn ids_taken_through(&mut self, id: u64) {
            self.next_id = self.next_id.max(id);
        }
        fn send(&mut self, _cx: &mut Cx<'_>, to: &str, payload: Value) {
            self.sent.push((to.to_string(), payload));
        }
        fn send_plain(&mut self, _cx: &mut Cx<'_>, to: &str, payload: Value) {
            self.plain.push((to.to_string(), payload));
        }
        fn registry_get(&mut self, _cx: &mut Cx<'_>, path: &str) -> u64 {
            let id = self.fresh_id();
            self.gets.push((id, path.to_string()));
            id
        }
        fn send_paced(&mut self, _cx: &mut Cx<'_>, to: &str, items: Vec<Paced>) {
            self.paced.push((to.to_string(), items));
        }
        fn paced_idle(&self, to: &str) -> bool {
            !self.busy.iter().any(|b| b == to)
        }
        fn drop_paced(&mut self, to: &str) {
            self.busy.retain(|b| b != to);
        }
        fn set_timer(&mut self, cx: &mut Cx<'_>, owner: TimerOwner, at_ms: u64) -> u64 {
            let id = self.fresh_id();
            self.timers.push((id, owner, at_ms));
            cx.out.push(Command::TimerSet { id, at_ms });
            id
        }
        fn cancel_timer(&mut self, cx: &mut Cx<'_>, id: u64) {
            self.cancelled.push(id);
            cx.out.push(Command::TimerCancel(id));
        }
    }
}
