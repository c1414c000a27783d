//! The mesh agent: registry membership, the relay link, encrypted sessions,
//! delivery with receipts, and the inbox, as one deterministic state machine.
//! Every state change is emitted as a `Store` before the frame or ack that
//! depends on it.

pub mod inbox;
pub mod pairing;
mod tools;

use crate::crypto::identity::{is_mesh_did, Identity};
use crate::crypto::ratchet::{channel_ad, Ratchet};
use crate::crypto::x3dh;
use crate::engine::{Command, Host, LogLevel};
use crate::mesh::link::{ws_url, CloseAction, Link, LinkState};
use crate::mesh::prekeys::Prekeys;
use crate::mesh::registry as reg;
use crate::mesh::session::{Candidate, Decrypted, OutEntry, Peer, OUTBOX_MAX};
use crate::store::{keys, StoreError, Vault};
use crate::wire::{frames, plaintext, registry, time};
use inbox::{Entry, Evidence, Inbox};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// Relay heartbeat period (the relay stops live delivery after 90 s of silence).
pub const RELAY_HEARTBEAT_MS: u64 = 25_000;
/// Registry heartbeat period (presence is "online" for 90 s; 429 under 10 s).
pub const REGISTRY_HEARTBEAT_MS: u64 = 60_000;
/// Unreceipted messages are sent again after this long.
pub const RESEND_AFTER_MS: u64 = 20_000;
/// A message held for an earlier one is released after this long anyway.
pub const HOLD_MAX_MS: u64 = 10 * 60_000;
/// Largest relay frame we accept.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Largest message payload we send.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Frames that arrive before their KNOCK: per peer, peers, lifetime.
const EARLY_PER_PEER: usize = 5;
const EARLY_PEERS: usize = 100;
const EARLY_TTL_MS: u64 = 30_000;
/// Bytes of early frames kept in all.
const EARLY_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Peers with a KNOCK but no working session yet.
const MAX_PENDING_PEERS: usize = 256;
/// Candidate sessions (from KNOCKs) kept per peer.
const MAX_CANDIDATES: usize = 8;
/// Unread messages kept per sender; beyond that new ones are refused.
const MAX_UNREAD_PER_SENDER: usize = 5000;
/// Capability every kars-mesh agent registers; peers with it get receipts.
pub const KARS_CAPABILITY: &str = "kars-mesh";
pub const HTTP_TIMEOUT_MS: u32 = 10_000;
const HTTP_RETRIES: u32 = 2;

const T_RELAY_HEARTBEAT: u64 = 1;
const T_RECONNECT: u64 = 2;
const T_REGISTRY: u64 = 3;
const T_REREGISTER: u64 = 4;
const T_RECEIPTS: u64 = 5;
/// How long receipts wait to be coalesced.
const RECEIPT_DELAY_MS: u64 = 25;
const DYNAMIC_IDS: u64 = 1000;

#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(untagged)]
pub enum AcceptPolicy {
    #[default]
    #[serde(skip)]
    All,
    Named(String),
    Only(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub relay_url: String,
    pub registry_url: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub trusted_plaintext: Vec<String>,
    #[serde(default)]
    pub accept_sessions: AcceptPolicy,
    /// Shared secret of a relay started with AGENTMESH_RELAY_TOKEN.
    #[serde(default)]
    pub relay_token: Option<String>,
    /// `"controller"`: keep a pairing ledger and answer `pair_request`.
    #[serde(default)]
    pub role: Option<String>,
    /// Cluster name a controller reports in `pair_response`.
    #[serde(default)]
    pub cluster_name: Option<String>,
}

impl Config {
    fn accepts(&self, did: &str) -> bool {
        match &self.accept_sessions {
            AcceptPolicy::All => true,
            AcceptPolicy::Named(s) => s == "all" || s == did,
            AcceptPolicy::Only(list) => list.iter().any(|d| d == did),
        }
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub received: u64,
    pub sent: u64,
    pub resent: u64,
    pub duplicates: u64,
    pub plaintext_dropped: u64,
    pub undecryptable: u64,
    pub malformed: u64,
    pub spoofed: u64,
}

/// What a tool call waiting on the network will be answered with.
#[derive(Debug, Clone)]
enum Purpose {
    Register,
    Upload,
    RegistryHeartbeat,
    Bundle(String),
    VerifyKnocker(String),
    AgentInfo {
        peer: String,
        then_bundle: bool,
    },
    Discover {
        call_id: String,
        capability: String,
    },
    Resolve {
        call_id: String,
        name: String,
        payload: Value,
        key: Option<String>,
    },
}

struct InFlight {
    purpose: Purpose,
    attempt: u32,
    request: Command,
}

/// A message sealed for a peer, not yet committed.
struct Sealed {
    frame_id: String,
    frame: String,
    new_session: bool,
}

struct Queued {
    key: Option<String>,
    call_id: Option<String>,
    payload: Value,
}

struct Waiter {
    call_id: String,
    timer: u64,
    from: Option<String>,
    limit: usize,
    peek: bool,
}

/// Context of one engine call: the host and the commands produced so far.
pub struct Cx<'a> {
    pub host: &'a mut dyn Host,
    pub out: Vec<Command>,
}

impl Cx<'_> {
    fn now(&mut self) -> u64 {
        self.host.now_ms()
    }
    fn log(&mut self, level: LogLevel, msg: &str) {
        self.host.log(level, msg);
    }
}

