//! The client side of `mesh_pair`: send the controller a `pair_request`
//! with the token's secret, wait for its `pair_response`, store the pairing
//! and answer the call. Texts follow the original plugin (kars-mesh-plugin.md
//! §4.3). A kars-mesh token names its controller by DID and the exchange is
//! end-to-end; a kars CLI token names the kars controller by its AMID, which
//! becomes its DID (§4.1), and that controller speaks only plaintext
//! (§6.5). Several pairings are kept, one per cluster; the newest is the
//! default, as in the original's `~/.kars/pairings.json` (§4.4).

use crate::io::{Cx, LogLevel};
use crate::port::{Port, TimerOwner};
use crate::store::{keys, Vault};
use crate::tools::render;
use crate::wire::pairing_msg::{
    PairRequestMsg, PairResponseMsg, PairingMsg, DEFAULT_CLUSTER_NAME, DEFAULT_PAIR_ERROR,
    DEFAULT_SLOTS, DEFAULT_TOKEN_BUDGET,
};
use crate::wire::payload::Family;
use crate::wire::token::Dialect;
use crate::wire::{b64, token};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How long `mesh_pair` waits for the controller's answer.
pub const PAIR_TIMEOUT_MS: u64 = 30_000;

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
    /// End-to-end (a kars-mesh controller) or the kars controller's
    /// plaintext (records from before this field: end-to-end).
    #[serde(default)]
    pub dialect: Dialect,
}

/// Every pairing this agent holds, one per cluster name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PairingBook {
    pub pairings: Vec<PairingRecord>,
    /// `~/.kars/pairings.json` was looked at once (imported or not).
    #[serde(default)]
    pub legacy_imported: bool,
}

struct PairWait {
    call_id: String,
    controller: String,
    dialect: Dialect,
    timer: u64,
    token: token::PairingToken,
    sent_ms: u64,
}

/// Where this agent is connected, and the name it pairs under.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub relay_url: String,
    pub registry_url: String,
    pub name: Option<String>,
}

#[derive(Default)]
pub struct PairingClient {
    /// The default pairing: the newest of `book`.
    pub record: Option<PairingRecord>,
    pub book: PairingBook,
    waits: Vec<PairWait>,
    endpoints: Endpoints,
}

impl PairingClient {
    pub fn load(vault: &Vault, cx: &mut Cx<'_>, endpoints: Endpoints) -> Self {
        let book = match vault.get::<PairingBook>(cx.host, keys::PAIRINGS) {
            Ok(Some(b)) => b,
            // Before several pairings were kept: the one record, if any.
            _ => PairingBook {
                pairings: vault
                    .get::<PairingRecord>(cx.host, keys::PAIRING)
                    .unwrap_or(None)
                    .into_iter()
                    .collect(),
                legacy_imported: false,
            },
        };
        let mut c = PairingClient {
            record: None,
            book,
            waits: Vec::new(),
            endpoints,
        };
        c.pick_default();
        c
    }

    fn pick_default(&mut self) {
        self.record = self
            .book
            .pairings
            .iter()
            .max_by_key(|p| p.paired_ms)
            .cloned();
    }

    /// Keep `rec` (replacing the pairing with the same cluster) and store
    /// the book.
    pub fn keep(&mut self, vault: &Vault, cx: &mut Cx<'_>, rec: PairingRecord) {
        self.book
            .pairings
            .retain(|p| p.cluster_name != rec.cluster_name);
        self.book.pairings.push(rec);
        self.save_book(vault, cx);
    }

    pub(super) fn save_book(&mut self, vault: &Vault, cx: &mut Cx<'_>) {
        self.pick_default();
        if let Err(e) = vault.put(cx.host, &mut cx.out, keys::PAIRINGS, &self.book) {
            cx.log(LogLevel::Error, &e.to_string());
        }
    }

    /// A `pair_response` from `from` answers one of our calls.
    pub fn waits_for(&self, from: &str) -> bool {
        self.waits.iter().any(|w| w.controller == from)
    }

    /// Is `from` a kars controller we pair with or are paired with? Its
    /// plaintext may answer our pairing and move our offloads on, but it
    /// never reaches the inbox: the relay does not bind `from`.
    pub fn is_kars_controller(&self, from: &str) -> bool {
        self.waits
            .iter()
            .any(|w| w.controller == from && w.dialect == Dialect::KarsPlaintext)
            || self
                .book
                .pairings
                .iter()
                .any(|p| p.controller_did == from && p.dialect == Dialect::KarsPlaintext)
    }

    /// Is `from` the controller of any of our pairings?
    pub fn is_paired_controller(&self, from: &str) -> bool {
        self.book.pairings.iter().any(|p| p.controller_did == from)
    }

    /// A plaintext `pair_response` is taken only from a kars controller a
    /// call waits for.
    pub fn waits_in_plaintext_for(&self, from: &str) -> bool {
        self.waits
            .iter()
            .any(|w| w.controller == from && w.dialect == Dialect::KarsPlaintext)
    }

    /// `mesh_pair {token}`.
    pub fn start(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, call_id: &str, args: &Value) {
        let (tok, controller, dialect) = match self.checked_token(args) {
            Ok(t) => t,
            Err(text) => return render::refuse(cx, call_id, &text),
        };
        let id = port.identity();
        let amid = id.amid();
        let display_name =
            self.endpoints.name.clone().unwrap_or_else(|| {
                format!("external-{}", amid.chars().take(8).collect::<String>())
            });
        let request = PairRequestMsg::new(
            &tok.secret,
            &b64::encode_std(id.ed25519_public()),
            &display_name,
        );
        let at_ms = cx.now() + PAIR_TIMEOUT_MS;
        let timer = port.set_timer(cx, TimerOwner::PairWait, at_ms);
        self.waits.push(PairWait {
            call_id: call_id.to_string(),
            controller: controller.clone(),
            dialect,
            timer,
            token: tok,
            sent_ms: cx.now(),
        });
        let msg = PairingMsg::from(request).to_value();
        match dialect {
            Dialect::EndToEnd => port.send(cx, &controller, msg),
            // The kars controller has no prekeys and reads only plaintext;
            // the secret is exposed to the relay, as with the original.
            Dialect::KarsPlaintext => port.send_plain(cx, &controller, msg),
        }
    }

