//! The original plugin's `~/.kars/pairings.json` (kars-mesh-plugin.md
//! §4.4), imported once: an object keyed by cluster name whose values name
//! the kars controller by its base58 AMID. The identity those pairings are
//! bound to is imported from `~/.kars/identity.json` (`store::legacy`); a
//! pairing made by another identity is refused by the controller at the
//! next offload, with its own words.

use super::client::{PairingClient, PairingRecord};
use crate::io::{Cx, LogLevel};
use crate::store::Vault;
use crate::wire::pairing_msg::{DEFAULT_SLOTS, DEFAULT_TOKEN_BUDGET};
use crate::wire::token::{Dialect, PairingToken};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyPairingsError {
    #[error("~/.kars/pairings.json is not JSON; it was not imported (move it aside or fix it, then pair again with mesh_pair)")]
    NotJson,
    #[error("~/.kars/pairings.json is not an object keyed by cluster name; it was not imported")]
    NotAnObject,
}

/// One value of the file, in the original's field names.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    controller_amid: String,
    #[serde(default)]
    relay_url: Option<String>,
    #[serde(default)]
    registry_url: Option<String>,
    #[serde(default)]
    cluster_name: Option<String>,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    slots: Option<u64>,
    #[serde(default)]
    token_budget: Option<u64>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    paired_at: Option<String>,
}

/// The records the file holds; entries naming no reachable controller (the
/// CLI's `ctrl_…` placeholder) are left out, with why.
pub fn parse(text: &str) -> Result<(Vec<PairingRecord>, Vec<String>), LegacyPairingsError> {
    let v: Value = serde_json::from_str(text).map_err(|_| LegacyPairingsError::NotJson)?;
    let obj = v.as_object().ok_or(LegacyPairingsError::NotAnObject)?;
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for (key, value) in obj {
        let shown = crate::wire::escape_for_log(key, 63);
        let Ok(e) = serde_json::from_value::<Entry>(value.clone()) else {
            skipped.push(format!("{shown}: not a pairing entry"));
            continue;
        };
        // The token's own rules turn the AMID into the routable DID.
        let probe = PairingToken {
            controller_amid: e.controller_amid.clone(),
            relay_url: None,
            registry_url: None,
            secret: String::new(),
            controller_did: None,
            cluster: None,
        };
        let did = match probe.controller() {
            Ok((did, _)) => did,
            Err(why) => {
                skipped.push(format!("{shown}: {why}"));
                continue;
            }
        };
        let paired_ms = e
            .paired_at
            .as_deref()
            .and_then(|t| crate::wire::time::parse_millis(t).ok())
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or(0);
        out.push(PairingRecord {
            cluster_name: e.cluster_name.unwrap_or_else(|| key.clone()),
            controller_did: did,
            controller_amid: e.controller_amid,
            relay_url: e.relay_url.unwrap_or_default(),
            registry_url: e.registry_url.unwrap_or_default(),
            capabilities: e.capabilities.unwrap_or_default(),
            slots: e.slots.unwrap_or(DEFAULT_SLOTS),
            token_budget: e.token_budget.unwrap_or(DEFAULT_TOKEN_BUDGET),
            expires_at: e.expires_at.unwrap_or_default(),
            paired_ms,
            dialect: Dialect::KarsPlaintext,
        });
    }
    Ok((out, skipped))
}

impl PairingClient {
    /// Import the original's pairings once (a later start, or a file that
    /// changed, imports nothing); a cluster already paired here keeps ours.
    pub fn import_legacy(&mut self, vault: &Vault, cx: &mut Cx<'_>, text: &str) {
        if self.book.legacy_imported {
            return;
        }
        self.book.legacy_imported = true;
        match parse(text) {
            Ok((records, skipped)) => {
                let mut n = 0;
                for r in records {
                    if !self
                        .book
                        .pairings
                        .iter()
                        .any(|p| p.cluster_name == r.cluster_name)
                    {
                        self.book.pairings.push(r);
                        n += 1;
                    }
                }
                for s in skipped {
                    cx.log(
                        LogLevel::Warn,
                        &format!("~/.kars/pairings.json: left out {s}"),
                    );
                }
                cx.log(
                    LogLevel::Info,
                    &format!("imported {n} pairing(s) of the original kars plugin (~/.kars/pairings.json)"),
                );
            }
            Err(e) => cx.log(LogLevel::Warn, &e.to_string()),
        }
        self.save_book(vault, cx);
    }
}