pub struct Agent {
    cfg: Config,
    vault: Vault,
    id: Identity,
    prekeys: Prekeys,
    peers: BTreeMap<String, Peer>,
    inbox: Inbox,
    link: Link,
    http: HashMap<u64, InFlight>,
    next_id: u64,
    waiters: Vec<Waiter>,
    awaiting_session: HashMap<String, Vec<Queued>>,
    early: BTreeMap<String, Vec<(String, u64)>>,
    knocks_awaiting_identity: HashMap<String, Vec<String>>,
    receipts_due: BTreeMap<String, Vec<u64>>,
    ledger: Option<crate::roles::ledger::Ledger>,
    pairing: Option<pairing::PairingRecord>,
    pair_waits: Vec<pairing::PairWait>,
    registered: bool,
    register_calls: Vec<String>,
    pub stats: Stats,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("did", &self.id.did())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Agent {
    /// Load everything from storage (or create prekeys), then register and
    /// connect.
    pub fn start(
        cfg: Config,
        vault: Vault,
        id: Identity,
        cx: &mut Cx<'_>,
    ) -> Result<Self, AgentError> {
        let ws = ws_url(&cfg.relay_url).map_err(AgentError::Config)?;
        if !(cfg.registry_url.starts_with("http://") || cfg.registry_url.starts_with("https://")) {
            return Err(AgentError::Config(format!(
                "registry URL {:?} must start with http:// or https:// (for example http://127.0.0.1:8082)",
                cfg.registry_url
            )));
        }
        let now = cx.now();
        let prekeys = match vault.get::<Prekeys>(cx.host, keys::PREKEYS)? {
            Some(p) => p,
            None => {
                let p = Prekeys::generate(&id, now, cx.host);
                vault.put(cx.host, &mut cx.out, keys::PREKEYS, &p)?;
                p
            }
        };
        let mut peers = BTreeMap::new();
        for key in cx.host.storage_list(keys::SESSION) {
            match vault.get_bytes(cx.host, &key) {
                Ok(Some(bytes)) => match Peer::from_bytes(&bytes) {
                    Ok(p) => {
                        peers.insert(p.did.clone(), p);
                    }
                    Err(e) => cx.log(
                        LogLevel::Error,
                        &format!("session record {key} unreadable: {e}; skipped"),
                    ),
                },
                Ok(None) => {}
                Err(e) => cx.log(LogLevel::Error, &format!("{e}; skipped")),
            }
        }
        let mut fast_forwarded = Vec::new();
        for p in peers.values_mut() {
            let prefix = format!("{}{}/", keys::OUTBOX, p.did);
            let mut loaded: Vec<OutEntry> = Vec::new();
            for key in cx.host.storage_list(&prefix) {
                match vault.get::<OutEntry>(cx.host, &key) {
                    Ok(Some(o)) => loaded.push(o),
                    Ok(None) => {}
                    Err(e) => cx.log(LogLevel::Error, &format!("{e}; skipped")),
                }
            }
            loaded.sort_by_key(|o| (o.created_ms, o.seq));
            for o in loaded {
                // The entry was written before the session record: if that
                // write was lost, never reuse the message number it used.
                if let (Ok(m), Some(r)) = (frames::parse_message_frame(&o.frame), p.active.as_mut())
                {
                    if r.fast_forward_send(&m.header.dh, m.header.n) {
                        fast_forwarded.push(p.did.clone());
                    }
                }
                if o.needs_receipt && o.seq >= p.out_seq {
                    p.out_seq = o.seq.saturating_add(1);
                }
                p.persisted_out.insert(o.frame_id.clone());
                if let Some(k) = &o.key {
                    p.remember_key(k, &o.frame_id);
                }
                if !p.outbox.iter().any(|x| x.frame_id == o.frame_id) {
                    p.outbox.push(o);
                }
            }
        }
        let mut entries = Vec::new();
        for key in cx.host.storage_list(keys::INBOX) {
            match vault.get::<Entry>(cx.host, &key) {
                Ok(Some(e)) => entries.push(e),
                Ok(None) => {}
                Err(e) => cx.log(LogLevel::Error, &format!("{e}; skipped")),
            }
        }
        let inbox = Inbox::load(entries);
        let ledger = pairing::load_ledger(cfg.role.as_deref(), &vault, cx);
        let paired = vault
            .get::<pairing::PairingRecord>(cx.host, keys::PAIRING)
            .unwrap_or(None);
        let mut cfg = cfg;
        if let Some(p) = &paired {
            // The paired controller may speak the original plaintext dialects.
            if !cfg.trusted_plaintext.contains(&p.controller_did) {
                cfg.trusted_plaintext.push(p.controller_did.clone());
            }
        }
        // A crash between an inbox write and the peer record's can leave the
        // record's next expected number behind what was delivered.
        for p in peers.values_mut() {
            if let Some(m) = inbox.max_released_seq(&p.did, p.in_epoch) {
                p.in_next = p.in_next.max(m.saturating_add(1));
            }
        }
        let mut agent = Agent {
            cfg,
            vault,
            id,
            prekeys,
            peers,
            inbox,
            link: Link::new(ws),
            http: HashMap::new(),
            next_id: DYNAMIC_IDS,
            waiters: Vec::new(),
            awaiting_session: HashMap::new(),
            early: BTreeMap::new(),
            knocks_awaiting_identity: HashMap::new(),
            receipts_due: BTreeMap::new(),
            ledger,
            pairing: paired,
            pair_waits: Vec::new(),
            registered: false,
            register_calls: Vec::new(),
            stats: Stats::default(),
        };
        for did in fast_forwarded {
            cx.log(
                LogLevel::Warn,
                &format!("recovered the sending chain to {did} after an interrupted write"),
            );
            agent.save_peer(cx, &did);
        }
        cx.log(
            LogLevel::Info,
            &format!(
                "agent {} starting; {} sessions, {} inbox entries",
                agent.id.did(),
                agent.peers.len(),
                agent.inbox.len()
            ),
        );
        agent.register(cx);
        agent.connect(cx);
        agent.arm(cx, T_REGISTRY, REGISTRY_HEARTBEAT_MS);
        Ok(agent)
    }

    pub fn did(&self) -> &str {
        self.id.did()
    }

    pub fn identity(&self) -> &Identity {
        &self.id
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn arm(&mut self, cx: &mut Cx<'_>, timer: u64, after_ms: u64) {
        let at_ms = cx.now() + after_ms;
        cx.out.push(Command::TimerSet { id: timer, at_ms });
    }

    fn timestamp(cx: &mut Cx<'_>) -> String {
        let now = cx.now();
        time::format_millis(now)
    }

    // ------------------------------------------------------------ persistence

    /// Commit a peer: its new and removed outbox entries first, then the
    /// session record. An entry may thus be newer than the session record
    /// after a crash; `Agent::start` steps the sending chain past it.
    fn save_peer(&mut self, cx: &mut Cx<'_>, did: &str) {
        let Some(p) = self.peers.get_mut(did) else {
            return;
        };
        for o in &p.outbox {
            if !p.persisted_out.contains(&o.frame_id) {
                let key = format!("{}{}/{}", keys::OUTBOX, did, o.frame_id);
                match self.vault.put(cx.host, &mut cx.out, &key, o) {
                    Ok(()) => {
                        p.persisted_out.insert(o.frame_id.clone());
                    }
                    Err(e) => cx.host.log(LogLevel::Error, &e.to_string()),
                }
            }
        }
        let live: std::collections::HashSet<&str> =
            p.outbox.iter().map(|o| o.frame_id.as_str()).collect();
        let gone: Vec<String> = p
            .persisted_out
            .iter()
            .filter(|id| !live.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            cx.out
                .push(Command::Erase(format!("{}{}/{}", keys::OUTBOX, did, id)));
            p.persisted_out.remove(&id);
        }
        let key = format!("{}{}", keys::SESSION, did);
        if let Err(e) = self
            .vault
            .put_bytes(cx.host, &mut cx.out, &key, &p.to_bytes())
        {
            cx.log(LogLevel::Error, &e.to_string());
        }
    }

    fn save_prekeys(&self, cx: &mut Cx<'_>) {
        if let Err(e) = self
            .vault
            .put(cx.host, &mut cx.out, keys::PREKEYS, &self.prekeys)
        {
            cx.log(LogLevel::Error, &e.to_string());
        }
    }

    fn save_entry(&self, cx: &mut Cx<'_>, e: &Entry) {
        if let Err(err) = self.vault.put(cx.host, &mut cx.out, &e.storage_key(), e) {
            cx.log(LogLevel::Error, &err.to_string());
        }
    }

    // ------------------------------------------------------------------- HTTP

    fn http(
        &mut self,
        cx: &mut Cx<'_>,
        purpose: Purpose,
        method: &str,
        path: &str,
        auth: bool,
        body: Option<Vec<u8>>,
    ) {
        let id = self.fresh_id();
        let mut headers = vec![("accept".to_string(), "application/json".to_string())];
        if body.is_some() {
            headers.push(("content-type".to_string(), "application/json".to_string()));
        }
        if auth {
            let ts = Self::timestamp(cx);
            headers.push((
                "authorization".to_string(),
                registry::authorization_header(&self.id, &ts),
            ));
        }
        let url = format!("{}{}", self.cfg.registry_url.trim_end_matches('/'), path);
        let request = Command::HttpRequest {
            id,
            method: method.to_string(),
            url,
            headers,
            body,
            timeout_ms: HTTP_TIMEOUT_MS,
        };
        cx.out.push(request.clone());
        self.http.insert(
            id,
            InFlight {
                purpose,
                attempt: 0,
                request,
            },
        );
    }

    fn register(&mut self, cx: &mut Cx<'_>) {
        if self
            .http
            .values()
            .any(|f| matches!(f.purpose, Purpose::Register))
        {
            return;
        }
        let ts = Self::timestamp(cx);
        let mut caps: Vec<String> = Vec::new();
        if let Some(n) = &self.cfg.name {
            caps.push(n.clone());
        }
        caps.extend(self.cfg.capabilities.iter().cloned());
        caps.push(KARS_CAPABILITY.to_string());
        caps.dedup();
        let mut meta = BTreeMap::new();
        meta.insert("agent".to_string(), "kars-mesh".to_string());
        if let Some(n) = &self.cfg.name {
            meta.insert("name".to_string(), n.clone());
        }
        let body = registry::registration_body(&self.id, &ts, &caps, &meta);
        self.http(
            cx,
            Purpose::Register,
            "POST",
            "/v1/agents",
            false,
            Some(body.into_bytes()),
        );
    }

    fn upload_prekeys(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now();
        let (body, _count) = self.prekeys.upload_body(&self.id, now, cx.host);
        // Published marks are committed before the upload leaves, so a crash
        // never re-publishes a key the registry may already have handed out.
        self.save_prekeys(cx);
        let path = format!("/v1/agents/{}/prekeys", self.id.did());
        self.http(
            cx,
            Purpose::Upload,
            "PUT",
            &path,
            true,
            Some(body.into_bytes()),
        );
    }

    pub fn on_http(
        &mut self,
        cx: &mut Cx<'_>,
        id: u64,
        status: Option<u16>,
        body: &[u8],
        failure: Option<&str>,
    ) {
        let Some(f) = self.http.remove(&id) else {
            return;
        };
        let retryable = status.is_none_or(|s| s >= 500);
        if retryable && f.attempt < HTTP_RETRIES {
            // 250·2^n ms, as the TS client.
            let t = self.fresh_id();
            let delay = 250u64 << f.attempt;
            self.arm(cx, t, delay);
            self.http.insert(
                t,
                InFlight {
                    purpose: f.purpose,
                    attempt: f.attempt + 1,
                    request: f.request,
                },
            );
            return;
        }
        let problem = match (status, failure) {
            (Some(s), _) => format!("registry answered {s}: {}", reg::detail(body)),
            (None, Some(m)) => format!("registry unreachable at {}: {m}", self.cfg.registry_url),
            (None, None) => "registry request failed".to_string(),
        };
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        match f.purpose {
            Purpose::Register => match status {
                Some(201) => {
                    // Registry did not know us: first run, or it restarted
                    // and lost everything. Publish a fresh bundle.
                    self.registered = true;
                    self.prekeys.registry_lost();
                    self.upload_prekeys(cx);
                }
                Some(409) => {
                    self.registered = true;
                    if !self.prekeys.uploaded() || self.prekeys.needs_replenish() {
                        self.upload_prekeys(cx);
                    } else {
                        self.finish_register_calls(cx, None);
                    }
                }
                _ => {
                    cx.log(
                        LogLevel::Warn,
                        &format!("registration failed: {problem}; retrying in 30 s"),
                    );
                    self.finish_register_calls(cx, Some(&problem));
                    self.arm(cx, T_REREGISTER, 30_000);
                }
            },
            Purpose::Upload => {
                if ok {
                    self.prekeys.set_uploaded(true);
                    if let Some(n) = serde_json::from_slice::<Value>(body)
                        .ok()
                        .and_then(|v| v["otk_count"].as_u64())
                    {
                        self.prekeys.set_registry_count(n as usize);
                    }
                    self.save_prekeys(cx);
                    self.finish_register_calls(cx, None);
                } else if status == Some(404) {
                    self.register(cx);
                } else {
                    cx.log(LogLevel::Warn, &format!("prekey upload failed: {problem}"));
                    self.finish_register_calls(cx, Some(&problem));
                }
            }
            Purpose::RegistryHeartbeat => {
                // core-5.0.0 checks the signature before the agent exists, so a
                // registry that lost us answers 401, not 404.
                if matches!(status, Some(401) | Some(404)) {
                    cx.log(
                        LogLevel::Warn,
                        "registry no longer knows this agent (restarted?); registering again",
                    );
                    self.registered = false;
                    self.register(cx);
                }
            }
            Purpose::Bundle(peer) => self.on_bundle(cx, &peer, status, body, &problem),
            Purpose::VerifyKnocker(peer) => self.on_knocker_bundle(cx, &peer, ok, body, &problem),
            Purpose::AgentInfo { peer, then_bundle } => {
                let kars = ok
                    && reg::parse_agent(body)
                        .is_some_and(|a| a.capabilities.iter().any(|c| c == KARS_CAPABILITY));
                if kars {
                    let p = self
                        .peers
                        .entry(peer.clone())
                        .or_insert_with(|| Peer::new(&peer));
                    if !p.kars {
                        p.kars = true;
                        if !then_bundle {
                            self.save_peer(cx, &peer);
                        }
                    }
                }
                if then_bundle {
                    let path = format!("/v1/agents/{peer}/prekeys");
                    self.http(cx, Purpose::Bundle(peer.clone()), "GET", &path, false, None);
                }
            }
            Purpose::Discover {
                call_id,
                capability,
            } => tools::discover_answer(self, cx, &call_id, &capability, ok, body, &problem),
            Purpose::Resolve {
                call_id,
                name,
                payload,
                key,
            } => {
                let found = if ok {
                    reg::parse_discover(body).unwrap_or_default()
                } else {
                    Vec::new()
                };
                match found.as_slice() {
                    [one] => {
                        let did = one.did.clone();
                        self.send_payload(cx, &did, payload, Some(call_id), key);
                    }
                    [] if ok => tools::fail(cx, &call_id, &format!("No agent is registered under the name {name:?}. Use discover to look it up, or pass its did:mesh: DID.")),
                    [] => tools::fail(cx, &call_id, &format!("Could not look up {name:?}: {problem}")),
                    many => tools::fail(
                        cx,
                        &call_id,
                        &format!(
                            "{} agents are registered under the name {name:?} ({}); names are not unique, pass the DID of the one you mean.",
                            many.len(),
                            many.iter().map(|d| d.did.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    ),
                }
            }
        }
    }

    fn finish_register_calls(&mut self, cx: &mut Cx<'_>, problem: Option<&str>) {
        for call in std::mem::take(&mut self.register_calls) {
            match problem {
                None => tools::ok(
                    cx,
                    &call,
                    &format!(
                        "✅ Registered as {} with a prekey bundle ({} one-time prekeys held)",
                        self.id.did(),
                        self.prekeys.opk_count()
                    ),
                    json!({"did": self.id.did(), "registered": true, "otk_count": self.prekeys.opk_count()}),
                ),
                Some(p) => tools::fail(cx, &call, &format!("Registration failed: {p}")),
            }
        }
    }

    // ------------------------------------------------------------------ relay

    fn connect(&mut self, cx: &mut Cx<'_>) {
        if let Some((socket, url)) = self.link.open() {
            cx.out.push(Command::SocketOpen { socket, url });
        }
    }

    fn send_frame(&mut self, cx: &mut Cx<'_>, text: String) -> bool {
        match self.link.open_socket() {
            Some(socket) => {
                cx.out.push(Command::SocketSend { socket, text });
                true
            }
            None => false,
        }
    }

    fn ack(&mut self, cx: &mut Cx<'_>, frame_id: &str) {
        let text = json!({"v": 1, "type": "ack", "id": frame_id}).to_string();
        self.send_frame(cx, text);
    }

    pub fn on_socket_opened(&mut self, cx: &mut Cx<'_>, socket: u32) {
        let now = cx.now();
        if !self.link.opened(socket, now) {
            return;
        }
        let ts = Self::timestamp(cx);
        cx.out.push(Command::SocketSend {
            socket,
            text: frames::connect_frame(&self.id, &ts, self.cfg.relay_token.as_deref()),
        });
        self.arm(cx, T_RELAY_HEARTBEAT, RELAY_HEARTBEAT_MS);
        // The relay may have restarted too: make sure the registry knows us.
        self.register(cx);
        self.flush_all(cx, true);
    }

    pub fn on_socket_closed(&mut self, cx: &mut Cx<'_>, socket: u32, code: u16, reason: &str) {
        match self.link.closed(socket, code, reason, cx.host) {
            CloseAction::Ignore => {}
            CloseAction::Reconnect { delay_ms, problem } => {
                if let Some(p) = problem {
                    cx.log(LogLevel::Warn, &p);
                }
                cx.out.push(Command::TimerCancel(T_RELAY_HEARTBEAT));
                self.arm(cx, T_RECONNECT, delay_ms);
            }
            CloseAction::GiveUp(msg) => {
                cx.log(LogLevel::Error, &msg);
                cx.out.push(Command::TimerCancel(T_RELAY_HEARTBEAT));
            }
        }
    }

    pub fn on_timer(&mut self, cx: &mut Cx<'_>, id: u64) {
        match id {
            T_RELAY_HEARTBEAT => {
                if self.link.open_socket().is_some() {
                    let now = cx.now();
                    self.link.tick(now);
                    let ts = Self::timestamp(cx);
                    let hb = json!({"v": 1, "type": "heartbeat", "from": self.id.did(), "ts": ts})
                        .to_string();
                    self.send_frame(cx, hb);
                    self.flush_all(cx, false);
                    self.release_stale_holds(cx);
                    self.arm(cx, T_RELAY_HEARTBEAT, RELAY_HEARTBEAT_MS);
                }
            }
            T_RECONNECT => self.connect(cx),
            T_REREGISTER => self.register(cx),
            T_RECEIPTS => self.flush_receipts(cx),
            T_REGISTRY => {
                if self.registered {
                    let path = format!("/v1/agents/{}/heartbeat", self.id.did());
                    self.http(cx, Purpose::RegistryHeartbeat, "POST", &path, true, None);
                }
                let now = cx.now();
                let uploading = self
                    .http
                    .values()
                    .any(|f| matches!(f.purpose, Purpose::Upload | Purpose::Register));
                if self.prekeys.rotate_if_due(&self.id, now, cx.host)
                    || (self.registered && !uploading && self.prekeys.needs_replenish())
                {
                    self.upload_prekeys(cx);
                }
                self.arm(cx, T_REGISTRY, REGISTRY_HEARTBEAT_MS);
            }
            other => {
                if let Some(mut f) = self.http.remove(&other) {
                    // A retry (or a scheduled re-registration) is due.
                    let nid = self.fresh_id();
                    if let Command::HttpRequest { id, .. } = &mut f.request {
                        *id = nid;
                    }
                    cx.out.push(f.request.clone());
                    self.http.insert(nid, f);
                } else if self.pair_timed_out(cx, other) {
                } else if let Some(pos) = self.waiters.iter().position(|w| w.timer == other) {
                    let w = self.waiters.remove(pos);
                    self.answer_waiter(cx, &w, true);
                }
            }
        }
    }

    pub fn on_frame(&mut self, cx: &mut Cx<'_>, socket: u32, text: &str) {
        if self.link.open_socket() != Some(socket) {
            return;
        }
        if text.len() > MAX_FRAME_BYTES {
            self.stats.malformed += 1;
            cx.log(
                LogLevel::Warn,
                &format!(
                    "dropped a {} byte frame (limit {MAX_FRAME_BYTES})",
                    text.len()
                ),
            );
            return;
        }
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                self.stats.malformed += 1;
                cx.log(LogLevel::Warn, "dropped a frame that is not JSON");
                return;
            }
        };
        let kind = v["type"].as_str().unwrap_or("");
        match kind {
            "message" => self.on_message(cx, &v, text),
            "knock" => self.on_knock(cx, &v),
            "knock_accept" | "knock_reject" => self.on_knock_reply(cx, &v, kind == "knock_accept"),
            "error" => {
                let detail = v["detail"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect::<String>();
                if !detail.contains("fetch_pending") {
                    cx.log(LogLevel::Warn, &format!("relay error: {detail}"));
                }
            }
            _ => {
                self.stats.malformed += 1;
            }
        }
    }

    /// Common checks on a routed frame: sender DID, id, addressee.
    fn routed<'v>(&mut self, cx: &mut Cx<'_>, v: &'v Value) -> Option<(&'v str, &'v str)> {
        let from = v["from"].as_str().unwrap_or("");
        let id = v["id"].as_str().unwrap_or("");
        let to = v["to"].as_str().unwrap_or(self.id.did());
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
        if !is_mesh_did(from) || !id_ok || to != self.id.did() {
            self.stats.malformed += 1;
            cx.log(
                LogLevel::Warn,
                "dropped a routed frame with a bad from/to/id",
            );
            if !id.is_empty() && id.len() <= 256 {
                // Acked (ids travel verbatim) so the relay stops pushing it.
                self.ack(cx, id);
            }
            return None;
        }
        Some((from, id))
    }

    // ------------------------------------------------------------------ KNOCK

    fn on_knock(&mut self, cx: &mut Cx<'_>, v: &Value) {
        let Some((from, id)) = self.routed(cx, v) else {
            return;
        };
        let (from, id) = (from.to_string(), id.to_string());
        if self.peers.get(&from).is_some_and(|p| p.has_seen(&id)) {
            self.stats.duplicates += 1;
            self.ack(cx, &id);
            return;
        }
        let ts = Self::timestamp(cx);
        if !self.cfg.accepts(&from) {
            cx.log(
                LogLevel::Info,
                &format!("rejected a session from {from} (accept_sessions policy)"),
            );
            let rid = frames::uuid_v4(cx.host);
            let f = json!({"v":1,"type":"knock_reject","from":self.id.did(),"to":from,"id":rid,"knock_id":id,"reason":"policy_denied","ts":ts});
            self.send_frame(cx, f.to_string());
            self.ack(cx, &id);
            return;
        }
        let est = match v
            .get("establishment")
            .map(|e| frames::parse_establishment(&e.to_string()))
        {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                return self.refuse_malformed(cx, &id, &format!("KNOCK from {from} refused: {e}"));
            }
            None => {
                return self.refuse_malformed(
                    cx,
                    &id,
                    &format!("KNOCK from {from} without establishment refused"),
                );
            }
        };
        let now = cx.now();
        // The KNOCK is unsigned: bind its identity key to `from` ourselves,
        // or anyone could open a session in another agent's name.
        let claimed_ed = v["establishment"]["ik_ed"]
            .as_str()
            .and_then(|s| crate::wire::b64::decode_array::<32>(s).ok());
        let known_ed = self.peers.get(&from).and_then(|p| p.identity_ed);
        let Some(ik_ed) = claimed_ed.or(known_ed) else {
            return self.verify_knocker(cx, &from, v);
        };
        let binds = crate::crypto::identity::did_from_ed25519(&ik_ed) == from
            && crate::crypto::identity::x25519_from_ed25519(&ik_ed) == Some(est.identity_key);
        if !binds {
            self.stats.spoofed += 1;
            cx.log(
                LogLevel::Warn,
                &format!("KNOCK {id} claims to be from {from} but its identity key is not that agent's; refused"),
            );
            self.ack(cx, &id);
            return;
        }
        let pending_only = self.peers.values().filter(|p| p.active.is_none()).count();
        if !self.peers.contains_key(&from) && pending_only >= MAX_PENDING_PEERS {
            cx.log(
                LogLevel::Warn,
                &format!("KNOCK from {from} refused: too many half-open sessions"),
            );
            self.ack(cx, &id);
            return;
        }
        let opk = match est.one_time_prekey_id {
            Some(k) => match self.prekeys.peek_opk(k) {
                Some(kp) => Some(kp),
                None => {
                    cx.log(
                        LogLevel::Warn,
                        &format!(
                            "KNOCK from {from}: {}",
                            x3dh::X3dhError::UnknownOneTimePrekey(k)
                        ),
                    );
                    self.ack(cx, &id);
                    return;
                }
            },
            None => None,
        };
        // The KNOCK does not name the SPK: build a candidate for each SPK
        // that may have been used; the first message decides.
        let mut built = Vec::new();
        for spk in self.prekeys.spk_candidates(now) {
            match x3dh::respond(&self.id, &spk, opk.as_ref(), &est) {
                Ok(a) => {
                    let ad = channel_ad(&from, self.id.did(), &a.associated_data);
                    built.push(Candidate {
                        knock_id: id.clone(),
                        ratchet: Ratchet::new_responder(&a.shared_secret, spk, ad),
                        created_ms: now,
                    });
                }
                Err(e) => cx.log(LogLevel::Warn, &format!("KNOCK from {from}: {e}")),
            }
        }
        if built.is_empty() {
            self.ack(cx, &id);
            return;
        }
        let peer = self
            .peers
            .entry(from.clone())
            .or_insert_with(|| Peer::new(&from));
        peer.identity_ed = Some(ik_ed);
        peer.candidates.retain(|c| c.knock_id != id);
        peer.candidates.extend(built);
        // Oldest first out; a real KNOCK is followed at once by its messages.
        while peer.candidates.len() > MAX_CANDIDATES {
            peer.candidates.remove(0);
        }
        peer.mark_seen(&id, now, None);
        self.save_peer(cx, &from);
        if let Some(k) = est.one_time_prekey_id {
            self.prekeys.take_opk(k);
            if self.prekeys.needs_replenish() {
                self.upload_prekeys(cx);
            } else {
                self.save_prekeys(cx);
            }
        }
        let aid = frames::uuid_v4(cx.host);
        let f = json!({"v":1,"type":"knock_accept","from":self.id.did(),"to":from,"id":aid,"knock_id":id,"ts":ts});
        self.send_frame(cx, f.to_string());
        self.ack(cx, &id);
        if self.peers.get(&from).is_some_and(|p| p.active.is_none()) {
            // Nothing else to learn about this peer's capabilities until it talks.
            let path = format!("/v1/agents/{from}");
            self.http(
                cx,
                Purpose::AgentInfo {
                    peer: from.clone(),
                    then_bundle: false,
                },
                "GET",
                &path,
                false,
                None,
            );
        }
        // Frames that raced ahead of this KNOCK.
        if let Some(early) = self.early.remove(&from) {
            let socket = self.link.open_socket().unwrap_or(0);
            for (text, _) in early {
                self.on_frame(cx, socket, &text);
            }
        }
    }

    /// A KNOCK from an agent whose Ed25519 key we do not know yet (AGT
    /// peers do not send it): hold the KNOCK, unacked, and fetch the
    /// agent's registry bundle, whose binding to the DID we verify.
    fn verify_knocker(&mut self, cx: &mut Cx<'_>, from: &str, v: &Value) {
        let waiting = self.knocks_awaiting_identity.contains_key(from);
        if !waiting && self.knocks_awaiting_identity.len() >= MAX_PENDING_PEERS {
            return;
        }
        let q = self
            .knocks_awaiting_identity
            .entry(from.to_string())
            .or_default();
        if q.len() < EARLY_PER_PEER {
            q.push(v.to_string());
        }
        if !waiting {
            let path = format!("/v1/agents/{from}/prekeys");
            self.http(
                cx,
                Purpose::VerifyKnocker(from.to_string()),
                "GET",
                &path,
                false,
                None,
            );
        }
    }

    fn on_knocker_bundle(
        &mut self,
        cx: &mut Cx<'_>,
        from: &str,
        ok: bool,
        body: &[u8],
        problem: &str,
    ) {
        let held = self
            .knocks_awaiting_identity
            .remove(from)
            .unwrap_or_default();
        let verified = if ok {
            registry::parse_bundle(&String::from_utf8_lossy(body))
                .ok()
                .filter(|b| b.verify_for(from).is_ok())
                .map(|b| b.identity_key_ed)
        } else {
            None
        };
        let Some(ed) = verified else {
            cx.log(
                LogLevel::Warn,
                &format!("could not verify the identity of {from}, which knocked ({problem}); its KNOCK is refused"),
            );
            for text in held {
                if let Some(id) = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
                {
                    self.ack(cx, &id);
                }
            }
            return;
        };
        self.peers
            .entry(from.to_string())
            .or_insert_with(|| Peer::new(from))
            .identity_ed = Some(ed);
        let socket = self.link.open_socket().unwrap_or(0);
        for text in held {
            self.on_frame(cx, socket, &text);
        }
    }

    /// Count, log and ack a frame we cannot use, so the relay stops pushing it.
    fn refuse_malformed(&mut self, cx: &mut Cx<'_>, id: &str, why: &str) {
        self.stats.malformed += 1;
        cx.log(LogLevel::Warn, why);
        self.ack(cx, id);
    }

    fn on_knock_reply(&mut self, cx: &mut Cx<'_>, v: &Value, accepted: bool) {
        let Some((from, id)) = self.routed(cx, v) else {
            return;
        };
        let (from, id) = (from.to_string(), id.to_string());
        let knock_id = v["knock_id"].as_str().unwrap_or("");
        if let Some(p) = self.peers.get_mut(&from) {
            if p.knock_sent.as_deref() == Some(knock_id) {
                if accepted {
                    p.knock_sent = None;
                    p.pending_knock = None;
                } else {
                    cx.log(LogLevel::Warn, &format!("{from} refused our session (policy_denied); queued messages to it are dropped"));
                    p.active = None;
                    p.knock_sent = None;
                    p.pending_knock = None;
                    p.outbox.clear();
                }
                self.save_peer(cx, &from);
            }
        }
        self.ack(cx, &id);
    }

    // ---------------------------------------------------------------- message

    fn on_message(&mut self, cx: &mut Cx<'_>, v: &Value, text: &str) {
        let Some((from, id)) = self.routed(cx, v) else {
            return;
        };
        let (from, id) = (from.to_string(), id.to_string());
        let now = cx.now();
        let plaintext_flag = v["plaintext"].as_bool() == Some(true);
        let has_header = v["header"]["dh"].is_string();
        if plaintext_flag || (!has_header && v.get("payload").is_some()) {
            return self.on_plaintext(cx, v, &from, &id);
        }
        if !has_header {
            self.stats.malformed += 1;
            self.ack(cx, &id);
            return;
        }
        let msg = match frames::parse_message_frame(text) {
            Ok(m) => m,
            Err(e) => {
                return self.refuse_malformed(
                    cx,
                    &id,
                    &format!("message {id} from {from} refused: {e}"),
                );
            }
        };
        let we_are_smaller = self.id.did() < from.as_str();
        let has_session = self
            .peers
            .get(&from)
            .is_some_and(|p| p.active.is_some() || !p.candidates.is_empty());
        if !has_session {
            if !self.cfg.accepts(&from) {
                // We refused this peer's KNOCK: its frames can never be read.
                self.ack(cx, &id);
                return;
            }
            return self.hold_early(cx, &from, v, now);
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        if let Some(seq) = peer.seen_seq(&id) {
            // Consumed before; our ack or receipt was lost. Say so again.
            self.stats.duplicates += 1;
            self.ack(cx, &id);
            if let Some(s) = seq {
                self.queue_receipt(cx, &from, s);
            }
            return;
        }
        let (pt, how) = match peer.decrypt(&msg.header, &msg.ciphertext, we_are_smaller, cx.host) {
            Ok(r) => r,
            Err(e) => {
                // Not marked as seen: a later copy of the same frame (the
                // sender re-sends until receipted) may decrypt once the KNOCK
                // it belongs to is here. Acked so the relay stops pushing it.
                self.stats.undecryptable += 1;
                cx.log(
                    LogLevel::Warn,
                    &format!("message {id} from {from} could not be decrypted: {e}"),
                );
                self.ack(cx, &id);
                return;
            }
        };
        if how == Decrypted::Active && peer.initiated_by_us {
            peer.knock_sent = None;
            peer.pending_knock = None;
        }
        let mut payload: Value =
            serde_json::from_slice(&pt).unwrap_or_else(|_| match String::from_utf8(pt.clone()) {
                Ok(s) => Value::String(s),
                Err(_) => json!({"raw_b64": crate::wire::b64::encode_std(&pt)}),
            });
        let envelope = payload.as_object_mut().and_then(|o| o.remove("kars"));
        if envelope.is_some() {
            peer.kars = true;
        }
        if let Some(env) = envelope
            .as_ref()
            .filter(|e| e.get("receipt").is_some() || e.get("upto").is_some())
        {
            // Receipts: the listed sequence numbers, and everything below `upto`.
            let done: Vec<u64> = env["receipt"]
                .as_array()
                .map(|r| r.iter().filter_map(|x| x.as_u64()).collect())
                .unwrap_or_default();
            let upto = env["upto"].as_u64().unwrap_or(0);
            let epoch_ok = env["epoch"].as_u64().is_none_or(|e| e == peer.out_epoch);
            if epoch_ok {
                peer.outbox
                    .retain(|o| !o.needs_receipt || (!done.contains(&o.seq) && o.seq >= upto));
            }
            peer.mark_seen(&id, now, None);
            self.save_peer(cx, &from);
            self.ack(cx, &id);
            self.after_decrypt(cx, &from, how);
            return;
        }
        let seq = envelope.as_ref().and_then(|e| e["seq"].as_u64());
        let epoch = envelope.as_ref().and_then(|e| e["epoch"].as_u64());
        if let Some(e) = epoch {
            if peer.in_epoch != Some(e) {
                // The sender starts a new numbering (first contact, or it lost
                // its state but kept its identity).
                if peer.in_epoch.is_some() {
                    cx.log(
                        LogLevel::Info,
                        &format!("{from} restarted its message numbering"),
                    );
                }
                peer.in_epoch = Some(e);
                peer.in_next = 0;
                for n in self.inbox.held_from(&from).into_values() {
                    let fresh = self.inbox.next_n();
                    if let Some(en) = self.inbox.release(n, fresh).cloned() {
                        self.save_entry(cx, &en);
                    }
                }
            }
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        self.stats.received += 1;
        let ts = v["ts"].as_str().map(|s| s.chars().take(40).collect());
        let duplicate = seq
            .is_some_and(|s| s < peer.in_next || self.inbox.has_seq(&from, epoch, s))
            || self.inbox.contains(&from, &id);
        let over_quota = self.inbox.unread_from(&from) >= MAX_UNREAD_PER_SENDER;
        let held = !duplicate && seq.is_some_and(|s| s > peer.in_next);
        // A copy we already hold still moves the expected number on (a crash
        // may have lost the record that did so the first time).
        if let (Some(s), false) = (seq, held) {
            peer.in_next = peer.in_next.max(s.saturating_add(1));
        }
        if over_quota && !duplicate {
            cx.log(LogLevel::Warn, &format!("{from} has {MAX_UNREAD_PER_SENDER} unread messages; refusing more until some are read"));
            self.ack(cx, &id);
            return;
        }
        peer.mark_seen(&id, now, seq);
        let pairing_msg = !duplicate && !held && self.wants_pairing(&from, &payload);
        if duplicate {
            self.stats.duplicates += 1;
            self.release_held(cx, &from);
        } else if pairing_msg {
            self.release_held(cx, &from);
        } else {
            let n = self.inbox.next_n();
            let entry = Entry {
                id: id.clone(),
                from: from.clone(),
                ts,
                received_at: now,
                evidence: Evidence::Encrypted,
                payload: std::mem::take(&mut payload),
                read: false,
                held,
                seq,
                epoch,
                n,
            };
            self.save_entry(cx, &entry);
            self.inbox.insert(entry);
            if !held {
                self.release_held(cx, &from);
            }
        }
        self.save_peer(cx, &from);
        if pairing_msg {
            // Its effects (ledger, pairing record, answer) land before the ack.
            self.intercept_pairing(cx, &from, &payload);
        }
        self.ack(cx, &id);
        if let Some(s) = seq {
            self.queue_receipt(cx, &from, s);
        }
        self.after_decrypt(cx, &from, how);
        self.wake_waiters(cx);
    }

    fn hold_early(&mut self, cx: &mut Cx<'_>, from: &str, v: &Value, now: u64) {
        // No session yet: the KNOCK may still be on its way. Keep a few and do
        // not ack them, so the relay redelivers them if we restart.
        for q in self.early.values_mut() {
            q.retain(|(_, t)| now.saturating_sub(*t) < EARLY_TTL_MS);
        }
        self.early.retain(|_, q| !q.is_empty());
        let bytes: usize = self.early.values().flatten().map(|(t, _)| t.len()).sum();
        if (self.early.len() >= EARLY_PEERS && !self.early.contains_key(from))
            || bytes > EARLY_MAX_BYTES
        {
            return;
        }
        let q = self.early.entry(from.to_string()).or_default();
        if q.len() < EARLY_PER_PEER {
            q.push((v.to_string(), now));
        }
        let _ = cx;
    }

    /// Deliver held messages from `from` that are now in sequence. Released
    /// entries get a fresh arrival number, so the inbox lists them after the
    /// ones they waited for. Held copies below the next expected number are
    /// duplicates and are erased.
    fn release_held(&mut self, cx: &mut Cx<'_>, from: &str) {
        let held = self.inbox.held_from(from);
        let Some(peer) = self.peers.get_mut(from) else {
            return;
        };
        let mut next = peer.in_next;
        let mut released = Vec::new();
        let mut stale = Vec::new();
        for (seq, n) in held {
            if seq < next {
                stale.push(n);
                continue;
            }
            if seq != next {
                break;
            }
            released.push(n);
            next = next.saturating_add(1);
        }
        peer.in_next = next;
        for n in released {
            let fresh = self.inbox.next_n();
            if let Some(e) = self.inbox.release(n, fresh).cloned() {
                self.save_entry(cx, &e);
            }
        }
        for n in stale {
            if let Some(e) = self.inbox.remove(n) {
                cx.out.push(Command::Erase(e.storage_key()));
            }
        }
    }

    /// A sender that never fills a gap must not block its later messages
    /// forever: after HOLD_MAX_MS skip to the oldest held one.
    fn release_stale_holds(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now();
        while let Some(e) = self.inbox.oldest_held().cloned() {
            if now.saturating_sub(e.received_at) < HOLD_MAX_MS {
                break;
            }
            let lowest = self
                .inbox
                .held_from(&e.from)
                .keys()
                .next()
                .copied()
                .unwrap_or(0);
            let from = e.from.clone();
            match self.peers.get_mut(&from) {
                Some(p) => {
                    cx.log(
                        LogLevel::Warn,
                        &format!(
                            "gave up waiting for message {} from {from}; delivering later ones",
                            p.in_next
                        ),
                    );
                    p.in_next = p.in_next.max(lowest);
                }
                None => {
                    // No peer record: nothing will ever fill the gap.
                    let fresh = self.inbox.next_n();
                    self.inbox.release(e.n, fresh);
                    continue;
                }
            }
            self.release_held(cx, &from);
            self.save_peer(cx, &from);
            self.wake_waiters(cx);
        }
    }

    fn after_decrypt(&mut self, cx: &mut Cx<'_>, from: &str, how: Decrypted) {
        if how == Decrypted::Promoted {
            // The peer's session replaced ours: what it has not receipted must
            // go again under the new session.
            self.reencrypt_outbox(cx, from);
        }
        if let Some(q) = self.awaiting_session.remove(from) {
            if self
                .peers
                .get(from)
                .is_some_and(|p| p.active.as_ref().is_some_and(|r| r.can_send()))
            {
                for item in q {
                    self.encrypt_and_queue(cx, from, item.payload, item.call_id, item.key);
                }
            } else {
                self.awaiting_session.insert(from.to_string(), q);
            }
        }
    }

    fn on_plaintext(&mut self, cx: &mut Cx<'_>, v: &Value, from: &str, id: &str) {
        if !self.cfg.trusted_plaintext.iter().any(|d| d == from) {
            // The flag is honoured only from DIDs the user trusts for it.
            self.stats.plaintext_dropped += 1;
            cx.log(
                LogLevel::Warn,
                &format!(
                    "dropped a plaintext frame from {from}, which is not trusted for plaintext"
                ),
            );
            self.ack(cx, id);
            return;
        }
        let now = cx.now();
        let peer = self
            .peers
            .entry(from.to_string())
            .or_insert_with(|| Peer::new(from));
        if peer.has_seen(id) {
            self.ack(cx, id);
            return;
        }
        let body = v["payload"]
            .as_str()
            .or_else(|| v["ciphertext"].as_str())
            .unwrap_or("");
        let payload = match plaintext::decode_body(body) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                cx.log(
                    LogLevel::Warn,
                    &format!("plaintext frame {id} from {from}: {e}"),
                );
                self.ack(cx, id);
                return;
            }
        };
        peer.mark_seen(id, now, None);
        let n = self.inbox.next_n();
        let ts = v["ts"].as_str().map(|s| s.chars().take(40).collect());
        let entry = Entry {
            id: id.to_string(),
            from: from.to_string(),
            ts,
            received_at: now,
            evidence: Evidence::Plaintext,
            payload,
            read: false,
            held: false,
            seq: None,
            epoch: None,
            n,
        };
        self.save_entry(cx, &entry);
        self.inbox.insert(entry);
        self.save_peer(cx, from);
        self.ack(cx, id);
        self.stats.received += 1;
        self.wake_waiters(cx);
    }

    // ---------------------------------------------------------------- sending

    /// Send a JSON payload to a peer DID: now if there is a session, after
    /// fetching its bundle if not. Answers `call_id` once committed.
    /// `key`: the caller's idempotency key. A retry with a key already
    /// committed answers with the first send's result instead of sending
    /// again (a caller cut off before the answer cannot know otherwise).
    pub fn send_payload(
        &mut self,
        cx: &mut Cx<'_>,
        to: &str,
        payload: Value,
        call_id: Option<String>,
        key: Option<String>,
    ) {
        if let (Some(k), Some(c)) = (&key, &call_id) {
            if let Some(fid) = self.peers.get(to).and_then(|p| p.sent_key(k)) {
                let fid = fid.to_string();
                return tools::ok(
                    cx,
                    c,
                    &format!(
                        "✅ Already sent to {to} (idempotency key seen before); not sent again"
                    ),
                    json!({"to": to, "id": fid, "session": "existing", "queued": false, "duplicate": true}),
                );
            }
        }
        let can_send = self
            .peers
            .get(to)
            .is_some_and(|p| p.active.as_ref().is_some_and(|r| r.can_send()));
        if can_send {
            return self.encrypt_and_queue(cx, to, payload, call_id, key);
        }
        let waiting = self.awaiting_session.contains_key(to);
        self.awaiting_session
            .entry(to.to_string())
            .or_default()
            .push(Queued {
                call_id,
                payload,
                key,
            });
        if waiting {
            return;
        }
        // Capabilities first (does the peer speak receipts?), then the bundle,
        // so the very first message already carries the delivery envelope.
        let path = format!("/v1/agents/{to}");
        self.http(
            cx,
            Purpose::AgentInfo {
                peer: to.to_string(),
                then_bundle: true,
            },
            "GET",
            &path,
            false,
            None,
        );
    }

    fn on_bundle(
        &mut self,
        cx: &mut Cx<'_>,
        peer_did: &str,
        status: Option<u16>,
        body: &[u8],
        problem: &str,
    ) {
        let queued = self.awaiting_session.remove(peer_did).unwrap_or_default();
        if self
            .peers
            .get(peer_did)
            .is_some_and(|p| p.active.as_ref().is_some_and(|r| r.can_send()))
        {
            // A session came up meanwhile (the peer knocked first and its
            // message arrived): use it rather than replacing it.
            for q in queued {
                self.encrypt_and_queue(cx, peer_did, q.payload, q.call_id, q.key);
            }
            return;
        }
        let fail_all = |cx: &mut Cx<'_>, msg: &str, queued: Vec<Queued>| {
            for q in queued {
                if let Some(c) = q.call_id {
                    tools::fail(cx, &c, msg);
                }
            }
        };
        if status == Some(404) {
            return fail_all(cx, &format!("{peer_did} has no prekey bundle in the registry: it is not registered, or the registry restarted and the agent has not come back yet. Check the DID or try again later."), queued);
        }
        if !status.is_some_and(|s| (200..300).contains(&s)) {
            return fail_all(
                cx,
                &format!("Could not fetch the prekey bundle of {peer_did}: {problem}"),
                queued,
            );
        }
        let text = String::from_utf8_lossy(body);
        let bundle = match registry::parse_bundle(&text)
            .map_err(|e| e.to_string())
            .and_then(|b| b.verify_for(peer_did).map(|_| b).map_err(|e| e.to_string()))
        {
            Ok(b) => b,
            Err(e) => {
                return fail_all(
                    cx,
                    &format!("Refusing the prekey bundle of {peer_did}: {e}"),
                    queued,
                )
            }
        };
        let (agreement, est) = match x3dh::initiate(&self.id, &bundle, cx.host) {
            Ok(r) => r,
            Err(e) => {
                return fail_all(
                    cx,
                    &format!("Key agreement with {peer_did} failed: {e}"),
                    queued,
                )
            }
        };
        let ad = channel_ad(self.id.did(), peer_did, &agreement.associated_data);
        let ratchet = match Ratchet::new_initiator(
            &agreement.shared_secret,
            &bundle.signed_prekey,
            ad,
            cx.host,
        ) {
            Ok(r) => r,
            Err(e) => {
                return fail_all(
                    cx,
                    &format!("Key agreement with {peer_did} failed: {e}"),
                    queued,
                )
            }
        };
        let knock_id = frames::uuid_v4(cx.host);
        let ts = Self::timestamp(cx);
        let mut est_v: Value =
            serde_json::from_str(&frames::establishment_json(&est)).unwrap_or_default();
        // Our extension: the Ed25519 key, so a kars-mesh responder can bind
        // the KNOCK to our DID without a registry round trip.
        est_v["ik_ed"] = json!(crate::wire::b64::encode_std(self.id.ed25519_public()));
        let knock = json!({"v":1,"type":"knock","from":self.id.did(),"to":peer_did,"id":knock_id,"ts":ts,"intent":{"action":"establish_session"},"establishment":est_v}).to_string();
        let peer = self
            .peers
            .entry(peer_did.to_string())
            .or_insert_with(|| Peer::new(peer_did));
        peer.identity_ed = Some(bundle.identity_key_ed);
        peer.active = Some(ratchet);
        peer.initiated_by_us = true;
        peer.confirmed = false;
        peer.knock_sent = Some(knock_id);
        peer.pending_knock = Some(knock.clone());
        // Everything for this peer is sealed under the new session in memory
        // and committed in one record before the KNOCK and frames leave.
        let stale: Vec<OutEntry> = std::mem::take(&mut peer.outbox);
        let mut frames_out = vec![knock];
        let mut answers = Vec::new();
        self.reseal(cx, peer_did, stale, &mut frames_out);
        for q in queued {
            match self.seal_for_peer(cx, peer_did, q.payload, None, q.key) {
                Ok(sealed) => {
                    frames_out.push(sealed.frame.clone());
                    answers.push((q.call_id, Ok(sealed)));
                }
                Err(e) => answers.push((q.call_id, Err(e))),
            }
        }
        self.commit_and_send(cx, peer_did, frames_out, answers);
    }

