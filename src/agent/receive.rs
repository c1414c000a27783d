//! The receiving side: KNOCKs (bound to their sender), encrypted and
//! plaintext messages, in-order release and early-frame buffering.
use super::inbox::{Entry, Evidence};
use super::{
    Agent, Cx, Purpose, EARLY_MAX_BYTES, EARLY_PEERS, EARLY_PER_PEER, EARLY_TTL_MS, HOLD_MAX_MS,
    KNOCKS_AWAITING_MAX_BYTES, MAX_CANDIDATES, MAX_PEERS, MAX_PENDING_PEERS,
};
use crate::crypto::ratchet::{channel_ad, Ratchet};
use crate::crypto::x3dh;
use crate::io::{Command, LogLevel};
use crate::mesh::session::{opening_id, Candidate, Decrypted, Peer};
use crate::wire::delivery::{Envelope, Receipts};
use crate::wire::payload::Family;
use crate::wire::relay_frame::{Knock, KnockReply, MessageFrame, RelayFrame};
use crate::wire::{frames, plaintext, registry};
use serde_json::{json, Value};

/// A decrypted message: its payload, the kars delivery envelope taken out
/// of it, and which session opened it.
struct Opened {
    payload: Value,
    envelope: Option<Envelope>,
    how: Decrypted,
}

struct AdmittedKnock {
    from: String,
    id: String,
    est: x3dh::Establishment,
    ik_ed: [u8; 32],
}

impl Agent {
    // ------------------------------------------------------------------ KNOCK

    /// A KNOCK: checked (policy, establishment, identity bound to `from`,
    /// no replayed opening, room for a new peer), then its candidate
    /// sessions are made and the KNOCK is accepted.
    pub(super) fn on_knock(&mut self, cx: &mut Cx<'_>, knock: &Knock, text: &str) {
        let Some(k) = self.admit_knock(cx, knock, text) else {
            return;
        };
        let now = cx.now();
        let Some(built) = self.knock_candidates(cx, &k.from, &k.id, &k.est, now) else {
            self.ack(cx, &k.id);
            return;
        };
        self.adopt_knock(cx, &k, built);
    }

    /// The checks a KNOCK must pass before it costs anything; `None` once
    /// it is answered (refused, acked, or held for an identity check).
    fn admit_knock(&mut self, cx: &mut Cx<'_>, k: &Knock, text: &str) -> Option<AdmittedKnock> {
        let (from, id) = self.routed(cx, k.route())?;
        let (from, id) = (from.to_string(), id.to_string());
        if self.peers.get(&from).is_some_and(|p| p.has_seen(&id)) {
            self.stats.duplicates += 1;
            self.ack(cx, &id);
            return None;
        }
        if !self.cfg.accepts(&from) {
            self.reject_knock(cx, &from, &id);
            return None;
        }
        let est = self.knock_establishment(cx, k, &from, &id)?;
        let ik_ed = self.knock_identity(cx, k, text, &from, &id, &est)?;
        // A recorded KNOCK sent again under a fresh frame id (by the relay's
        // operator, or anyone who saw it on a ws:// relay) would rebuild the
        // same session and, with its first message, replace the live one.
        let opening = opening_id(&est.identity_key, &est.ephemeral_key);
        if self.peers.get(&from).is_some_and(|p| {
            p.has_used_opening(&opening) || p.candidates.iter().any(|c| c.opening == opening)
        }) {
            self.stats.duplicates += 1;
            let shown = crate::wire::escape_for_log(&id, 80);
            let why = format!(
                "KNOCK {shown} from {from} replays a session opening already used; refused"
            );
            cx.log(LogLevel::Warn, &why);
            self.ack(cx, &id);
            return None;
        }
        if !self.peers.contains_key(&from) {
            if let Some(why) = self.refuse_new_peer(cx.now()) {
                cx.log(LogLevel::Warn, &format!("KNOCK from {from} refused: {why}"));
                self.ack(cx, &id);
                return None;
            }
        }
        Some(AdmittedKnock {
            from,
            id,
            est,
            ik_ed,
        })
    }

    /// Our `accept_sessions` policy refuses this peer: say so, and ack.
    fn reject_knock(&mut self, cx: &mut Cx<'_>, from: &str, id: &str) {
        cx.log(
            LogLevel::Info,
            &format!("rejected a session from {from} (accept_sessions policy)"),
        );
        let ts = Self::timestamp(cx);
        let rid = frames::uuid_v4(cx.host);
        let f = RelayFrame::knock_reject(self.id.did(), from, &rid, id, &ts);
        self.send_frame(cx, f.to_text());
        self.ack(cx, id);
    }

