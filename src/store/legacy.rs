//! Import of the original plugin's identity file, `~/.kars/identity.json`
//! (schema 2, kars-mesh-plugin.md §5.2), so that a user who paired with the
//! original keeps their DID. Read only: that format's key is derived from
//! the hostname and home directory (public facts), so nothing is ever
//! written in it; the imported seed is sealed under our own state key.

use crate::crypto::identity::legacy_identity_kek;
use crate::wire::b64;
use aes_gcm::aead::array::Array;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use serde::Deserialize;
use zeroize::Zeroizing;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyError {
    #[error("the file is not a schema 2 identity envelope")]
    Envelope,
    #[error("the file does not decrypt with this machine's hostname and home directory (were they changed since the original plugin wrote it?)")]
    Decrypt,
    #[error("the decrypted identity has no usable ed25519 signing key")]
    Key,
}

#[derive(Deserialize)]
struct Envelope {
    schema: u32,
    ciphertext: String,
    iv: String,
    #[serde(rename = "authTag")]
    auth_tag: String,
}

#[derive(Deserialize)]
struct Plain {
    signing_private_key: String,
}

/// The Ed25519 seed inside a schema 2 envelope.
pub fn import_identity(
    envelope_json: &str,
    hostname: &str,
    homedir: &str,
) -> Result<Zeroizing<[u8; 32]>, LegacyError> {
    let env: Envelope = serde_json::from_str(envelope_json).map_err(|_| LegacyError::Envelope)?;
    if env.schema != 2 {
        return Err(LegacyError::Envelope);
    }
    let iv = b64::decode(&env.iv).map_err(|_| LegacyError::Envelope)?;
    let tag = b64::decode(&env.auth_tag).map_err(|_| LegacyError::Envelope)?;
    let ct = b64::decode(&env.ciphertext).map_err(|_| LegacyError::Envelope)?;
    let nonce: [u8; 12] = iv
        .as_slice()
        .try_into()
        .map_err(|_| LegacyError::Envelope)?;
    let tag = Array::try_from(tag.as_slice()).map_err(|_| LegacyError::Envelope)?;
    let kek = legacy_identity_kek(hostname, homedir);
    let cipher = Aes256Gcm::new_from_slice(kek.as_ref()).map_err(|_| LegacyError::Decrypt)?;
    let mut plain = Zeroizing::new(ct);
    cipher
        .decrypt_inout_detached(&Array::from(nonce), b"", plain.as_mut_slice().into(), &tag)
        .map_err(|_| LegacyError::Decrypt)?;
    let p: Plain = serde_json::from_slice(&plain).map_err(|_| LegacyError::Key)?;
    let p = Zeroizing::new(p.signing_private_key);
    let b = p.strip_prefix("ed25519:").ok_or(LegacyError::Key)?;
    let seed = Zeroizing::new(b64::decode(b).map_err(|_| LegacyError::Key)?);
    let arr: [u8; 32] = seed.as_slice().try_into().map_err(|_| LegacyError::Key)?;
    Ok(Zeroizing::new(arr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::Identity;

    fn envelope(seed: &[u8; 32], host: &str, home: &str) -> String {
        let id = Identity::from_seed(seed);
        let plain = serde_json::json!({
            "signing_public_key": format!("ed25519:{}", b64::encode_std(id.ed25519_public())),
            "signing_private_key": format!("ed25519:{}", b64::encode_std(seed)),
            "exchange_public_key": "x25519:AAAA", "exchange_private_key": "x25519:AAAA",
        })
        .to_string();
        let kek = legacy_identity_kek(host, home);
        let cipher = Aes256Gcm::new_from_slice(kek.as_ref()).unwrap();
        let iv = [7u8; 12];
        let mut ct = plain.into_bytes();
        let tag = cipher
            .encrypt_inout_detached(&Array::from(iv), b"", ct.as_mut_slice().into())
            .unwrap();
        serde_json::json!({"schema": 2, "ciphertext": b64::encode_std(&ct), "iv": b64::encode_std(&iv),
            "authTag": b64::encode_std(&tag), "createdAt": "2026-01-01T00:00:00.000Z"})
        .to_string()
    }

    #[test]
    fn imports_the_seed_and_refuses_other_machines() {
        let seed = [42u8; 32];
        let env = envelope(&seed, "laptop", "/home/alice");
        assert_eq!(
            *import_identity(&env, "laptop", "/home/alice").unwrap(),
            seed
        );
        assert_eq!(
            import_identity(&env, "other", "/home/alice"),
            Err(LegacyError::Decrypt)
        );
        assert_eq!(
            import_identity("{\"schema\":1}", "laptop", "/home/alice"),
            Err(LegacyError::Envelope)
        );
    }
}
