//! The node as its sub-machines see it (`crate::port::Port`).

use super::pacer::Item;
use super::timers::Owner;
use super::{Agent, Cx};
use crate::crypto::identity::Identity;
use crate::port::Port;
use crate::store::Vault;
use serde_json::Value;

impl Port for Agent {
    fn relay_trouble(&self) -> Option<String> {
        // The relay's routine close of an idle connection is not trouble:
        // the link reopens at once.
        let idle = self.link.problem_kind == Some(crate::mesh::link::ProblemKind::Idle);
        let failed = self.link.last_problem.is_some() || self.link.last_error.is_some();
        (failed && !idle && !self.link.is_confirmed()).then(|| self.why_queued())
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
    fn send(&mut self, cx: &mut Cx<'_>, to: &str, payload: Value) {
        self.send_payload(cx, to, payload, None, None);
    }
    fn send_plain(&mut self, cx: &mut Cx<'_>, to: &str, payload: Value) {
        self.send_plaintext(cx, to, &payload);
    }
    fn registry_get(&mut self, cx: &mut Cx<'_>, path: &str) -> u64 {
        let tag = self.fresh_id();
        self.http(
            cx,
            super::Purpose::OffloadLookup(tag),
            "GET",
            path,
            false,
            None,
        );
        tag
    }
    fn send_paced(&mut self, cx: &mut Cx<'_>, to: &str, items: Vec<Item>) {
        Agent::send_paced(self, cx, to, items);
    }
    fn paced_idle(&self, to: &str) -> bool {
        self.pacer.idle(Some(to))
    }
    fn drop_paced(&mut self, to: &str) {
        self.pacer.drop_queue(to);
    }
    fn set_timer(&mut self, cx: &mut Cx<'_>, owner: Owner, at_ms: u64) -> u64 {
        self.timers.set(cx, owner, at_ms)
    }
    fn cancel_timer(&mut self, cx: &mut Cx<'_>, id: u64) {
        self.timers.cancel(cx, id);
    }
}