    /// The KNOCK's X3DH establishment, or `None` once a malformed one is
    /// refused.
    fn knock_establishment(
        &mut self,
        cx: &mut Cx<'_>,
        k: &Knock,
        from: &str,
        id: &str,
    ) -> Option<x3dh::Establishment> {
        let why = match k.establishment() {
            Some(Ok(e)) => return Some(e),
            Some(Err(e)) => format!("KNOCK from {from} refused: {e}"),
            None => format!("KNOCK from {from} without establishment refused"),
        };
        self.refuse_malformed(cx, id, &why);
        None
    }

    /// The sender's Ed25519 key, bound to `from` and to the KNOCK's identity
    /// key: the KNOCK is unsigned, so without this anyone could open a
    /// session in another agent's name. A KNOCK without the key (AGT peers)
    /// is held while the sender's registry bundle is checked (`None`).
    fn knock_identity(
        &mut self,
        cx: &mut Cx<'_>,
        k: &Knock,
        text: &str,
        from: &str,
        id: &str,
        est: &x3dh::Establishment,
    ) -> Option<[u8; 32]> {
        let claimed_ed = k
            .ik_ed()
            .and_then(|s| crate::wire::b64::decode_array::<32>(s).ok());
        let known_ed = self
            .peers
            .get(from)
            .and_then(|p| p.identity_ed)
            .or_else(|| {
                self.knocker_verified
                    .as_ref()
                    .filter(|(did, _)| did == from)
                    .map(|(_, ed)| *ed)
            });
        let Some(ik_ed) = claimed_ed.or(known_ed) else {
            // No registry look-up for a stranger who could not open a
            // session anyway.
            let now = cx.now();
            if !self.peers.contains_key(from) && !self.new_peers.available(now) {
                let why = format!(
                    "KNOCK from {from} refused: too many new sessions at once; try again later"
                );
                cx.log(LogLevel::Warn, &why);
                self.ack(cx, id);
            } else {
                self.verify_knocker(cx, from, text);
            }
            return None;
        };
        let binds = crate::crypto::identity::did_from_ed25519(&ik_ed) == from
            && crate::crypto::identity::x25519_from_ed25519(&ik_ed) == Some(est.identity_key);
        if !binds {
            self.stats.spoofed += 1;
            cx.log(
                LogLevel::Warn,
                &format!("KNOCK {id} claims to be from {from} but its identity key is not that agent's; refused"),
            );
            self.ack(cx, id);
            return None;
        }
        Some(ik_ed)
    }

    /// Candidate sessions for a KNOCK, one per signed prekey it may have
    /// used (the KNOCK does not name it; the first message decides). `None`
    /// when none can be made (the caller acks it).
    fn knock_candidates(
        &mut self,
        cx: &mut Cx<'_>,
        from: &str,
        id: &str,
        est: &x3dh::Establishment,
        now: u64,
    ) -> Option<Vec<Candidate>> {
        let opk = match est.one_time_prekey_id {
            Some(k) => match self.prekeys.peek_opk(k) {
                Some(kp) => Some(kp),
                None => {
                    cx.log(
                        LogLevel::Warn,
                        &format!(
                            "KNOCK from {from}: {}",
                            x3dh::X3dhError::UnknownOneTimePrekey(k)
                        ),
                    );
                    return None;
                }
            },
            None => None,
        };
        // The KNOCK names neither the SPK nor the KDF: build a candidate
        // for each SPK that may have been used, under the spec X3DH KDF and
        // under the legacy one of the published npm SDK 4.0.0 (what the
        // original plugin ran on); the first message decides, by its AEAD
        // tag. Both KDFs are HKDF-SHA256 over the same DH outputs, so
        // accepting the legacy one weakens nothing.
        let mut built = Vec::new();
        for spk in self.prekeys.spk_candidates(now) {
            match x3dh::respond(&self.id, &spk, opk.as_ref(), est) {
                Ok(a) => {
                    let ad = channel_ad(from, self.id.did(), &a.associated_data);
                    for legacy_kdf in [false, true] {
                        built.push(Candidate {
                            knock_id: id.to_string(),
                            ratchet: Ratchet::new_responder(
                                a.secret(legacy_kdf),
                                spk.clone(),
                                ad.clone(),
                            ),
                            created_ms: now,
                            opening: opening_id(&est.identity_key, &est.ephemeral_key),
                            legacy_kdf,
                        });
                    }
                }
                Err(e) => cx.log(LogLevel::Warn, &format!("KNOCK from {from}: {e}")),
            }
        }
        (!built.is_empty()).then_some(built)
    }

