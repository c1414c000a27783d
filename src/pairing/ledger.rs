//! The operator's pairing ledger, as the kars controller keeps it in
//! `KarsPairing` resources: one entry per pairing token, holding only the
//! SHA-256 of the token's secret, with phases PendingPairing → Active →
//! Expired/Revoked, offload slots and an expiry. Error texts are the
//! original controller's (kars-mesh-plugin.md §4.3), so clients that match
//! on them keep working.

use crate::crypto::identity::did_from_ed25519;
use crate::entropy::Entropy;
use crate::wire::token::PairingToken;
use crate::wire::{b64, hex};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    PendingPairing,
    Active,
    Expired,
    Revoked,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::PendingPairing => "PendingPairing",
            Phase::Active => "Active",
            Phase::Expired => "Expired",
            Phase::Revoked => "Revoked",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pairing {
    /// Sanitised name: lower-case `[a-z0-9-]`, at most 63 characters.
    pub name: String,
    pub display_name: String,
    /// Lowercase hex SHA-256 of the token secret; the secret is not kept.
    pub token_hash: String,
    pub phase: Phase,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub slots_max: u32,
    pub slots_used: u32,
    pub token_budget: u64,
    pub capabilities: Vec<String>,
    pub bound_did: Option<String>,
    pub bound_pubkey_ed25519: Option<String>,
    pub paired_ms: Option<u64>,
}

/// What `generate` is asked for (the `kars pair` CLI's flags).
#[derive(Debug, Clone)]
pub struct PairRequest {
    pub name: String,
    pub slots: u32,
    pub capabilities: Vec<String>,
    /// `^(\d+)(d|h|m)$`, as the original CLI.
    pub expires: String,
    pub token_budget: u64,
}

impl Default for PairRequest {
    fn default() -> Self {
        PairRequest {
            name: String::new(),
            slots: 1,
            capabilities: vec!["offload".into(), "handoff".into()],
            expires: "90d".into(),
            token_budget: 500_000,
        }
    }
}

/// Where the token tells clients to go.
#[derive(Debug, Clone)]
pub struct ControllerAddress {
    pub did: String,
    pub amid: String,
    pub relay_url: String,
    pub registry_url: String,
    pub cluster: String,
}

/// The error for a name (or expiry) an operator gave, which the error
/// repeats: clipped to a name's length, and never a pairing token (pasted
/// in the wrong place, its secret would be printed back).
fn named(given: &str, err: fn(String) -> LedgerError) -> LedgerError {
    if given.contains("azcp_") {
        LedgerError::TokenForName
    } else {
        err(crate::tools::args::clip(given, 63))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "pairing name {0:?} is not usable: use letters, digits and '-' (at most 63 characters)"
    )]
    BadName(String),
    #[error("a pairing named {0:?} already exists; revoke it or pick another name")]
    NameTaken(String),
    #[error("--expires {0:?} must look like 90d, 12h or 30m")]
    BadExpiry(String),
    #[error("--slots must be at least 1")]
    BadSlots,
    #[error("no pairing named {0:?}")]
    NoSuchPairing(String),
    #[error("that is a pairing token, not a pairing's name: revoke a pairing by its name (`kars-mesh pair list` shows them)")]
    TokenForName,
    // The original controller's texts, verbatim.
    #[error("Invalid pairing token")]
    InvalidToken,
    #[error("Pairing is {0} — token already consumed or expired")]
    NotPending(Phase),
    #[error("Pairing token has expired")]
    TokenExpired,
    #[error("Internal error — could not bind identity")]
    BindIdentity,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub pairings: Vec<Pairing>,
}

/// Lower-case `[a-z0-9-]`, at most 63 characters, as the CLI sanitises.
pub fn sanitize_name(name: &str) -> Option<String> {
    let s: String = name
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(63)
        .collect();
    (!s.is_empty()).then_some(s)
}

