//! The sending side: sessions opened from verified bundles, messages sealed
//! into the outbox and committed before they leave, receipts, re-sealing
//! after a session change, and re-sending until receipted.
use super::{
    tools::mesh_send::{self, Sent},
    Agent, Cx, Purpose, Queued, Sealed, MAX_PAYLOAD_BYTES, RECEIPT_DELAY_MS, RESEND_AFTER_MS,
    RESEND_ROUND_MIN_MS, RESEND_SLACK_MS, T_RECEIPTS, T_RESEND,
};
use crate::crypto::ratchet::{channel_ad, Ratchet};
use crate::crypto::x3dh;
use crate::io::{Command, LogLevel};
use crate::mesh::session::{OutEntry, Peer, SentUnder, OUTBOX_MAX};
use crate::wire::delivery::{DeliveryMsg, ReceiptMsg, Receipts, Sequence};
use crate::wire::payload::{Family, PayloadType};
use crate::wire::relay_frame::{Knock, RelayFrame};
use crate::wire::{frames, registry};
use serde_json::Value;

/// A session we open from a peer's verified bundle, before its KNOCK goes.
struct NewSession {
    identity_ed: [u8; 32],
    est: x3dh::Establishment,
    ratchet: Ratchet,
}

/// A registry answer to a bundle request, kept while the peer's
/// registration is still being read.
pub(super) struct BundleAnswer {
    status: Option<u16>,
    body: Vec<u8>,
    problem: String,
}

impl Agent {
    // ---------------------------------------------------------------- sending

    /// Send a JSON payload to a peer DID: now if there is a session, after
    /// fetching its bundle if not. Answers `call_id` once committed.
    /// `key`: the caller's idempotency key. A retry with a key already
    /// committed answers with the first send's result instead of sending
    /// again (a caller cut off before the answer cannot know otherwise).
    pub fn send_payload(
        &mut self,
        cx: &mut Cx<'_>,
        to: &str,
        payload: Value,
        call_id: Option<String>,
        key: Option<String>,
    ) {
        if let (Some(k), Some(c)) = (&key, &call_id) {
            if let Some(fid) = self.peers.get(to).and_then(|p| p.sent_key(k)) {
                let fid = fid.to_string();
                return mesh_send::send_done(self, cx, c, to, Sent::Repeat { frame_id: &fid });
            }
        }
        let can_send = self.peers.get(to).is_some_and(|p| p.can_send());
        if can_send {
            return self.encrypt_and_queue(cx, to, payload, call_id, key);
        }
        let waiting = self.awaiting_session.contains_key(to);
        self.awaiting_session
            .entry(to.to_string())
            .or_default()
            .push(Queued {
                call_id,
                payload,
                key,
            });
        if waiting {
            return;
        }
        if self.relay_still_delivering() || self.knocks_awaiting_identity.contains_key(to) {
            // The relay may still hold the peer's own KNOCK for us.
            self.fetch_after_sync.insert(to.to_string());
            return;
        }
        self.fetch_for_session(cx, to);
    }

    /// Start a new session with `to`: its registration (does the peer speak
    /// receipts?) and its bundle, asked for together, so the very first
    /// message carries the delivery envelope and a first contact waits for
    /// one registry round trip, not two in a row. A bundle that comes back
    /// first waits for the registration (`on_bundle_fetched`).
    fn fetch_for_session(&mut self, cx: &mut Cx<'_>, to: &str) {
        self.capabilities_pending.insert(to.to_string(), None);
        let path = format!("/v1/agents/{to}");
        self.http(
            cx,
            Purpose::AgentInfo {
                peer: to.to_string(),
                for_session: true,
            },
            "GET",
            &path,
            false,
            None,
        );
        let path = format!("/v1/agents/{to}/prekeys");
        self.http(
            cx,
            Purpose::Bundle(to.to_string()),
            "GET",
            &path,
            false,
            None,
        );
    }

    /// The bundle of a new session: used now if the peer's registration
    /// has been read, else kept until it is.
    pub(super) fn on_bundle_fetched(
        &mut self,
        cx: &mut Cx<'_>,
        peer_did: &str,
        status: Option<u16>,
        body: &[u8],
        problem: &str,
    ) {
        if let Some(slot @ None) = self.capabilities_pending.get_mut(peer_did) {
            *slot = Some(BundleAnswer {
                status,
                body: body.to_vec(),
                problem: problem.to_string(),
            });
            return;
        }
        self.on_bundle(cx, peer_did, status, body, problem);
    }