    /// Keep a KNOCK's candidates (a new peer takes a token of the budget),
    /// use up its one-time prekey, accept it, and replay the frames that
    /// raced ahead of it.
    fn adopt_knock(&mut self, cx: &mut Cx<'_>, k: &AdmittedKnock, built: Vec<Candidate>) {
        let (from, id, est, ik_ed) = (k.from.as_str(), k.id.as_str(), &k.est, k.ik_ed);
        let now = cx.now();
        let ts = Self::timestamp(cx);
        if !self.peers.contains_key(from) && !self.new_peers.take(now) {
            cx.log(
                LogLevel::Warn,
                &format!(
                    "KNOCK from {from} refused: too many new sessions at once; try again later"
                ),
            );
            self.ack(cx, id);
            return;
        }
        let peer = self
            .peers
            .entry(from.to_string())
            .or_insert_with(|| Peer::new(from));
        peer.identity_ed = Some(ik_ed);
        peer.candidates.retain(|c| c.knock_id != id);
        peer.candidates.extend(built);
        // Oldest first out; a real KNOCK is followed at once by its messages.
        while peer.candidates.len() > MAX_CANDIDATES {
            peer.candidates.remove(0);
        }
        peer.mark_seen(id, now, None);
        self.save_peer(cx, from);
        if let Some(k) = est.one_time_prekey_id {
            self.prekeys.take_opk(k);
            if self.prekeys.needs_replenish() {
                self.upload_prekeys(cx);
            } else {
                self.save_prekeys(cx);
            }
        }
        let aid = frames::uuid_v4(cx.host);
        let f = RelayFrame::knock_accept(self.id.did(), from, &aid, id, &ts);
        self.send_frame(cx, f.to_text());
        self.ack(cx, id);
        if self.peers.get(from).is_some_and(|p| p.active.is_none()) {
            // Nothing else to learn about this peer's capabilities until it talks.
            let path = format!("/v1/agents/{from}");
            self.http(
                cx,
                Purpose::AgentInfo {
                    peer: from.to_string(),
                    for_session: false,
                },
                "GET",
                &path,
                false,
                None,
            );
        }
        // Frames that raced ahead of this KNOCK.
        if let Some(early) = self.early.remove(from) {
            let socket = self.link.open_socket().unwrap_or(0);
            for (text, _) in early {
                self.on_frame(cx, socket, &text);
            }
        }
    }

