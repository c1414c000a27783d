//! When a committed send is answered, and with what: the relay's own
//! confirmation, read from markers.
//!
//! The relay tells a sender nothing. But it pushes what it stored for an
//! agent before it reads the agent's first frame, and then handles that
//! agent's frames one at a time, in order; a `message` addressed to
//! ourselves (`RelayFrame::sync_marker`) comes back to us. So when a marker
//! comes back, every frame we wrote before it has been routed (delivered
//! live or stored until acked), and everything the relay held for us has
//! arrived. Two things hang on that:
//!
//! * a send to a peer without kars receipts (an AGT client) is answered
//!   "sent" only then. Such a frame is written once and never again (the
//!   peer cannot tell a repeat from an attack), so "sent" must mean the relay
//!   has it. It also keeps a short-lived process (one `kars-mesh send`) from
//!   closing its socket while the relay is still pushing to it: core-5.0.0
//!   then drops every frame of ours it had not read yet.
//! * after a connect, a new session waits for the stored frames (`sync_id`):
//!   one of them may be the peer's own KNOCK, and a reference AGT client
//!   never moves to a session we open while it has its own.
use super::tools::mesh_inbox::InboxQuery;
use super::{
    tools::mesh_send::{self, Handover, Sent},
    Agent, Cx, HeldSend, Sealed, CONFIRM_MAX_MS, HELD_SENDS_MAX_MS, INBOX_SYNC_MAX_MS, T_CONFIRM,
    T_HELD_SENDS, T_INBOX_SYNC, T_SYNC,
};
use crate::io::Command;
use crate::mesh::link::{LinkState, ProblemKind};
use crate::wire::frames;
use crate::wire::payload::Family;
use crate::wire::relay_frame::{MessageFrame, RelayFrame};

/// Sends written on the open link, waiting for the marker that follows
/// them.
pub(super) struct Confirmation {
    pub marker: String,
    pub sends: Vec<HeldSend>,
}

impl Agent {
    /// Answer a committed send: after the relay's confirmation (a peer
    /// without receipts), at once (a kars peer: its receipt is the real
    /// confirmation, and the message is kept and sent again until then),
    /// queued with the reason, or, while the connection attempt is under
    /// way, held until it ends: a process that has just started must not
    /// call a reachable relay unreachable.
    pub(super) fn answer_send(
        &mut self,
        cx: &mut Cx<'_>,
        call: String,
        to: &str,
        s: Sealed,
        sent: bool,
    ) {
        let held = HeldSend {
            call_id: call,
            to: to.to_string(),
            frame_id: s.frame_id,
            new_session: s.new_session,
        };
        if sent {
            return self.after_write(cx, held);
        }
        if matches!(self.link.state, LinkState::Connecting(_)) {
            if self.held_sends.is_empty() {
                self.arm(cx, T_HELD_SENDS, HELD_SENDS_MAX_MS);
            }
            self.held_sends.push(held);
            return;
        }
        let why = self.why_queued();
        self.tell_sent(cx, &held, Handover::Queued(&why));
    }

    /// A send whose frame is on the open link. To a kars peer it is sent
    /// once the relay has accepted the connection (the peer's receipt is
    /// the real confirmation, and the message is kept and sent again until
    /// then); before that, and to a peer without receipts, only when a
    /// marker written after it comes back: a relay that refuses our token
    /// closes a socket that had opened.
    fn after_write(&mut self, cx: &mut Cx<'_>, held: HeldSend) {
        if self.link.is_confirmed() && self.peers.get(&held.to).is_some_and(|p| p.kars) {
            self.tell_sent(cx, &held, Handover::Relay);
        } else {
            self.unconfirmed.push(held);
        }
    }

    /// Follow what was just written with a marker, if a send waits for one.
    pub(super) fn ask_relay_to_confirm(&mut self, cx: &mut Cx<'_>) {
        if self.unconfirmed.is_empty() {
            return;
        }
        let marker = frames::uuid_v4(cx.host);
        let ts = Self::timestamp(cx);
        if !self.send_frame(
            cx,
            RelayFrame::sync_marker(self.id.did(), &marker, &ts).to_text(),
        ) {
            return;
        }
        if self.confirmations.is_empty() {
            self.arm(cx, T_CONFIRM, CONFIRM_MAX_MS);
        }
        let sends = std::mem::take(&mut self.unconfirmed);
        self.confirmations.push(Confirmation { marker, sends });
    }

    /// One of our markers came back (or one from an earlier connection, stored
    /// while we were away: acked, nothing else).
    pub(super) fn on_own_frame(&mut self, cx: &mut Cx<'_>, m: &MessageFrame) {
        let Some(id) = m.id.as_deref() else {
            return;
        };
        // Only a stored marker has anything to delete at the relay.
        self.ack(cx, id);
        // Ours came back through this connection: the relay accepted it.
        self.link.confirm();
        if self.marker_out.as_deref() == Some(id) {
            self.marker_out = None;
            self.answer_inbox_reads(cx, false);
        }
        if self.sync_id.as_deref() == Some(id) {
            self.sync_done(cx);
        }
        // The relay keeps our order: this marker confirms every one before.
        if let Some(i) = self.confirmations.iter().position(|c| c.marker == id) {
            let done: Vec<Confirmation> = self.confirmations.drain(..=i).collect();
            for h in done.into_iter().flat_map(|c| c.sends) {
                self.tell_sent(cx, &h, Handover::Relay);
            }
            if self.confirmations.is_empty() {
                cx.out.push(Command::TimerCancel(T_CONFIRM));
            }
        }
    }