    /// The peer's registration has been read (or could not be): its bundle,
    /// if it came first, is used now.
    pub(super) fn capabilities_known(&mut self, cx: &mut Cx<'_>, peer_did: &str) {
        if let Some(Some(b)) = self.capabilities_pending.remove(peer_did) {
            self.on_bundle(cx, peer_did, b.status, &b.body, &b.problem);
        }
    }

    /// Peers whose new session waited: use the session that came up
    /// meanwhile, or fetch the bundle now; one whose KNOCK is still being
    /// verified waits for that.
    pub(super) fn resume_session_fetches(&mut self, cx: &mut Cx<'_>) {
        if self.sync_id.is_some() && self.link.open_socket().is_some() {
            return;
        }
        for did in std::mem::take(&mut self.fetch_after_sync) {
            if self.knocks_awaiting_identity.contains_key(&did) {
                self.fetch_after_sync.insert(did);
            } else if self.peers.get(&did).is_some_and(|p| p.can_send()) {
                for q in self.awaiting_session.remove(&did).unwrap_or_default() {
                    self.encrypt_and_queue(cx, &did, q.payload, q.call_id, q.key);
                }
            } else if self.awaiting_session.contains_key(&did) {
                self.fetch_for_session(cx, &did);
            }
        }
    }

    fn on_bundle(
        &mut self,
        cx: &mut Cx<'_>,
        peer_did: &str,
        status: Option<u16>,
        body: &[u8],
        problem: &str,
    ) {
        let queued = self.awaiting_session.remove(peer_did).unwrap_or_default();
        if self.peers.get(peer_did).is_some_and(|p| p.can_send()) {
            // A session came up meanwhile (the peer knocked first and its
            // message arrived): use it rather than replacing it.
            for q in queued {
                self.encrypt_and_queue(cx, peer_did, q.payload, q.call_id, q.key);
            }
            return;
        }
        match self.session_from_bundle(cx, peer_did, status, body, problem) {
            Ok(opened) => self.open_session(cx, peer_did, opened, queued),
            Err(msg) => {
                let waiting = self.peers.get(peer_did).map_or(0, |p| p.outbox.len());
                if waiting > 0 {
                    // Entries restored without a session (`Repairs`): they
                    // wait for the next send to this peer, its own message,
                    // or the next start.
                    cx.log(
                        LogLevel::Warn,
                        &format!("{waiting} message(s) to {peer_did} wait for a session that could not be opened: {msg}"),
                    );
                }
                for q in queued {
                    if let Some(c) = q.call_id {
                        mesh_send::send_failed(self, cx, &c, &msg);
                    }
                }
            }
        }
    }

    /// A verified bundle, the X3DH agreement with it and the new sending
    /// ratchet; or why not, in words for the waiting sends.
    fn session_from_bundle(
        &mut self,
        cx: &mut Cx<'_>,
        peer_did: &str,
        status: Option<u16>,
        body: &[u8],
        problem: &str,
    ) -> Result<NewSession, String> {
        if status == Some(404) {
            return Err(format!("{peer_did} has no prekey bundle in the registry: it is not registered, or the registry restarted and the agent has not come back yet. Check the DID or try again later."));
        }
        if !status.is_some_and(|s| (200..300).contains(&s)) {
            return Err(format!(
                "Could not fetch the prekey bundle of {peer_did}: {problem}"
            ));
        }
        let text = String::from_utf8_lossy(body);
        let bundle = registry::parse_bundle(&text)
            .map_err(|e| e.to_string())
            .and_then(|b| b.verify_for(peer_did).map(|_| b).map_err(|e| e.to_string()))
            .map_err(|e| format!("Refusing the prekey bundle of {peer_did}: {e}"))?;
        let (agreement, est) = x3dh::initiate(&self.id, &bundle, cx.host)
            .map_err(|e| format!("Key agreement with {peer_did} failed: {e}"))?;
        let ad = channel_ad(self.id.did(), peer_did, &agreement.associated_data);
        // A peer known to use the npm SDK 4.0.0's X3DH KDF gets it back.
        let legacy = self.peers.get(peer_did).is_some_and(|p| p.legacy_kdf);
        let ratchet =
            Ratchet::new_initiator(agreement.secret(legacy), &bundle.signed_prekey, ad, cx.host)
                .map_err(|e| format!("Key agreement with {peer_did} failed: {e}"))?;
        Ok(NewSession {
            identity_ed: bundle.identity_key_ed,
            est,
            ratchet,
        })
    }