    /// Why a KNOCK from a peer we have no record of is refused, if it is:
    /// every peer counts toward the cap (one message used to make a peer
    /// "active" and uncounted), half-open ones have a cap of their own, and
    /// new peers come at a bounded rate.
    fn refuse_new_peer(&mut self, now: u64) -> Option<&'static str> {
        if self.peers.len() >= MAX_PEERS {
            return Some("too many sessions; an old one must go first");
        }
        let half_open = self.peers.values().filter(|p| p.active.is_none()).count();
        if half_open >= MAX_PENDING_PEERS {
            return Some("too many half-open sessions");
        }
        if !self.new_peers.available(now) {
            return Some("too many new sessions at once; try again later");
        }
        None
    }

    /// A KNOCK from an agent whose Ed25519 key we do not know yet (AGT
    /// peers do not send it): hold the KNOCK, unacked, and fetch the
    /// agent's registry bundle, whose binding to the DID we verify. `text`
    /// is the KNOCK as it came (replayed through `on_frame` once verified).
    pub(super) fn verify_knocker(&mut self, cx: &mut Cx<'_>, from: &str, text: &str) {
        let waiting = self.knocks_awaiting_identity.contains_key(from);
        if !waiting && self.knocks_awaiting_identity.len() >= MAX_PENDING_PEERS {
            return;
        }
        let held: usize = self
            .knocks_awaiting_identity
            .values()
            .flatten()
            .map(String::len)
            .sum();
        if held + text.len() > KNOCKS_AWAITING_MAX_BYTES {
            // Not acked: the relay redelivers it later.
            return;
        }
        let q = self
            .knocks_awaiting_identity
            .entry(from.to_string())
            .or_default();
        if q.len() < EARLY_PER_PEER {
            q.push(text.to_string());
        }
        if !waiting {
            let path = format!("/v1/agents/{from}/prekeys");
            self.http(
                cx,
                Purpose::VerifyKnocker(from.to_string()),
                "GET",
                &path,
                false,
                None,
            );
        }
    }

    pub(super) fn on_knocker_bundle(
        &mut self,
        cx: &mut Cx<'_>,
        from: &str,
        ok: bool,
        body: &[u8],
        problem: &str,
    ) {
        let held = self
            .knocks_awaiting_identity
            .remove(from)
            .unwrap_or_default();
        let verified = if ok {
            registry::parse_bundle(&String::from_utf8_lossy(body))
                .ok()
                .filter(|b| b.verify_for(from).is_ok())
                .map(|b| b.identity_key_ed)
        } else {
            None
        };
        let Some(ed) = verified else {
            cx.log(
                LogLevel::Warn,
                &format!("could not verify the identity of {from}, which knocked ({problem}); its KNOCK is refused"),
            );
            for text in held {
                // Only KNOCKs are held; one without an id acks nothing.
                if let Ok(RelayFrame::Knock(Knock { id: Some(id), .. })) =
                    RelayFrame::from_text(&text)
                {
                    self.ack(cx, &id);
                }
            }
            self.resume_session_fetches(cx);
            self.answer_inbox_reads(cx, false);
            return;
        };
        // Not a peer yet: its KNOCKs, replayed, meet the caps and the rate
        // of new peers (admit_knock, adopt_knock) as any other does; a
        // stranger with many registered identities used to get a peer per
        // identity past them.
        match self.peers.get_mut(from) {
            Some(p) => p.identity_ed = Some(ed),
            None => self.knocker_verified = Some((from.to_string(), ed)),
        }
        let socket = self.link.open_socket().unwrap_or(0);
        for text in held {
            self.on_frame(cx, socket, &text);
        }
        self.knocker_verified = None;
        // A send to this peer may have waited for its KNOCK.
        self.resume_session_fetches(cx);
        // An inbox read may have waited for its messages.
        self.answer_inbox_reads(cx, false);
    }

    /// Count, log and ack a frame we cannot use, so the relay stops pushing it.
    pub(super) fn refuse_malformed(&mut self, cx: &mut Cx<'_>, id: &str, why: &str) {
        self.stats.malformed += 1;
        cx.log(LogLevel::Warn, why);
        self.ack(cx, id);
    }

    pub(super) fn on_knock_reply(&mut self, cx: &mut Cx<'_>, r: &KnockReply, accepted: bool) {
        let Some((from, id)) = self.routed(cx, r.route()) else {
            return;
        };
        let (from, id) = (from.to_string(), id.to_string());
        let knock_id = r.knock_id.as_deref().unwrap_or("");
        if let Some(p) = self.peers.get_mut(&from) {
            if p.knock_sent.as_deref() == Some(knock_id) {
                if accepted {
                    p.knock_sent = None;
                    p.pending_knock = None;
                    self.save_peer(cx, &from);
                } else {
                    // Unauthenticated (anyone who saw our KNOCK's id can send
                    // one): it is news, not a reason to drop what we queued.
                    cx.log(LogLevel::Warn, &format!("{from} says it refused our session (knock_reject); the notice is not authenticated, so queued messages are kept and re-sent"));
                }
            }
        }
        self.ack(cx, &id);
    }

    // ---------------------------------------------------------------- message

    /// A `message` frame: plaintext goes its own way; an encrypted one is
    /// decrypted (after the session, de-duplication and quota checks), then
    /// taken as receipts or delivered in order to its one consumer.
    pub(super) fn on_message(&mut self, cx: &mut Cx<'_>, m: &MessageFrame, text: &str) {
        let Some((from, id)) = self.routed(cx, m.route()) else {
            return;
        };
        let (from, id) = (from.to_string(), id.to_string());
        let Some(msg) = self.encrypted_frame(cx, m, text, &from, &id) else {
            return;
        };
        if !self.may_decrypt(cx, text, &from, &id, &msg) {
            return;
        }
        let Some(opened) = self.open_message(cx, &from, &id, &msg) else {
            return;
        };
        match opened.envelope {
            Some(Envelope::Receipts(ref r)) => self.take_receipts(cx, &from, &id, r, opened.how),
            _ => self.deliver(cx, m, &from, &id, opened),
        }
    }

    /// The frame as an encrypted message, or `None` once it went to the
    /// plaintext path or was refused as malformed.
    fn encrypted_frame(
        &mut self,
        cx: &mut Cx<'_>,
        m: &MessageFrame,
        text: &str,
        from: &str,
        id: &str,
    ) -> Option<frames::EncryptedMessage> {
        if m.is_plaintext() {
            self.on_plaintext(cx, m, from, id);
            return None;
        }
        if !m.has_header() {
            self.stats.malformed += 1;
            self.ack(cx, id);
            return None;
        }
        match frames::parse_message_frame(text) {
            Ok(m) => Some(m),
            Err(e) => {
                self.refuse_malformed(cx, id, &format!("message {id} from {from} refused: {e}"));
                None
            }
        }
    }

    /// Is there a session to try, is the frame new, and is there room for
    /// it? Frames without a session yet wait for their KNOCK (`text`, the
    /// frame as it came, is held); duplicates are acked and receipted again.
    fn may_decrypt(
        &mut self,
        cx: &mut Cx<'_>,
        text: &str,
        from: &str,
        id: &str,
        msg: &frames::EncryptedMessage,
    ) -> bool {
        let has_session = self
            .peers
            .get(from)
            .is_some_and(|p| p.active.is_some() || !p.candidates.is_empty());
        if !has_session {
            if self.cfg.accepts(from) {
                let now = cx.now();
                self.hold_early(cx, from, text, now);
            } else {
                // We refused this peer's KNOCK: its frames can never be read.
                self.ack(cx, id);
            }
            return false;
        }
        if let Some(seq) = self.peers.get(from).and_then(|p| p.seen_seq(id)) {
            // Consumed before; our ack or receipt was lost. Say so again.
            self.stats.duplicates += 1;
            self.ack(cx, id);
            if let Some(s) = seq {
                self.queue_receipt(cx, from, s);
            }
            return false;
        }
        // Quota before decryption: a refused frame leaves the session as it
        // was, so a kars sender's re-send decrypts once there is room (an
        // AGT sender's message is lost; its later ones still decrypt).
        // Offload traffic is not for the inbox and has its own limits.
        if !self.is_sandbox()
            && !self.is_offload_party(from)
            && !self.inbox_has_room(cx, from, msg.ciphertext.len())
        {
            self.ack(cx, id);
            return false;
        }
        true
    }

    /// Decrypt, and split the kars delivery envelope from the payload.
    fn open_message(
        &mut self,
        cx: &mut Cx<'_>,
        from: &str,
        id: &str,
        msg: &frames::EncryptedMessage,
    ) -> Option<Opened> {
        let we_are_smaller = self.id.did() < from;
        let peer = self.peers.get_mut(from)?;
        let (pt, how) = match peer.decrypt(&msg.header, &msg.ciphertext, we_are_smaller, cx.host) {
            Ok(r) => r,
            Err(e) => {
                // Not marked as seen: a later copy of the same frame (the
                // sender re-sends until receipted) may decrypt once the KNOCK
                // it belongs to is here. Acked so the relay stops pushing it.
                self.stats.undecryptable += 1;
                cx.log(
                    LogLevel::Warn,
                    &format!("message {id} from {from} could not be decrypted: {e}"),
                );
                self.ack(cx, id);
                return None;
            }
        };
        if how == Decrypted::Active && peer.initiated_by_us {
            peer.knock_sent = None;
            peer.pending_knock = None;
        }
        let mut payload: Value =
            serde_json::from_slice(&pt).unwrap_or_else(|_| match String::from_utf8(pt.clone()) {
                Ok(s) => Value::String(s),
                Err(_) => json!({"raw_b64": crate::wire::b64::encode_std(&pt)}),
            });
        let envelope = Envelope::take(&mut payload);
        if envelope.is_some() {
            peer.kars = true;
        }
        self.owe_step(from);
        Some(Opened {
            payload,
            envelope,
            how,
        })
    }

    /// Receipts: the listed sequence numbers, and everything below `upto`,
    /// leave the outbox; room in the window lets the next parts of a large
    /// transfer go.
    fn take_receipts(
        &mut self,
        cx: &mut Cx<'_>,
        from: &str,
        id: &str,
        r: &Receipts,
        how: Decrypted,
    ) {
        let now = cx.now();
        self.apply_receipts(cx, from, r, how != Decrypted::Promoted);
        let Some(peer) = self.peers.get_mut(from) else {
            return;
        };
        peer.mark_seen(id, now, None);
        self.save_peer(cx, from);
        self.ack_later(cx, id);
        self.after_decrypt(cx, from, how);
        self.pump_outgoing(cx);
    }

    /// The listed sequence numbers, and everything below `upto`, leave the
    /// outbox (in memory; the caller saves the peer); files on their way to
    /// `from` count them. Whether any left.
    ///
    /// A gap goes again at once (`fast`: not when the receipt came under a
    /// session that replaced ours, whose entries are sealed again anyway).
    /// The relay normally passes one sender's frames to one receiver in
    /// order, and a frame it delivered live to a process that crashed before
    /// storing it is not delivered again. So an entry whose only copy went
    /// before a message the peer receipts by number (held behind a gap) was
    /// most likely lost: it is sent again now instead of after
    /// RESEND_AFTER_MS, and the peer releases what it held behind it. Only
    /// an entry sent once, before that message was sealed (strictly: one
    /// sealed in the same millisecond may have left after it): once more
    /// this way, then the timer's. So a frame the peer refuses (its inbox
    /// quota), or one that was only late (stored at the relay while the
    /// peer was away, pushed after later live ones), costs at most one
    /// copy, which the peer refuses again or drops as a repeat.
    fn apply_receipts(&mut self, cx: &mut Cx<'_>, from: &str, r: &Receipts, fast: bool) -> bool {
        let Some(peer) = self.peers.get_mut(from) else {
            return false;
        };
        let mut receipted = Vec::new();
        // Entries receipted by number (not by `upto`): their number and
        // when they were sealed.
        let mut named: Vec<(u64, u64)> = Vec::new();
        if r.epoch.is_none_or(|e| e == peer.out_epoch) {
            let listed = listed_receipts(&peer.outbox, r);
            peer.outbox.retain(|o| {
                let by_name = o.seq >= r.upto && listed.contains(&o.seq);
                let keep = !o.needs_receipt || (!by_name && o.seq >= r.upto);
                if !keep {
                    receipted.push(o.seq);
                    if by_name {
                        named.push((o.seq, o.created_ms));
                    }
                }
                keep
            });
        }
        let mut gaps = Vec::new();
        if fast && !named.is_empty() {
            let now = cx.now();
            for o in peer.outbox.iter_mut() {
                let lost = o.needs_receipt
                    && o.attempts == 1
                    && !o.frame.is_empty()
                    && named
                        .iter()
                        .any(|&(seq, sealed)| seq > o.seq && o.last_sent_ms < sealed);
                if lost {
                    o.last_sent_ms = now;
                    o.attempts = o.attempts.saturating_add(1);
                    gaps.push(o.frame.clone());
                }
            }
        }
        self.pacer.receipted(from, &receipted);
        if !gaps.is_empty() {
            self.stats.resent += gaps.len() as u64;
            cx.log(
                LogLevel::Debug,
                &format!(
                    "{from} receipted later messages but not {} sent before them; sending those again now",
                    gaps.len()
                ),
            );
            for f in gaps {
                self.send_frame(cx, f);
            }
        }
        !receipted.is_empty()
    }

    /// The sender starts a new numbering (first contact, or it lost its
    /// state but kept its identity): what it held back is released.
    fn follow_numbering(&mut self, cx: &mut Cx<'_>, from: &str, epoch: u64) {
        let Some(peer) = self.peers.get_mut(from) else {
            return;
        };
        if peer.in_epoch == Some(epoch) {
            return;
        }
        if peer.in_epoch.is_some() {
            cx.log(
                LogLevel::Info,
                &format!("{from} restarted its message numbering"),
            );
        }
        peer.in_epoch = Some(epoch);
        peer.in_next = 0;
        for n in self.inbox.held_from(from).into_values() {
            let fresh = self.inbox.next_n();
            if let Some(en) = self.inbox.release(n, fresh).cloned() {
                self.save_entry(cx, &en);
            }
        }
    }

    /// A decrypted message, in order, to exactly one consumer: a protocol
    /// message's effects land before the session record that marks it
    /// consumed and before the ack (a crash in between replays it, never
    /// loses it); anything else goes to the inbox, held back while an
    /// earlier one from the same sender is missing.
    fn deliver(&mut self, cx: &mut Cx<'_>, m: &MessageFrame, from: &str, id: &str, opened: Opened) {
        let Opened {
            mut payload,
            envelope,
            how,
        } = opened;
        let (seq, epoch, ack, reads_ack) = match envelope {
            Some(Envelope::Data {
                seq,
                epoch,
                ack,
                reads_ack,
            }) => (seq, epoch, ack, Some(reads_ack)),
            // Receipts never get here (`on_message` takes them).
            _ => (None, None, None, None),
        };
        if let Some(e) = epoch {
            self.follow_numbering(cx, from, e);
        }
        // Authenticated and idempotent: taken from a duplicate or a held
        // message too.
        let receipted =
            ack.is_some_and(|r| self.apply_receipts(cx, from, &r, how != Decrypted::Promoted));
        let now = cx.now();
        let Some(peer) = self.peers.get_mut(from) else {
            return;
        };
        self.stats.received += 1;
        let duplicate = seq.is_some_and(|s| s < peer.in_next || self.inbox.has_seq(from, epoch, s))
            || self.inbox.contains(from, id);
        let held = !duplicate && seq.is_some_and(|s| s > peer.in_next);
        // What the peer reads follows its newest messages only: a copy of
        // an old one (a late frame, a verbatim re-send) may come from a
        // version it has since left.
        if let (Some(r), false) = (reads_ack, duplicate) {
            peer.reads_ack = r;
        }
        // A copy we already delivered still moves the expected number on (a
        // crash may have lost the record that did so the first time). A copy
        // of one we hold back does not: the messages before it are still
        // missing, and moving past them would skip them and drop the held
        // copy as stale (a crash between the held entry and the session
        // record lets the same frame decrypt again).
        let held_copy = duplicate && seq.is_some_and(|s| self.inbox.holds_seq(from, epoch, s));
        if let (Some(s), false) = (seq, held || held_copy) {
            peer.in_next = peer.in_next.max(s.saturating_add(1));
        }
        peer.mark_seen(id, now, seq);
        let protocol = !duplicate && !held && self.for_a_role(from, &payload);
        if duplicate {
            self.stats.duplicates += 1;
            self.release_held(cx, from);
        } else if protocol {
            self.inbox.counters.consumed_by_predicate += 1;
            self.release_held(cx, from);
            self.intercept(cx, from, std::mem::take(&mut payload), true);
        } else {
            self.count_received(cx);
            let mut entry = Entry::new(
                id,
                from,
                now,
                Evidence::Encrypted,
                std::mem::take(&mut payload),
            );
            entry.ts = m.ts.as_deref().map(|s| s.chars().take(40).collect());
            (entry.held, entry.seq, entry.epoch) = (held, seq, epoch);
            entry.n = self.inbox.next_n();
            self.store_entry(cx, entry);
            if !held {
                self.release_held(cx, from);
            }
        }
        self.save_peer(cx, from);
        // Acked with whatever leaves next (a reader's tool result, our next
        // frame), not at once: at once, a message no reader waits for made
        // its batch commit for the ack alone, then the reader's call
        // committed again (two fsyncs per message where one does).
        self.ack_later(cx, id);
        if let Some(s) = seq {
            self.queue_receipt(cx, from, s);
        }
        self.after_decrypt(cx, from, how);
        self.wake_waiters(cx);
        if receipted {
            // Room in the window: the next parts of a transfer may go.
            self.pump_outgoing(cx);
        }
    }

    fn count_received(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now();
        let c = &mut self.inbox.counters;
        c.received_total += 1;
        c.last_received_at = Some(crate::wire::time::format_millis(now));
    }

    pub(super) fn hold_early(&mut self, cx: &mut Cx<'_>, from: &str, text: &str, now: u64) {
        // No session yet: the KNOCK may still be on its way. Keep a few and do
        // not ack them, so the relay redelivers them if we restart.
        for q in self.early.values_mut() {
            q.retain(|(_, t)| now.saturating_sub(*t) < EARLY_TTL_MS);
        }
        self.early.retain(|_, q| !q.is_empty());
        let bytes: usize = self.early.values().flatten().map(|(t, _)| t.len()).sum();
        if (self.early.len() >= EARLY_PEERS && !self.early.contains_key(from))
            || bytes > EARLY_MAX_BYTES
        {
            return;
        }
        let q = self.early.entry(from.to_string()).or_default();
        if q.len() < EARLY_PER_PEER {
            q.push((text.to_string(), now));
        }
        let _ = cx;
    }

    /// Deliver held messages from `from` that are now in sequence. Released
    /// entries get a fresh arrival number, so the inbox lists them after the
    /// ones they waited for. Held copies below the next expected number are
    /// duplicates and are erased.
    pub(super) fn release_held(&mut self, cx: &mut Cx<'_>, from: &str) {
        let held = self.inbox.held_from(from);
        let Some(peer) = self.peers.get_mut(from) else {
            return;
        };
        let mut next = peer.in_next;
        let mut released = Vec::new();
        let mut stale = Vec::new();
        for (seq, n) in held {
            if seq < next {
                stale.push(n);
                continue;
            }
            if seq != next {
                break;
            }
            released.push(n);
            next = next.saturating_add(1);
        }
        peer.in_next = next;
        for n in released {
            let fresh = self.inbox.next_n();
            let Some(e) = self.inbox.release(n, fresh).cloned() else {
                continue;
            };
            // A protocol message that had to wait for an earlier one goes to
            // its consumer now, not to the inbox.
            let payload = self.load_payload(cx, &e);
            if self.for_a_role(&e.from, &payload) {
                // Effects first, then the held copy goes.
                self.intercept(cx, &e.from, payload, e.evidence == Evidence::Encrypted);
                if let Some(gone) = self.inbox.remove(fresh) {
                    for key in gone.storage_keys() {
                        cx.out.push(Command::Erase(key));
                    }
                }
            } else {
                self.save_entry(cx, &e);
            }
        }
        for n in stale {
            if let Some(e) = self.inbox.remove(n) {
                for key in e.storage_keys() {
                    cx.out.push(Command::Erase(key));
                }
            }
        }
    }

    /// A sender that never fills a gap must not block its later messages
    /// forever: after HOLD_MAX_MS skip to the oldest held one.
    pub(super) fn release_stale_holds(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now();
        while let Some(e) = self.inbox.oldest_held().cloned() {
            if now.saturating_sub(e.received_at) < HOLD_MAX_MS {
                break;
            }
            let lowest = self
                .inbox
                .held_from(&e.from)
                .keys()
                .next()
                .copied()
                .unwrap_or(0);
            let from = e.from.clone();
            match self.peers.get_mut(&from) {
                Some(p) => {
                    cx.log(
                        LogLevel::Warn,
                        &format!(
                            "gave up waiting for message {} from {from}; delivering later ones",
                            p.in_next
                        ),
                    );
                    p.in_next = p.in_next.max(lowest);
                }
                None => {
                    // No peer record: nothing will ever fill the gap.
                    let fresh = self.inbox.next_n();
                    self.inbox.release(e.n, fresh);
                    continue;
                }
            }
            self.release_held(cx, &from);
            self.save_peer(cx, &from);
            self.wake_waiters(cx);
        }
    }

    pub(super) fn after_decrypt(&mut self, cx: &mut Cx<'_>, from: &str, how: Decrypted) {
        if how == Decrypted::Promoted {
            // The peer's session replaced ours: what it has not receipted must
            // go again under the new session.
            self.reencrypt_outbox(cx, from);
        }
        if let Some(q) = self.awaiting_session.remove(from) {
            if self.peers.get(from).is_some_and(|p| p.can_send()) {
                for item in q {
                    self.encrypt_and_queue(cx, from, item.payload, item.call_id, item.key);
                }
            } else {
                self.awaiting_session.insert(from.to_string(), q);
            }
        }
    }

    pub(super) fn on_plaintext(&mut self, cx: &mut Cx<'_>, m: &MessageFrame, from: &str, id: &str) {
        let body = m.plaintext_body();
        let decoded = plaintext::decode_body(body);
        // A paired controller's DID is never trusted for the inbox, even
        // when the user listed it: the relay does not bind `from`, and the
        // kars controller's real plaintext is protocol, never a message.
        let trusted = self.cfg.trusted_plaintext.iter().any(|d| d == from)
            && !self.pairing.is_paired_controller(from)
            && !self.pairing.is_kars_controller(from);
        // The flag is honoured only from DIDs the user trusts for it. Taken
        // from anyone else: a controller's `pair_request` (the original
        // plugin's; its token secret authenticates it, the DID binding is
        // still checked), and a kars controller's answers to what we asked
        // it (`takes_plaintext`). Everything else is end-to-end only.
        if !trusted
            && !decoded
                .as_ref()
                .is_ok_and(|p| self.takes_plaintext(from, p))
        {
            self.stats.plaintext_dropped += 1;
            cx.log(
                LogLevel::Warn,
                &format!(
                    "dropped a plaintext frame from {from}, which is not trusted for plaintext"
                ),
            );
            self.ack(cx, id);
            return;
        }
        let now = cx.now();
        if self.plain_seen.contains(from, id) {
            self.ack(cx, id);
            return;
        }
        let payload = match decoded {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                cx.log(
                    LogLevel::Warn,
                    &format!("plaintext frame {id} from {from}: {e}"),
                );
                self.ack(cx, id);
                return;
            }
        };
        // No peer record for a plaintext sender: its `from` is only a claim.
        self.plain_seen.insert(from, id, now);
        if self.for_a_role(from, &payload) || !trusted {
            // Effects (if `intercept` takes it at all) land before the mark.
            self.intercept(cx, from, payload, false);
            self.save_plain_seen(cx);
            self.ack(cx, id);
            return;
        }
        if !self.inbox_has_room(cx, from, body.len()) {
            self.ack(cx, id);
            return;
        }
        self.count_received(cx);
        let mut entry = Entry::new(id, from, now, Evidence::Plaintext, payload);
        entry.ts = m.ts.as_deref().map(|s| s.chars().take(40).collect());
        entry.n = self.inbox.next_n();
        self.store_entry(cx, entry);
        self.save_plain_seen(cx);
        self.ack(cx, id);
        self.stats.received += 1;
        self.wake_waiters(cx);
    }
}

