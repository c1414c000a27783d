//! Pairing over the mesh: the controller side answers `pair_request` from
//! its ledger, the client side sends one with a token's secret and waits for
//! the `pair_response`. Both travel end-to-end encrypted (the token names the
//! controller by its routable DID). Payload shapes and error texts follow the
//! original controller and plugin (kars-mesh-plugin.md §4.3).

use super::{render, Agent, Cx};
use crate::crypto::identity::is_mesh_did;
use crate::io::LogLevel;
use crate::roles::ledger::{ControllerAddress, Ledger, PairRequest};
use crate::store::keys;
use crate::wire::{b64, time, token};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How long `mesh_pair` waits for the controller's answer.
pub(super) const PAIR_TIMEOUT_MS: u64 = 30_000;

/// What a client keeps about its pairing (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairingRecord {
    pub cluster_name: String,
    pub controller_did: String,
    pub controller_amid: String,
    pub relay_url: String,
    pub registry_url: String,
    pub capabilities: Vec<String>,
    pub slots: u64,
    pub token_budget: u64,
    pub expires_at: String,
    pub paired_ms: u64,
}

pub(super) struct PairWait {
    pub call_id: String,
    pub controller: String,
    pub timer: u64,
    pub token: token::PairingToken,
    pub sent_ms: u64,
}

impl Agent {
    pub(super) fn is_controller(&self) -> bool {
        self.ledger.is_some()
    }

    pub(super) fn save_ledger(&mut self, cx: &mut Cx<'_>) {
        if let Some(l) = &self.ledger {
            if let Err(e) = self.vault.put(cx.host, &mut cx.out, keys::LEDGER, l) {
                cx.log(LogLevel::Error, &e.to_string());
            }
        }
    }

    fn address(&self) -> ControllerAddress {
        ControllerAddress {
            did: self.id.did().to_string(),
            amid: self.id.amid(),
            relay_url: self.cfg.relay_url.clone(),
            registry_url: self.cfg.registry_url.clone(),
            cluster: self
                .cfg
                .cluster_name
                .clone()
                .unwrap_or_else(|| "kars-cluster".into()),
        }
    }

    /// Operator tools of a controller: `pair_generate`, `pair_list`, `pair_revoke`.
    pub(super) fn ledger_tool(&mut self, cx: &mut Cx<'_>, call_id: &str, tool: &str, args: &Value) {
        let now = cx.now();
        let addr = self.address();
        let Some(ledger) = self.ledger.as_mut() else {
            return render::fail(
                cx,
                call_id,
                "This agent is not a controller (start it with role \"controller\").",
            );
        };
        ledger.expire(now);
        match tool {
            "pair_generate" => {
                let req = pair_request_args(args);
                match ledger.generate(&req, &addr, now, cx.host) {
                    Ok((tok, p)) => {
                        let details = json!({"token": tok, "pairing": p});
                        let text = format!(
                            "✅ Pairing {:?} created (slots {}, capabilities {}, expires {}).\nToken (give it to the user, once; it is not stored):\n{tok}",
                            p.name,
                            p.slots_max,
                            p.capabilities.join(","),
                            time::format_millis(p.expires_ms)
                        );
                        self.save_ledger(cx);
                        render::ok(cx, call_id, &text, details);
                    }
                    Err(e) => render::fail(cx, call_id, &e.to_string()),
                }
            }
            "pair_list" => {
                let text = pair_list_text(&ledger.pairings);
                let details = json!({"pairings": ledger.pairings});
                self.save_ledger(cx);
                render::ok(cx, call_id, &text, details);
            }
            _ => {
                let name = args["name"].as_str().unwrap_or_default();
                match ledger.revoke(name) {
                    Ok(p) => {
                        let text = format!("🛑 Pairing {:?} revoked.", p.name);
                        self.save_ledger(cx);
                        render::ok(
                            cx,
                            call_id,
                            &text,
                            json!({"name": name, "phase": "Revoked"}),
                        );
                    }
                    Err(e) => render::fail(cx, call_id, &e.to_string()),
                }
            }
        }
    }