    /// Make the new session ours, KNOCK, and send under it everything that
    /// waited: stale outbox entries sealed again, then the queued sends.
    fn open_session(
        &mut self,
        cx: &mut Cx<'_>,
        peer_did: &str,
        opened: NewSession,
        queued: Vec<Queued>,
    ) {
        let NewSession {
            identity_ed,
            est,
            ratchet,
        } = opened;
        let knock_id = frames::uuid_v4(cx.host);
        let ts = Self::timestamp(cx);
        // The establishment carries our extension `ik_ed`, the Ed25519 key,
        // so a kars-mesh responder can bind the KNOCK to our DID without a
        // registry round trip.
        let knock = RelayFrame::Knock(Knock::new(
            self.id.did(),
            peer_did,
            &knock_id,
            &ts,
            &est,
            self.id.ed25519_public(),
        ))
        .to_text();
        let peer = self
            .peers
            .entry(peer_did.to_string())
            .or_insert_with(|| Peer::new(peer_did));
        peer.identity_ed = Some(identity_ed);
        peer.active = Some(ratchet);
        peer.initiated_by_us = true;
        peer.confirmed = false;
        peer.knock_sent = Some(knock_id);
        peer.pending_knock = Some(knock.clone());
        // Everything for this peer is sealed under the new session in memory
        // and committed in one record before the KNOCK and frames leave.
        let stale: Vec<OutEntry> = std::mem::take(&mut peer.outbox);
        let mut frames_out = vec![knock];
        let mut answers = Vec::new();
        self.reseal(cx, peer_did, stale, &mut frames_out);
        for q in queued {
            match self.seal_for_peer(cx, peer_did, q.payload, None, q.key) {
                Ok(sealed) => {
                    frames_out.push(sealed.frame.clone());
                    answers.push((q.call_id, Ok(sealed)));
                }
                Err(e) => answers.push((q.call_id, Err(e))),
            }
        }
        self.commit_and_send(cx, peer_did, frames_out, answers);
    }

    pub(super) fn encrypt_and_queue(
        &mut self,
        cx: &mut Cx<'_>,
        to: &str,
        payload: Value,
        call_id: Option<String>,
        key: Option<String>,
    ) {
        let (frames_out, answer) = match self.seal_for_peer(cx, to, payload, None, key) {
            Ok(sealed) => (vec![sealed.frame.clone()], Ok(sealed)),
            Err(e) => (Vec::new(), Err(e)),
        };
        self.commit_and_send(cx, to, frames_out, vec![(call_id, answer)]);
    }

