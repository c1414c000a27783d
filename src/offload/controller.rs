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
use crate::wire::payload::PayloadType;
use crate::wire::{time, transfer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const MAX_TASK_CHARS: usize = 100_000;
const MAX_TIMEOUT_MINUTES: u64 = 24 * 60;
const DEFAULT_MODEL: &str = "gpt-5.4";

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
fn offload_shape_refusal(p: &Value) -> Option<String> {
    let task = p["task"].as_str().unwrap_or_default();
    if task.trim().is_empty() || task.chars().count() > MAX_TASK_CHARS {
        return Some("task must be a non-empty string of at most 100000 characters".into());
    }
    let mut files: Vec<String> = Vec::new();
    for f in p["files"].as_array().cloned().unwrap_or_default() {
        match f.as_str().and_then(transfer::safe_file_name) {
            Some(n) if f.as_str() == Some(n.as_str()) && !files.contains(&n) => files.push(n),
            _ => return Some("files must be distinct plain file names (no paths)".into()),
        }
    }
    if files.len() > transfer::MAX_FILES {
        return Some("at most 10 files per offload".into());
    }
    let timeout = p["preferences"]["timeout_minutes"].as_f64().unwrap_or(30.0);
    if !(1.0..=MAX_TIMEOUT_MINUTES as f64).contains(&timeout) {
        return Some("timeout_minutes must be between 1 and 1440".into());
    }
    None
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

    fn send(port: &mut dyn Port, cx: &mut Cx<'_>, to: &str, mut msg: Value) {
        if msg.get("timestamp").is_none() {
            msg["timestamp"] = json!(time::format_millis(cx.now()));
        }
        port.send(cx, to, msg);
    }

    fn ctl_status(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        to: &str,
        rid: &str,
        phase: &str,
        message: &str,
    ) {
        let msg = json!({"type": "offload_status", "request_id": rid, "phase": phase, "message": message});
        Self::send(port, cx, to, msg);
    }

    fn ctl_error(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        to: &str,
        rid: &str,
        phase: &str,
        error: &str,
    ) {
        cx.log(
            LogLevel::Info,
            &format!("offload {rid} from {to} refused: {error}"),
        );
        let msg =
            json!({"type": "offload_error", "request_id": rid, "error": error, "phase": phase});
        Self::send(port, cx, to, msg);
    }

    /// The messages a controller takes.
    pub fn wants(payload: &Value) -> bool {
        matches!(
            PayloadType::of(payload),
            Ok(PayloadType::OffloadRequest | PayloadType::OffloadCleanup)
        )
    }

    pub fn on_message(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, from: &str, p: &Value) {
        match p["type"].as_str() {
            Some("offload_request") => self.on_offload_request(port, cx, from, p),
            Some("offload_cleanup") => self.on_offload_cleanup(port, cx, from, p),
            _ => {}
        }
    }

    fn on_offload_request(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, from: &str, p: &Value) {
        let rid = p["request_id"].as_str().unwrap_or_default().to_string();
        if !valid_request_id(&rid) {
            cx.log(
                LogLevel::Warn,
                &format!("offload_request from {from} without a usable request_id; ignored"),
            );
            return;
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
                    "validating",
                    "checking pairing, capability and slots",
                );
            }
            return self.ctl_error(port, cx, from, &rid, "validating", &r);
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
                "validating",
                "request_id already in use",
            );
        } else if o.phase == CtlPhase::Ready {
            let msg = json!({"type": "offload_status", "request_id": rid, "phase": "ready", "message": "sandbox ready", "sandbox_name": o.sandbox_name, "sandbox_did": o.sandbox_did});
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
        p: &Value,
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
        p: &Value,
        sandbox_name: String,
    ) {
        let now = cx.now();
        let Some(taken) = self
            .operator
            .ledger
            .take_slot(from, "offload", now)
            .map(|x| x.name.clone())
        else {
            return self.ctl_error(port, cx, from, rid, "validating", "No free sandbox slot.");
        };
        let prefs = &p["preferences"];
        let timeout = prefs["timeout_minutes"].as_f64().unwrap_or(30.0);
        let model: String = prefs["model"]
            .as_str()
            .unwrap_or(DEFAULT_MODEL)
            .chars()
            .take(200)
            .collect();
        let files: Vec<String> = p["files"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let job = port.fresh_id();
        let spec = json!({
            "name": sandbox_name,
            "requester": from,
            "request_id": rid,
            "task": p["task"].as_str().unwrap_or_default(),
            "files": files,
            "timeout_minutes": timeout.floor() as u64,
            "model": model,
            "controller": port.identity().did(),
        });
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
            "validating",
            "checking pairing, capability and slots",
        );
        self.ctl_status(
            port,
            cx,
            from,
            rid,
            "spawning",
            &format!("starting sandbox {sandbox_name}"),
        );
        cx.out.push(Command::JobStart {
            id: job,
            kind: "sandbox".into(),
            spec_json: spec.to_string(),
        });
    }

    fn on_offload_cleanup(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, from: &str, p: &Value) {
        let rid = p["request_id"].as_str().unwrap_or_default();
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
        let reason: String = p["reason"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(40)
            .collect();
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
            "scheduled",
            "sandbox process started",
        );
        let msg = json!({"type": "offload_status", "request_id": o.request_id, "phase": "ready", "message": "sandbox ready", "sandbox_name": o.sandbox_name, "sandbox_did": info});
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
            let msg = json!({"type": "offload_error", "request_id": o.request_id, "error": format!("the sandbox {} stopped (exit code {}) before the offload was cleaned up", o.sandbox_name, exit.code), "phase": "execution"});
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
            self.ctl_error(port, cx, &o.requester, &o.request_id, "spawning", &err);
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
