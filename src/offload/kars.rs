//! An offload through the kars controller and its in-cluster sandbox
//! (kars-mesh-plugin.md §7.3–§7.5). The kars controller speaks plaintext,
//! and its `ready` names the sandbox only by `sandbox_name`; the sandbox
//! registers that name as a capability. The relay does not bind `from` and
//! the registry hands names to whoever asks first, so the name is bound to
//! a DID only when
//!
//! * exactly one agent holds it (two holders: the offload ends),
//! * that agent registered after our `offload_request` went out, and
//! * its first end-to-end message names our request (`offload_hello`, or on
//!   the legacy path the `task_received` that ends the hand-over).
//!
//! Then either the hello path (hello → inputs) or, when no hello comes, the
//! legacy path: `mesh:ping` → `mesh:pong` (verifying), each input sent and
//! acknowledged (uploading), `offload_task` → `task_received`
//! (dispatching → running).

use super::client::{OffloadClient, DUPLICATE_KEEP, HELLO_TIMEOUT_MS, RUN_GRACE_MS};
use super::phase::Phase;
use crate::io::{Cx, LogLevel};
use crate::mesh::registry as reg;
use crate::port::{Port, TimerOwner as Owner};
use crate::wire::offload_msg::{
    CleanupReason, FileTransferAck, MeshPing, OffloadMsg, OffloadStatus, OffloadTask,
};
use crate::wire::payload::Family;
use crate::wire::time;

/// The original looks the sandbox name up every 2 s.
const LOOKUP_EVERY_MS: u64 = 2_000;
/// How long a found sandbox may take to say hello before it is pinged.
const HELLO_GRACE_MS: u64 = 10_000;
/// Ping: 5 s per attempt, 4 attempts (§7.5).
const PING_EVERY_MS: u64 = 5_000;
const PING_TRIES: u32 = 4;
/// Each input has 3 × 30 s to be acknowledged (§7.5).
const UPLOAD_PER_FILE_MS: u64 = 90_000;
/// `offload_task`: 8 s per attempt, 3 attempts (§7.5).
const TASK_EVERY_MS: u64 = 8_000;
const TASK_TRIES: u32 = 3;
/// Clock skew allowed between the registry and us when checking that the
/// sandbox registered after the request.
const REGISTRY_SKEW_MS: u64 = 2_000;

/// The step a kars offload waits on (not persisted: after a restart the
/// look-up starts again, and a found sandbox must say hello or be pinged).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Step {
    #[default]
    Idle,
    /// Next registry look-up of the sandbox name.
    Lookup,
    /// A sandbox was found; its hello may still come.
    Hello,
    Ping {
        nonce: String,
        tries: u32,
    },
    Uploading,
    Task {
        tries: u32,
    },
}

/// What a registry answer is for.
#[derive(Debug, Clone, PartialEq)]
enum Asked {
    Holders(String),
    Record(String),
}

#[derive(Debug, Default)]
pub struct KarsSteps {
    step: Step,
    timer: Option<u64>,
    asked: Option<(u64, Asked)>,
}

/// A Kubernetes name, as the kars controller makes them (`offload-<8 hex>`).
fn usable_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The registry's `registered_at` (Python's `isoformat()`, with or without
/// an offset; none means UTC).
fn registered_ms(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let at = v.get("registered_at")?.as_str()?;
    let ms = time::parse_millis(at)
        .or_else(|_| time::parse_millis(&format!("{at}Z")))
        .ok()?;
    u64::try_from(ms).ok()
}

impl OffloadClient {
    /// The kars controller's `ready`: look the sandbox name up.
    pub(super) fn kars_ready(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        s: &OffloadStatus,
        encrypted: bool,
    ) {
        let name = s.sandbox_name.clone().unwrap_or_default();
        if !usable_name(&name) {
            self.fail_offload(port, cx, "The kars controller reported the sandbox ready without a usable sandbox_name (lower-case letters, digits and '-', at most 63); kars-mesh cannot find the sandbox.");
            self.send_cleanup(port, cx, CleanupReason::DiscoveryTimeout);
            return;
        }
        if let Some(o) = self.active.as_mut() {
            o.sandbox_name = Some(name.clone());
        }
        let how = if encrypted { "" } else { " (plaintext)" };
        self.phase(
            port,
            cx,
            Phase::Ready,
            &format!("the controller{how} reports sandbox {name} up"),
        );
        self.phase(
            port,
            cx,
            Phase::Connecting,
            &format!("looking up {name} in the registry"),
        );
        self.set_deadline(port, cx, HELLO_TIMEOUT_MS);
        self.ask_holders(port, cx);
    }

