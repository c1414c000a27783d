//! The relay's frames (agentmesh-wire.md §4.4), typed: what the relay pushes
//! to us (`message`, `knock`, `knock_accept`, `knock_reject`, `error`) and
//! the control frames we send (`knock`, `knock_accept`, `knock_reject`,
//! `ack`, `heartbeat`, `disconnect`). `connect` and our encrypted `message`
//! are written by `wire::frames` (the latter by hand, for speed).
//!
//! Routed frames are read leniently: `from`, `to` and `id` may be missing
//! or odd, because the receiver still acks a frame with a usable `id` even
//! when the rest is bad (so the relay stops pushing it). Parts checked
//! elsewhere (a KNOCK's establishment, an encrypted header, a plaintext
//! body) are kept as the JSON that came, so those checks see exactly what
//! they saw before.

use crate::crypto::x3dh::Establishment;
use crate::wire::lenient::{absent, object, opt, raw, V1};
use crate::wire::payload::Family;
use crate::wire::{b64, frames, WireError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum RelayFrame {
    #[serde(rename = "message")]
    Message(MessageFrame),
    #[serde(rename = "knock")]
    Knock(Knock),
    #[serde(rename = "knock_accept")]
    KnockAccept(KnockReply),
    #[serde(rename = "knock_reject")]
    KnockReject(KnockReply),
    /// Ours to the relay; the relay never sends one.
    #[serde(rename = "ack")]
    Ack(Ack),
    /// Ours to the relay.
    #[serde(rename = "heartbeat")]
    Heartbeat(Heartbeat),
    /// Ours to the relay.
    #[serde(rename = "disconnect")]
    Disconnect(Disconnect),
    /// The relay's complaint (`{"type":"error","detail":…}`).
    #[serde(rename = "error")]
    Error(RelayError),
}

impl Family for RelayFrame {
    const FAMILY: &'static str = "relay frame";
    const TYPES: &'static [&'static str] = &[
        "message",
        "knock",
        "knock_accept",
        "knock_reject",
        "ack",
        "heartbeat",
        "disconnect",
        "error",
    ];
}

/// Where a routed frame claims to come from and go to, as the receiver
/// checks it: a missing `from` or `id` is empty; a missing `to` is
/// "addressed to us" (the caller's DID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    pub from: &'a str,
    pub to: Option<&'a str>,
    pub id: &'a str,
}

impl RelayFrame {
    /// The routing fields of a routed frame (`message`, `knock`,
    /// `knock_accept`, `knock_reject`); `None` for the others.
    pub fn route(&self) -> Option<Route<'_>> {
        match self {
            RelayFrame::Message(m) => Some(m.route()),
            RelayFrame::Knock(k) => Some(k.route()),
            RelayFrame::KnockAccept(r) | RelayFrame::KnockReject(r) => Some(r.route()),
            _ => None,
        }
    }

    /// `ts`, as the inbox keeps it.
    pub fn ts(&self) -> Option<&str> {
        match self {
            RelayFrame::Message(m) => m.ts.as_deref(),
            RelayFrame::Knock(k) => k.ts.as_deref(),
            RelayFrame::KnockAccept(r) | RelayFrame::KnockReject(r) => r.ts.as_deref(),
            RelayFrame::Heartbeat(h) => Some(&h.ts),
            _ => None,
        }
    }

    pub fn knock_accept(from: &str, to: &str, id: &str, knock_id: &str, ts: &str) -> Self {
        RelayFrame::KnockAccept(KnockReply::new(from, to, id, knock_id, None, ts))
    }

    /// Refused by our `accept_sessions` policy.
    pub fn knock_reject(from: &str, to: &str, id: &str, knock_id: &str, ts: &str) -> Self {
        let reason = Some(POLICY_DENIED.to_string());
        RelayFrame::KnockReject(KnockReply::new(from, to, id, knock_id, reason, ts))
    }

    /// Delete a stored frame at the relay (ids travel verbatim).
    pub fn ack(id: &str) -> Self {
        RelayFrame::Ack(Ack {
            v: V1,
            id: id.into(),
        })
    }

    pub fn heartbeat(from: &str, ts: &str) -> Self {
        RelayFrame::Heartbeat(Heartbeat {
            v: V1,
            from: from.into(),
            ts: ts.into(),
        })
    }

    pub fn disconnect(from: &str) -> Self {
        RelayFrame::Disconnect(Disconnect {
            v: V1,
            from: from.into(),
        })
    }

    /// A `message` to ourselves with no body: the relay pushes what it
    /// stored for us before it reads anything we send, so when this comes
    /// back everything stored before has arrived (both relays route a frame
    /// whose `from` is the connection's own DID).
    pub fn sync_marker(did: &str, id: &str, ts: &str) -> Self {
        RelayFrame::Message(MessageFrame {
            v: V1,
            from: Some(did.into()),
            to: Some(did.into()),
            id: Some(id.into()),
            ts: Some(ts.into()),
            ..Default::default()
        })
    }
}