    /// The link closed, or the relay took too long: the sends still waiting
    /// were written. To a peer without receipts they are not written again:
    /// say that the relay did not confirm them. To a kars peer they stay in
    /// the outbox and go again on the next connection: say they are queued,
    /// and why.
    pub(super) fn give_up_confirmations(&mut self, cx: &mut Cx<'_>) {
        cx.out.push(Command::TimerCancel(T_CONFIRM));
        let waiting: Vec<HeldSend> = std::mem::take(&mut self.confirmations)
            .into_iter()
            .flat_map(|c| c.sends)
            .chain(std::mem::take(&mut self.unconfirmed))
            .collect();
        for h in waiting {
            if self.peers.get(&h.to).is_some_and(|p| p.kars) {
                let why = self.why_queued();
                self.tell_sent(cx, &h, Handover::Queued(&why));
            } else {
                self.tell_sent(cx, &h, Handover::Unconfirmed);
            }
        }
    }

    /// The held answers, once the connection attempt ended (or took too
    /// long): written with the flush if the link opened (confirmed like any
    /// other), queued with the reason otherwise.
    pub(super) fn release_held_sends(&mut self, cx: &mut Cx<'_>) {
        if self.held_sends.is_empty() {
            return;
        }
        cx.out.push(Command::TimerCancel(T_HELD_SENDS));
        let held = std::mem::take(&mut self.held_sends);
        if self.link.open_socket().is_some() {
            for h in held {
                self.after_write(cx, h);
            }
            return self.ask_relay_to_confirm(cx);
        }
        let why = self.why_queued();
        for h in held {
            self.tell_sent(cx, &h, Handover::Queued(&why));
        }
    }

    fn tell_sent(&mut self, cx: &mut Cx<'_>, h: &HeldSend, handover: Handover<'_>) {
        let receipts = self.peers.get(&h.to).is_some_and(|p| p.kars);
        let sent = Sent::Committed {
            frame_id: &h.frame_id,
            new_session: h.new_session,
            handover,
            receipts,
        };
        mesh_send::send_done(self, cx, &h.call_id, &h.to, sent);
    }

    /// Why a committed message waits, in words for the caller.
    pub(super) fn why_queued(&self) -> String {
        let link = &self.link;
        match (&link.state, &link.last_problem, &link.last_error) {
            (LinkState::Replaced, _, _) => {
                "another process with this identity holds the relay connection".to_string()
            }
            (_, Some(p), _) if link.problem_kind.is_some_and(ProblemKind::is_refusal) => {
                format!("the relay refused the connection ({p})")
            }
            (_, Some(p), _) => format!("the relay is not reachable ({p})"),
            (LinkState::Connecting(_), None, _) => {
                "the relay connection is still opening".to_string()
            }
            (LinkState::Open { .. }, None, _) => {
                "the relay has not confirmed the connection yet".to_string()
            }
            (_, None, Some(e)) => format!("the relay is not reachable ({e})"),
            _ => "the relay is not reachable right now".to_string(),
        }
    }

    /// What the relay stored for us has arrived (or the link is down, or the
    /// wait is over): sessions that waited for it go ahead, now using the
    /// peer's session if its KNOCK was among those frames.
    pub(super) fn sync_done(&mut self, cx: &mut Cx<'_>) {
        if self.sync_id.take().is_some() {
            cx.out.push(Command::TimerCancel(T_SYNC));
        }
        self.resume_session_fetches(cx);
        self.answer_inbox_reads(cx, false);
    }

    /// Connecting, or connected with the relay's stored frames still on
    /// their way (bounded by `SYNC_MAX_MS` and by the attempt's end).
    pub(super) fn relay_still_delivering(&self) -> bool {
        self.sync_id.is_some() || matches!(self.link.state, LinkState::Connecting(_))
    }

    /// What the relay stored for us may not be in the inbox yet: it is
    /// still arriving (our marker is not back, however long the relay
    /// takes to push), or a KNOCK among it waits for its sender's registry
    /// record (an AGT sender's KNOCK carries no signing key), and with it
    /// the messages that followed it.
    pub(super) fn inbox_still_arriving(&self) -> bool {
        self.relay_still_delivering()
            || self.marker_out.is_some()
            || !self.knocks_awaiting_identity.is_empty()
    }

    /// Hold an inbox read until what the relay stored has been taken in, at
    /// most `INBOX_SYNC_MAX_MS`: a process that has just started must not
    /// show an inbox without it.
    pub(super) fn defer_inbox_read(&mut self, cx: &mut Cx<'_>, call_id: &str, q: InboxQuery) {
        if self.after_sync_calls.is_empty() {
            self.arm(cx, T_INBOX_SYNC, INBOX_SYNC_MAX_MS);
        }
        self.after_sync_calls.push((call_id.to_string(), q));
    }

    /// Answer the held inbox reads once nothing stored is still on its way
    /// (`force`: the wait is over).
    pub(super) fn answer_inbox_reads(&mut self, cx: &mut Cx<'_>, force: bool) {
        if self.after_sync_calls.is_empty() || (!force && self.inbox_still_arriving()) {
            return;
        }
        cx.out.push(Command::TimerCancel(T_INBOX_SYNC));
        for (call, q) in std::mem::take(&mut self.after_sync_calls) {
            super::tools::mesh_inbox_query(self, cx, &call, q);
        }
    }
}
