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

/// How a controller is spoken to, decided by the token that named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// A kars-mesh controller (`kars-mesh pair generate`, the token has
    /// `controller_did`): end-to-end encrypted, like any agent.
    #[default]
    EndToEnd,
    /// The kars controller (`kars pair generate`, the token names it by its
    /// AMID only): it uploads no prekeys and speaks plaintext `payload`
    /// frames (kars-mesh-plugin.md §6.5).
    KarsPlaintext,
}

/// Why a token names no controller we can reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    #[error("the token's controller_amid is the kars CLI's placeholder (ctrl_…): the CLI found no Kubernetes Secret `controller-mesh-identity` in `kars-system` when it made the token. Start the kars controller (it creates that Secret), then make a new token with `kars pair generate`.")]
    Placeholder,
    #[error("the token's controller_amid is neither a base58 AMID nor a did:mesh: DID. Ask the operator for a new token.")]
    Unrecognised,
    #[error(
        "the token's controller_did is not a did:mesh: DID. Ask the operator for a new token."
    )]
    BadDid,
}

/// The routable DID of a base58 AMID: the AMID is the first 20 bytes of
/// SHA-256(Ed25519 key), the DID the hex of the first 16 of the same hash
/// (kars-mesh-plugin.md §4.1). `None` unless `amid` decodes to exactly 20
/// bytes. Base58 decoding takes time quadratic in its input, so a text
/// longer than 20 bytes' base58 can be is refused before it is decoded (a
/// pasted token with a long `controller_amid` once held the engine for
/// minutes).
pub fn did_from_amid(amid: &str) -> Option<String> {
    if !(20..=40).contains(&amid.len()) {
        return None;
    }
    let bytes = crate::codec::base58::decode(amid)?;
    (bytes.len() == 20).then(|| format!("did:mesh:{}", hex::encode(&bytes[..16])))
}

impl PairingToken {
    /// The controller's DID and how to speak to it. A kars-mesh token
    /// carries `controller_did`; a kars CLI token only `controller_amid`,
    /// a base58 AMID (or, from some tools, the DID itself).
    pub fn controller(&self) -> Result<(String, Dialect), ControllerError> {
        use crate::crypto::identity::is_mesh_did;
        if let Some(did) = &self.controller_did {
            return if is_mesh_did(did) {
                Ok((did.clone(), Dialect::EndToEnd))
            } else {
                Err(ControllerError::BadDid)
            };
        }
        let amid = self.controller_amid.trim();
        if is_mesh_did(amid) {
            return Ok((amid.to_string(), Dialect::KarsPlaintext));
        }
        if amid.starts_with("ctrl_") {
            return Err(ControllerError::Placeholder);
        }
        did_from_amid(amid)
            .map(|d| (d, Dialect::KarsPlaintext))
            .ok_or(ControllerError::Unrecognised)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::Identity;

    /// A token as `kars pair generate` prints it (§4.1): only
    /// `controller_amid`, `relay_url`, `registry_url`, `secret`.
    fn kars_cli_token(controller_amid: &str) -> String {
        let json = serde_json::json!({
            "controller_amid": controller_amid,
            "relay_url": "ws://host.docker.internal:18765",
            "registry_url": "http://host.docker.internal:18080",
            "secret": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I",
        });
        format!("{PREFIX}{}", b64::encode_url(json.to_string().as_bytes()))
    }

    #[test]
    fn a_long_controller_amid_is_refused_at_once_not_decoded() {
        // 400,000 base58 digits: decoding them (quadratic) took minutes.
        let tok = parse(&kars_cli_token(&"z".repeat(400_000))).expect("parses");
        let t0 = std::time::Instant::now();
        assert_eq!(tok.controller(), Err(ControllerError::Unrecognised));
        let ms = t0.elapsed().as_millis();
        assert!(ms < 100, "took {ms} ms");
        // Just past what 20 bytes can be in base58, and just inside.
        assert_eq!(did_from_amid(&"2".repeat(41)), None);
        let ctl = Identity::from_seed(&[9; 32]);
        assert!((20..=40).contains(&ctl.amid().len()));
        assert_eq!(did_from_amid(&ctl.amid()).as_deref(), Some(ctl.did()));
    }

    #[test]
    fn a_kars_cli_token_names_the_controller_by_the_did_its_amid_stands_for() {
        for seed in [1u8, 2, 200] {
            let ctl = Identity::from_seed(&[seed; 32]);
            let tok = parse(&kars_cli_token(&ctl.amid())).expect("a kars CLI token parses");
            assert_eq!(
                tok.controller(),
                Ok((ctl.did().to_string(), Dialect::KarsPlaintext))
            );
            // Some tools put the DID itself in `controller_amid`.
            let tok = parse(&kars_cli_token(ctl.did())).expect("parses");
            assert_eq!(
                tok.controller(),
                Ok((ctl.did().to_string(), Dialect::KarsPlaintext))
            );
        }
    }

    #[test]
    fn the_placeholder_and_garbage_are_named_and_a_kars_mesh_token_stays_end_to_end() {
        let tok = parse(&kars_cli_token("ctrl_0123456789abcdef0123")).expect("parses");
        assert_eq!(tok.controller(), Err(ControllerError::Placeholder));
        assert!(ControllerError::Placeholder
            .to_string()
            .contains("controller-mesh-identity"));
        // Not base58 (0, O, I, l are outside the alphabet), or the wrong length.
        for bad in ["0OIl0OIl0OIl0OIl0OIl", "abc", "did:mesh:xyz"] {
            let tok = parse(&kars_cli_token(bad)).expect("parses");
            assert_eq!(
                tok.controller(),
                Err(ControllerError::Unrecognised),
                "{bad}"
            );
        }
        let ctl = Identity::from_seed(&[9; 32]);
        let mut ours = parse(&kars_cli_token(&ctl.amid())).expect("parses");
        ours.controller_did = Some(ctl.did().to_string());
        assert_eq!(
            ours.controller(),
            Ok((ctl.did().to_string(), Dialect::EndToEnd))
        );
        ours.controller_did = Some("did:mesh:nope".into());
        assert_eq!(ours.controller(), Err(ControllerError::BadDid));
    }
}
