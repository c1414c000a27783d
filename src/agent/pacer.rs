//! Large transfers leave a window at a time. Every message a peer has not
//! receipted is an encrypted frame plus its plaintext in memory and a sealed
//! record in this call's commands; queueing all chunks of ten 30 MiB files
//! in one call took the core past its 1 GiB memory cap (one file alone
//! peaked at 473 MiB). Here a file is turned into its `file_transfer`
//! message and chunks only when its turn comes, and only `WINDOW` messages
//! to one peer wait for its receipt at a time; receipts let the next ones go.
//!
//! The same receipts measure a file's progress: for a peer that sends
//! receipts, each part of a file (its chunks, or the whole message when it
//! is small) is followed from the outbox sequence number it went under to
//! the receipt that names it, and the offload client hears the counts
//! (`TransferNews`). Nothing is counted that the peer did not receipt.

use super::{Agent, Cx};
use crate::offload::progress::{Count, TransferNews};
use crate::wire::offload_msg::{FileTransfer, OffloadMsg};
use crate::wire::payload::{Family, PayloadType};
use crate::wire::{time, transfer};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};

/// Messages to one peer in flight (sent, not yet receipted) at most: about
/// 8 MiB of chunks.
pub(super) const WINDOW: usize = 16;

/// Bytes (frames sent, records stored) one engine call hands out for the
/// pacer before it leaves the rest to a later call (`T_PACE`, due at
/// once). Each chunk costs about 30 ms of core time (encrypted, sealed,
/// stored); a window sent in one call held a tool call or a frame that
/// arrived meanwhile for about a second. Now it waits for one chunk.
pub(super) const CALL_BUDGET: usize = 1 << 20;

/// Bytes of a file's JSON text hashed per engine call while it is cut
/// into chunks (about 40 ms): a 30 MiB file's chunk hashes took 230 ms in
/// one call.
const HASH_SLICE: usize = 8 << 20;

/// Items are named where sub-machines can name them too.
pub(super) use crate::port::Paced as Item;

/// What waits in a peer's queue: an item as a sub-machine gave it, or one
/// part of a file already split (`track`: the followed file and the part's
/// index among the counted parts; a manifest is not counted).
enum Slot {
    /// Boxed: a file's message is large beside a part.
    Item(Box<Item>),
    Part {
        msg: Value,
        track: Option<(u64, usize)>,
    },
    /// A file too large for one message, its pieces hashed a slice per call.
    Cutting(Box<Cutting>),
}

/// A file's `file_transfer` text being cut into chunks: the manifest that
/// goes first names every chunk's hash.
struct Cutting {
    text: String,
    bounds: Vec<(usize, usize)>,
    hashes: Vec<String>,
    name: Option<String>,
    size: u64,
    transfer_id: String,
    from_agent: String,
    ts: String,
}

/// A file followed from its parts' outbox sequence numbers to the
/// receipts that name them.
struct Tracked {
    to: String,
    transfer_id: String,
    /// Text bytes of each counted part.
    part_bytes: Vec<u64>,
    /// (sequence number, part index) of the parts sent and not receipted.
    in_flight: Vec<(u64, usize)>,
    parts_done: u64,
    text_done: u64,
}

impl Tracked {
    fn count(&self) -> Count {
        Count {
            parts_done: self.parts_done,
            parts_total: self.part_bytes.len() as u64,
            text_done: self.text_done,
            text_total: self.part_bytes.iter().sum(),
        }
    }
}

#[derive(Default)]
pub(super) struct Pacer {
    queues: BTreeMap<String, VecDeque<Slot>>,
    /// A `Go` left: the offload client records its inputs as sent once it
    /// is back in the node (see `roles`).
    go_handed_over: bool,
    /// Files followed, by a number of their own.
    tracked: BTreeMap<u64, Tracked>,
    next_track: u64,
    /// Counts not yet handed to the offload client.
    news: Vec<TransferNews>,
}

impl Cutting {
    /// Hash the next pieces, about [`HASH_SLICE`] bytes; whether all are.
    fn hash_slice(&mut self) -> bool {
        let mut hashed = 0;
        while let Some(&(a, b)) = self.bounds.get(self.hashes.len()) {
            if hashed >= HASH_SLICE {
                return false;
            }
            self.hashes
                .push(transfer::sha256_hex(&self.text.as_bytes()[a..b]));
            hashed += b - a;
        }
        true
    }
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

