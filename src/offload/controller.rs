//! The controller side of an offload (kars-mesh-plugin.md §7.3): checks the
//! requester's pairing, takes a slot, asks the host to start a sandbox peer,
//! reports the phases, and tears the sandbox down on the requester's
//! `offload_cleanup`. Requests are answered only over the requester's
//! authenticated channel; a cleanup from anyone but the requester is refused.

use crate::io::{Command, Cx, JobExit, LogLevel};
use crate::pairing::ledger::Phase;
use crate::pairing::operator::Operator;
use crate::port::Port;
use crate::store::keys;
use crate::wire::limits::{DEFAULT_MODEL, MAX_TASK_CHARS, MAX_TIMEOUT_MINUTES};
use crate::wire::offload_msg::{
    ErrorPhase, OffloadCleanup, OffloadError, OffloadMsg, OffloadRequest, OffloadStatus,
    StatusPhase,
};
use crate::wire::payload::{Family, ParseError, PayloadType};
use crate::wire::{time, transfer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Where one of the controller's offloads stands: its sandbox is starting,
/// or up and named to the requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CtlPhase {
    Spawning,
    Ready,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CtlOffload {
    pub request_id: String,
    pub requester: String,
    pub sandbox_name: String,
    pub job: u64,
    /// "spawning" until the sandbox is registered, then "ready".
    pub phase: CtlPhase,
    pub sandbox_did: Option<String>,
    pub started_ms: u64,
    /// What the sandbox is started with (kept to start it again after a
    /// controller restart that happened before it was up).
    pub spec: Value,
    /// The ledger entry whose slot it holds.
    #[serde(default)]
    pub pairing: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CtlOffloads {
    pub list: Vec<CtlOffload>,
}

/// The controller role: the operator's ledger and the offloads it runs.
pub struct Controller {
    pub operator: Operator,
    offloads: CtlOffloads,
}

/// A UUID (8-4-4-4-12 hex), as the original plugin sends.
fn valid_request_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// What is wrong with an offload_request's task, files or preferences.
fn offload_shape_refusal(r: &OffloadRequest) -> Option<String> {
    let task = r.task.as_deref().unwrap_or_default();
    if task.trim().is_empty() || task.chars().count() > MAX_TASK_CHARS {
        return Some("task must be a non-empty string of at most 100000 characters".into());
    }
    let mut files: Vec<String> = Vec::new();
    // A name that is not a string is `None`, and refused like a path.
    for f in &r.files {
        match f.as_deref().and_then(transfer::safe_file_name) {
            Some(n) if f.as_deref() == Some(n.as_str()) && !files.contains(&n) => files.push(n),
            _ => return Some("files must be distinct plain file names (no paths)".into()),
        }
    }
    if files.len() > transfer::MAX_FILES {
        return Some("at most 10 files per offload".into());
    }
    let timeout = r.preferences().timeout_minutes_f64();
    if !(1.0..=MAX_TIMEOUT_MINUTES as f64).contains(&timeout) {
        return Some("timeout_minutes must be between 1 and 1440".into());
    }
    None
}

/// The host's job spec for a request's sandbox (read back as `SandboxSpec`;
/// not a message).
fn sandbox_spec(p: &OffloadRequest, name: &str, from: &str, rid: &str, controller: &str) -> Value {
    let prefs = p.preferences();
    let model: String = prefs
        .model
        .as_deref()
        .unwrap_or(DEFAULT_MODEL)
        .chars()
        .take(200)
        .collect();
    let files: Vec<String> = p.files.iter().flatten().cloned().collect();
    json!({
        "name": name,
        "requester": from,
        "request_id": rid,
        "task": p.task.as_deref().unwrap_or_default(),
        "files": files,
        "timeout_minutes": prefs.timeout_minutes_f64().floor() as u64,
        "model": model,
        "controller": controller,
    })
}

impl Controller {
    /// The stored offloads; a sandbox still starting when the controller
    /// went down is started again.
    pub fn load(operator: Operator, port: &mut dyn Port, cx: &mut Cx<'_>) -> Self {
        let offloads = match port
            .vault()
            .get::<CtlOffloads>(cx.host, keys::CONTROLLER_OFFLOADS)
        {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => {
                cx.log(LogLevel::Error, &e.to_string());
                CtlOffloads::default()
            }
        };
        let mut ctl = Controller { operator, offloads };
        ctl.restart_spawning(port, cx);
        ctl
    }

    fn restart_spawning(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        // A sandbox that was still starting when we went down is started
        // again (the host replaces a leftover process with the same job id);
        // one that was up keeps running and talks to its requester directly.
        let restart: Vec<CtlOffload> = self
            .offloads
            .list
            .iter()
            .filter(|o| o.phase == CtlPhase::Spawning)
            .cloned()
            .collect();
        for o in restart {
            cx.out.push(Command::JobStart {
                id: o.job,
                kind: "sandbox".into(),
                spec_json: o.spec.to_string(),
            });
        }
        if let Some(max) = self.offloads.list.iter().map(|o| o.job).max() {
            port.ids_taken_through(max);
        }
    }

    fn save(&self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        if let Err(e) = port.vault().put(
            cx.host,
            &mut cx.out,
            keys::CONTROLLER_OFFLOADS,
            &self.offloads,
        ) {
            cx.log(LogLevel::Error, &e.to_string());
        }
    }

    /// Every message the controller sends carries the time it was sent
    /// (each constructor takes it).
    fn send(port: &mut dyn Port, cx: &mut Cx<'_>, to: &str, msg: impl Into<OffloadMsg>) {
        port.send(cx, to, msg.into().to_value());
    }

    fn now_text(cx: &mut Cx<'_>) -> String {
        time::format_millis(cx.now())
    }

    fn ctl_status(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        to: &str,
        rid: &str,
        phase: StatusPhase,
        message: &str,
    ) {
        let msg = OffloadStatus::news(rid, phase, message, &Self::now_text(cx));
        Self::send(port, cx, to, msg);
    }

    fn ctl_error(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        to: &str,
        rid: &str,
        phase: ErrorPhase,
        error: &str,
    ) {
        cx.log(
            LogLevel::Info,
            &format!("offload {rid} from {to} refused: {error}"),
        );
        let msg = OffloadError::controller(rid, phase, error, &Self::now_text(cx));
        Self::send(port, cx, to, msg);
    }

    /// The messages a controller takes.
    pub fn wants(payload: &Value) -> bool {
        matches!(
            PayloadType::of(payload),
            Ok(PayloadType::OffloadRequest | PayloadType::OffloadCleanup)
        )
    }

    /// A message `wants` claimed, parsed once: an `offload_request` or an
    /// `offload_cleanup`; without a string `request_id` it is ignored.
    pub fn on_message(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, from: &str, p: Value) {
        match OffloadMsg::from_value(p) {
            Ok(OffloadMsg::Request(r)) => self.on_offload_request(port, cx, from, &r),
            Ok(OffloadMsg::Cleanup(c)) => self.on_offload_cleanup(port, cx, from, &c),
            Err(
                ParseError::MissingField {
                    kind: "offload_request",
                    ..
                }
                | ParseError::BadField {
                    kind: "offload_request",
                },
            ) => Self::unusable_request_id(cx, from),
            _ => {}
        }
    }

    fn unusable_request_id(cx: &mut Cx<'_>, from: &str) {
        cx.log(
            LogLevel::Warn,
            &format!("offload_request from {from} without a usable request_id; ignored"),
        );
    }

    fn on_offload_request(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        from: &str,
        p: &OffloadRequest,
    ) {
        let rid = p.request_id.clone();
        if !valid_request_id(&rid) {
            return Self::unusable_request_id(cx, from);
        }
        if self.answer_repeated_request(port, cx, from, &rid) {
            return;
        }
        // Chosen here, at random: a name derived from the requester's request
        // id let one paired user pick another's (old) sandbox directory and
        // identity (red-team finding 3).
        let mut r = [0u8; 8];
        cx.host.fill(&mut r);
        let sandbox_name = format!("offload-{}", crate::wire::hex::encode(&r));
        let (paired, refusal) = self.offload_refusal(cx, from, p, &sandbox_name);
        if let Some(r) = refusal {
            if paired {
                // Strangers learn nothing but the refusal.
                self.ctl_status(
                    port,
                    cx,
                    from,
                    &rid,
                    StatusPhase::Validating,
                    "checking pairing, capability and slots",
                );
            }
            return self.ctl_error(port, cx, from, &rid, ErrorPhase::Validating, &r);
        }
        self.start_offload_sandbox(port, cx, from, &rid, p, sandbox_name);
    }

    /// A request the requester sent again gets the current state (a
    /// request id someone else uses, a refusal); `false` for a new one.
    fn answer_repeated_request(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        from: &str,
        rid: &str,
    ) -> bool {
        let Some(o) = self
            .offloads
            .list
            .iter()
            .find(|o| o.request_id == rid)
            .cloned()
        else {
            return false;
        };
        if o.requester != from {
            self.ctl_error(
                port,
                cx,
                from,
                rid,
                ErrorPhase::Validating,
                "request_id already in use",
            );
        } else if o.phase == CtlPhase::Ready {
            // A ready offload always has its sandbox's DID.
            let msg =
                OffloadStatus::ready(rid, &o.sandbox_name, o.sandbox_did, &Self::now_text(cx));
            Self::send(port, cx, from, msg);
        }
        true
    }

    /// Why this request is refused, in the order a user can fix things
    /// (pairing, its state, the capability, the request's shape, a name
    /// collision, then slots), and whether the sender is paired at all
    /// (strangers learn nothing but the refusal).
    /// A DID may have been paired again after an expiry or revoke: the
    /// active pairing counts, older ones only explain a refusal.
    fn offload_refusal(
        &mut self,
        cx: &mut Cx<'_>,
        from: &str,
        p: &OffloadRequest,
        sandbox_name: &str,
    ) -> (bool, Option<String>) {
        let now = cx.now();
        let ledger = &mut self.operator.ledger;
        ledger.expire(now);
        let pairing = ledger
            .active_for(from, now)
            .or_else(|| {
                ledger
                    .pairings
                    .iter()
                    .rev()
                    .find(|x| x.bound_did.as_deref() == Some(from))
            })
            .cloned();
        let refusal = match &pairing {
            None => Some("Not paired with this cluster. Pair first with mesh_pair.".to_string()),
            Some(x) if x.phase == Phase::Revoked => {
                Some("This pairing was revoked by the operator.".to_string())
            }
            Some(x) if x.phase == Phase::Expired || now >= x.expires_ms => {
                Some("This pairing has expired. Ask the operator for a new token.".to_string())
            }
            Some(x) if x.phase != Phase::Active => Some(format!("Pairing is {}.", x.phase)),
            Some(x) if !x.capabilities.iter().any(|c| c == "offload") => {
                Some("This pairing does not grant the offload capability.".to_string())
            }
            _ => None,
        };
        let refusal = refusal.or_else(|| offload_shape_refusal(p));
        let refusal = refusal.or_else(|| {
            self.offloads
                .list
                .iter()
                .any(|o| o.sandbox_name == sandbox_name)
                .then(|| {
                    "request_id collides with a running offload; use a fresh UUID.".to_string()
                })
        });
        // Slots last: a collision is the clearer answer when both apply.
        let refusal = refusal.or_else(|| {
            pairing
                .as_ref()
                .filter(|x| x.slots_used >= x.slots_max)
                .map(|x| {
                    format!(
                        "No free sandbox slot ({} of {} in use). Cancel or finish a running offload first.",
                        x.slots_used, x.slots_max
                    )
                })
        });
        (pairing.is_some(), refusal)
    }

    /// Take a slot, record the offload, tell the requester, start the
    /// sandbox. The slot and the record are stored before anything is said
    /// or started: a crash after this point replays nothing, loses nothing.
    fn start_offload_sandbox(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        from: &str,
        rid: &str,
        p: &OffloadRequest,
        sandbox_name: String,
    ) {
        let now = cx.now();
        let Some(taken) = self
            .operator
            .ledger
            .take_slot(from, "offload", now)
            .map(|x| x.name.clone())
        else {
            return self.ctl_error(
                port,
                cx,
                from,
                rid,
                ErrorPhase::Validating,
                "No free sandbox slot.",
            );
        };
        let job = port.fresh_id();
        let spec = sandbox_spec(p, &sandbox_name, from, rid, port.identity().did());
        // The slot and the record are stored before anything is said or
        // started: a crash after this point replays nothing and loses nothing.
        self.operator.save(port.vault(), cx);
        self.offloads.list.push(CtlOffload {
            request_id: rid.to_string(),
            requester: from.to_string(),
            sandbox_name: sandbox_name.clone(),
            job,
            phase: CtlPhase::Spawning,
            sandbox_did: None,
            started_ms: now,
            spec: spec.clone(),
            pairing: taken,
        });
        self.save(port, cx);
        self.ctl_status(
            port,
            cx,
            from,
            rid,
            StatusPhase::Validating,
            "checking pairing, capability and slots",
        );
        self.ctl_status(
            port,
            cx,
            from,
            rid,
            StatusPhase::Spawning,
            &format!("starting sandbox {sandbox_name}"),
        );
        cx.out.push(Command::JobStart {
            id: job,
            kind: "sandbox".into(),
            spec_json: spec.to_string(),
        });
    }

    fn on_offload_cleanup(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        from: &str,
        p: &OffloadCleanup,
    ) {
        let rid = p.request_id.as_str();
        let Some(pos) = self.offloads.list.iter().position(|o| o.request_id == rid) else {
            return;
        };
        if self.offloads.list[pos].requester != from {
            cx.log(
                LogLevel::Warn,
                &format!("refused offload_cleanup for {rid} from {from}, which did not request it"),
            );
            return;
        }
        let o = self.offloads.list.remove(pos);
        cx.out.push(Command::JobKill(o.job));
        self.operator.ledger.free_slot(&o.requester, &o.pairing);
        self.operator.save(port.vault(), cx);
        self.save(port, cx);
        let reason: String = p.reason.as_deref().unwrap_or("").chars().take(40).collect();
        cx.log(
            LogLevel::Info,
            &format!(
                "offload {rid} cleaned up ({reason}); sandbox {} stopped",
                o.sandbox_name
            ),
        );
    }

    /// The host reports a sandbox registered and connected.
    pub fn job_ready(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        job: u64,
        info: &str,
    ) -> bool {
        let Some(o) = self.offloads.list.iter_mut().find(|o| o.job == job) else {
            return false;
        };
        if !crate::crypto::identity::is_mesh_did(info) {
            return true;
        }
        o.phase = CtlPhase::Ready;
        o.sandbox_did = Some(info.to_string());
        let o = o.clone();
        self.save(port, cx);
        self.ctl_status(
            port,
            cx,
            &o.requester,
            &o.request_id,
            StatusPhase::Scheduled,
            "sandbox process started",
        );
        let ts = Self::now_text(cx);
        let msg = OffloadStatus::ready(&o.request_id, &o.sandbox_name, Some(info.into()), &ts);
        Self::send(port, cx, &o.requester, msg);
        true
    }

    /// A sandbox process ended: before it was up that is a spawn failure;
    /// afterwards its work is over. Either way its slot is free again.
    pub fn job_exited(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, exit: &JobExit) -> bool {
        let Some(pos) = self.offloads.list.iter().position(|o| o.job == exit.id) else {
            return false;
        };
        let o = self.offloads.list.remove(pos);
        self.operator.ledger.free_slot(&o.requester, &o.pairing);
        self.operator.save(port.vault(), cx);
        self.save(port, cx);
        if o.phase == CtlPhase::Ready {
            // It ended without the requester's cleanup: say so, instead of
            // leaving the client waiting for its timeout.
            let text = format!(
                "the sandbox {} stopped (exit code {}) before the offload was cleaned up",
                o.sandbox_name, exit.code
            );
            let ts = Self::now_text(cx);
            let msg = OffloadError::controller(&o.request_id, ErrorPhase::Execution, &text, &ts);
            Self::send(port, cx, &o.requester, msg);
        }
        if o.phase == CtlPhase::Spawning {
            let tail: String = exit
                .log
                .chars()
                .rev()
                .take(300)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let err = format!(
                "sandbox {} failed to start (exit code {}): {tail}",
                o.sandbox_name, exit.code
            );
            self.ctl_error(
                port,
                cx,
                &o.requester,
                &o.request_id,
                ErrorPhase::Spawning,
                &err,
            );
        }
        true
    }

    /// `offload_list` (operator): sandboxes this controller runs.
    pub fn offload_list(&self) -> Value {
        json!(self
            .offloads
            .list
            .iter()
            .map(|o| json!({"request_id": o.request_id, "requester": o.requester, "sandbox_name": o.sandbox_name, "phase": o.phase, "sandbox_did": o.sandbox_did, "started_at": time::format_millis(o.started_ms)}))
            .collect::<Vec<_>>())
    }
}
