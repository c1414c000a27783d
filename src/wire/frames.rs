//! Relay frames (agentmesh-wire.md §4–§6). Relay frames carry standard padded
//! base64; we emit that and accept both alphabets.

use crate::crypto::identity::Identity;
use crate::crypto::ratchet::Header;
use crate::crypto::x3dh::Establishment;
use crate::entropy::Entropy;
use crate::wire::b64;
use crate::wire::registry::field;
use crate::wire::{hex, WireError};
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct ConnectFrame<'a> {
    v: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    from: &'a str,
    public_key: String,
    timestamp: &'a str,
    signature: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

/// The relay `connect` frame: Ed25519 over the UTF-8 timestamp, std base64.
/// `token`: the relay's shared secret, when it is configured with one.
pub fn connect_frame(identity: &Identity, timestamp: &str, token: Option<&str>) -> String {
    let frame = ConnectFrame {
        v: 1,
        kind: "connect",
        from: identity.did(),
        public_key: b64::encode_std(identity.ed25519_public()),
        timestamp,
        signature: b64::encode_std(&identity.sign(timestamp.as_bytes())),
        token,
    };
    serde_json::to_string(&frame).unwrap_or_default()
}

#[derive(Serialize, Deserialize)]
pub struct HeaderJson {
    pub dh: String,
    pub pn: u32,
    pub n: u32,
}

/// The reference shape `message_frame` writes by hand (tests compare them).
#[cfg(test)]
#[derive(Serialize)]
struct MessageFrameOut<'a> {
    v: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    from: &'a str,
    to: &'a str,
    id: &'a str,
    ts: &'a str,
    header: HeaderJson,
    ciphertext: String,
}

/// An encrypted `message` frame, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedMessage {
    pub from: String,
    pub to: String,
    pub id: String,
    pub header: Header,
    pub ciphertext: Vec<u8>,
}

pub fn message_frame(
    from: &str,
    to: &str,
    id: &str,
    ts: &str,
    header: &Header,
    ciphertext: &[u8],
) -> String {
    // Written by hand: the ciphertext is most of the frame and base64 needs
    // no JSON escaping, so a serializer pass over it is wasted work. The
    // short strings still go through serde_json for escaping.
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string());
    let ct = b64::encode_std(ciphertext);
    let mut f = String::with_capacity(ct.len() + 256);
    f.push_str("{\"v\":1,\"type\":\"message\",\"from\":");
    f.push_str(&q(from));
    f.push_str(",\"to\":");
    f.push_str(&q(to));
    f.push_str(",\"id\":");
    f.push_str(&q(id));
    f.push_str(",\"ts\":");
    f.push_str(&q(ts));
    f.push_str(",\"header\":{\"dh\":\"");
    f.push_str(&b64::encode_std(&header.dh));
    f.push_str(&format!(
        "\",\"pn\":{},\"n\":{}}},\"ciphertext\":\"",
        header.pn, header.n
    ));
    f.push_str(&ct);
    f.push_str("\"}");
    f
}

/// Borrowed where possible: a 64 KiB message is an 88 KB base64 string, and
/// copying it out of the frame text only to decode it is wasted work.
#[derive(Deserialize)]
struct MessageFrameIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    id: String,
    #[serde(borrow)]
    header: Option<HeaderIn<'a>>,
    #[serde(borrow)]
    ciphertext: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct HeaderIn<'a> {
    #[serde(borrow)]
    dh: std::borrow::Cow<'a, str>,
    pn: u32,
    n: u32,
}

/// Parse an encrypted `message` frame. A frame without a string `header.dh`
/// is not an encrypted message (agentmesh-wire.md §6).
pub fn parse_message_frame(text: &str) -> Result<EncryptedMessage, WireError> {
    let f: MessageFrameIn =
        serde_json::from_str(text).map_err(|e| WireError::json("message frame", &e))?;
    if f.kind != "message" {
        return Err(WireError::UnexpectedType {
            expected: "message",
            actual: f.kind.chars().take(32).collect(),
        });
    }
    let h = f.header.ok_or(WireError::MissingField("header"))?;
    let ct = f.ciphertext.ok_or(WireError::MissingField("ciphertext"))?;
    Ok(EncryptedMessage {
        from: f.from,
        to: f.to,
        id: f.id,
        header: Header {
            dh: field("header.dh", &h.dh)?,
            pn: h.pn,
            n: h.n,
        },
        ciphertext: b64::decode(&ct).map_err(|source| WireError::Field {
            field: "ciphertext",
            source,
        })?,
    })
}

#[derive(Serialize)]
struct EstablishmentOut {
    ik: String,
    ek: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    otk: Option<u32>,
}

/// The KNOCK `establishment` object; `otk` omitted for 3-DH.
pub fn establishment_json(est: &Establishment) -> String {
    let e = EstablishmentOut {
        ik: b64::encode_std(&est.identity_key),
        ek: b64::encode_std(&est.ephemeral_key),
        otk: est.one_time_prekey_id,
    };
    serde_json::to_string(&e).unwrap_or_default()
}

#[derive(Deserialize)]
struct EstablishmentIn {
    #[serde(alias = "initiator_identity_key")]
    ik: Option<String>,
    #[serde(alias = "ephemeral_public_key")]
    ek: Option<String>,
    #[serde(default, alias = "used_one_time_key_id")]
    otk: Option<u32>,
}

/// Parse an establishment object; the legacy long key names are accepted.
pub fn parse_establishment(json: &str) -> Result<Establishment, WireError> {
    let e: EstablishmentIn =
        serde_json::from_str(json).map_err(|e| WireError::json("establishment", &e))?;
    Ok(Establishment {
        identity_key: field(
            "establishment.ik",
            &e.ik.ok_or(WireError::MissingField("establishment.ik"))?,
        )?,
        ephemeral_key: field(
            "establishment.ek",
            &e.ek.ok_or(WireError::MissingField("establishment.ek"))?,
        )?,
        one_time_prekey_id: e.otk,
    })
}

/// A UUID v4 string from 16 bytes of entropy (frame ids must be fresh: the
/// relay de-duplicates by id across all recipients).
pub fn uuid_v4(rng: &mut dyn Entropy) -> String {
    let mut b = [0u8; 16];
    rng.fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_message_frame_equals_the_serde_form() {
        for (from, id, len) in [
            ("did:mesh:ab", "5f0c", 0usize),
            ("odd \"quote\" \\ ü", "x\ny", 1),
            ("did:mesh:cd", "id", 1000),
        ] {
            let header = Header {
                dh: [9; 32],
                pn: 3,
                n: 4_000_000_000,
            };
            let ct: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let reference = serde_json::to_string(&MessageFrameOut {
                v: 1,
                kind: "message",
                from,
                to: "did:mesh:to",
                id,
                ts: "2026-01-02T03:04:05.678Z",
                header: HeaderJson {
                    dh: b64::encode_std(&header.dh),
                    pn: header.pn,
                    n: header.n,
                },
                ciphertext: b64::encode_std(&ct),
            })
            .unwrap();
            let ours = message_frame(
                from,
                "did:mesh:to",
                id,
                "2026-01-02T03:04:05.678Z",
                &header,
                &ct,
            );
            assert_eq!(ours, reference);
            let back = parse_message_frame(&ours).unwrap();
            assert_eq!(
                (back.header, back.ciphertext, back.from.as_str()),
                (header, ct, from)
            );
        }
    }
}