impl<'a> Route<'a> {
    fn of(from: &'a Option<String>, to: &'a Option<String>, id: &'a Option<String>) -> Self {
        Route {
            from: from.as_deref().unwrap_or(""),
            to: to.as_deref(),
            id: id.as_deref().unwrap_or(""),
        }
    }
}

/// The only `knock_reject` reason there is.
pub const POLICY_DENIED: &str = "policy_denied";
/// The only KNOCK intent there is.
pub const ESTABLISH_SESSION: &str = "establish_session";

/// A `message` frame as it arrives: encrypted (`header` + `ciphertext`), or
/// plaintext in either dialect (`payload`, or `ciphertext` with
/// `plaintext: true`, agentmesh-wire.md §7).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFrame {
    #[serde(default)]
    pub v: V1,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub to: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub ts: Option<String>,
    /// As it came: `wire::frames::parse_message_frame` checks it.
    #[serde(default, deserialize_with = "raw", skip_serializing_if = "absent")]
    pub header: Option<Value>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub ciphertext: Option<String>,
    /// As it came: its mere presence (any type) marks a plaintext frame of
    /// the controller's dialect.
    #[serde(default, deserialize_with = "raw", skip_serializing_if = "absent")]
    pub payload: Option<Value>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub plaintext: Option<bool>,
}

impl MessageFrame {
    /// Its routing fields (see [`RelayFrame::route`]).
    pub fn route(&self) -> Route<'_> {
        Route::of(&self.from, &self.to, &self.id)
    }

    /// A string `header.dh`: without it a frame is not an encrypted message.
    pub fn has_header(&self) -> bool {
        self.header
            .as_ref()
            .is_some_and(|h| h.get("dh").is_some_and(Value::is_string))
    }

    /// Plaintext: flagged so (TS dialect), or a `payload` without a header
    /// (the controller's dialect).
    pub fn is_plaintext(&self) -> bool {
        self.plaintext == Some(true) || (!self.has_header() && self.payload.is_some())
    }

    /// A plaintext frame's base64 body: `payload` when it is a string, else
    /// `ciphertext`, else empty (which then fails to decode as JSON).
    pub fn plaintext_body(&self) -> &str {
        self.payload
            .as_ref()
            .and_then(Value::as_str)
            .or(self.ciphertext.as_deref())
            .unwrap_or("")
    }
}

/// `knock` (agentmesh-wire.md §5.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Knock {
    #[serde(default)]
    pub v: V1,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub to: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub ts: Option<String>,
    #[serde(default, deserialize_with = "object", skip_serializing_if = "absent")]
    pub intent: Option<Intent>,
    /// As it came: a malformed one must still reach the refusal (which acks
    /// the KNOCK), so it is checked by [`Knock::establishment`], not here.
    #[serde(default, deserialize_with = "raw", skip_serializing_if = "absent")]
    pub establishment: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub action: String,
}

/// The `establishment` we send: X3DH's `ik`/`ek`/`otk` (std base64; `otk`
/// omitted for 3-DH), plus our extension `ik_ed`, the Ed25519 identity key,
/// so a kars-mesh responder binds the KNOCK to our DID without a registry
/// round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnockEstablishment {
    pub ik: String,
    pub ek: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otk: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ik_ed: Option<String>,
}