    /// A kars offload found again after a restart, still looking.
    pub(super) fn kars_resume(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let looking = self.active.as_ref().is_some_and(|o| {
            o.phase == Phase::Connecting && o.sandbox_did.is_none() && o.sandbox_name.is_some()
        });
        if looking {
            self.ask_holders(port, cx);
        } else if self
            .active
            .as_ref()
            .is_some_and(|o| o.sandbox_unconfirmed && !o.terminal())
        {
            self.kars_step_after(port, cx, Step::Hello, 1_000);
        }
    }

    fn ask_holders(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let Some(name) = self.active.as_ref().and_then(|o| o.sandbox_name.clone()) else {
            return;
        };
        let path = format!(
            "/v1/discover?capability={}&limit=5",
            reg::query_escape(&name)
        );
        let tag = port.registry_get(cx, &path);
        self.kars.asked = Some((tag, Asked::Holders(name)));
    }

    fn kars_step_after(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, step: Step, ms: u64) {
        if let Some(t) = self.kars.timer.take() {
            port.cancel_timer(cx, t);
        }
        let at = cx.now() + ms;
        self.kars.timer = Some(port.set_timer(cx, Owner::OffloadStep, at));
        self.kars.step = step;
    }

    /// Stop every kars step (the offload ended or the sandbox is bound).
    pub(super) fn kars_stop(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        if let Some(t) = self.kars.timer.take() {
            port.cancel_timer(cx, t);
        }
        self.kars.step = Step::Idle;
        self.kars.asked = None;
    }

    /// The registry answered one of our look-ups.
    pub fn on_lookup(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        tag: u64,
        (ok, body, problem): (bool, &[u8], &str),
    ) {
        let Some(asked) = self.kars.asked.take_if(|(t, _)| *t == tag).map(|(_, a)| a) else {
            return;
        };
        if self.active.as_ref().is_none_or(|o| o.terminal()) {
            return;
        }
        if !ok {
            cx.log(
                LogLevel::Info,
                &format!("sandbox look-up: {problem}; trying again"),
            );
            return self.kars_step_after(port, cx, Step::Lookup, LOOKUP_EVERY_MS);
        }
        match asked {
            Asked::Holders(name) => self.on_holders(port, cx, &name, body),
            Asked::Record(did) => self.on_record(port, cx, &did, body),
        }
    }

    /// Who holds the sandbox name: nobody yet (ask again), one agent (check
    /// when it registered), or several (nothing tells which is ours).
    fn on_holders(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, name: &str, body: &[u8]) {
        let holders: Vec<String> = match reg::parse_discover(body) {
            Ok(found) => found
                .into_iter()
                .filter(|d| d.capabilities.iter().any(|c| c == name))
                .map(|d| d.did)
                .collect(),
            Err(e) => {
                cx.log(LogLevel::Warn, &format!("sandbox look-up: {e}"));
                Vec::new()
            }
        };
        match holders.as_slice() {
            [] => self.kars_step_after(port, cx, Step::Lookup, LOOKUP_EVERY_MS),
            [one] => {
                let path = format!("/v1/agents/{}", reg::query_escape(one));
                let tag = port.registry_get(cx, &path);
                self.kars.asked = Some((tag, Asked::Record(one.clone())));
            }
            many => {
                let why = format!("{} agents registered the sandbox name {name}; kars-mesh cannot tell which one is this offload's sandbox, so none gets the task or the files.", many.len());
                self.fail_offload(port, cx, &why);
                self.send_cleanup(port, cx, CleanupReason::DiscoveryTimeout);
            }
        }
    }

