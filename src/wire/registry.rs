//! Registry request bodies and answers (agentmesh-wire.md §3). Registry JSON
//! uses unpadded base64url; key order follows the TS SDK so bodies match the
//! vectors byte for byte.

use crate::crypto::identity::Identity;
use crate::crypto::x3dh::PrekeyBundle;
use crate::wire::b64;
use crate::wire::WireError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Serialize)]
struct RegisterBody<'a> {
    public_key: String,
    proof: String,
    proof_timestamp: &'a str,
    capabilities: &'a [String],
    metadata: &'a BTreeMap<String, String>,
}

/// `POST /v1/agents` body. The proof signs the base64url public key text
/// exactly as sent, immediately followed by the timestamp.
pub fn registration_body(
    identity: &Identity,
    timestamp: &str,
    capabilities: &[String],
    metadata: &BTreeMap<String, String>,
) -> String {
    let public_key = b64::encode_url(identity.ed25519_public());
    let mut msg = Vec::with_capacity(public_key.len() + timestamp.len());
    msg.extend_from_slice(public_key.as_bytes());
    msg.extend_from_slice(timestamp.as_bytes());
    let proof = b64::encode_url(&identity.sign(&msg));
    let body = RegisterBody {
        public_key,
        proof,
        proof_timestamp: timestamp,
        capabilities,
        metadata,
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// `Authorization` value: `Ed25519-Timestamp <did> <ts> <b64url sig(ts)>`.
pub fn authorization_header(identity: &Identity, timestamp: &str) -> String {
    let sig = b64::encode_url(&identity.sign(timestamp.as_bytes()));
    format!("Ed25519-Timestamp {} {} {}", identity.did(), timestamp, sig)
}

#[derive(Serialize, Deserialize)]
struct SignedPrekeyJson {
    key_id: u32,
    public_key: String,
    signature: String,
}

#[derive(Serialize, Deserialize)]
struct OneTimePrekeyJson {
    key_id: u32,
    public_key: String,
}

#[derive(Serialize)]
struct PrekeyUpload {
    identity_key: String,
    identity_key_ed: String,
    signed_pre_key: SignedPrekeyJson,
    one_time_pre_keys: Vec<OneTimePrekeyJson>,
}

/// Public halves of what we upload.
pub struct PublishedPrekeys<'a> {
    pub signed_prekey_id: u32,
    pub signed_prekey: &'a [u8; 32],
    pub signed_prekey_signature: &'a [u8; 64],
    pub one_time: Vec<(u32, &'a [u8; 32])>,
}

/// `PUT /v1/agents/{did}/prekeys` body.
pub fn prekey_upload_body(identity: &Identity, keys: &PublishedPrekeys<'_>) -> String {
    let body = PrekeyUpload {
        identity_key: b64::encode_url(identity.x25519_public()),
        identity_key_ed: b64::encode_url(identity.ed25519_public()),
        signed_pre_key: SignedPrekeyJson {
            key_id: keys.signed_prekey_id,
            public_key: b64::encode_url(keys.signed_prekey),
            signature: b64::encode_url(keys.signed_prekey_signature),
        },
        one_time_pre_keys: keys
            .one_time
            .iter()
            .map(|(id, k)| OneTimePrekeyJson {
                key_id: *id,
                public_key: b64::encode_url(*k),
            })
            .collect(),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

#[derive(Deserialize)]
struct BundleAnswer {
    identity_key: String,
    #[serde(default)]
    identity_key_ed: Option<String>,
    signed_pre_key: SignedPrekeyJson,
    #[serde(default)]
    one_time_pre_key: Option<OneTimePrekeyJson>,
}

/// Parse a `GET /v1/agents/{did}/prekeys` answer. Sizes are checked here;
/// the cryptographic bindings by `PrekeyBundle::verify_for`.
pub fn parse_bundle(json: &str) -> Result<PrekeyBundle, WireError> {
    let a: BundleAnswer =
        serde_json::from_str(json).map_err(|e| WireError::json("prekey bundle", &e))?;
    let ed = a
        .identity_key_ed
        .ok_or(WireError::MissingField("identity_key_ed"))?;
    Ok(PrekeyBundle {
        identity_key: field("identity_key", &a.identity_key)?,
        identity_key_ed: field("identity_key_ed", &ed)?,
        signed_prekey_id: a.signed_pre_key.key_id,
        signed_prekey: field("signed_pre_key.public_key", &a.signed_pre_key.public_key)?,
        signed_prekey_signature: field("signed_pre_key.signature", &a.signed_pre_key.signature)?,
        one_time_prekey: match a.one_time_pre_key {
            Some(o) => Some((
                o.key_id,
                field("one_time_pre_key.public_key", &o.public_key)?,
            )),
            None => None,
        },
    })
}

pub(crate) fn field<const N: usize>(name: &'static str, s: &str) -> Result<[u8; N], WireError> {
    b64::decode_array::<N>(s).map_err(|source| WireError::Field {
        field: name,
        source,
    })
}
