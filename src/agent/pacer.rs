//! Large transfers leave a window at a time. Every message a peer has not
//! receipted is an encrypted frame plus its plaintext in memory and a sealed
//! record in this call's commands; queueing all chunks of ten 30 MiB files
//! in one call took the core past its 1 GiB memory cap (one file alone
//! peaked at 473 MiB). Here a file is turned into its `file_transfer`
//! message and chunks only when its turn comes, and only `WINDOW` messages
//! to one peer wait for its receipt at a time; receipts let the next ones go.

use super::{Agent, Cx};
use crate::wire::offload_msg::OffloadMsg;
use crate::wire::payload::{Family, PayloadType};
use crate::wire::{time, transfer};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};

/// Messages to one peer in flight (sent, not yet receipted) at most: about
/// 8 MiB of chunks.
pub(super) const WINDOW: usize = 16;

/// Items are named where sub-machines can name them too.
pub(super) use crate::port::Paced as Item;

#[derive(Default)]
pub(super) struct Pacer {
    queues: BTreeMap<String, VecDeque<Item>>,
    /// A `Go` left: the offload client records its inputs as sent once it
    /// is back in the node (see `roles`).
    go_handed_over: bool,
}

impl Pacer {
    /// Nothing waits for `to` (or for anyone, with `None`).
    pub(super) fn idle(&self, to: Option<&str>) -> bool {
        match to {
            Some(t) => self.queues.get(t).is_none_or(VecDeque::is_empty),
            None => self.queues.values().all(VecDeque::is_empty),
        }
    }

    pub(super) fn take_go_handed_over(&mut self) -> bool {
        std::mem::take(&mut self.go_handed_over)
    }

    /// Forget what waits for `to` (its offload ended).
    pub(super) fn drop_queue(&mut self, to: &str) {
        self.queues.remove(to);
    }
}

impl Agent {
    /// Queue `items` for `to`, after what already waits, and send what the
    /// window allows now.
    pub(super) fn send_paced(&mut self, cx: &mut Cx<'_>, to: &str, items: Vec<Item>) {
        self.pacer
            .queues
            .entry(to.to_string())
            .or_default()
            .extend(items);
        self.pump_to(cx, to);
    }

    /// Send what the windows allow (after receipts, on the heartbeat). Not
    /// called from inside a sub-machine: it may hand the offload client its
    /// go-ahead news.
    pub(super) fn pump_outgoing(&mut self, cx: &mut Cx<'_>) {
        let waiting: Vec<String> = self
            .pacer
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(to, _)| to.clone())
            .collect();
        for to in waiting {
            self.pump_to(cx, &to);
        }
        self.after_pacing(cx);
    }

    fn in_flight(&self, to: &str) -> usize {
        self.peers.get(to).map_or(0, |p| p.outbox.len())
            + self.awaiting_session.get(to).map_or(0, Vec::len)
    }

    fn pump_to(&mut self, cx: &mut Cx<'_>, to: &str) {
        while self.in_flight(to) < WINDOW {
            let Some(item) = self.pacer.queues.get_mut(to).and_then(VecDeque::pop_front) else {
                break;
            };
            match item {
                Item::Message(v) => self.send_payload(cx, to, v, None, None),
                Item::Go(go) => {
                    let v = OffloadMsg::from(go).to_value();
                    self.send_payload(cx, to, v, None, None);
                    self.pacer.go_handed_over = true;
                }
                Item::File {
                    msg,
                    bytes,
                    transfer_id,
                    from_agent,
                } => {
                    let msg = msg.into_value_with(bytes);
                    let kind = PayloadType::FileTransfer.as_str();
                    let parts = self.split_message(cx, to, msg, kind, &transfer_id, &from_agent);
                    if let Some(q) = self.pacer.queues.get_mut(to) {
                        for part in parts.into_iter().rev() {
                            q.push_front(Item::Message(part));
                        }
                    }
                }
            }
        }
        if self.pacer.queues.get(to).is_some_and(VecDeque::is_empty) {
            self.pacer.queues.remove(to);
        }
    }

    /// A message (of type `kind`) whole, or as a manifest and chunks when
    /// its JSON text is over 512 KiB.
    fn split_message(
        &mut self,
        cx: &mut Cx<'_>,
        to: &str,
        msg: Value,
        kind: &str,
        transfer_id: &str,
        from_agent: &str,
    ) -> Vec<Value> {
        let text = msg.to_string();
        let ts = time::format_millis(cx.now());
        match transfer::split(&text, transfer_id, kind, from_agent, &ts) {
            Ok(None) => vec![msg],
            Ok(Some(parts)) => parts,
            // Not reached by a file: `Paced::file` refused (with a reason its
            // sender reports) any file whose message would need more than 80
            // chunks, and no other paced message comes near 512 KiB.
            Err(e) => {
                cx.log(
                    crate::io::LogLevel::Error,
                    &format!("cannot send to {to}: {e}"),
                );
                Vec::new()
            }
        }
    }
}
