//! The operator's side of pairing, as a controller plays it: the ledger of
//! pairing tokens, the operator tools over it (`pair_generate`, `pair_list`,
//! `pair_revoke`), and the answer to a `pair_request` (the token's secret
//! pairs once, bound to the sender's DID). Payload shapes and error texts
//! follow the original controller (kars-mesh-plugin.md §4.3).

use super::ledger::{ControllerAddress, Ledger, PairRequest, Pairing};
use crate::io::{Cx, LogLevel};
use crate::port::Port;
use crate::store::{keys, Vault};
use crate::tools::render;
use crate::wire::pairing_msg::{PairRequestMsg, PairResponseMsg, PairingMsg};
use crate::wire::payload::Family;
use crate::wire::time;
use serde_json::{json, Value};

/// The ledger and the address tokens name.
pub struct Operator {
    pub ledger: Ledger,
    address: ControllerAddress,
}

impl Operator {
    /// The stored ledger (or a new one). `None` when the stored one cannot
    /// be read: a controller never starts over with an empty ledger, which
    /// would forget every pairing and slot.
    pub fn load(vault: &Vault, cx: &mut Cx<'_>, address: ControllerAddress) -> Option<Self> {
        match vault.get::<Ledger>(cx.host, keys::LEDGER) {
            Ok(l) => Some(Operator {
                ledger: l.unwrap_or_default(),
                address,
            }),
            Err(e) => {
                cx.log(
                    LogLevel::Error,
                    &format!("{e}; starting with an empty ledger is refused"),
                );
                None
            }
        }
    }

    pub fn save(&self, vault: &Vault, cx: &mut Cx<'_>) {
        if let Err(e) = vault.put(cx.host, &mut cx.out, keys::LEDGER, &self.ledger) {
            cx.log(LogLevel::Error, &e.to_string());
        }
    }

    pub fn cluster(&self) -> &str {
        &self.address.cluster
    }

    /// The operator tools: `pair_generate`, `pair_list`, `pair_revoke`.
    pub fn tool(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        call_id: &str,
        tool: &str,
        args: &Value,
    ) {
        let now = cx.now();
        self.ledger.expire(now);
        let answer = match tool {
            "pair_generate" => self.generate(cx, args, now),
            "pair_list" => Ok((
                pair_list_text(&self.ledger.pairings),
                json!({"pairings": self.ledger.pairings}),
            )),
            _ => {
                let name = args["name"].as_str().unwrap_or_default();
                self.ledger.revoke(name).map(|p| {
                    (
                        format!("🛑 Pairing {:?} revoked.", p.name),
                        json!({"name": name, "phase": "Revoked"}),
                    )
                })
            }
        };
        match answer {
            Ok((text, details)) => {
                self.save(port.vault(), cx);
                render::ok(cx, call_id, &text, details);
            }
            Err(e) => render::fail(cx, call_id, &e.to_string()),
        }
    }

    fn generate(
        &mut self,
        cx: &mut Cx<'_>,
        args: &Value,
        now: u64,
    ) -> Result<(String, Value), super::ledger::LedgerError> {
        let req = pair_request_args(args);
        let (tok, p) = self.ledger.generate(&req, &self.address, now, cx.host)?;
        let text = format!(
            "✅ Pairing {:?} created (slots {}, capabilities {}, expires {}).\nToken (give it to the user, once; it is not stored):\n{tok}",
            p.name,
            p.slots_max,
            p.capabilities.join(","),
            time::format_millis(p.expires_ms)
        );
        Ok((text, json!({"token": tok, "pairing": p})))
    }

    /// Answer a `pair_request` from the ledger, end to end.
    pub fn answer_pair_request(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        from: &str,
        r: &PairRequestMsg,
    ) {
        let now = cx.now();
        let secret = r.secret.as_deref().unwrap_or_default();
        let pk = r.pubkey_ed25519.as_deref().unwrap_or_default();
        let answer = match self.ledger.pair(secret, from, pk, now) {
            Ok(p) => PairResponseMsg::granted(
                &self.address.cluster,
                &port.identity().amid(),
                port.identity().did(),
                p.capabilities.clone(),
                p.slots_max,
                p.token_budget,
                &time::format_millis(p.expires_ms),
            ),
            Err(e) => PairResponseMsg::refused(&e.to_string()),
        };
        let verdict = if answer.succeeded() {
            "paired"
        } else {
            "refused"
        };
        cx.log(
            LogLevel::Info,
            &format!("pair_request from {from}: {verdict}"),
        );
        self.save(port.vault(), cx);
        port.send(cx, from, PairingMsg::from(answer).to_value());
    }
}

/// `pair_generate`'s arguments: name, slots (at most 1000), expiry, token
/// budget, and capabilities as a list or comma-separated.
fn pair_request_args(args: &Value) -> PairRequest {
    let mut req = PairRequest {
        name: args["name"].as_str().unwrap_or_default().to_string(),
        ..Default::default()
    };
    if let Some(n) = args["slots"].as_u64() {
        req.slots = n.min(1000) as u32;
    }
    if let Some(e) = args["expires"].as_str() {
        req.expires = e.to_string();
    }
    if let Some(b) = args["token_budget"].as_u64() {
        req.token_budget = b;
    }
    if let Some(c) = args["capabilities"].as_array() {
        req.capabilities = c
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
    } else if let Some(c) = args["capabilities"].as_str() {
        req.capabilities = c
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect();
    }
    req
}

/// One line per pairing: name, phase, slots, the DID it is bound to.
fn pair_list_text(pairings: &[Pairing]) -> String {
    if pairings.is_empty() {
        return "No pairings.".to_string();
    }
    pairings
        .iter()
        .map(|p| {
            format!(
                "{}  {}  slots {}/{}  {}",
                p.name,
                p.phase,
                p.slots_used,
                p.slots_max,
                p.bound_did.as_deref().unwrap_or("-")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
