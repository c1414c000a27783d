//! Pairing over the mesh (kars-mesh-plugin.md §4.3): the client's
//! `pair_request` carrying a token's secret, and the controller's
//! `pair_response`. The original plugin sends its `pair_request` in
//! plaintext (§6.5), decoded by `wire::plaintext`; the message is the same.
//!
//! Every field is optional on receipt, because the readers take any
//! `pair_request` or `pair_response` and fall back field by field: a request
//! without a secret still earns a refusal ("Invalid pairing token"), and a
//! response without `success: true` is a refusal.

use crate::wire::lenient::{absent, each, opt};
use crate::wire::payload::{variants_from, Family, PayloadType};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PairingMsg {
    #[serde(rename = "pair_request")]
    Request(PairRequestMsg),
    #[serde(rename = "pair_response")]
    Response(PairResponseMsg),
}

variants_from!(PairingMsg {
    Request(PairRequestMsg),
    Response(PairResponseMsg),
});

impl Family for PairingMsg {
    const FAMILY: &'static str = "pairing";
    const TYPES: &'static [&'static str] = &[
        PayloadType::PairRequest.as_str(),
        PayloadType::PairResponse.as_str(),
    ];
}

impl PairingMsg {
    pub fn payload_type(&self) -> PayloadType {
        match self {
            PairingMsg::Request(_) => PayloadType::PairRequest,
            PairingMsg::Response(_) => PayloadType::PairResponse,
        }
    }
}

/// What a client asks for; the controller grants what the pairing holds.
pub const CAPABILITIES_REQUESTED: [&str; 2] = ["offload", "handoff"];

/// Fallbacks the client uses for a `pair_response` that leaves them out
/// (the original plugin's, §4.4).
pub const DEFAULT_CLUSTER_NAME: &str = "unknown";
pub const DEFAULT_SLOTS: u64 = 1;
pub const DEFAULT_TOKEN_BUDGET: u64 = 500_000;
pub const DEFAULT_PAIR_ERROR: &str = "Unknown error";

/// `pair_request` (client → controller). `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRequestMsg {
    /// The token's secret. Absent: matches no pairing (a refusal).
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub secret: Option<String>,
    /// Standard base64 of the sender's Ed25519 key; it must hash to the
    /// sender's DID.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub pubkey_ed25519: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub display_name: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub capabilities_requested: Option<Vec<String>>,
}

impl std::fmt::Debug for PairRequestMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairRequestMsg")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("pubkey_ed25519", &self.pubkey_ed25519)
            .field("display_name", &self.display_name)
            .field("capabilities_requested", &self.capabilities_requested)
            .finish()
    }
}

impl PairRequestMsg {
    pub fn new(secret: &str, pubkey_ed25519_b64: &str, display_name: &str) -> Self {
        PairRequestMsg {
            secret: Some(secret.into()),
            pubkey_ed25519: Some(pubkey_ed25519_b64.into()),
            display_name: Some(display_name.into()),
            capabilities_requested: Some(
                CAPABILITIES_REQUESTED
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
            ),
        }
    }
}

/// `pair_response` (controller → client): a grant, or a refusal with the
/// original controller's error text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairResponseMsg {
    /// Only a JSON `true` is a grant ([`PairResponseMsg::succeeded`]).
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub success: Option<bool>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub cluster_name: Option<String>,
    /// The controller's base58 AMID; the client falls back to the token's.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub controller_amid: Option<String>,
    /// Ours only (the original controller does not send it); the client
    /// trusts the frame's sender, not this.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub controller_did: Option<String>,
    /// Non-string elements are left out, as the client always did.
    #[serde(default, deserialize_with = "each", skip_serializing_if = "absent")]
    pub capabilities_granted: Option<Vec<String>>,
    /// Sent from a `u32`; read as any whole number.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub slots: Option<u64>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub token_budget: Option<u64>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub expires_at: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub error: Option<String>,
}

impl PairResponseMsg {
    /// The controller's grant.
    pub fn granted(
        cluster_name: &str,
        controller_amid: &str,
        controller_did: &str,
        capabilities_granted: Vec<String>,
        slots: u32,
        token_budget: u64,
        expires_at: &str,
    ) -> Self {
        PairResponseMsg {
            success: Some(true),
            cluster_name: Some(cluster_name.into()),
            controller_amid: Some(controller_amid.into()),
            controller_did: Some(controller_did.into()),
            capabilities_granted: Some(capabilities_granted),
            slots: Some(u64::from(slots)),
            token_budget: Some(token_budget),
            expires_at: Some(expires_at.into()),
            error: None,
        }
    }

    /// The controller's refusal.
    pub fn refused(error: &str) -> Self {
        PairResponseMsg {
            success: Some(false),
            cluster_name: None,
            controller_amid: None,
            controller_did: None,
            capabilities_granted: None,
            slots: None,
            token_budget: None,
            expires_at: None,
            error: Some(error.into()),
        }
    }

    /// `success` is JSON `true` (`payload["success"] == true`).
    pub fn succeeded(&self) -> bool {
        self.success == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::payload::ParseError;
    use serde_json::{json, Value};

    #[test]
    fn a_pair_request_debug_hides_the_secret() {
        let m = PairRequestMsg {
            secret: Some("s3cr3t-part".into()),
            pubkey_ed25519: Some("pk".into()),
            display_name: Some("laptop".into()),
            capabilities_requested: None,
        };
        let shown = format!("{m:?} {:?}", PairingMsg::from(m.clone()));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("laptop"),
            "{shown}"
        );
    }