/// `90d` / `12h` / `30m` to milliseconds.
pub fn parse_expiry(s: &str) -> Option<u64> {
    let unit = s.chars().last()?;
    let n: u64 = s
        .get(..s.len() - 1)?
        .parse()
        .ok()
        .filter(|_| s[..s.len() - 1].bytes().all(|b| b.is_ascii_digit()))?;
    let ms = match unit {
        'd' => 86_400_000,
        'h' => 3_600_000,
        'm' => 60_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

impl Ledger {
    /// Create a pairing and its token. The token carries a fresh 32-byte
    /// secret (base64url); only its hash is kept here.
    pub fn generate(
        &mut self,
        req: &PairRequest,
        at: &ControllerAddress,
        now_ms: u64,
        rng: &mut dyn Entropy,
    ) -> Result<(String, &Pairing), LedgerError> {
        let name =
            sanitize_name(&req.name).ok_or_else(|| named(&req.name, LedgerError::BadName))?;
        if self
            .pairings
            .iter()
            .any(|p| p.name == name && p.phase != Phase::Revoked)
        {
            return Err(LedgerError::NameTaken(name));
        }
        let ttl = parse_expiry(&req.expires)
            .ok_or_else(|| named(&req.expires, LedgerError::BadExpiry))?;
        if req.slots == 0 {
            return Err(LedgerError::BadSlots);
        }
        let secret = zeroize::Zeroizing::new(b64::encode_url(&rng.array32()));
        let token = PairingToken {
            controller_amid: at.amid.clone(),
            relay_url: Some(at.relay_url.clone()),
            registry_url: Some(at.registry_url.clone()),
            secret: secret.to_string(),
            controller_did: Some(at.did.clone()),
            cluster: Some(at.cluster.clone()),
        };
        self.pairings.retain(|p| p.name != name);
        self.pairings.push(Pairing {
            name: name.clone(),
            display_name: req.name.trim().to_string(),
            token_hash: token.secret_hash(),
            phase: Phase::PendingPairing,
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(ttl),
            slots_max: req.slots,
            slots_used: 0,
            token_budget: req.token_budget,
            capabilities: req.capabilities.clone(),
            bound_did: None,
            bound_pubkey_ed25519: None,
            paired_ms: None,
        });
        let encoded = token.encode();
        let entry = self.pairings.last().ok_or(LedgerError::InvalidToken)?;
        Ok((encoded, entry))
    }

    /// A `pair_request`: the secret must match a pending, unexpired pairing,
    /// and (unlike the original) the Ed25519 key must hash to the sender's
    /// DID, so a token cannot bind someone else's identity.
    pub fn pair(
        &mut self,
        secret: &str,
        from_did: &str,
        pubkey_ed25519_b64: &str,
        now_ms: u64,
    ) -> Result<&Pairing, LedgerError> {
        let hash = hex::encode(&crate::crypto::kdf::sha256(secret.as_bytes()));
        let p = self
            .pairings
            .iter_mut()
            .find(|p| bool::from(p.token_hash.as_bytes().ct_eq(hash.as_bytes())))
            .ok_or(LedgerError::InvalidToken)?;
        if p.phase == Phase::PendingPairing && now_ms >= p.expires_ms {
            p.phase = Phase::Expired;
            return Err(LedgerError::TokenExpired);
        }
        if p.phase != Phase::PendingPairing {
            return Err(LedgerError::NotPending(p.phase));
        }
        let key: [u8; 32] =
            b64::decode_array(pubkey_ed25519_b64).map_err(|_| LedgerError::BindIdentity)?;
        if did_from_ed25519(&key) != from_did {
            return Err(LedgerError::BindIdentity);
        }
        p.phase = Phase::Active;
        p.bound_did = Some(from_did.to_string());
        p.bound_pubkey_ed25519 = Some(b64::encode_std(&key));
        p.paired_ms = Some(now_ms);
        Ok(p)
    }

    pub fn revoke(&mut self, name: &str) -> Result<&Pairing, LedgerError> {
        // A name is at most 63 characters; what an operator passes in its
        // place is echoed clipped, and a token (pasted by mistake) not at all.
        // The name as it was given to `generate` finds the pairing too
        // ("Alice's Laptop" made alice-s-laptop), as long as it names one.
        let wanted = sanitize_name(name);
        let p = self
            .pairings
            .iter_mut()
            .find(|p| p.name == name || wanted.as_deref() == Some(p.name.as_str()))
            .ok_or_else(|| named(name, LedgerError::NoSuchPairing))?;
        p.phase = Phase::Revoked;
        Ok(p)
    }

    /// Move pairings past their expiry to Expired; returns how many changed.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        for p in self
            .pairings
            .iter_mut()
            .filter(|p| matches!(p.phase, Phase::PendingPairing | Phase::Active))
        {
            if now_ms >= p.expires_ms {
                p.phase = Phase::Expired;
                n += 1;
            }
        }
        n
    }

    /// The active pairing bound to `did`, if any (offload checks build on it).
    pub fn active_for(&self, did: &str, now_ms: u64) -> Option<&Pairing> {
        self.pairings.iter().find(|p| {
            p.phase == Phase::Active && p.bound_did.as_deref() == Some(did) && now_ms < p.expires_ms
        })
    }

    /// Take an offload slot for `did`; `None` when unpaired, expired, not
    /// granted the capability, or all slots are in use.
    pub fn take_slot(&mut self, did: &str, capability: &str, now_ms: u64) -> Option<&Pairing> {
        let p = self.pairings.iter_mut().find(|p| {
            p.phase == Phase::Active && p.bound_did.as_deref() == Some(did) && now_ms < p.expires_ms
        })?;
        if !p.capabilities.iter().any(|c| c == capability) || p.slots_used >= p.slots_max {
            return None;
        }
        p.slots_used += 1;
        Some(p)
    }

    /// Give back a slot taken by `did` under the pairing `name` (or, for
    /// records older than that field, under its active pairing).
    pub fn free_slot(&mut self, did: &str, name: &str) {
        let by_name = self
            .pairings
            .iter()
            .position(|p| p.name == name && p.bound_did.as_deref() == Some(did));
        let pos = by_name.or_else(|| {
            self.pairings
                .iter()
                .position(|p| p.bound_did.as_deref() == Some(did) && p.phase == Phase::Active)
        });
        if let Some(p) = pos.and_then(|i| self.pairings.get_mut(i)) {
            p.slots_used = p.slots_used.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::Identity;
    use crate::entropy::SeededEntropy;
    use crate::wire::token;

    fn addr() -> ControllerAddress {
        ControllerAddress {
            did: "did:mesh:00112233445566778899aabbccddeeff".into(),
            amid: "ctrlAmid".into(),
            relay_url: "http://127.0.0.1:8083".into(),
            registry_url: "http://127.0.0.1:8082".into(),
            cluster: "local".into(),
        }
    }

    #[test]
    fn generate_then_pair_once_with_the_original_error_texts() {
        let mut rng = SeededEntropy::new(1);
        let mut l = Ledger::default();
        let req = PairRequest {
            name: "Alice's Laptop".into(),
            ..Default::default()
        };
        let (tok, p) = l.generate(&req, &addr(), 0, &mut rng).unwrap();
        assert_eq!(p.name, "alice-s-laptop");
        assert_eq!(p.phase, Phase::PendingPairing);
        let parsed = token::parse(&tok).unwrap();
        assert_eq!(parsed.controller_did.as_deref(), Some(addr().did.as_str()));
        assert_eq!(parsed.secret_hash(), p.token_hash);
        assert!(
            !serde_json::to_string(&l).unwrap().contains(&parsed.secret),
            "the secret is never stored"
        );
        let alice = Identity::generate(&mut rng);
        let pk = b64::encode_std(alice.ed25519_public());

        // Someone else's key cannot be bound to the sender's DID.
        let mallory = Identity::generate(&mut rng);
        let e = l.pair(&parsed.secret, mallory.did(), &pk, 1).unwrap_err();
        assert_eq!(e.to_string(), "Internal error — could not bind identity");

        let p = l.pair(&parsed.secret, alice.did(), &pk, 1).unwrap();
        assert_eq!(
            (p.phase, p.bound_did.as_deref()),
            (Phase::Active, Some(alice.did()))
        );
        let e = l.pair(&parsed.secret, alice.did(), &pk, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Pairing is Active — token already consumed or expired"
        );
        assert_eq!(
            l.pair("wrong", alice.did(), &pk, 2)
                .unwrap_err()
                .to_string(),
            "Invalid pairing token"
        );

        // Expired and revoked tokens.
        let (tok2, _) = l
            .generate(
                &PairRequest {
                    name: "short".into(),
                    expires: "1m".into(),
                    ..Default::default()
                },
                &addr(),
                0,
                &mut rng,
            )
            .unwrap();
        let s2 = token::parse(&tok2).unwrap().secret.clone();
        assert_eq!(
            l.pair(&s2, alice.did(), &pk, 60_000)
                .unwrap_err()
                .to_string(),
            "Pairing token has expired"
        );
        let (tok3, _) = l
            .generate(
                &PairRequest {
                    name: "gone".into(),
                    ..Default::default()
                },
                &addr(),
                0,
                &mut rng,
            )
            .unwrap();
        l.revoke("gone").unwrap();
        let s3 = token::parse(&tok3).unwrap().secret.clone();
        assert_eq!(
            l.pair(&s3, alice.did(), &pk, 1).unwrap_err().to_string(),
            "Pairing is Revoked — token already consumed or expired"
        );

        // The ledger survives a restart (it is stored as JSON, sealed).
        let back: Ledger = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn slots_capabilities_and_expiry() {
        let mut rng = SeededEntropy::new(2);
        let mut l = Ledger::default();
        let req = PairRequest {
            name: "lab".into(),
            slots: 2,
            capabilities: vec!["offload".into()],
            expires: "2h".into(),
            ..Default::default()
        };
        let (tok, _) = l.generate(&req, &addr(), 0, &mut rng).unwrap();
        let secret = token::parse(&tok).unwrap().secret.clone();
        let me = Identity::generate(&mut rng);
        l.pair(&secret, me.did(), &b64::encode_std(me.ed25519_public()), 1)
            .unwrap();
        assert!(
            l.take_slot(me.did(), "handoff", 2).is_none(),
            "capability not granted"
        );
        assert!(l.take_slot(me.did(), "offload", 2).is_some());
        assert!(l.take_slot(me.did(), "offload", 2).is_some());
        assert!(
            l.take_slot(me.did(), "offload", 2).is_none(),
            "slots enforced"
        );
        l.free_slot(me.did(), "lab");
        assert!(l.take_slot(me.did(), "offload", 3).is_some());
        assert!(
            l.take_slot("did:mesh:ffffffffffffffffffffffffffffffff", "offload", 3)
                .is_none(),
            "strangers get nothing"
        );
        assert_eq!(l.expire(2 * 3_600_000), 1);
        assert!(l.active_for(me.did(), 2 * 3_600_000).is_none());
        assert_eq!(parse_expiry("90d"), Some(90 * 86_400_000));
        for bad in ["", "d", "10", "10w", "-1d", "1.5h"] {
            assert_eq!(parse_expiry(bad), None, "{bad}");
        }
        assert!(matches!(
            l.generate(
                &PairRequest {
                    name: "***".into(),
                    ..Default::default()
                },
                &addr(),
                0,
                &mut rng
            ),
            Err(LedgerError::BadName(_))
        ));
        assert!(matches!(
            l.generate(
                &PairRequest {
                    name: "x".into(),
                    slots: 0,
                    ..Default::default()
                },
                &addr(),
                0,
                &mut rng
            ),
            Err(LedgerError::BadSlots)
        ));
    }

    /// `pair revoke 'Bad Name!'` finds the pairing `pair generate --name
    /// 'Bad Name!'` made (bad-name), and only that one.
    #[test]
    fn revoke_takes_the_name_as_generate_was_given_it() {
        let mut rng = SeededEntropy::new(5);
        let mut l = Ledger::default();
        for name in ["Bad Name!", "other"] {
            let req = PairRequest {
                name: name.into(),
                ..Default::default()
            };
            assert!(l.generate(&req, &addr(), 0, &mut rng).is_ok());
        }
        assert_eq!(
            l.revoke("bad names").err().map(|e| e.to_string()),
            Some("no pairing named \"bad names\"".into())
        );
        assert_eq!(
            l.revoke("Bad Name!").map(|p| p.name.clone()).ok(),
            Some("bad-name".into())
        );
        assert_eq!(l.pairings[0].phase, Phase::Revoked);
        assert_eq!(l.pairings[1].phase, Phase::PendingPairing);
        assert_eq!(
            l.revoke("bad-name").map(|p| p.name.clone()).ok(),
            Some("bad-name".into())
        );
    }

    /// What an operator passes in a name's (or expiry's) place is echoed
    /// clipped, and a pairing token pasted there not at all.
    #[test]
    fn a_token_given_as_a_name_is_not_echoed() {
        let mut l = Ledger::default();
        let mut rng = SeededEntropy::new(4);
        let token = format!("azcp_1_{}", "Z".repeat(300));
        let e = l
            .revoke(&token)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("that is a pairing token") && !e.contains("ZZZ"),
            "{e}"
        );
        let e = l
            .revoke(&"n".repeat(500))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("no pairing named") && e.len() < 100, "{e}");
        assert_eq!(
            l.revoke("nobody").err().map(|e| e.to_string()),
            Some("no pairing named \"nobody\"".into())
        );
        let e = l
            .generate(
                &PairRequest {
                    name: token.clone(),
                    ..Default::default()
                },
                &addr(),
                0,
                &mut rng,
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!e.contains("ZZZ"), "{e}");
    }
}