    /// Forget what waits for `to` (its offload ended), and stop following
    /// its files.
    pub(super) fn drop_queue(&mut self, to: &str) {
        self.queues.remove(to);
        self.tracked.retain(|_, t| t.to != to);
        self.news.retain(|n| n.to != to);
    }

    pub(super) fn take_news(&mut self) -> Vec<TransferNews> {
        std::mem::take(&mut self.news)
    }

    pub(super) fn has_news(&self) -> bool {
        self.go_handed_over || !self.news.is_empty()
    }

    /// `from` receipted the messages numbered `seqs`: the followed parts
    /// among them are done. A file whose parts are all done is reported
    /// once more and forgotten.
    pub(super) fn receipted(&mut self, from: &str, seqs: &[u64]) {
        let mut finished = Vec::new();
        for (id, t) in self.tracked.iter_mut().filter(|(_, t)| t.to == from) {
            let before = t.parts_done;
            let part_bytes = &t.part_bytes;
            let (mut parts, mut text) = (0, 0);
            t.in_flight.retain(|(seq, i)| {
                let done = seqs.contains(seq);
                if done {
                    parts += 1;
                    text += part_bytes.get(*i).copied().unwrap_or(0);
                }
                !done
            });
            t.parts_done += parts;
            t.text_done += text;
            if t.parts_done == before {
                continue;
            }
            self.news.push(TransferNews {
                to: t.to.clone(),
                transfer_id: t.transfer_id.clone(),
                count: t.count(),
            });
            if t.parts_done >= t.part_bytes.len() as u64 {
                finished.push(*id);
            }
        }
        for id in finished {
            self.tracked.remove(&id);
        }
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
            .extend(items.into_iter().map(|i| Slot::Item(Box::new(i))));
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
        // This call's share is spent (or a file is being cut): the rest goes
        // in a later call, so what arrives meanwhile is not held behind it.
        let mut later = false;
        while self.in_flight(to) < WINDOW {
            if cx.bytes_out() >= CALL_BUDGET {
                later = true;
                break;
            }
            let Some(slot) = self.pacer.queues.get_mut(to).and_then(VecDeque::pop_front) else {
                break;
            };
            let item = match slot {
                Slot::Part { msg, track } => {
                    self.send_part(cx, to, msg, track);
                    continue;
                }
                Slot::Cutting(mut c) => {
                    let done = c.hash_slice();
                    let slots = if done {
                        self.cut_parts(to, *c)
                    } else {
                        later = true;
                        vec![Slot::Cutting(c)]
                    };
                    self.push_front(to, slots);
                    if later {
                        break;
                    }
                    continue;
                }
                Slot::Item(item) => *item,
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
                    let slots = self.file_parts(cx, to, msg, bytes, transfer_id, from_agent);
                    self.push_front(to, slots);
                }
            }
        }
        if self.pacer.queues.get(to).is_some_and(VecDeque::is_empty) {
            self.pacer.queues.remove(to);
        }
        if later {
            self.arm(cx, super::T_PACE, 0);
        }
    }

    fn push_front(&mut self, to: &str, slots: Vec<Slot>) {
        if let Some(q) = self.pacer.queues.get_mut(to) {
            for s in slots.into_iter().rev() {
                q.push_front(s);
            }
        }
    }

    /// A file's message: whole when it fits in one, or to be cut into a
    /// manifest and chunks (hashed over the next calls; see [`Cutting`]).
    fn file_parts(
        &mut self,
        cx: &mut Cx<'_>,
        to: &str,
        msg: FileTransfer,
        bytes: Vec<u8>,
        transfer_id: String,
        from_agent: String,
    ) -> Vec<Slot> {
        let name = msg.file_name.clone();
        let size = bytes.len() as u64;
        let msg = msg.into_value_with(bytes);
        let text = msg.to_string();
        let bounds = match transfer::cut(&text) {
            Ok(Some(b)) => b,
            Ok(None) => {
                let parts = vec![msg];
                let track = self.track(to, &transfer_id, &parts);
                return parts
                    .into_iter()
                    .map(|msg| Slot::Part {
                        msg,
                        track: track.map(|t| (t, 0)),
                    })
                    .collect();
            }
            // Not reached by a file: `Paced::file` refused (with a reason its
            // sender reports) any file whose message would need more than 80
            // chunks.
            Err(e) => {
                cx.log(
                    crate::io::LogLevel::Error,
                    &format!("cannot send to {to}: {e}"),
                );
                return Vec::new();
            }
        };
        drop(msg);
        vec![Slot::Cutting(Box::new(Cutting {
            text,
            hashes: Vec::with_capacity(bounds.len()),
            bounds,
            name,
            size,
            transfer_id,
            from_agent,
            ts: time::format_millis(cx.now()),
        }))]
    }

    /// A cut file's parts, each with what follows it (when `to` sends
    /// receipts): the manifest (which names the file for the receiver's
    /// progress reports), then the counted chunks.
    fn cut_parts(&mut self, to: &str, c: Cutting) -> Vec<Slot> {
        let kind = PayloadType::FileTransfer.as_str();
        let mut parts = transfer::assemble_values(
            &c.text,
            &c.bounds,
            c.hashes,
            &c.transfer_id,
            kind,
            &c.from_agent,
            &c.ts,
        );
        if let Some(m) = parts.first_mut().and_then(Value::as_object_mut) {
            if let Some(n) = c.name {
                m.insert("file_name".into(), Value::String(n));
            }
            m.insert("file_size".into(), Value::from(c.size));
        }
        let track = self.track(to, &c.transfer_id, &parts[1..]);
        parts
            .into_iter()
            .enumerate()
            .map(|(i, msg)| Slot::Part {
                msg,
                track: track.zip(i.checked_sub(1)),
            })
            .collect()
    }

    /// Follow a file's counted parts to `to`, if `to` sends receipts (a
    /// peer without them never says what arrived). Its number, or `None`.
    fn track(&mut self, to: &str, transfer_id: &str, counted: &[Value]) -> Option<u64> {
        if !self.peers.get(to).is_some_and(|p| p.kars) || counted.is_empty() {
            return None;
        }
        let chunk_type = PayloadType::TransferChunk.as_str();
        let part_bytes = counted
            .iter()
            .map(|v| match v.get("data").and_then(Value::as_str) {
                Some(d) if v.get("type").and_then(Value::as_str) == Some(chunk_type) => {
                    d.len() as u64
                }
                _ => v.to_string().len() as u64,
            })
            .collect();
        let id = self.pacer.next_track;
        self.pacer.next_track += 1;
        let t = Tracked {
            to: to.to_string(),
            transfer_id: transfer_id.to_string(),
            part_bytes,
            in_flight: Vec::new(),
            parts_done: 0,
            text_done: 0,
        };
        // Nothing receipted yet: the client learns the file is followed.
        self.pacer.news.push(TransferNews {
            to: to.to_string(),
            transfer_id: transfer_id.to_string(),
            count: t.count(),
        });
        self.pacer.tracked.insert(id, t);
        Some(id)
    }

    /// Send one part of a split file; a counted part is followed by the
    /// sequence number it goes under. One that does not go straight into
    /// the outbox (no session yet) cannot be followed, and its file is
    /// followed no further: its progress would never be whole.
    fn send_part(&mut self, cx: &mut Cx<'_>, to: &str, msg: Value, track: Option<(u64, usize)>) {
        let seq = self
            .peers
            .get(to)
            .filter(|p| p.kars && p.can_send())
            .map(|p| p.out_seq);
        self.send_payload(cx, to, msg, None, None);
        let Some((id, part)) = track else {
            return;
        };
        let queued = self
            .peers
            .get(to)
            .and_then(|p| p.outbox.last())
            .is_some_and(|o| Some(o.seq) == seq && o.needs_receipt);
        match (self.pacer.tracked.get_mut(&id), seq) {
            (Some(t), Some(seq)) if queued => t.in_flight.push((seq, part)),
            _ => {
                self.pacer.tracked.remove(&id);
            }
        }
    }
}