    /// Encrypt one message for `to` and queue it in the peer's outbox, in
    /// memory only. `keep_seq`: a message re-encrypted under a new session
    /// keeps its sequence number, so a copy the peer already has is
    /// recognised.
    pub(super) fn seal_for_peer(
        &mut self,
        cx: &mut Cx<'_>,
        to: &str,
        mut payload: Value,
        keep_seq: Option<u64>,
        key: Option<String>,
    ) -> Result<Sealed, String> {
        let now = cx.now();
        let fid = frames::uuid_v4(cx.host);
        let ts = Self::timestamp(cx);
        let me = self.id.did().to_string();
        let Some(peer) = self.peers.get_mut(to) else {
            return Err(format!("no session with {to}"));
        };
        if peer.out_epoch == 0 {
            let mut e = [0u8; 8];
            cx.host.fill(&mut e);
            // Kept below 2^53 so JavaScript readers see it exactly.
            peer.out_epoch = (u64::from_le_bytes(e) >> 11).max(1);
        }
        let kars = peer.kars;
        let file_part = payload.get("type").and_then(Value::as_str)
            == Some(PayloadType::TransferChunk.as_str());
        let waiting = peer.outbox.iter().filter(|o| o.needs_receipt).count();
        if keep_seq.is_none() && waiting >= OUTBOX_MAX {
            // Refuse rather than drop: nothing already accepted is ever lost.
            return Err(format!(
                "{waiting} messages to {to} are still waiting for its receipt (it looks offline); \
                 nothing more is queued until it comes back. Try again later."
            ));
        }
        let seq = keep_seq.unwrap_or(peer.out_seq);
        let bare = serde_json::to_vec(&payload).unwrap_or_default();
        // Receipts due to a peer that reads them nested ride in this
        // message; they leave the queue only once it is sealed. Only in a
        // small one: a large one (a file's part) may be refused unread by
        // the peer's inbox quota, where a receipt of its own gets through,
        // and must not cross the payload limit for a receipt's sake.
        let ack = (kars && peer.reads_ack && bare.len() <= NESTED_ACK_MAX_BYTES)
            .then(|| self.receipts_due.get(to))
            .flatten()
            .map(|seqs| receipts_for(peer, seqs));
        let nested_ack = ack.is_some();
        if kars {
            Sequence::new(seq, peer.out_epoch, ack).put_into(&mut payload);
        }
        let plain = serde_json::to_vec(&payload).unwrap_or_default();
        if plain.len() > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "Message is {} bytes; the limit is {MAX_PAYLOAD_BYTES}. Shorten it, or split it over several mesh_send calls.",
                plain.len()
            ));
        }
        let Some(ratchet) = peer.active.as_mut() else {
            return Err(format!("no session with {to}"));
        };
        let (header, ct) = ratchet
            .encrypt(&plain, cx.host)
            .map_err(|e| format!("Could not encrypt for {to}: {e}"))?;
        let frame = frames::message_frame(&me, to, &fid, &ts, &header, &ct);
        if kars && keep_seq.is_none() {
            peer.out_seq = peer.out_seq.saturating_add(1);
        }
        if let Some(k) = &key {
            peer.remember_key(k, &fid);
        }
        peer.outbox.push(OutEntry {
            seq,
            frame_id: fid.clone(),
            frame: frame.clone(),
            sent_under: Some(SentUnder::of(&header)),
            plaintext: bare,
            created_ms: now,
            last_sent_ms: now,
            attempts: 1,
            needs_receipt: kars,
            key,
            file_part,
            stored: false,
        });
        let new_session = peer.knock_sent.is_some();
        self.stats.sent += 1;
        if nested_ack {
            self.receipts_due.remove(to);
        }
        Ok(Sealed {
            frame_id: fid,
            frame,
            new_session,
        })
    }

    /// Commit the peer record (session steps and outbox together), then send
    /// the frames, then answer the tool calls: a crash can repeat a frame,
    /// never lose a committed one or reuse a key.
    pub(super) fn commit_and_send(
        &mut self,
        cx: &mut Cx<'_>,
        to: &str,
        mut frames_out: Vec<String>,
        answers: Vec<(Option<String>, Result<Sealed, String>)>,
    ) {
        let sent_now = self.link.open_socket().is_some();
        if sent_now {
            if let Some(p) = self.peers.get_mut(to) {
                p.hand_over_unreceipted();
            }
            // Receipts due to this peer go now, after these frames, instead
            // of in a batch of their own RECEIPT_DELAY_MS later: this batch
            // commits before it sends anyway, a batch of their own would
            // cost one more commit (an fsync on each side in a conversation).
            if !frames_out.is_empty() {
                if let Some(seqs) = self.receipts_due.remove(to) {
                    match self.seal_receipt(cx, to, &seqs) {
                        Some(frame) => frames_out.push(frame),
                        None => {
                            self.receipts_due.insert(to.to_string(), seqs);
                        }
                    }
                }
            }
        }
        self.save_peer(cx, to);
        if sent_now {
            for f in frames_out {
                self.send_frame(cx, f);
            }
        }
        for (call, answer) in answers {
            let Some(c) = call else { continue };
            match answer {
                Ok(sealed) => self.answer_send(cx, c, to, sealed, sent_now),
                Err(e) => mesh_send::send_failed(self, cx, &c, &e),
            }
        }
        self.ask_relay_to_confirm(cx);
    }

    /// Receipt for one message, plus everything below `in_next`, so a lost
    /// receipt never pins the sender's outbox.
    /// Receipts are coalesced: one cumulative receipt per peer per
    /// RECEIPT_DELAY_MS instead of one per message, which halves the writes
    /// and events on both sides under load. A receipt lost to a crash only
    /// means the sender sends again, and we answer again.
    pub(super) fn queue_receipt(&mut self, cx: &mut Cx<'_>, to: &str, seq: u64) {
        if self.receipts_due.is_empty() {
            self.arm(cx, T_RECEIPTS, RECEIPT_DELAY_MS);
        }
        let q = self.receipts_due.entry(to.to_string()).or_default();
        if q.len() < 256 {
            q.push(seq);
        }
    }

    pub(super) fn flush_receipts(&mut self, cx: &mut Cx<'_>) {
        for (to, seqs) in std::mem::take(&mut self.receipts_due) {
            if let Some(frame) = self.seal_receipt(cx, &to, &seqs) {
                self.save_peer(cx, &to);
                self.send_frame(cx, frame);
            }
        }
    }

    /// Encrypt a receipt (in memory; the caller commits the peer record):
    /// the message `seq` plus everything below `in_next`, so a lost receipt
    /// never pins the sender's outbox.
    pub(super) fn seal_receipt(
        &mut self,
        cx: &mut Cx<'_>,
        to: &str,
        seqs: &[u64],
    ) -> Option<String> {
        let fid = frames::uuid_v4(cx.host);
        let ts = Self::timestamp(cx);
        let me = self.id.did().to_string();
        let peer = self.peers.get_mut(to)?;
        let receipts = receipts_for(peer, seqs);
        let r = peer.active.as_mut().filter(|r| r.can_send())?;
        let body = DeliveryMsg::from(ReceiptMsg::new(receipts)).to_text();
        let (header, ct) = r.encrypt(body.as_bytes(), cx.host).ok()?;
        Some(frames::message_frame(&me, to, &fid, &ts, &header, &ct))
    }

    /// Seal outbox entries again under the peer's current session, keeping
    /// their sequence numbers and idempotency keys; their frames are added to
    /// `frames_out` (nothing is committed here).
    pub(super) fn reseal(
        &mut self,
        cx: &mut Cx<'_>,
        peer_did: &str,
        stale: Vec<OutEntry>,
        frames_out: &mut Vec<String>,
    ) {
        for o in stale {
            if o.plaintext.is_empty() {
                // A file's chunk read back after a restart keeps only its
                // frame (`OutEntry::keeps_frame_only`), which the new
                // session cannot carry (nor one whose frame restore had to
                // drop). Its transfer does not complete; the offload that
                // sent it ends by its own deadline.
                cx.log(
                    LogLevel::Warn,
                    &format!(
                        "a part of a file sent to {peer_did} before the restart cannot go under its new session; that transfer will not complete (send the file again)"
                    ),
                );
                continue;
            }
            let payload: Value = serde_json::from_slice(&o.plaintext).unwrap_or_default();
            if let Ok(sealed) = self.seal_for_peer(
                cx,
                peer_did,
                payload,
                o.needs_receipt.then_some(o.seq),
                o.key.clone(),
            ) {
                frames_out.push(sealed.frame);
            }
        }
    }

    pub(super) fn reencrypt_outbox(&mut self, cx: &mut Cx<'_>, peer_did: &str) {
        let Some(peer) = self.peers.get_mut(peer_did) else {
            return;
        };
        if !peer.can_send() {
            return;
        }
        let stale: Vec<OutEntry> = std::mem::take(&mut peer.outbox);
        peer.pending_knock = None;
        let mut frames_out = Vec::new();
        self.reseal(cx, peer_did, stale, &mut frames_out);
        self.commit_and_send(cx, peer_did, frames_out, Vec::new());
    }

    /// Keep T_RESEND set for the oldest outbox entry's re-send (after every
    /// event: entries come and go in many places). It is only ever moved
    /// earlier; one that fires with nothing due yet (the entry was receipted
    /// meanwhile) finds the next due time here. Without a link nothing goes
    /// out: the connect sends everything anyway.
    pub(crate) fn arm_resend(&mut self, cx: &mut Cx<'_>) {
        if self.link.open_socket().is_none() {
            return;
        }
        let Some(oldest) = self
            .peers
            .values()
            // What `flush_all` can send: a stored frame, or one sealed again
            // from its plaintext when the session can send.
            .flat_map(|p| {
                let can = p.can_send();
                p.outbox.iter().filter(move |o| can || !o.frame.is_empty())
            })
            .map(|o| o.last_sent_ms)
            .min()
        else {
            return;
        };
        // Never sooner than the slack from now, nor than RESEND_ROUND_MIN_MS
        // after the last round: an entry that stays due (its send keeps
        // failing) costs a check now and then, not a loop, and entries sent
        // at different times to a peer that is away share rounds.
        let at = oldest
            .saturating_add(RESEND_AFTER_MS)
            .max(cx.now())
            .saturating_add(RESEND_SLACK_MS)
            .max(self.resend_round_ms.saturating_add(RESEND_ROUND_MIN_MS));
        if self.resend_at.is_none_or(|t| at < t) {
            self.resend_at = Some(at);
            cx.out.push(Command::TimerSet {
                id: T_RESEND,
                at_ms: at,
            });
        }
    }

    /// (Re)send what is pending: on a new link everything, on a tick only
    /// what has waited longer than RESEND_AFTER_MS.
    pub(super) fn flush_all(&mut self, cx: &mut Cx<'_>, everything: bool) {
        if self.link.open_socket().is_none() {
            return;
        }
        let now = cx.now();
        let dids: Vec<String> = self.peers.keys().cloned().collect();
        for did in dids {
            let mut frames_out = Vec::new();
            let mut frameless = Vec::new();
            let mut changed = false;
            if let Some(p) = self.peers.get_mut(&did) {
                if everything {
                    // A KNOCK not yet confirmed goes again before its messages
                    // (the relay may have lost it; a kars peer ignores
                    // repeats, and any other peer gets it only once).
                    if let Some(k) = &p.pending_knock {
                        frames_out.push(k.clone());
                    }
                }
                let before = p.outbox.len();
                p.outbox.retain(|o| {
                    now.saturating_sub(o.created_ms) < crate::mesh::session::SEEN_TTL_MS
                });
                changed |= p.outbox.len() != before;
                let due = |o: &OutEntry| {
                    everything || now.saturating_sub(o.last_sent_ms) >= RESEND_AFTER_MS
                };
                // Entries whose frame was not stored (large ones, after a
                // restart) are sealed again below, if the session can send.
                if p.can_send() && p.outbox.iter().any(|o| o.frame.is_empty() && due(o)) {
                    let (bare, kept): (Vec<OutEntry>, Vec<OutEntry>) =
                        std::mem::take(&mut p.outbox)
                            .into_iter()
                            .partition(|o| o.frame.is_empty() && due(o));
                    p.outbox = kept;
                    frameless = bare;
                    changed = true;
                }
                for o in p.outbox.iter_mut() {
                    if !o.frame.is_empty() && due(o) {
                        o.last_sent_ms = now;
                        o.attempts += 1;
                        frames_out.push(o.frame.clone());
                        changed = true;
                    }
                }
                changed |= p.hand_over_unreceipted();
            }
            if !frameless.is_empty() {
                self.reseal(cx, &did, std::mem::take(&mut frameless), &mut frames_out);
            }
            if changed {
                self.save_peer(cx, &did);
            }
            if !frames_out.is_empty() {
                self.stats.resent += frames_out.len() as u64;
            }
            for f in frames_out {
                self.send_frame(cx, f);
            }
        }
    }
}

/// Largest message that carries receipts nested (see `seal_for_peer`).
const NESTED_ACK_MAX_BYTES: usize = 16 * 1024;

/// Receipts for `seqs` from `peer` plus everything below `in_next`, so a
/// lost receipt never pins the sender's outbox. Explicit numbers only for
/// those above the cumulative mark (held back).
fn receipts_for(peer: &Peer, seqs: &[u64]) -> Receipts {
    Receipts {
        receipt: seqs
            .iter()
            .copied()
            .filter(|s| *s >= peer.in_next)
            .collect(),
        upto: peer.in_next,
        epoch: peer.in_epoch,
    }
}
