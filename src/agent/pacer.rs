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
/// into chunks (about 20 ms): a 30 MiB file's chunk hashes took 230 ms in
/// one call.
const HASH_SLICE: usize = 4 << 20;

/// Bytes of a file base64-encoded into its message's text per engine call
/// (about 15 ms; a multiple of 3, so only the last slice has padding). The
/// whole text at once (base64, then a 40 MB JSON serialisation) held the
/// engine for 175 to 196 ms at a 30 MiB input's turn.
const ENCODE_SLICE: usize = 6 << 20;
const _: () = assert!(ENCODE_SLICE % 3 == 0);

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
    /// A file too large for one message, its text written a slice per call.
    Encoding(Box<Encoding>),
    /// A file too large for one message, its pieces hashed a slice per call.
    Cutting(Box<Cutting>),
}

/// What a file's message is cut into, besides its text: named in the
/// manifest (the name and size for the receiver's progress reports).
struct FileMeta {
    name: Option<String>,
    size: u64,
    transfer_id: String,
    from_agent: String,
    ts: String,
}

/// A file's `file_transfer` text being written: the envelope before the
/// base64 (`FileTransfer::envelope`), then the base64 a slice per call,
/// then the envelope after it. The same text as serialising the whole
/// message, without the 40 MB serialisation.
struct Encoding {
    text: String,
    bytes: Vec<u8>,
    encoded: usize,
    after: String,
    meta: FileMeta,
}

impl Encoding {
    /// Encode the next [`ENCODE_SLICE`] bytes; whether the text is whole
    /// (then the file's bytes are dropped).
    fn encode_slice(&mut self) -> bool {
        let end = self.bytes.len().min(self.encoded + ENCODE_SLICE);
        let piece = self.bytes.get(self.encoded..end).unwrap_or_default();
        self.text.push_str(&crate::wire::b64::encode_std(piece));
        self.encoded = end;
        if end < self.bytes.len() {
            return false;
        }
        self.text.push_str(&self.after);
        self.bytes = Vec::new();
        true
    }
}