/// The numbers `r` lists that name an entry of `outbox` waiting for its
/// receipt, in one pass over the list: the peer chooses its length (up to
/// a frame's size, about a million numbers), and looking each entry up in
/// it cost the entries times the list, seconds of one frame's handling.
fn listed_receipts(
    outbox: &[crate::mesh::session::OutEntry],
    r: &Receipts,
) -> std::collections::HashSet<u64> {
    // Most receipts name nothing past `upto` (a data message's nested ack):
    // no sets to build on that path.
    if r.receipt.is_empty() {
        return std::collections::HashSet::new();
    }
    let waiting: std::collections::HashSet<u64> = outbox
        .iter()
        .filter(|o| o.needs_receipt && o.seq >= r.upto)
        .map(|o| o.seq)
        .collect();
    r.receipt
        .iter()
        .copied()
        .filter(|s| waiting.contains(s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::listed_receipts;
    use crate::mesh::session::OutEntry;
    use crate::wire::delivery::Receipts;

    fn entry(seq: u64, needs_receipt: bool) -> OutEntry {
        OutEntry {
            seq,
            frame_id: format!("f-{seq}"),
            frame: String::new(),
            sent_under: None,
            plaintext: Vec::new(),
            created_ms: 0,
            last_sent_ms: 0,
            attempts: 1,
            needs_receipt,
            key: None,
            file_part: false,
            stored: false,
        }
    }

    #[test]
    fn a_receipt_names_only_entries_waiting_for_one_and_a_long_list_costs_one_pass() {
        let outbox: Vec<OutEntry> = (0..5000).map(|s| entry(s, s != 7)).collect();
        let small = Receipts {
            receipt: vec![3, 7, 9, 9, 4999, 6000],
            upto: 5,
            epoch: None,
        };
        let mut named: Vec<u64> = listed_receipts(&outbox, &small).into_iter().collect();
        named.sort_unstable();
        // 3 is under `upto` (receipted by it, not by name), 7 needs none,
        // 6000 is not ours.
        assert_eq!(named, vec![9, 4999]);
        // A hostile list as long as a frame holds, against a full outbox:
        // with a look-up per entry in the list this took about 2 s (native).
        let long = Receipts {
            receipt: vec![u64::MAX; 1_000_000],
            upto: 0,
            epoch: None,
        };
        let t0 = std::time::Instant::now();
        assert!(listed_receipts(&outbox, &long).is_empty());
        let ms = t0.elapsed().as_millis();
        assert!(ms < 300, "a million listed numbers took {ms} ms");
    }
}