    /// Client: `mesh_pair {token}`.
    pub(super) fn start_pairing(&mut self, cx: &mut Cx<'_>, call_id: &str, args: &Value) {
        if args
            .get("token")
            .is_some_and(|t| !t.is_string() && !t.is_null())
        {
            return render::fail(
                cx,
                call_id,
                "`token` must be a string: the pairing token starting with azcp_1_ that the cluster's operator gave you.",
            );
        }
        let Some(raw) = find_token(args) else {
            return render::fail(cx, call_id, &no_token_text(args));
        };
        let raw = raw.as_str();
        let tok = match token::parse(raw) {
            Ok(t) => t,
            Err(_) => {
                return render::fail(
                    cx,
                    call_id,
                    &format!("Invalid pairing token. Must start with azcp_1_ and contain valid data. (token length: {})", raw.len()),
                )
            }
        };
        let Some(controller) = tok.controller_did.clone().filter(|d| is_mesh_did(d)) else {
            return render::fail(
                cx,
                call_id,
                "This token names the controller only by its AMID, which the relay cannot route. Ask the operator for a token from `kars-mesh pair generate`.",
            );
        };
        for (field, url, ours) in [
            ("relay_url", &tok.relay_url, &self.cfg.relay_url),
            ("registry_url", &tok.registry_url, &self.cfg.registry_url),
        ] {
            if let Some(u) = url {
                if u.trim_end_matches('/') != ours.trim_end_matches('/') {
                    return render::fail(
                        cx,
                        call_id,
                        &format!("The token's {field} is {u}, but this agent is connected to {ours}. Start kars-mesh with that {field}, then pair again."),
                    );
                }
            }
        }
        let amid = self.id.amid();
        let request = json!({
            "type": "pair_request",
            "secret": tok.secret,
            "pubkey_ed25519": b64::encode_std(self.id.ed25519_public()),
            "display_name": self.cfg.name.clone().unwrap_or_else(|| format!("external-{}", amid.chars().take(8).collect::<String>())),
            "capabilities_requested": ["offload", "handoff"],
        });
        let at_ms = cx.now() + PAIR_TIMEOUT_MS;
        let timer = self.timers.set(cx, super::timers::Owner::PairWait, at_ms);
        self.pair_waits.push(PairWait {
            call_id: call_id.to_string(),
            controller: controller.clone(),
            timer,
            token: tok,
            sent_ms: cx.now(),
        });
        self.send_payload(cx, &controller, request, None, None);
    }

    /// A decrypted payload that belongs to pairing; `true` when consumed.
    pub(super) fn intercept_pairing(
        &mut self,
        cx: &mut Cx<'_>,
        from: &str,
        payload: &Value,
    ) -> bool {
        match payload["type"].as_str() {
            Some("pair_request") if self.is_controller() => {
                self.answer_pair_request(cx, from, payload)
            }
            Some("pair_response") => self.take_pair_response(cx, from, payload),
            _ => false,
        }
    }

    /// A controller answers a `pair_request` from its ledger (the token's
    /// secret pairs once, bound to the sender's DID).
    fn answer_pair_request(&mut self, cx: &mut Cx<'_>, from: &str, payload: &Value) -> bool {
        let now = cx.now();
        let secret = payload["secret"].as_str().unwrap_or_default();
        let pk = payload["pubkey_ed25519"].as_str().unwrap_or_default();
        let cluster = self.address().cluster;
        let answer = match self.ledger.as_mut().map(|l| l.pair(secret, from, pk, now)) {
            Some(Ok(p)) => json!({
                "type": "pair_response", "success": true, "cluster_name": cluster,
                "controller_amid": self.id.amid(), "controller_did": self.id.did(),
                "capabilities_granted": p.capabilities, "slots": p.slots_max,
                "token_budget": p.token_budget, "expires_at": time::format_millis(p.expires_ms),
            }),
            Some(Err(e)) => {
                json!({"type": "pair_response", "success": false, "error": e.to_string()})
            }
            None => return false,
        };
        cx.log(
            LogLevel::Info,
            &format!(
                "pair_request from {from}: {}",
                if answer["success"] == true {
                    "paired"
                } else {
                    "refused"
                }
            ),
        );
        self.save_ledger(cx);
        self.send_payload(cx, from, answer, None, None);
        true
    }