    /// The one holder's registry record: it must have registered after our
    /// request went out; then it is the sandbox's DID, on probation until
    /// its first message names the request.
    fn on_record(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, did: &str, body: &[u8]) {
        let Some(o) = self.active.as_ref() else {
            return;
        };
        let (started, name) = (o.started_ms, o.sandbox_name.clone().unwrap_or_default());
        let Some(at) = registered_ms(body) else {
            return self.kars_step_after(port, cx, Step::Lookup, LOOKUP_EVERY_MS);
        };
        if at + REGISTRY_SKEW_MS < started {
            let why = format!("The agent holding the sandbox name {name} ({did}) registered before this offload was requested, so it is not this offload's sandbox; nothing was sent to it.");
            self.fail_offload(port, cx, &why);
            self.send_cleanup(port, cx, CleanupReason::DiscoveryTimeout);
            return;
        }
        if let Some(o) = self.active.as_mut() {
            o.sandbox_did = Some(did.to_string());
            o.sandbox_unconfirmed = true;
        }
        let text = format!("{name} is {did} (its only holder, registered after the request); waiting for its hello naming this request");
        self.phase(port, cx, Phase::Connecting, &text);
        self.kars_step_after(port, cx, Step::Hello, HELLO_GRACE_MS);
        if let Some((from, hello)) = self.early_hello.take() {
            if from == did {
                self.on_sandbox_news(port, cx, &from, OffloadMsg::Hello(hello), None);
            }
        }
    }

    /// A kars step's timer fired.
    pub fn kars_step_due(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, timer: u64) {
        if self.kars.timer != Some(timer) {
            return;
        }
        self.kars.timer = None;
        if self.active.as_ref().is_none_or(|o| o.terminal()) {
            return;
        }
        match std::mem::take(&mut self.kars.step) {
            Step::Lookup => self.ask_holders(port, cx),
            Step::Hello => self.ping(port, cx, 1),
            Step::Ping { tries, .. } if tries < PING_TRIES => self.ping(port, cx, tries + 1),
            Step::Ping { .. } => {
                self.kars_give_up(port, cx, "the sandbox answered neither a hello nor a ping")
            }
            Step::Uploading => {
                self.kars_give_up(port, cx, "the sandbox did not acknowledge every input file")
            }
            Step::Task { tries } if tries < TASK_TRIES => self.send_task(port, cx, tries + 1),
            Step::Task { .. } => self.kars_give_up(
                port,
                cx,
                "the sandbox did not confirm the task (task_received)",
            ),
            Step::Idle => {}
        }
    }

    fn kars_give_up(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, why: &str) {
        self.fail_offload(port, cx, &format!("Offload failed: {why}"));
        self.send_cleanup(port, cx, CleanupReason::Error);
    }

    /// No hello: the legacy path's ping (end-to-end, to the found DID).
    fn ping(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, tries: u32) {
        let Some(to) = self.active.as_ref().and_then(|o| o.sandbox_did.clone()) else {
            return;
        };
        let nonce = crate::wire::frames::uuid_v4(cx.host);
        let me = self
            .name
            .clone()
            .unwrap_or_else(|| port.identity().did().chars().take(21).collect());
        let ts = time::format_millis(cx.now());
        port.send(
            cx,
            &to,
            OffloadMsg::from(MeshPing::new(&nonce, &me, &ts)).to_value(),
        );
        if tries == 1 {
            self.phase(port, cx, Phase::Verifying, "no hello; pinging the sandbox");
        }
        self.kars_step_after(port, cx, Step::Ping { nonce, tries }, PING_EVERY_MS);
    }

