//! What rides in an encrypted message besides the protocol families: the
//! user's `message` (`mesh_send` text), the kars delivery envelope (a
//! `kars` object with the sender's sequence number, put into every payload
//! to a kars-mesh peer), and `kars_receipt`, which carries only an envelope
//! of receipts.
//!
//! Receipts are recognised by their envelope, not by their `type` (a
//! receipt is any payload whose `kars` has `receipt` or `upto`), so
//! [`Envelope::take`] is what a receiver calls first.

use crate::wire::lenient::{absent, raw};
use crate::wire::payload::{variants_from, Family, PayloadType};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The key under which the envelope travels inside a payload object.
pub const ENVELOPE_KEY: &str = "kars";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum DeliveryMsg {
    #[serde(rename = "message")]
    Message(ChatMessage),
    #[serde(rename = "kars_receipt")]
    Receipt(ReceiptMsg),
}

variants_from!(DeliveryMsg {
    Message(ChatMessage),
    Receipt(ReceiptMsg),
});

impl Family for DeliveryMsg {
    const FAMILY: &'static str = "delivery";
    const TYPES: &'static [&'static str] = &[
        PayloadType::Message.as_str(),
        PayloadType::KarsReceipt.as_str(),
    ];
}

impl DeliveryMsg {
    pub fn payload_type(&self) -> PayloadType {
        match self {
            DeliveryMsg::Message(_) => PayloadType::Message,
            DeliveryMsg::Receipt(_) => PayloadType::KarsReceipt,
        }
    }
}

/// `message`: a user's words. `mesh_send` sends text; a peer may put any
/// JSON in `content`, and the inbox shows it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// A present `null` stays `Some(Null)`: the inbox shows it as `null`,
    /// while a missing `content` shows the whole payload.
    #[serde(default, deserialize_with = "raw", skip_serializing_if = "absent")]
    pub content: Option<Value>,
}

impl ChatMessage {
    pub fn text(s: &str) -> Self {
        ChatMessage {
            content: Some(Value::String(s.into())),
        }
    }

    /// What the inbox shows for this message: the text, other content as
    /// JSON; `None` without content (the caller shows the whole payload).
    pub fn shown(&self) -> Option<String> {
        match self.content.as_ref()? {
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// `kars_receipt`: a message that is only a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptMsg {
    pub kars: Receipts,
}

impl ReceiptMsg {
    pub fn new(receipts: Receipts) -> Self {
        ReceiptMsg { kars: receipts }
    }
}

/// Receipts: the listed sequence numbers, and everything below `upto`.
/// `epoch` names the numbering they belong to (absent: any).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Receipts {
    pub receipt: Vec<u64>,
    pub upto: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

impl<'de> Deserialize<'de> for Receipts {
    /// As leniently as a receiver reads a receipt envelope (see
    /// [`Envelope::read`]): it never fails on a field.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(|v| Receipts::read(&v))
    }
}

impl Receipts {
    /// Non-integers in `receipt` are left out; a missing `upto` is 0.
    fn read(v: &Value) -> Receipts {
        Receipts {
            receipt: v["receipt"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default(),
            upto: v["upto"].as_u64().unwrap_or(0),
            epoch: v["epoch"].as_u64(),
        }
    }
}

/// What a data envelope's `caps` lists when its sender reads receipts
/// nested in the data messages it receives (`ack`). 0.1.0 peers list
/// nothing and read only receipts of their own (`kars_receipt`).
pub const CAP_NESTED_ACK: &str = "ack";

/// The envelope of a data message: its place in the sender's numbering,
/// what its sender can read, and receipts riding along.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequence {
    pub seq: u64,
    pub epoch: u64,
    /// What the sender reads ([`CAP_NESTED_ACK`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
    /// Receipts for the receiver's messages, in a data message instead of
    /// a `kars_receipt` of their own: one frame, one decryption and one
    /// record write fewer on each side of a conversation. Only sent to a
    /// peer whose own envelopes list [`CAP_NESTED_ACK`]; older peers read
    /// an envelope with a top-level `receipt`/`upto` as a receipt only,
    /// and ignore keys they do not know, so they are never sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<Receipts>,
}

impl Sequence {
    /// A data envelope from a sender that reads nested receipts.
    pub fn new(seq: u64, epoch: u64, ack: Option<Receipts>) -> Self {
        Sequence {
            seq,
            epoch,
            caps: vec![CAP_NESTED_ACK.to_string()],
            ack,
        }
    }