    fn same(msg: impl Into<PairingMsg>, literal: Value) {
        let msg = msg.into();
        assert_eq!(msg.to_value(), literal);
        assert_eq!(PairingMsg::parse(&literal).as_ref(), Ok(&msg));
        assert_eq!(PairingMsg::from_value(literal.clone()).as_ref(), Ok(&msg));
        assert_eq!(msg.payload_type().as_str(), literal["type"]);
    }

    fn misspelt(literal: &Value, wrong: &str) {
        let mut v = literal.clone();
        v["type"] = json!(wrong);
        assert_eq!(
            PairingMsg::parse(&v),
            Err(ParseError::UnknownType {
                family: "pairing",
                kind: wrong.into()
            })
        );
    }

    #[test]
    fn pair_request() {
        let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I";
        let pk = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let name = "external-5Kd3NBUA";
        // src/pairing/ (then src/agent/pairing.rs), Agent::start_pairing (`tok.secret`, the
        // key as std base64, the display name).
        let literal = json!({
            "type": "pair_request",
            "secret": secret,
            "pubkey_ed25519": pk,
            "display_name": name,
            "capabilities_requested": ["offload", "handoff"],
        });
        same(PairRequestMsg::new(secret, pk, name), literal.clone());
        misspelt(&literal, "pair-request");
        misspelt(&literal, "PAIR_REQUEST");
        // Nothing is required: a request without a secret is refused by
        // the ledger ("Invalid pairing token"), not dropped.
        let Ok(PairingMsg::Request(r)) =
            PairingMsg::parse(&json!({"type": "pair_request", "secret": 5}))
        else {
            panic!("not a pair_request");
        };
        assert_eq!((r.secret, r.pubkey_ed25519), (None, None));
    }

    #[test]
    fn pair_request_in_the_original_plugins_plaintext_dialect() {
        // The original sends `btoa(JSON.stringify(payload))`: base64 of the
        // text's Latin-1 code units (kars-mesh-plugin.md §6.5), which
        // `plaintext::decode_body` reads back; its `pubkey_x25519` is ignored.
        let text = r#"{"type":"pair_request","secret":"s3crét","pubkey_ed25519":"AA==","display_name":"external-abcdefgh","capabilities_requested":["offload","handoff"],"pubkey_x25519":"BB=="}"#;
        let latin1: Vec<u8> = text.chars().map(|c| c as u8).collect();
        let body = crate::wire::b64::encode_std(&latin1);
        let v = crate::wire::plaintext::decode_body(&body).unwrap();
        let Ok(PairingMsg::Request(r)) = PairingMsg::from_value(v) else {
            panic!("not a pair_request");
        };
        assert_eq!(r.secret.as_deref(), Some("s3crét"));
        // Our own dialect (ASCII-escaped JSON) reads the same.
        let ours = crate::wire::plaintext::encode_body(text);
        let v = crate::wire::plaintext::decode_body(&ours).unwrap();
        assert_eq!(PairingMsg::parse(&v), Ok(PairingMsg::Request(r.clone())));
        assert_eq!(r.display_name.as_deref(), Some("external-abcdefgh"));
    }

    #[test]
    fn pair_response() {
        let cluster = "kars-cluster";
        let (amid, did) = (
            "5Kd3NBUAdUnhyzenEwVLy9pBKxSwXvE9FMPyR4UKZvpe",
            "did:mesh:0123456789abcdef0123456789abcdef",
        );
        let caps = vec!["offload".to_string(), "handoff".to_string()];
        let (slots_max, token_budget, expires) = (2u32, 500_000u64, "2026-04-02T03:04:05.678Z");
        // src/pairing/ (then src/agent/pairing.rs), Agent::answer_pair_request (grant; `p.*`
        // are the ledger's pairing, `time::format_millis(p.expires_ms)`).
        let literal = json!({
            "type": "pair_response", "success": true, "cluster_name": cluster,
            "controller_amid": amid, "controller_did": did,
            "capabilities_granted": caps, "slots": slots_max,
            "token_budget": token_budget, "expires_at": expires,
        });
        let granted = PairResponseMsg::granted(
            cluster,
            amid,
            did,
            caps.clone(),
            slots_max,
            token_budget,
            expires,
        );
        assert!(granted.succeeded());
        same(granted, literal.clone());
        misspelt(&literal, "pair_reply");

        let e = "Pairing token has expired";
        // src/pairing/ (then src/agent/pairing.rs), Agent::answer_pair_request (refusal).
        let literal = json!({"type": "pair_response", "success": false, "error": e.to_string()});
        let refused = PairResponseMsg::refused(e);
        assert!(!refused.succeeded());
        same(refused, literal);
    }

    #[test]
    fn pair_response_is_read_as_leniently_as_the_client_did() {
        // src/pairing/ (then src/agent/pairing.rs), take_pair_response: `success != true` is a
        // refusal; capabilities keep their strings; numbers must be whole.
        let v = json!({"type": "pair_response", "success": "true",
            "capabilities_granted": ["offload", 3, "handoff"], "slots": -1, "token_budget": 1.5});
        let Ok(PairingMsg::Response(r)) = PairingMsg::parse(&v) else {
            panic!("not a pair_response");
        };
        assert!(!r.succeeded());
        assert_eq!(
            r.capabilities_granted,
            Some(vec!["offload".to_string(), "handoff".to_string()])
        );
        assert_eq!((r.slots, r.token_budget), (None, None));
        // The bare type is a refusal without words.
        let Ok(PairingMsg::Response(r)) = PairingMsg::parse(&json!({"type": "pair_response"}))
        else {
            panic!("not a pair_response");
        };
        assert!(!r.succeeded() && r.error.is_none());
        assert_eq!(
            PairingMsg::parse(&json!({"type": "offload_request"})),
            Err(ParseError::UnknownType {
                family: "pairing",
                kind: "offload_request".into()
            })
        );
    }
}
