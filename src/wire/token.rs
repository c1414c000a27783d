//! `azcp_1_` pairing tokens: `azcp_1_` + base64url(UTF-8 JSON). Parsing keeps
//! the original plugin's leniency (whitespace removed, padding optional,
//! stray characters skipped) and its rejections (no prefix, no JSON, no
//! `controller_amid` or `secret`).

use crate::crypto::kdf::sha256;
use crate::wire::{b64, hex};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const PREFIX: &str = "azcp_1_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("pairing token is empty")]
    Empty,
    #[error("pairing token must start with azcp_1_")]
    MissingPrefix,
    #[error("pairing token body is not base64url-encoded JSON")]
    NotJson,
    #[error("pairing token has no controller_amid")]
    MissingController,
    #[error("pairing token has no secret")]
    MissingSecret,
}

/// A parsed token. `Debug` never shows the secret.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairingToken {
    pub controller_amid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_url: Option<String>,
    pub secret: String,
    /// Routable controller address (kars-mesh tokens; absent in old ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_did: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

impl std::fmt::Debug for PairingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingToken")
            .field("controller_amid", &self.controller_amid)
            .field("controller_did", &self.controller_did)
            .field("relay_url", &self.relay_url)
            .field("registry_url", &self.registry_url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Drop for PairingToken {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl PairingToken {
    /// Lowercase hex SHA-256 of the secret: what the controller's ledger keeps.
    pub fn secret_hash(&self) -> String {
        hex::encode(&sha256(self.secret.as_bytes()))
    }

    /// Encode as a token (unpadded base64url of the JSON text).
    pub fn encode(&self) -> String {
        let json = Zeroizing::new(serde_json::to_string(self).unwrap_or_default());
        format!("{PREFIX}{}", b64::encode_url(json.as_bytes()))
    }
}

pub fn parse(token: &str) -> Result<PairingToken, TokenError> {
    let compact: Zeroizing<String> =
        Zeroizing::new(token.chars().filter(|c| !c.is_whitespace()).collect());
    if compact.is_empty() {
        return Err(TokenError::Empty);
    }
    let body = compact
        .strip_prefix(PREFIX)
        .ok_or(TokenError::MissingPrefix)?;
    let bytes = Zeroizing::new(b64::decode_lenient(body));
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| TokenError::NotJson)?;
    let obj = value.as_object().ok_or(TokenError::NotJson)?;
    let truthy = |k: &str| {
        obj.get(k)
            .and_then(|v| v.as_str())
            .is_some_and(|s| !s.is_empty())
    };
    if !truthy("controller_amid") {
        return Err(TokenError::MissingController);
    }
    if !truthy("secret") {
        return Err(TokenError::MissingSecret);
    }
    serde_json::from_value(value).map_err(|_| TokenError::NotJson)
}