/// A file's `file_transfer` text being cut into chunks: the manifest that
/// goes first names every chunk's hash.
struct Cutting {
    text: String,
    bounds: Vec<(usize, usize)>,
    hashes: Vec<String>,
    meta: FileMeta,
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
                // A slice of a file's preparation ends the call: the parts
                // it leaves go from the next one.
                Slot::Encoding(mut e) => {
                    let slots = if e.encode_slice() {
                        self.cut_text(cx, to, e.text, e.meta)
                    } else {
                        vec![Slot::Encoding(e)]
                    };
                    self.push_front(to, slots);
                    later = true;
                    break;
                }
                Slot::Cutting(mut c) => {
                    let slots = if c.hash_slice() {
                        self.cut_parts(to, *c)
                    } else {
                        vec![Slot::Cutting(c)]
                    };
                    self.push_front(to, slots);
                    later = true;
                    break;
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

    /// A file's message: whole when it fits in one, or to be written and
    /// cut into a manifest and chunks over the next calls (see
    /// [`Encoding`] and [`Cutting`]).
    fn file_parts(
        &mut self,
        cx: &mut Cx<'_>,
        to: &str,
        msg: FileTransfer,
        bytes: Vec<u8>,
        transfer_id: String,
        from_agent: String,
    ) -> Vec<Slot> {
        let meta = FileMeta {
            name: msg.file_name.clone(),
            size: bytes.len() as u64,
            transfer_id,
            from_agent,
            ts: time::format_millis(cx.now()),
        };
        let base64_chars = bytes.len().div_ceil(3) * 4;
        match msg.envelope() {
            Some((before, after))
                if before.len() + base64_chars + after.len() > transfer::CHUNK_CHARS =>
            {
                let mut text = String::with_capacity(before.len() + base64_chars + after.len());
                text.push_str(&before);
                vec![Slot::Encoding(Box::new(Encoding {
                    text,
                    bytes,
                    encoded: 0,
                    after,
                    meta,
                }))]
            }
            // Small enough to travel whole.
            Some(_) => self.whole(to, msg.into_value_with(bytes), &meta.transfer_id),
            // Never (the key is always there): the text at once.
            None => {
                let text = msg.into_value_with(bytes).to_string();
                self.cut_text(cx, to, text, meta)
            }
        }
    }

    /// A file's message that travels whole, followed as one part.
    fn whole(&mut self, to: &str, msg: Value, transfer_id: &str) -> Vec<Slot> {
        let track = self.track(to, transfer_id, std::slice::from_ref(&msg));
        vec![Slot::Part {
            msg,
            track: track.map(|t| (t, 0)),
        }]
    }

    /// A file's whole text: one part when it fits in one message, or its
    /// pieces to hash.
    fn cut_text(&mut self, cx: &mut Cx<'_>, to: &str, text: String, meta: FileMeta) -> Vec<Slot> {
        let bounds = match transfer::cut(&text) {
            Ok(Some(b)) => b,
            // Only from the `None` envelope above: texts written a slice
            // at a time are longer than one message.
            Ok(None) => {
                return match serde_json::from_str::<Value>(&text) {
                    Ok(msg) => self.whole(to, msg, &meta.transfer_id),
                    Err(_) => Vec::new(),
                };
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
        vec![Slot::Cutting(Box::new(Cutting {
            text,
            hashes: Vec::with_capacity(bounds.len()),
            bounds,
            meta,
        }))]
    }

    /// A cut file's parts, each with what follows it (when `to` sends
    /// receipts): the manifest (which names the file for the receiver's
    /// progress reports), then the counted chunks.
    fn cut_parts(&mut self, to: &str, c: Cutting) -> Vec<Slot> {
        let kind = PayloadType::FileTransfer.as_str();
        let m = c.meta;
        let mut parts = transfer::assemble_values(
            &c.text,
            &c.bounds,
            c.hashes,
            &m.transfer_id,
            kind,
            &m.from_agent,
            &m.ts,
        );
        if let Some(o) = parts.first_mut().and_then(Value::as_object_mut) {
            if let Some(n) = m.name {
                o.insert("file_name".into(), Value::String(n));
            }
            o.insert("file_size".into(), Value::from(m.size));
        }
        let track = self.track(to, &m.transfer_id, &parts[1..]);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> FileMeta {
        FileMeta {
            name: Some("big.bin".into()),
            size: 0,
            transfer_id: "t".into(),
            from_agent: "alice".into(),
            ts: "2026-12-06T09:00:00.000Z".into(),
        }
    }

    /// A large input is written into its message's text and hashed a
    /// slice per engine call (each call's share bounded), and what comes
    /// out is exactly what serialising and cutting the whole message at
    /// once gave: the same text, cut at the same places, the same hashes.
    #[test]
    fn a_large_files_text_is_written_and_hashed_a_slice_per_call_as_the_whole_text_would_be() {
        // Not a multiple of 3 (padding at the end) and over three slices.
        let len = 3 * ENCODE_SLICE + 2;
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let sha = transfer::sha256_hex(&bytes);
        let msg = FileTransfer::input("r-1", "big.bin", len as u64, &sha, "alice", "ts");
        let whole = msg.clone().into_value_with(bytes.clone()).to_string();
        let Some((before, after)) = msg.envelope() else {
            panic!("no envelope");
        };
        let mut e = Encoding {
            text: before,
            bytes,
            encoded: 0,
            after: after.clone(),
            meta: meta(),
        };
        let mut calls = 0;
        loop {
            let was = e.text.len();
            let done = e.encode_slice();
            calls += 1;
            assert!(
                e.text.len() - was <= ENCODE_SLICE / 3 * 4 + after.len(),
                "one call wrote {} characters",
                e.text.len() - was
            );
            if done {
                break;
            }
        }
        assert_eq!(calls, 4);
        assert!(
            e.bytes.is_empty(),
            "the file's bytes are dropped once written"
        );
        assert!(e.text == whole, "the text written in slices differs");

        let Ok(Some(bounds)) = transfer::cut(&e.text) else {
            panic!("a text this long is cut");
        };
        let mut c = Cutting {
            text: e.text,
            hashes: Vec::new(),
            bounds,
            meta: meta(),
        };
        let mut calls = 0;
        loop {
            let was = c.hashes.len();
            let done = c.hash_slice();
            calls += 1;
            let hashed: usize = c.bounds[was..c.hashes.len()]
                .iter()
                .map(|(a, b)| b - a)
                .sum();
            assert!(
                hashed < HASH_SLICE + transfer::CHUNK_CHARS,
                "one call hashed {hashed} bytes"
            );
            if done {
                break;
            }
        }
        assert!(calls >= whole.len() / (HASH_SLICE + transfer::CHUNK_CHARS));
        let Ok(Some((manifest, chunks))) =
            transfer::split_typed(&whole, "t", "file_transfer", "alice", "ts")
        else {
            panic!("the whole text is not split");
        };
        assert_eq!(manifest.chunk_hashes.as_deref(), Some(&c.hashes[..]));
        let pieces: Vec<&str> = c.bounds.iter().map(|&(a, b)| &c.text[a..b]).collect();
        let expected: Vec<&str> = chunks.iter().filter_map(|k| k.data.as_deref()).collect();
        assert_eq!(pieces, expected);
    }
}