impl Knock {
    /// Its routing fields (see [`RelayFrame::route`]).
    pub fn route(&self) -> Route<'_> {
        Route::of(&self.from, &self.to, &self.id)
    }

    pub fn new(
        from: &str,
        to: &str,
        id: &str,
        ts: &str,
        est: &Establishment,
        ik_ed: &[u8; 32],
    ) -> Self {
        let e = KnockEstablishment {
            ik: b64::encode_std(&est.identity_key),
            ek: b64::encode_std(&est.ephemeral_key),
            otk: est.one_time_prekey_id,
            ik_ed: Some(b64::encode_std(ik_ed)),
        };
        Knock {
            v: V1,
            from: Some(from.into()),
            to: Some(to.into()),
            id: Some(id.into()),
            ts: Some(ts.into()),
            intent: Some(Intent {
                action: ESTABLISH_SESSION.into(),
            }),
            // Cannot fail: strings and an integer.
            establishment: serde_json::to_value(e).ok(),
        }
    }

    /// The X3DH establishment, checked as ever (legacy long names taken);
    /// `None` when the KNOCK has none.
    pub fn establishment(&self) -> Option<Result<Establishment, WireError>> {
        self.establishment
            .as_ref()
            .map(|e| frames::parse_establishment(&e.to_string()))
    }

    /// The sender's Ed25519 key as it claims it (`establishment.ik_ed`).
    pub fn ik_ed(&self) -> Option<&str> {
        self.establishment.as_ref()?.get("ik_ed")?.as_str()
    }
}

/// `knock_accept` and `knock_reject`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnockReply {
    #[serde(default)]
    pub v: V1,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub to: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub id: Option<String>,
    /// The KNOCK answered; missing reads as matching none of ours.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub knock_id: Option<String>,
    /// `knock_reject` only.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub reason: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub ts: Option<String>,
}

impl KnockReply {
    /// Its routing fields (see [`RelayFrame::route`]).
    pub fn route(&self) -> Route<'_> {
        Route::of(&self.from, &self.to, &self.id)
    }

    fn new(
        from: &str,
        to: &str,
        id: &str,
        knock_id: &str,
        reason: Option<String>,
        ts: &str,
    ) -> Self {
        KnockReply {
            v: V1,
            from: Some(from.into()),
            to: Some(to.into()),
            id: Some(id.into()),
            knock_id: Some(knock_id.into()),
            reason,
            ts: Some(ts.into()),
        }
    }
}

/// `ack`: only ever sent, so strict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    #[serde(default)]
    pub v: V1,
    pub id: String,
}

/// `heartbeat`: only ever sent, so strict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default)]
    pub v: V1,
    pub from: String,
    pub ts: String,
}

/// `disconnect`: only ever sent, so strict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnect {
    #[serde(default)]
    pub v: V1,
    pub from: String,
}

