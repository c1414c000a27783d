//! The sub-machines the node holds (the pairing client, the offload client,
//! and on a cluster the controller or the sandbox) and the one place each
//! event reaches them. A sub-machine is taken out of the node while it runs,
//! so it can use the node as its `Port` with no second borrow; nothing it
//! asks of the port comes back into it (the paced go-ahead is handed to the
//! offload client once it is back).

use super::timers::Owner;
use super::{Agent, Cx};
use crate::io::{JobExit, LogLevel};
use crate::offload::client::OffloadClient;
use crate::offload::controller::Controller;
use crate::offload::sandbox::Sandbox;
use crate::pairing::client::PairingClient;
use crate::pairing::operator::Operator;
use crate::tools::render;
use crate::wire::pairing_msg::PairingMsg;
use crate::wire::payload::{Family, PayloadType};
use serde_json::Value;

impl Agent {
    pub(super) fn with_offload<R>(
        &mut self,
        cx: &mut Cx<'_>,
        f: impl FnOnce(&mut OffloadClient, &mut Agent, &mut Cx<'_>) -> R,
    ) -> R {
        let mut m = std::mem::take(&mut self.offload);
        let r = f(&mut m, self, cx);
        // Receipted parts of files first: they went before the go-ahead.
        let news = self.pacer.take_news();
        if !news.is_empty() {
            m.transfer_news(self, cx, news);
        }
        if self.pacer.take_go_handed_over() {
            m.inputs_handed_over(self, cx);
        }
        self.offload = m;
        r
    }

    /// The offload client's go-ahead left with a receipt-driven pump, or
    /// receipts counted parts of its files.
    pub(super) fn after_pacing(&mut self, cx: &mut Cx<'_>) {
        if self.pacer.has_news() {
            self.with_offload(cx, |_, _, _| {});
        }
    }

    fn with_pairing<R>(
        &mut self,
        cx: &mut Cx<'_>,
        f: impl FnOnce(&mut PairingClient, &mut Agent, &mut Cx<'_>) -> R,
    ) -> R {
        let mut m = std::mem::take(&mut self.pairing);
        let r = f(&mut m, self, cx);
        self.pairing = m;
        r
    }

    /// Run `f` on the controller; `None` when this node is none.
    fn with_controller<R>(
        &mut self,
        cx: &mut Cx<'_>,
        f: impl FnOnce(&mut Controller, &mut Agent, &mut Cx<'_>) -> R,
    ) -> Option<R> {
        let mut m = self.controller.take()?;
        let r = f(&mut m, self, cx);
        self.controller = Some(m);
        Some(r)
    }

    fn with_sandbox<R>(
        &mut self,
        cx: &mut Cx<'_>,
        f: impl FnOnce(&mut Sandbox, &mut Agent, &mut Cx<'_>) -> R,
    ) -> Option<R> {
        let mut m = self.sandbox.take()?;
        let r = f(&mut m, self, cx);
        self.sandbox = Some(m);
        Some(r)
    }

    /// Start the roles the configuration and the stored records call for.
    pub(super) fn start_roles(&mut self, cx: &mut Cx<'_>, operator: Option<Operator>) {
        self.with_offload(cx, |o, a, cx| o.load_offload(a, cx));
        if let Some(op) = operator {
            let ctl = Controller::load(op, self, cx);
            self.controller = Some(ctl);
        }
        if let Some(spec) = self.cfg.sandbox.clone() {
            let sb = Sandbox::start(spec, self, cx);
            self.sandbox = Some(sb);
        }
    }

    pub(super) fn is_controller(&self) -> bool {
        self.controller.is_some()
    }

    pub(super) fn is_sandbox(&self) -> bool {
        self.sandbox.is_some()
    }

    /// Does `from` take part in our offloads (the paired controller, the
    /// active or a recent sandbox)? Its traffic is the offload's, not the
    /// inbox's, and is bounded by the offload's own limits.
    pub(super) fn is_offload_party(&self, from: &str) -> bool {
        self.pairing.is_paired_controller(from) || self.offload.is_party(from)
    }

    /// Is this payload for a sub-machine rather than the inbox? Every
    /// message goes to exactly one consumer (the original's defect 9, spec
    /// §12): the inbox gets what no sub-machine claims.
    pub(super) fn for_a_role(&self, from: &str, payload: &Value) -> bool {
        // A sandbox works for its requester only; nothing is inboxed.
        self.is_sandbox()
            || (self.is_controller() && Controller::wants(payload))
            || self.offload.wants(from, payload)
            || match PayloadType::of(payload) {
                Ok(PayloadType::PairRequest) => self.is_controller(),
                Ok(PayloadType::PairResponse) => self.pairing.waits_for(from),
                _ => false,
            }
    }

    /// Hand a protocol payload to the sub-machine it is for (chosen by its
    /// type and sender; the sub-machine parses it). Owned, so a large
    /// message's strings move into the typed message instead of being
    /// copied.
    pub(super) fn hand_to_role(
        &mut self,
        cx: &mut Cx<'_>,
        from: &str,
        payload: Value,
        encrypted: bool,
    ) {
        if self.is_sandbox() {
            self.with_sandbox(cx, |s, a, cx| s.on_message(a, cx, from, payload));
            return;
        }
        match PayloadType::of(&payload) {
            // Every pairing field is optional: a known type always parses.
            Ok(PayloadType::PairRequest) if self.is_controller() => {
                if let Ok(PairingMsg::Request(r)) = PairingMsg::from_value(payload) {
                    self.with_controller(cx, |c, a, cx| {
                        c.operator.answer_pair_request(a, cx, from, &r)
                    });
                }
                return;
            }
            Ok(PayloadType::PairResponse) if self.pairing.waits_for(from) => {
                if let Ok(PairingMsg::Response(r)) = PairingMsg::from_value(payload) {
                    self.with_pairing(cx, |p, a, cx| p.take_response(a, cx, from, &r));
                }
                return;
            }
            _ => {}
        }
        if self.is_controller() && Controller::wants(&payload) {
            self.with_controller(cx, |c, a, cx| c.on_message(a, cx, from, payload));
            return;
        }
        self.with_offload(cx, |o, a, cx| o.on_message(a, cx, from, payload, encrypted));
    }

    /// A timer of a sub-machine fired.
    pub(super) fn role_timer(&mut self, cx: &mut Cx<'_>, owner: Owner, id: u64) {
        match owner {
            Owner::PairWait => self.with_pairing(cx, |p, _, cx| p.timed_out(cx, id)),
            Owner::OffloadDeadline => {
                self.with_offload(cx, |o, a, cx| o.offload_deadline(a, cx, id))
            }
            Owner::OffloadWatcher => self.offload.offload_watcher_due(cx, id),
            Owner::OffloadStep => self.with_offload(cx, |o, a, cx| o.kars_step_due(a, cx, id)),
            Owner::OffloadHash => self.with_offload(cx, |o, a, cx| o.hash_due(a, cx, id)),
            Owner::SandboxProgress => {
                self.with_sandbox(cx, |s, a, cx| s.progress_due(a, cx));
            }
            Owner::SandboxDeadline => {
                self.with_sandbox(cx, |s, a, cx| s.deadline(a, cx));
            }
            Owner::SandboxInputs => {
                self.with_sandbox(cx, |s, a, cx| s.inputs_overdue(a, cx));
            }
            Owner::HttpRetry | Owner::Waiter => {}
        }
    }

    pub fn on_file(&mut self, cx: &mut Cx<'_>, id: u64, res: Result<Vec<u8>, String>) {
        if !self.with_offload(cx, |o, a, cx| o.offload_file(a, cx, id, res)) {
            cx.log(LogLevel::Debug, &format!("file result {id} for nobody"));
        }
    }

    pub fn on_job_ready(&mut self, cx: &mut Cx<'_>, id: u64, info: &str) {
        let taken = self.with_controller(cx, |c, a, cx| c.job_ready(a, cx, id, info));
        if taken != Some(true) {
            cx.log(LogLevel::Debug, &format!("job {id} ready for nobody"));
        }
    }

    pub fn on_job_exited(&mut self, cx: &mut Cx<'_>, exit: JobExit) {
        let id = exit.id;
        let taken = if self.is_controller() {
            self.with_controller(cx, |c, a, cx| c.job_exited(a, cx, &exit))
        } else {
            self.with_sandbox(cx, |s, a, cx| s.job_exited(a, cx, exit))
        };
        if taken != Some(true) {
            cx.log(LogLevel::Debug, &format!("job {id} exited for nobody"));
        }
    }

    /// A running job's progress line (the sandbox's `--exec` command).
    pub fn on_job_progress(&mut self, cx: &mut Cx<'_>, id: u64, line: &str) {
        let taken = self.with_sandbox(cx, |s, a, cx| s.job_progress(a, cx, id, line));
        if taken != Some(true) {
            cx.log(LogLevel::Debug, &format!("job {id} progress for nobody"));
        }
    }

    /// The tools a sub-machine answers.
    pub(super) fn role_tool(&mut self, cx: &mut Cx<'_>, call_id: &str, tool: &str, args: &Value) {
        match tool {
            "mesh_pair" => self.with_pairing(cx, |p, a, cx| p.start(a, cx, call_id, args)),
            "cloud_offload" => {
                let pairing = self.pairing.record.clone();
                self.with_offload(cx, |o, a, cx| {
                    o.cloud_offload(a, cx, call_id, args, pairing.as_ref())
                })
            }
            "offload_status" => {
                self.with_offload(cx, |o, a, cx| o.offload_status_tool(a, cx, call_id, args))
            }
            "offload_cancel" => self.with_offload(cx, |o, a, cx| o.offload_cancel(a, cx, call_id)),
            "offload_notifications" => {
                self.with_offload(cx, |o, a, cx| o.offload_notifications(a, cx, call_id))
            }
            "offload_list" => {
                let list = self
                    .controller
                    .as_ref()
                    .map_or_else(|| Value::Array(Vec::new()), Controller::offload_list);
                let n = list.as_array().map(Vec::len).unwrap_or(0);
                render::ok(
                    cx,
                    call_id,
                    &format!("{n} offload(s) running"),
                    serde_json::json!({"offloads": list}),
                );
            }
            _ => {
                let done = self
                    .with_controller(cx, |c, a, cx| c.operator.tool(a, cx, call_id, tool, args));
                if done.is_none() {
                    render::fail(
                        cx,
                        call_id,
                        "This agent is not a controller (start it with role \"controller\").",
                    );
                }
            }
        }
    }
}