    /// Put the envelope into a payload object (anything else goes as it
    /// is: only objects can carry it).
    pub fn put_into(&self, payload: &mut Value) {
        if let Some(o) = payload.as_object_mut() {
            // Cannot fail: integers, strings and a receipt.
            let env = serde_json::to_value(self).unwrap_or(Value::Null);
            o.insert(ENVELOPE_KEY.into(), env);
        }
    }
}

/// A received envelope, read as leniently as ever: a receipt when it has
/// `receipt` or `upto` (of any type), else a data message's numbering,
/// whose parts may be missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    Receipts(Receipts),
    Data {
        seq: Option<u64>,
        epoch: Option<u64>,
        /// Receipts riding along (an `ack` object; anything else is none).
        ack: Option<Receipts>,
        /// The sender reads nested receipts.
        reads_ack: bool,
    },
}

impl Envelope {
    pub fn read(v: &Value) -> Envelope {
        if v.get("receipt").is_some() || v.get("upto").is_some() {
            Envelope::Receipts(Receipts::read(v))
        } else {
            Envelope::Data {
                seq: v["seq"].as_u64(),
                epoch: v["epoch"].as_u64(),
                ack: v.get("ack").filter(|a| a.is_object()).map(Receipts::read),
                reads_ack: v["caps"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|x| x.as_str() == Some(CAP_NESTED_ACK))),
            }
        }
    }

    /// Take the envelope out of a decrypted payload (the inbox keeps the
    /// payload without it); `None` when there is none (a peer that is not
    /// kars-mesh, or a payload that is not an object).
    pub fn take(payload: &mut Value) -> Option<Envelope> {
        let v = payload.as_object_mut()?.remove(ENVELOPE_KEY)?;
        Some(Envelope::read(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::payload::ParseError;
    use serde_json::json;

    #[test]
    fn message() {
        let s = "hello ✓";
        // src/agent/tools/mesh_send.rs (then src/agent/send_tool.rs), send_args.
        let literal = json!({"type": "message", "content": s});
        let msg = DeliveryMsg::from(ChatMessage::text(s));
        assert_eq!(msg.to_value(), literal);
        assert_eq!(DeliveryMsg::parse(&literal), Ok(msg.clone()));
        assert_eq!(msg.payload_type(), PayloadType::Message);
        let mut wrong = literal.clone();
        wrong["type"] = json!("Message");
        assert_eq!(
            DeliveryMsg::parse(&wrong),
            Err(ParseError::UnknownType {
                family: "delivery",
                kind: "Message".into()
            })
        );
        // Content is optional and any JSON (src/agent/tools/mesh_inbox.rs (then src/agent/inbox_tool.rs),
        // content_text): `null` stays null, a missing one is none.
        for (v, shown) in [
            (json!({"type": "message", "content": null}), Some("null")),
            (
                json!({"type": "message", "content": {"a": 1}}),
                Some("{\"a\":1}"),
            ),
            (json!({"type": "message"}), None),
        ] {
            let Ok(DeliveryMsg::Message(m)) = DeliveryMsg::parse(&v) else {
                panic!("not a message");
            };
            assert_eq!(m.shown().as_deref(), shown);
        }
    }

    #[test]
    fn kars_receipt() {
        let (explicit, in_next) = (vec![7u64, 9], 5u64);
        for in_epoch in [None, Some(42u64)] {
            // src/agent/send.rs, Agent::seal_receipt.
            let mut env = json!({"receipt": explicit, "upto": in_next});
            if let Some(e) = in_epoch {
                env["epoch"] = json!(e);
            }
            let body = json!({"type": "kars_receipt", "kars": env});
            let msg = DeliveryMsg::from(ReceiptMsg::new(Receipts {
                receipt: explicit.clone(),
                upto: in_next,
                epoch: in_epoch,
            }));
            assert_eq!(msg.to_value(), body);
            // src/agent/send.rs sends the text: byte for byte the literal's.
            assert_eq!(msg.to_text(), body.to_string());
            assert_eq!(DeliveryMsg::parse(&body), Ok(msg.clone()));
            // A receiver finds it by its envelope.
            let mut payload = body.clone();
            assert_eq!(
                Envelope::take(&mut payload),
                Some(Envelope::Receipts(Receipts {
                    receipt: explicit.clone(),
                    upto: in_next,
                    epoch: in_epoch
                }))
            );
            assert_eq!(payload, json!({"type": "kars_receipt"}));
        }
        assert_eq!(
            DeliveryMsg::parse(&json!({"type": "kars-receipt", "kars": {}})),
            Err(ParseError::UnknownType {
                family: "delivery",
                kind: "kars-receipt".into()
            })
        );
        // `kars` is the receipt itself: without it there is nothing to read.
        assert_eq!(
            DeliveryMsg::parse(&json!({"type": "kars_receipt"})),
            Err(ParseError::MissingField {
                kind: "kars_receipt",
                field: "kars".into()
            })
        );
    }

    #[test]
    fn delivery_envelope() {
        let (seq, out_epoch) = (3u64, 77u64);
        let mut payload = json!({"type": "message", "content": "hi"});
        // src/agent/send.rs, Agent::seal_for_peer.
        let mut expected = payload.clone();
        if let Some(o) = expected.as_object_mut() {
            o.insert(
                "kars".to_string(),
                json!({"seq": seq, "epoch": out_epoch, "caps": ["ack"]}),
            );
        }
        Sequence::new(seq, out_epoch, None).put_into(&mut payload);
        assert_eq!(payload, expected);
        assert_eq!(
            Envelope::take(&mut payload),
            Some(Envelope::Data {
                seq: Some(seq),
                epoch: Some(out_epoch),
                ack: None,
                reads_ack: true,
            })
        );
        // Receipts riding in a data message: a data envelope still (no
        // top-level `receipt`/`upto`, so a 0.1.0 peer would deliver
        // the message and ignore them; it is never sent one).
        let mut with_ack = json!({"type": "message", "content": "hi"});
        let ack = Receipts {
            receipt: vec![9],
            upto: 5,
            epoch: Some(42),
        };
        Sequence::new(4, out_epoch, Some(ack.clone())).put_into(&mut with_ack);
        assert_eq!(
            with_ack["kars"],
            json!({"seq": 4, "epoch": out_epoch, "caps": ["ack"],
                   "ack": {"receipt": [9], "upto": 5, "epoch": 42}})
        );
        assert_eq!(
            Envelope::take(&mut with_ack),
            Some(Envelope::Data {
                seq: Some(4),
                epoch: Some(out_epoch),
                ack: Some(ack),
                reads_ack: true,
            })
        );
        // What a 0.1.0 peer sends: no caps, no ack.
        assert_eq!(
            Envelope::read(&json!({"seq": 2, "epoch": 7})),
            Envelope::Data {
                seq: Some(2),
                epoch: Some(7),
                ack: None,
                reads_ack: false,
            }
        );
        // Odd shapes read as none, never as a receipt-only message.
        assert_eq!(
            Envelope::read(&json!({"seq": 2, "ack": 5, "caps": "ack"})),
            Envelope::Data {
                seq: Some(2),
                epoch: None,
                ack: None,
                reads_ack: false,
            }
        );
        assert_eq!(payload, json!({"type": "message", "content": "hi"}));
        // src/agent/receive.rs reads leniently: a present `upto` of any
        // type makes a receipt; odd numbers read as none.
        assert_eq!(
            Envelope::read(&json!({"upto": "x", "receipt": [1, "2", 3]})),
            Envelope::Receipts(Receipts {
                receipt: vec![1, 3],
                upto: 0,
                epoch: None
            })
        );
        assert_eq!(
            Envelope::read(&json!("odd")),
            Envelope::Data {
                seq: None,
                epoch: None,
                ack: None,
                reads_ack: false,
            }
        );
        let mut s = json!("a bare string");
        Sequence::new(1, 1, None).put_into(&mut s);
        assert_eq!(Envelope::take(&mut s), None);
    }
}