    /// The token among `args`, the controller DID it names and how to speak
    /// to it; else the error text for the user.
    fn checked_token(
        &self,
        args: &Value,
    ) -> Result<(token::PairingToken, String, Dialect), String> {
        if args
            .get("token")
            .is_some_and(|t| !t.is_string() && !t.is_null())
        {
            return Err("`token` must be a string: the pairing token starting with azcp_1_ that the cluster's operator gave you.".into());
        }
        let raw = find_token(args).ok_or_else(|| no_token_text(args))?;
        let tok = token::parse(&raw).map_err(|_| {
            format!(
                "Invalid pairing token. Must start with azcp_1_ and contain valid data. (token length: {})",
                raw.len()
            )
        })?;
        let (controller, dialect) = tok
            .controller()
            .map_err(|e| format!("This pairing token names no reachable controller: {e}"))?;
        for (field, url, ours) in [
            ("relay_url", &tok.relay_url, &self.endpoints.relay_url),
            (
                "registry_url",
                &tok.registry_url,
                &self.endpoints.registry_url,
            ),
        ] {
            if let Some(u) = url {
                if same_place(u) != same_place(ours) {
                    return Err(format!("The token's {field} is {u}, but this agent is connected to {ours}. Start kars-mesh with that {field}, then pair again."));
                }
            }
        }
        Ok((tok, controller, dialect))
    }

    /// The controller's answer to our `mesh_pair`: the pairing is stored and
    /// the waiting call answered. `false` when no call waits for `from`.
    pub fn take_response(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        from: &str,
        payload: &PairResponseMsg,
    ) -> bool {
        let Some(pos) = self.waits.iter().position(|w| w.controller == from) else {
            return false;
        };
        let w = self.waits.remove(pos);
        port.cancel_timer(cx, w.timer);
        if !payload.succeeded() {
            let err = payload.error.as_deref().unwrap_or(DEFAULT_PAIR_ERROR);
            render::fail(
                cx,
                &w.call_id,
                &format!("Pairing rejected by cluster: {err}"),
            );
            return true;
        }
        let now = cx.now();
        let mut rec = self.record_from(from, payload, &w.token, now);
        rec.dialect = w.dialect;
        self.keep(port.vault(), cx, rec.clone());
        let id = port.identity();
        let text = format!(
            "✅ Paired successfully with kars cluster \"{}\"\nYour AMID: {}\nYour DID: {}\nIdentity: sealed in the kars-mesh state directory\nBudget: {}\nCapabilities: {}\nExpires: {}\nRelay RTT: {}ms (handshake)\nYou can now use cloud_offload to delegate tasks to the cloud.",
            rec.cluster_name,
            id.amid(),
            id.did(),
            thousands(rec.token_budget),
            rec.capabilities.join(", "),
            if rec.expires_at.is_empty() { "—" } else { &rec.expires_at },
            now.saturating_sub(w.sent_ms)
        );
        let details = json!({"pairing": rec});
        render::ok(cx, &w.call_id, &text, details);
        true
    }

    fn record_from(
        &self,
        from: &str,
        r: &PairResponseMsg,
        token: &token::PairingToken,
        now: u64,
    ) -> PairingRecord {
        PairingRecord {
            cluster_name: r
                .cluster_name
                .as_deref()
                .unwrap_or(DEFAULT_CLUSTER_NAME)
                .to_string(),
            controller_did: from.to_string(),
            controller_amid: r
                .controller_amid
                .as_deref()
                .unwrap_or(&token.controller_amid)
                .to_string(),
            relay_url: self.endpoints.relay_url.clone(),
            registry_url: self.endpoints.registry_url.clone(),
            // Non-strings were left out when it was read.
            capabilities: r.capabilities_granted.clone().unwrap_or_default(),
            slots: r.slots.unwrap_or(DEFAULT_SLOTS),
            token_budget: r.token_budget.unwrap_or(DEFAULT_TOKEN_BUDGET),
            expires_at: r.expires_at.clone().unwrap_or_default(),
            paired_ms: now,
            dialect: Dialect::EndToEnd,
        }
    }

    /// `mesh_pair`'s timer: no answer from the controller.
    pub fn timed_out(&mut self, cx: &mut Cx<'_>, timer: u64) {
        let Some(pos) = self.waits.iter().position(|w| w.timer == timer) else {
            return;
        };
        let w = self.waits.remove(pos);
        let check = match w.dialect {
            Dialect::EndToEnd => "Check that the cluster is up (kars-mesh cluster up)",
            Dialect::KarsPlaintext => {
                "Check that the kars controller runs and is connected to this relay"
            }
        };
        render::fail(
            cx,
            &w.call_id,
            &format!(
                "Pairing timed out after {}s: the controller {} did not answer. {check} and that the token is current.",
                PAIR_TIMEOUT_MS / 1000,
                w.controller
            ),
        );
    }
}

/// A relay or registry URL as a place: the token's `ws://` relay and our
/// `http://` one are the same server.
fn same_place(url: &str) -> String {
    let u = url.trim().trim_end_matches('/');
    match u.split_once("://") {
        Some(("ws", rest)) => format!("http://{rest}"),
        Some(("wss", rest)) => format!("https://{rest}"),
        _ => u.to_string(),
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
