//! Work done ahead of need, while the host has nothing else for the engine.
//!
//! A message under a new peer ratchet key takes only the receiving half of
//! the DH ratchet step (`crypto::ratchet`, `State::send_step`); the sending
//! half (a key generation and a DH) is owed until a send needs it. Taken
//! here in idle time, it leaves the path of the message being received and
//! of the reply that follows it. The engine asks for idle time with
//! `Command::IdleWanted`; a host that never gives it loses nothing.
//!
//! The other work done here: the file of a chunked `file_transfer`, decoded
//! and hashed a held chunk per idle call (`offload::reassembly`), so the
//! call that completes the transfer does not do it all at once.

use super::Agent;
use crate::io::{Command, Cx};
use std::collections::{HashSet, VecDeque};

/// Peers whose active session owes a ratchet step's sending half, oldest
/// first.
#[derive(Default)]
pub(super) struct Ahead {
    order: VecDeque<String>,
    queued: HashSet<String>,
    /// The host is to be asked for idle time at the end of this event.
    ask: bool,
}

impl Ahead {
    /// Queue a peer. The host is asked for idle time when nothing was
    /// queued; while anything is, a request is out.
    fn owe(&mut self, did: &str) {
        if !self.queued.insert(did.to_string()) {
            return;
        }
        self.order.push_back(did.to_string());
        self.ask |= self.order.len() == 1;
    }

    fn next(&mut self) -> Option<String> {
        let did = self.order.pop_front()?;
        self.queued.remove(&did);
        Some(did)
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl Agent {
    /// Idle time: one owed ratchet step, so an event arriving meanwhile
    /// waits for one at most; ask again while more are owed. A step a send
    /// took already is skipped. Nothing is stored: the peer's record keeps
    /// owing the step until its next save, and a restart before that takes
    /// a fresh one.
    pub fn on_idle(&mut self, cx: &mut Cx<'_>) {
        let mut stepped = false;
        while let Some(did) = self.ahead.next() {
            if self
                .peers
                .get_mut(&did)
                .is_some_and(|p| p.prepare_send(cx.host))
            {
                stepped = true;
                break;
            }
        }
        // A ratchet step first (a reply may need it at once); else one
        // held chunk of a file being received.
        if !stepped {
            self.offload.reassembly.read_ahead();
            if let Some(s) = self.sandbox.as_mut() {
                s.reassembly.read_ahead();
            }
        }
        if !self.ahead.is_empty() || self.reads_waiting() {
            cx.out.push(Command::IdleWanted);
        }
    }

    /// A file being received has held chunks idle time has not read.
    fn reads_waiting(&self) -> bool {
        self.offload.reassembly.wants_idle()
            || self
                .sandbox
                .as_ref()
                .is_some_and(|s| s.reassembly.wants_idle())
    }

    /// Whether the session with `did` owes a ratchet step's sending half
    /// (tests and diagnostics).
    pub fn owes_ratchet_step(&self, did: &str) -> bool {
        self.peers.get(did).is_some_and(|p| p.send_step_pending())
    }

    /// After a message was read under `did`'s session: queue the ratchet
    /// step it left owing.
    pub(super) fn owe_step(&mut self, did: &str) {
        if self.owes_ratchet_step(did) {
            self.ahead.owe(did);
        }
    }

    /// At the end of an event: ask for idle time if a step came to be owed
    /// (last, after the event's records and frames).
    pub fn ask_idle(&mut self, cx: &mut Cx<'_>) {
        if std::mem::take(&mut self.ahead.ask) || self.reads_waiting() {
            cx.out.push(Command::IdleWanted);
        }
    }
}