    /// What a found but unconfirmed sandbox may say: a hello naming our
    /// request, the pong to our ping, acks of our inputs, and
    /// `task_received` naming our request. Anything else is ignored.
    pub(super) fn unconfirmed_news(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, m: OffloadMsg) {
        let Some(o) = self.active.as_ref() else {
            return;
        };
        let rid = o.request_id.clone();
        match m {
            OffloadMsg::Hello(h) if h.request_id.as_deref() == Some(rid.as_str()) => {
                if matches!(o.phase, Phase::Connecting | Phase::Verifying) {
                    self.confirm_sandbox(port, cx);
                    self.sandbox_hello(port, cx);
                }
            }
            OffloadMsg::Pong(p) => {
                if matches!(&self.kars.step, Step::Ping { nonce, .. } if *nonce == p.nonce) {
                    self.upload(port, cx);
                }
            }
            OffloadMsg::FileTransferAck(a) if self.kars.step == Step::Uploading => {
                self.input_acked(port, cx, &a)
            }
            OffloadMsg::TaskReceived(t) if t.request_id == rid => {
                if matches!(self.kars.step, Step::Task { .. }) {
                    self.task_taken(port, cx);
                }
            }
            _ => {}
        }
    }

    /// The sandbox named our request: its DID is bound to this offload.
    fn confirm_sandbox(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        self.kars_stop(port, cx);
        let Some(o) = self.active.as_mut() else {
            return;
        };
        o.sandbox_unconfirmed = false;
        let Some(did) = o.sandbox_did.clone() else {
            return;
        };
        if !self.recent.sandboxes.contains(&did) {
            self.recent.sandboxes.push(did);
            let n = self.recent.sandboxes.len();
            self.recent
                .sandboxes
                .drain(..n.saturating_sub(DUPLICATE_KEEP));
            self.save_recent(port, cx);
        }
    }

    /// The pong came: upload every input, each to be acknowledged.
    fn upload(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let n = self.active.as_ref().map_or(0, |o| o.files.len());
        self.phase(
            port,
            cx,
            Phase::Uploading,
            &format!("the sandbox answered the ping; sending {n} input file(s)"),
        );
        // From here on the run's own timeout bounds the offload.
        let minutes = self.active.as_ref().map_or(30, |o| o.timeout_minutes);
        self.set_deadline(port, cx, minutes * 60_000 + RUN_GRACE_MS);
        if n == 0 {
            return self.send_task(port, cx, 1);
        }
        self.kars_step_after(port, cx, Step::Uploading, UPLOAD_PER_FILE_MS * n as u64);
        self.start_sending_inputs(port, cx);
    }

    fn input_acked(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, a: &FileTransferAck) {
        if !a.succeeded() {
            self.sandbox_refused_input(port, cx, a);
        }
        let Some(o) = self.active.as_mut() else {
            return;
        };
        let Some(f) = o
            .files
            .iter()
            .find(|f| a.file_name.as_deref() == Some(f.name.as_str()))
        else {
            return;
        };
        if !o.acked_inputs.contains(&f.name) {
            o.acked_inputs.push(f.name.clone());
        }
        if o.files.iter().all(|f| o.acked_inputs.contains(&f.name)) {
            o.inputs_sent = true;
            self.send_task(port, cx, 1);
        } else {
            self.save_offload(port, cx);
        }
    }

    /// Hand the task over (`offload_task`), end to end.
    fn send_task(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, tries: u32) {
        let Some(o) = self.active.as_ref() else {
            return;
        };
        let Some(to) = o.sandbox_did.clone() else {
            return;
        };
        let names = o.files.iter().map(|f| f.name.clone()).collect();
        let ts = time::format_millis(cx.now());
        let task = OffloadTask::new(&o.request_id, &o.task, names, port.identity().did(), &ts);
        port.send(cx, &to, OffloadMsg::from(task).to_value());
        if tries == 1 {
            self.phase(
                port,
                cx,
                Phase::Dispatching,
                "task sent to the sandbox (offload_task)",
            );
        }
        self.kars_step_after(port, cx, Step::Task { tries }, TASK_EVERY_MS);
    }

    /// `task_received` named our request: the sandbox is bound and runs.
    fn task_taken(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        self.confirm_sandbox(port, cx);
        let minutes = self.active.as_ref().map_or(30, |o| o.timeout_minutes);
        self.phase(
            port,
            cx,
            Phase::Running,
            "the sandbox took the task (task_received)",
        );
        self.set_deadline(port, cx, minutes * 60_000 + RUN_GRACE_MS);
    }
}