/// The relay's `error` frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayError {
    /// Absent: an empty complaint.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::payload::ParseError;
    use serde_json::json;

    const ME: &str = "did:mesh:0123456789abcdef0123456789abcdef";
    const PEER: &str = "did:mesh:fedcba9876543210fedcba9876543210";
    const TS: &str = "2026-01-02T03:04:05.678Z";

    fn same(frame: RelayFrame, literal: Value) {
        assert_eq!(frame.to_value(), literal);
        // Byte for byte what `json!(..).to_string()` wrote.
        assert_eq!(frame.to_text(), literal.to_string());
        assert_eq!(RelayFrame::parse(&literal).as_ref(), Ok(&frame));
        assert_eq!(
            RelayFrame::from_text(&literal.to_string()).as_ref(),
            Ok(&frame)
        );
    }

    fn misspelt(literal: &Value, wrong: &str) {
        let mut v = literal.clone();
        v["type"] = json!(wrong);
        assert_eq!(
            RelayFrame::parse(&v),
            Err(ParseError::UnknownType {
                family: "relay frame",
                kind: wrong.into()
            })
        );
    }

    #[test]
    fn knock() {
        for otk in [None, Some(7u32)] {
            let est = Establishment {
                identity_key: [1; 32],
                ephemeral_key: [2; 32],
                one_time_prekey_id: otk,
            };
            let ed = [3u8; 32];
            let (peer_did, knock_id, ts) = (PEER, "k-1", TS);
            // src/agent/send.rs, Agent::open_session.
            let mut est_v: Value =
                serde_json::from_str(&frames::establishment_json(&est)).unwrap_or_default();
            est_v["ik_ed"] = json!(b64::encode_std(&ed));
            let literal = json!({"v":1,"type":"knock","from":ME,"to":peer_did,"id":knock_id,"ts":ts,"intent":{"action":"establish_session"},"establishment":est_v});
            let frame = RelayFrame::Knock(Knock::new(ME, peer_did, knock_id, ts, &est, &ed));
            same(frame.clone(), literal.clone());
            let RelayFrame::Knock(k) = frame else {
                panic!("not a knock")
            };
            assert_eq!(k.establishment(), Some(Ok(est)));
            assert_eq!(k.ik_ed(), Some(b64::encode_std(&ed).as_str()));
            misspelt(&literal, "KNOCK");
        }
        // A malformed establishment is kept for the refusal (which acks).
        let bad = json!({"type": "knock", "from": PEER, "id": "k", "establishment": "x"});
        let Ok(RelayFrame::Knock(k)) = RelayFrame::parse(&bad) else {
            panic!("not a knock");
        };
        assert!(matches!(k.establishment(), Some(Err(_))));
        assert_eq!(k.ik_ed(), None);
        // Legacy long names still read.
        let legacy = json!({"type": "knock", "establishment": {
            "initiator_identity_key": b64::encode_std(&[1; 32]),
            "ephemeral_public_key": b64::encode_std(&[2; 32]),
            "used_one_time_key_id": 4}});
        let Ok(RelayFrame::Knock(k)) = RelayFrame::parse(&legacy) else {
            panic!("not a knock");
        };
        assert!(matches!(k.establishment(), Some(Ok(e)) if e.one_time_prekey_id == Some(4)));
    }

    #[test]
    fn knock_accept_and_reject() {
        let (from, aid, id, ts) = (PEER, "a-1", "k-1", TS);
        // src/agent/receive.rs, Agent::adopt_knock (`self.id.did()` is ME).
        let literal =
            json!({"v":1,"type":"knock_accept","from":ME,"to":from,"id":aid,"knock_id":id,"ts":ts});
        same(
            RelayFrame::knock_accept(ME, from, aid, id, ts),
            literal.clone(),
        );
        misspelt(&literal, "knock_accepted");
        let rid = "r-1";
        // src/agent/receive.rs, Agent::reject_knock.
        let literal = json!({"v":1,"type":"knock_reject","from":ME,"to":from,"id":rid,"knock_id":id,"reason":"policy_denied","ts":ts});
        same(
            RelayFrame::knock_reject(ME, from, rid, id, ts),
            literal.clone(),
        );
        misspelt(&literal, "knock_rejected");
        // Routed fields read leniently: the receiver still acks by `id`.
        let odd = json!({"type": "knock_accept", "from": 5, "id": "x"});
        let f = RelayFrame::parse(&odd).unwrap();
        assert_eq!(
            f.route(),
            Some(Route {
                from: "",
                to: None,
                id: "x"
            })
        );
    }

    #[test]
    fn ack_heartbeat_disconnect() {
        let frame_id = "f-1";
        // src/agent/mod.rs, Agent::ack.
        let literal = json!({"v": 1, "type": "ack", "id": frame_id});
        same(RelayFrame::ack(frame_id), literal.clone());
        misspelt(&literal, "ACK");
        let mut no_id = literal.clone();
        no_id.as_object_mut().unwrap().remove("id");
        assert_eq!(
            RelayFrame::parse(&no_id),
            Err(ParseError::MissingField {
                kind: "ack",
                field: "id".into()
            })
        );

        let ts = TS;
        // src/agent/mod.rs, Agent::on_timer (T_RELAY_HEARTBEAT).
        let literal = json!({"v": 1, "type": "heartbeat", "from": ME, "ts": ts});
        same(RelayFrame::heartbeat(ME, ts), literal.clone());
        misspelt(&literal, "heart_beat");
        let mut no_ts = literal.clone();
        no_ts.as_object_mut().unwrap().remove("ts");
        assert_eq!(
            RelayFrame::parse(&no_ts),
            Err(ParseError::MissingField {
                kind: "heartbeat",
                field: "ts".into()
            })
        );

        // src/agent/mod.rs, Agent::on_stop.
        let literal = json!({"v": 1, "type": "disconnect", "from": ME});
        same(RelayFrame::disconnect(ME), literal.clone());
        misspelt(&literal, "bye");
        assert_eq!(
            RelayFrame::parse(&json!({"type": "disconnect"})),
            Err(ParseError::MissingField {
                kind: "disconnect",
                field: "from".into()
            })
        );
    }

    #[test]
    fn inbound_message_frames_in_every_dialect() {
        // Encrypted (wire::frames::message_frame writes it).
        let header = crate::crypto::ratchet::Header {
            dh: [9; 32],
            pn: 1,
            n: 2,
        };
        let text = frames::message_frame(PEER, ME, "m-1", TS, &header, &[1, 2, 3]);
        let Ok(RelayFrame::Message(m)) = RelayFrame::from_text(&text) else {
            panic!("not a message");
        };
        assert!(m.has_header() && !m.is_plaintext());
        assert_eq!(m.ts.as_deref(), Some(TS));
        assert_eq!(
            RelayFrame::Message(m.clone()).route(),
            Some(Route {
                from: PEER,
                to: Some(ME),
                id: "m-1"
            })
        );
        // TS dialect: `ciphertext` with `plaintext: true`.
        let ts_dialect = json!({"v":1,"type":"message","from":PEER,"to":ME,"id":"p-1","ts":TS,"ciphertext":"e30=","plaintext":true});
        let Ok(RelayFrame::Message(m)) = RelayFrame::parse(&ts_dialect) else {
            panic!("not a message");
        };
        assert!(m.is_plaintext());
        assert_eq!(m.plaintext_body(), "e30=");
        // The controller's dialect: `payload` only, no `v`/`ts`.
        let ctrl = json!({"type":"message","to":ME,"from":PEER,"id":"ctrl-00","payload":"e30="});
        let Ok(RelayFrame::Message(m)) = RelayFrame::parse(&ctrl) else {
            panic!("not a message");
        };
        assert!(m.is_plaintext());
        assert_eq!(m.plaintext_body(), "e30=");
        // A `payload` of any type marks plaintext (its body is then the
        // ciphertext, or nothing).
        let odd = json!({"type":"message","payload":5});
        let Ok(RelayFrame::Message(m)) = RelayFrame::parse(&odd) else {
            panic!("not a message");
        };
        assert!(m.is_plaintext());
        assert_eq!(m.plaintext_body(), "");
        // Neither header nor payload: not usable (the receiver counts it).
        let Ok(RelayFrame::Message(m)) = RelayFrame::parse(&json!({"type":"message"})) else {
            panic!("not a message");
        };
        assert!(!m.has_header() && !m.is_plaintext());
    }

    #[test]
    fn relay_error_and_unknown_frames() {
        let e = json!({"type": "error", "detail": "Unknown frame type: fetch_pending"});
        assert_eq!(
            RelayFrame::parse(&e),
            Ok(RelayFrame::Error(RelayError {
                detail: Some("Unknown frame type: fetch_pending".into())
            }))
        );
        assert_eq!(
            RelayFrame::parse(&json!({"type": "error"})),
            Ok(RelayFrame::Error(RelayError { detail: None }))
        );
        misspelt(&e, "Error");
        assert_eq!(
            RelayFrame::parse(&json!({"type": "pending_messages", "messages": []})),
            Err(ParseError::UnknownType {
                family: "relay frame",
                kind: "pending_messages".into()
            })
        );
        assert!(matches!(
            RelayFrame::from_text("not json"),
            Err(ParseError::NotJson(_))
        ));
    }
}