    fn encrypt_and_queue(
        &mut self,
        cx: &mut Cx<'_>,
        to: &str,
        payload: Value,
        call_id: Option<String>,
        key: Option<String>,
    ) {
        let (frames_out, answer) = match self.seal_for_peer(cx, to, payload, None, key) {
            Ok(sealed) => (vec![sealed.frame.clone()], Ok(sealed)),
            Err(e) => (Vec::new(), Err(e)),
        };
        self.commit_and_send(cx, to, frames_out, vec![(call_id, answer)]);
    }

    /// Encrypt one message for `to` and queue it in the peer's outbox, in
    /// memory only. `keep_seq`: a message re-encrypted under a new session
    /// keeps its sequence number, so a copy the peer already has is
    /// recognised.
    fn seal_for_peer(
        &mut self,
        cx: &mut Cx<'_>,
        to: &str,
        mut payload: Value,
        keep_seq: Option<u64>,
        key: Option<String>,
    ) -> Result<Sealed, String> {
        let now = cx.now();
        let fid = frames::uuid_v4(cx.host);
        let ts = Self::timestamp(cx);
        let me = self.id.did().to_string();
        let Some(peer) = self.peers.get_mut(to) else {
            return Err(format!("no session with {to}"));
        };
        if peer.out_epoch == 0 {
            let mut e = [0u8; 8];
            cx.host.fill(&mut e);
            // Kept below 2^53 so JavaScript readers see it exactly.
            peer.out_epoch = (u64::from_le_bytes(e) >> 11).max(1);
        }
        let kars = peer.kars;
        let waiting = peer.outbox.iter().filter(|o| o.needs_receipt).count();
        if keep_seq.is_none() && waiting >= OUTBOX_MAX {
            // Refuse rather than drop: nothing already accepted is ever lost.
            return Err(format!(
                "{waiting} messages to {to} are still waiting for its receipt (it looks offline); \
                 nothing more is queued until it comes back. Try again later."
            ));
        }
        let seq = keep_seq.unwrap_or(peer.out_seq);
        let bare = serde_json::to_vec(&payload).unwrap_or_default();
        if kars {
            if let Some(o) = payload.as_object_mut() {
                o.insert(
                    "kars".to_string(),
                    json!({"seq": seq, "epoch": peer.out_epoch}),
                );
            }
        }
        let plain = serde_json::to_vec(&payload).unwrap_or_default();
        if plain.len() > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "Message is {} bytes; the limit is {MAX_PAYLOAD_BYTES}. Send large data as a file transfer.",
                plain.len()
            ));
        }
        let Some(ratchet) = peer.active.as_mut() else {
            return Err(format!("no session with {to}"));
        };
        let (header, ct) = ratchet
            .encrypt(&plain, cx.host)
            .map_err(|e| format!("Could not encrypt for {to}: {e}"))?;
        let frame = frames::message_frame(&me, to, &fid, &ts, &header, &ct);
        if kars && keep_seq.is_none() {
            peer.out_seq = peer.out_seq.saturating_add(1);
        }
        if let Some(k) = &key {
            peer.remember_key(k, &fid);
        }
        peer.outbox.push(OutEntry {
            seq,
            frame_id: fid.clone(),
            frame: frame.clone(),
            plaintext: bare,
            created_ms: now,
            last_sent_ms: now,
            attempts: 1,
            needs_receipt: kars,
            key,
        });
        self.stats.sent += 1;
        Ok(Sealed {
            frame_id: fid,
            frame,
            new_session: peer.knock_sent.is_some(),
        })
    }

    /// Commit the peer record (session steps and outbox together), then send
    /// the frames, then answer the tool calls: a crash can repeat a frame,
    /// never lose a committed one or reuse a key.
    fn commit_and_send(
        &mut self,
        cx: &mut Cx<'_>,
        to: &str,
        frames_out: Vec<String>,
        answers: Vec<(Option<String>, Result<Sealed, String>)>,
    ) {
        self.save_peer(cx, to);
        let sent_now = self.link.open_socket().is_some();
        if sent_now {
            for f in frames_out {
                self.send_frame(cx, f);
            }
            // Without receipts from this peer a frame on an open link is the
            // relay's to deliver; the record forgets it on its next save.
            if let Some(p) = self.peers.get_mut(to) {
                p.outbox.retain(|o| o.needs_receipt);
            }
        }
        for (call, answer) in answers {
            let Some(c) = call else { continue };
            match answer {
                Ok(sealed) => {
                    let kind = if sealed.new_session {
                        "new"
                    } else {
                        "existing"
                    };
                    let text = if sent_now {
                        format!(
                            "✅ Sent to {to} (end-to-end encrypted{})",
                            if sealed.new_session {
                                ", new session"
                            } else {
                                ""
                            }
                        )
                    } else {
                        format!("✅ Queued for {to} (end-to-end encrypted); the relay is not reachable right now, it will go out when the link is back")
                    };
                    tools::ok(
                        cx,
                        &c,
                        &text,
                        json!({"to": to, "id": sealed.frame_id, "session": kind, "queued": !sent_now}),
                    );
                }
                Err(e) => tools::fail(cx, &c, &e),
            }
        }
    }

    /// Receipt for one message, plus everything below `in_next`, so a lost
    /// receipt never pins the sender's outbox.
    /// Receipts are coalesced: one cumulative receipt per peer per
    /// RECEIPT_DELAY_MS instead of one per message, which halves the writes
    /// and events on both sides under load. A receipt lost to a crash only
    /// means the sender sends again, and we answer again.
    fn queue_receipt(&mut self, cx: &mut Cx<'_>, to: &str, seq: u64) {
        if self.receipts_due.is_empty() {
            self.arm(cx, T_RECEIPTS, RECEIPT_DELAY_MS);
        }
        let q = self.receipts_due.entry(to.to_string()).or_default();
        if q.len() < 256 {
            q.push(seq);
        }
    }

    fn flush_receipts(&mut self, cx: &mut Cx<'_>) {
        for (to, seqs) in std::mem::take(&mut self.receipts_due) {
            if let Some(frame) = self.seal_receipt(cx, &to, &seqs) {
                self.save_peer(cx, &to);
                self.send_frame(cx, frame);
            }
        }
    }

    /// Encrypt a receipt (in memory; the caller commits the peer record):
    /// the message `seq` plus everything below `in_next`, so a lost receipt
    /// never pins the sender's outbox.
    fn seal_receipt(&mut self, cx: &mut Cx<'_>, to: &str, seqs: &[u64]) -> Option<String> {
        let fid = frames::uuid_v4(cx.host);
        let ts = Self::timestamp(cx);
        let me = self.id.did().to_string();
        let peer = self.peers.get_mut(to)?;
        // Explicit numbers only for those above the cumulative mark (held).
        let explicit: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| *s >= peer.in_next)
            .collect();
        let mut env = json!({"receipt": explicit, "upto": peer.in_next});
        if let Some(e) = peer.in_epoch {
            env["epoch"] = json!(e);
        }
        let r = peer.active.as_mut().filter(|r| r.can_send())?;
        let body = json!({"type": "kars_receipt", "kars": env}).to_string();
        let (header, ct) = r.encrypt(body.as_bytes(), cx.host).ok()?;
        Some(frames::message_frame(&me, to, &fid, &ts, &header, &ct))
    }

    /// Seal outbox entries again under the peer's current session, keeping
    /// their sequence numbers and idempotency keys; their frames are added to
    /// `frames_out` (nothing is committed here).
    fn reseal(
        &mut self,
        cx: &mut Cx<'_>,
        peer_did: &str,
        stale: Vec<OutEntry>,
        frames_out: &mut Vec<String>,
    ) {
        for o in stale {
            let payload: Value = serde_json::from_slice(&o.plaintext).unwrap_or_default();
            if let Ok(sealed) = self.seal_for_peer(
                cx,
                peer_did,
                payload,
                o.needs_receipt.then_some(o.seq),
                o.key.clone(),
            ) {
                frames_out.push(sealed.frame);
            }
        }
    }

    fn reencrypt_outbox(&mut self, cx: &mut Cx<'_>, peer_did: &str) {
        let Some(peer) = self.peers.get_mut(peer_did) else {
            return;
        };
        if !peer.active.as_ref().is_some_and(|r| r.can_send()) {
            return;
        }
        let stale: Vec<OutEntry> = std::mem::take(&mut peer.outbox);
        peer.pending_knock = None;
        let mut frames_out = Vec::new();
        self.reseal(cx, peer_did, stale, &mut frames_out);
        self.commit_and_send(cx, peer_did, frames_out, Vec::new());
    }

    /// (Re)send what is pending: on a new link everything, on a tick only
    /// what has waited longer than RESEND_AFTER_MS.
    fn flush_all(&mut self, cx: &mut Cx<'_>, everything: bool) {
        if self.link.open_socket().is_none() {
            return;
        }
        let now = cx.now();
        let dids: Vec<String> = self.peers.keys().cloned().collect();
        for did in dids {
            let mut frames_out = Vec::new();
            let mut changed = false;
            if let Some(p) = self.peers.get_mut(&did) {
                if everything {
                    // A KNOCK not yet confirmed goes again before its messages
                    // (the relay may have lost it; the peer ignores repeats).
                    if let Some(k) = &p.pending_knock {
                        frames_out.push(k.clone());
                    }
                }
                let before = p.outbox.len();
                p.outbox.retain(|o| {
                    now.saturating_sub(o.created_ms) < crate::mesh::session::SEEN_TTL_MS
                });
                changed |= p.outbox.len() != before;
                for o in p.outbox.iter_mut() {
                    if everything || now.saturating_sub(o.last_sent_ms) >= RESEND_AFTER_MS {
                        o.last_sent_ms = now;
                        o.attempts += 1;
                        frames_out.push(o.frame.clone());
                        changed = true;
                    }
                }
                let before = p.outbox.len();
                p.outbox.retain(|o| o.needs_receipt);
                changed |= p.outbox.len() != before;
            }
            if changed {
                self.save_peer(cx, &did);
            }
            if !frames_out.is_empty() {
                self.stats.resent += frames_out.len() as u64;
            }
            for f in frames_out {
                self.send_frame(cx, f);
            }
        }
    }

    fn wake_waiters(&mut self, cx: &mut Cx<'_>) {
        let mut i = 0;
        while i < self.waiters.len() {
            let w = &self.waiters[i];
            if !self.inbox.unread(w.from.as_deref()).is_empty() {
                let w = self.waiters.remove(i);
                cx.out.push(Command::TimerCancel(w.timer));
                self.answer_waiter(cx, &w, false);
            } else {
                i += 1;
            }
        }
    }

    fn answer_waiter(&mut self, cx: &mut Cx<'_>, w: &Waiter, timed_out: bool) {
        tools::inbox_answer(
            self,
            cx,
            &w.call_id,
            w.from.as_deref(),
            w.limit,
            w.peek,
            timed_out,
        );
    }

    pub fn on_abort(&mut self, cx: &mut Cx<'_>, call_id: &str) {
        if let Some(pos) = self.waiters.iter().position(|w| w.call_id == call_id) {
            let w = self.waiters.remove(pos);
            cx.out.push(Command::TimerCancel(w.timer));
            tools::fail(cx, call_id, "Cancelled.");
        }
    }

    pub fn on_stop(&mut self, cx: &mut Cx<'_>) {
        for w in std::mem::take(&mut self.waiters) {
            cx.out.push(Command::TimerCancel(w.timer));
            self.answer_waiter(cx, &w, true);
        }
        self.flush_receipts(cx);
        if let Some(socket) = self.link.open_socket() {
            let bye = json!({"v": 1, "type": "disconnect", "from": self.id.did()}).to_string();
            cx.out.push(Command::SocketSend { socket, text: bye });
            cx.out.push(Command::SocketClose {
                socket,
                code: 1000,
                reason: "client disconnect".into(),
            });
        }
        for t in [
            T_RELAY_HEARTBEAT,
            T_RECONNECT,
            T_REGISTRY,
            T_REREGISTER,
            T_RECEIPTS,
        ] {
            cx.out.push(Command::TimerCancel(t));
        }
        self.link.state = LinkState::Replaced;
    }

    fn wants_pairing(&self, from: &str, payload: &Value) -> bool {
        match payload["type"].as_str() {
            Some("pair_request") => self.is_controller(),
            Some("pair_response") => self.pair_waits.iter().any(|w| w.controller == from),
            _ => false,
        }
    }

    pub fn tool(&mut self, cx: &mut Cx<'_>, call_id: &str, tool: &str, args: &Value) {
        let null = json!({});
        tools::handle(
            self,
            cx,
            call_id,
            tool,
            if args.is_null() { &null } else { args },
        );
    }

    pub fn status(&self) -> Value {
        json!({
            "did": self.id.did(),
            "amid": self.id.amid(),
            "registered": self.registered,
            "connected": self.link.open_socket().is_some(),
            "relay_problem": self.link.last_problem,
            "sessions": self.peers.values().filter(|p| p.active.is_some()).count(),
            "unread": self.inbox.unread_count(),
            "stats": self.stats,
        })
    }
}