    /// The controller's answer to our `mesh_pair`: the pairing is stored and
    /// the waiting call answered.
    fn take_pair_response(&mut self, cx: &mut Cx<'_>, from: &str, payload: &Value) -> bool {
        let Some(pos) = self.pair_waits.iter().position(|w| w.controller == from) else {
            return false;
        };
        let w = self.pair_waits.remove(pos);
        self.timers.cancel(cx, w.timer);
        if payload["success"] != true {
            let err = payload["error"].as_str().unwrap_or("Unknown error");
            render::fail(
                cx,
                &w.call_id,
                &format!("Pairing rejected by cluster: {err}"),
            );
            return true;
        }
        let now = cx.now();
        let rec = PairingRecord {
            cluster_name: payload["cluster_name"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            controller_did: from.to_string(),
            controller_amid: payload["controller_amid"]
                .as_str()
                .unwrap_or(&w.token.controller_amid)
                .to_string(),
            relay_url: self.cfg.relay_url.clone(),
            registry_url: self.cfg.registry_url.clone(),
            capabilities: payload["capabilities_granted"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            slots: payload["slots"].as_u64().unwrap_or(1),
            token_budget: payload["token_budget"].as_u64().unwrap_or(500_000),
            expires_at: payload["expires_at"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            paired_ms: now,
        };
        if let Err(e) = self.vault.put(cx.host, &mut cx.out, keys::PAIRING, &rec) {
            cx.log(LogLevel::Error, &e.to_string());
        }
        let text = format!(
            "✅ Paired successfully with kars cluster \"{}\"\nYour AMID: {}\nYour DID: {}\nIdentity: sealed in the kars-mesh state directory\nBudget: {}\nCapabilities: {}\nExpires: {}\nRelay RTT: {}ms (handshake)\nYou can now use cloud_offload to delegate tasks to the cloud.",
            rec.cluster_name,
            self.id.amid(),
            self.id.did(),
            thousands(rec.token_budget),
            rec.capabilities.join(", "),
            if rec.expires_at.is_empty() { "—" } else { &rec.expires_at },
            now.saturating_sub(w.sent_ms)
        );
        let details = json!({"pairing": rec});
        self.pairing = Some(rec);
        render::ok(cx, &w.call_id, &text, details);
        true
    }

    /// `mesh_pair` timer: no answer from the controller.
    pub(super) fn pair_timed_out(&mut self, cx: &mut Cx<'_>, timer: u64) {
        let Some(pos) = self.pair_waits.iter().position(|w| w.timer == timer) else {
            return;
        };
        let w = self.pair_waits.remove(pos);
        render::fail(
            cx,
            &w.call_id,
            &format!(
                "Pairing timed out after {}s: the controller {} did not answer. Check that the cluster is up (kars-mesh cluster up) and that the token is current.",
                PAIR_TIMEOUT_MS / 1000,
                w.controller
            ),
        );
    }
}

/// No token among the arguments: say which keys came (never their values,
/// which may hold part of a token).
fn no_token_text(args: &Value) -> String {
    let keys: Vec<String> = args
        .as_object()
        .map(|o| {
            o.keys()
                .take(10)
                .map(|k| k.chars().take(40).collect())
                .collect()
        })
        .unwrap_or_default();
    format!(
        "No token provided. Pass a pairing token starting with azcp_1_. (received argument keys: {})",
        if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
    )
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
fn pair_list_text(pairings: &[crate::roles::ledger::Pairing]) -> String {
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

/// `500000` → `500,000` (the original's `toLocaleString` in en-US).
fn thousands(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The token as the original found it: `token`, `arguments.token` or
/// `params.token` when it starts with `azcp_1_`, else the first string found
/// (depth ≤ 5) that contains one. Hosts and models wrap arguments in odd ways.
fn find_token(args: &Value) -> Option<String> {
    for v in [
        &args["token"],
        &args["pairing_token"],
        &args["arguments"]["token"],
        &args["params"]["token"],
    ] {
        if let Some(t) = v
            .as_str()
            .map(str::trim)
            .filter(|t| t.starts_with("azcp_1_"))
        {
            return Some(t.to_string());
        }
    }
    fn scan(v: &Value, depth: usize) -> Option<String> {
        match v {
            Value::String(s) => s.find("azcp_1_").map(|i| {
                s[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "_-+=/".contains(*c))
                    .collect()
            }),
            Value::Array(a) if depth < 5 => a.iter().find_map(|x| scan(x, depth + 1)),
            Value::Object(o) if depth < 5 => o.values().find_map(|x| scan(x, depth + 1)),
            _ => None,
        }
    }
    scan(args, 0).or_else(|| {
        // A non-token string in `token` is still what the user meant to pass.
        args["token"]
            .as_str()
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().to_string())
    })
}

pub(super) fn load_ledger(
    agent_cfg_role: Option<&str>,
    vault: &crate::store::Vault,
    cx: &mut Cx<'_>,
) -> Option<Ledger> {
    if agent_cfg_role != Some("controller") {
        return None;
    }
    match vault.get::<Ledger>(cx.host, keys::LEDGER) {
        Ok(l) => Some(l.unwrap_or_default()),
        Err(e) => {
            cx.log(
                LogLevel::Error,
                &format!("{e}; starting with an empty ledger is refused"),
            );
            None
        }
    }
}
