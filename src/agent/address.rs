//! What a user-given agent address is: a DID (the only thing the relay
//! routes), a base58 AMID (the original's display id, which names the same
//! key as a DID and is routed as that DID), or a registry name.

use crate::crypto::identity::is_mesh_did;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Address {
    Did(String),
    /// A base58 AMID and the DID it corresponds to: both are prefixes of the
    /// same SHA-256 of the Ed25519 key (20 and 16 bytes).
    Amid {
        amid: String,
        did: String,
    },
    Name(String),
    Invalid(InvalidAddress),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum InvalidAddress {
    #[error("it starts with did: but is not a did:mesh: DID (did:mesh: + 32 lowercase hex)")]
    BadDid,
    #[error("it is empty")]
    Empty,
    #[error("it is longer than 128 characters")]
    TooLong,
    #[error("names contain no spaces or control characters")]
    BadChars,
    #[error("it is a pairing token, not an agent (a token goes to mesh_pair; check that `to` and `message` are not swapped)")]
    PairingToken,
}

/// The DID an AMID names, if `s` decodes to exactly the 20 AMID bytes.
pub(super) use crate::wire::token::did_from_amid;

pub(super) fn classify(s: &str) -> Address {
    let s = s.trim();
    // A DID as users type it: DIDs are compared lower-cased, and one in
    // capitals was looked up as a registry name.
    let lower = s.to_ascii_lowercase();
    if is_mesh_did(&lower) {
        return Address::Did(lower);
    }
    if lower.starts_with("did:") {
        return Address::Invalid(InvalidAddress::BadDid);
    }
    // Never looked up as a name: a lookup would put the token's secret in
    // the registry's request log.
    if s.starts_with("azcp_") {
        return Address::Invalid(InvalidAddress::PairingToken);
    }
    if s.is_empty() {
        return Address::Invalid(InvalidAddress::Empty);
    }
    if s.chars().count() > 128 {
        return Address::Invalid(InvalidAddress::TooLong);
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Address::Invalid(InvalidAddress::BadChars);
    }
    match did_from_amid(s) {
        Some(did) => Address::Amid {
            amid: s.to_string(),
            did,
        },
        None => Address::Name(s.to_string()),
    }
}

/// `did:mesh:0123456789abcdef...`: the form texts show a resolved DID in.
pub(super) fn short_did(did: &str) -> String {
    format!("{}...", did.chars().take(16).collect::<String>())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::identity::Identity;

    #[test]
    fn amid_names_the_same_agent_as_the_did() {
        let id = Identity::from_seed(&[9u8; 32]);
        assert_eq!(
            classify(&id.amid()),
            Address::Amid {
                amid: id.amid(),
                did: id.did().to_string()
            }
        );
        assert_eq!(classify(id.did()), Address::Did(id.did().to_string()));
        assert_eq!(classify("analyst"), Address::Name("analyst".into()));
        // A DID in capitals is that DID; a pairing token is no address.
        assert_eq!(
            classify(&id.did().to_uppercase()),
            Address::Did(id.did().to_string())
        );
        assert_eq!(
            classify(" azcp_1_eyJzZWNyZXQiOiJ4In0 "),
            Address::Invalid(InvalidAddress::PairingToken)
        );
        assert_eq!(
            classify("did:mesh:XYZ"),
            Address::Invalid(InvalidAddress::BadDid)
        );
        assert_eq!(
            classify("two words"),
            Address::Invalid(InvalidAddress::BadChars)
        );
        assert_eq!(short_did(id.did()).len(), 19);
    }
}
