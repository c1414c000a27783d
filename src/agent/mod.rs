//! The mesh agent: registry membership, the relay link, encrypted sessions,
//! delivery with receipts, and the inbox, as one deterministic state machine.
//! Every state change is emitted as a `Store` before the frame or ack that
//! depends on it.

mod address;
mod ahead;
mod handover;
pub mod inbox;
mod node_port;
mod pacer;
mod plain_seen;
mod plain_send;
mod receive;
mod registration;
mod restore;
mod roles;
mod send;
#[cfg(test)]
mod tests;
mod timers;
mod tools;

use crate::crypto::identity::{is_mesh_did, Identity};
use crate::io::{Command, LogLevel};
use crate::mesh::link::{ws_url, CloseAction, Link, LinkState};
use crate::mesh::prekeys::Prekeys;
use crate::mesh::registry as reg;
use crate::mesh::session::Peer;
use crate::offload::client::OffloadClient;
use crate::offload::controller::Controller;
use crate::offload::sandbox::Sandbox;
use crate::pairing::client::{Endpoints, PairingClient};
use crate::pairing::ledger::ControllerAddress;
use crate::pairing::operator::Operator;
use crate::store::{keys, StoreError, Vault};
use crate::tools::render;
use crate::wire::payload::{Family, ParseError, PayloadType};
use crate::wire::relay_frame::{RelayFrame, Route};
use crate::wire::{frames, registry, time};
use inbox::{Entry, Inbox};
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
/// Candidate sessions (from KNOCKs) kept per peer: two KNOCKs' worth of
/// (two signed prekeys) x (spec and legacy KDF).
const MAX_CANDIDATES: usize = 16;
/// Peers in all; a KNOCK from a new one beyond that is refused.
const MAX_PEERS: usize = 1024;
/// New peers that may open a session at once, then one per period.
const NEW_PEERS_BURST: u64 = 64;
const NEW_PEER_REFILL_MS: u64 = 10_000;
/// Bytes of KNOCKs held while their sender's identity is checked.
const KNOCKS_AWAITING_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Capability every kars-mesh agent registers; peers with it get receipts.
pub const KARS_CAPABILITY: &str = "kars-mesh";
pub const HTTP_TIMEOUT_MS: u32 = 10_000;
const HTTP_RETRIES: u32 = 2;

const T_RELAY_HEARTBEAT: u64 = 1;
const T_RECONNECT: u64 = 2;
const T_REGISTRY: u64 = 3;
const T_REREGISTER: u64 = 4;
const T_RECEIPTS: u64 = 5;
/// Answers to sends held while the first connection attempt is under way.
const T_HELD_SENDS: u64 = 6;
/// How long a send's answer waits for a connection attempt to end.
const HELD_SENDS_MAX_MS: u64 = 5_000;
/// How long new sessions wait for the relay's stored frames after a connect.
const T_SYNC: u64 = 7;
const SYNC_MAX_MS: u64 = 3_000;
/// How long a send to a peer without receipts waits for the relay's
/// confirmation (`handover`) before it is answered as unconfirmed.
const T_CONFIRM: u64 = 8;
const CONFIRM_MAX_MS: u64 = 10_000;
/// The pacer's next share of a large transfer (`pacer::CALL_BUDGET`), due
/// at once: a later engine call, so what arrived meanwhile goes first.
const T_PACE: u64 = 9;
/// How long an inbox read waits, after a connect, for what the relay
/// stored to be taken in: the relay's push (`T_SYNC`), then the registry
/// look-ups of senders whose KNOCK does not carry their key.
const T_INBOX_SYNC: u64 = 10;
const INBOX_SYNC_MAX_MS: u64 = 10_000;
/// Relay acks that may wait (`ack_later`): they go before our next frame,
/// or after ACK_DELAY_MS.
const T_ACKS: u64 = 11;
/// The next re-send of what waits for a receipt: set at the oldest entry's
/// due time (`RESEND_AFTER_MS` after it last went) plus RESEND_SLACK_MS, so
/// a message lost to a receiver's crash goes again about 20 s after it was
/// sent, not at the next relay heartbeat after that (up to 45 s).
const T_RESEND: u64 = 12;
const RESEND_SLACK_MS: u64 = 1_000;
/// Re-send rounds are at least this far apart: entries sent at different
/// times to a peer that is away are not each a round (and a commit) of
/// their own.
const RESEND_ROUND_MIN_MS: u64 = 5_000;
const ACK_DELAY_MS: u64 = 200;
/// Acks held at most; more go out at once.
const ACKS_DUE_MAX: usize = 512;
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

/// `Debug` never shows `relay_token` (a hand-written impl below).
#[derive(Clone, Deserialize)]
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
    /// What to do about a refused (or missing) relay token, in the host's
    /// terms (where the host reads the token from); the engine's own
    /// neutral words without it.
    #[serde(default)]
    pub relay_token_hint: Option<String>,
    /// `"controller"`: keep a pairing ledger and answer `pair_request`.
    #[serde(default)]
    pub role: Option<String>,
    /// Cluster name a controller reports in `pair_response`.
    #[serde(default)]
    pub cluster_name: Option<String>,
    /// Role "sandbox": the one offload this peer works on.
    #[serde(default)]
    pub sandbox: Option<crate::offload::sandbox::SandboxSpec>,
    /// The text of the original plugin's `~/.kars/pairings.json`, imported
    /// once.
    #[serde(default)]
    pub legacy_pairings: Option<String>,
}

/// The relay token and the original's pairings (their secrets) are wiped
/// when a copy of the configuration is dropped.
impl Drop for Config {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(t) = self.relay_token.as_mut() {
            t.zeroize();
        }
        if let Some(p) = self.legacy_pairings.as_mut() {
            p.zeroize();
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may carry credentials until `checked` refuses them.
        let url = |u: &str| {
            if carries_credentials(u) {
                "<a URL with credentials>".to_string()
            } else {
                u.to_string()
            }
        };
        f.debug_struct("Config")
            .field("relay_url", &url(&self.relay_url))
            .field("registry_url", &url(&self.registry_url))
            .field("name", &self.name)
            .field("capabilities", &self.capabilities)
            .field("trusted_plaintext", &self.trusted_plaintext)
            .field("accept_sessions", &self.accept_sessions)
            .field(
                "relay_token",
                &self.relay_token.as_ref().map(|_| "<redacted>"),
            )
            .field("role", &self.role)
            .field("cluster_name", &self.cluster_name)
            .field("sandbox", &self.sandbox)
            .finish_non_exhaustive()
    }
}

/// Whether a URL's authority (between `scheme://` and the path) holds
/// `user@` or `user:password@`.
fn carries_credentials(url: &str) -> bool {
    let rest = url.trim().split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

impl Config {
    /// The relay's WebSocket URL; the registry URL must be http(s). Neither
    /// may carry a user name or password: fetch refuses such a URL (its
    /// error quotes it whole, password included, into every retry's log
    /// line and tool error), and the relay takes its token in the connect
    /// frame. The refusal names neither URL, since both hold the secret.
    fn relay_ws_url(&self) -> Result<String, AgentError> {
        for (what, url) in [("relay", &self.relay_url), ("registry", &self.registry_url)] {
            if carries_credentials(url) {
                return Err(AgentError::Config(format!(
                    "the {what} URL carries a user name or password (user:password@host); remove them from it: kars-mesh never sends URL credentials (a relay token is passed apart from the URL, as KARS_MESH_RELAY_TOKEN)"
                )));
            }
        }
        let ws = ws_url(&self.relay_url).map_err(AgentError::Config)?;
        if !(self.registry_url.starts_with("http://") || self.registry_url.starts_with("https://"))
        {
            return Err(AgentError::Config(format!(
                "registry URL {:?} must start with http:// or https:// (for example http://127.0.0.1:8082)",
                self.registry_url
            )));
        }
        Ok(ws)
    }

    /// The configuration a role implies: a sandbox talks to its requester
    /// and nobody else. (The paired controller is not trusted for
    /// plaintext: the relay does not bind `from`, so a plaintext frame "from
    /// the controller" can come from anyone.)
    fn for_role(mut self) -> Self {
        if let Some(sb) = &self.sandbox {
            self.accept_sessions = AcceptPolicy::Only(vec![sb.requester.clone()]);
        }
        self
    }

    /// Where this agent is connected, for the pairing client.
    fn endpoints(&self) -> Endpoints {
        Endpoints {
            relay_url: self.relay_url.clone(),
            registry_url: self.registry_url.clone(),
            name: self.name.clone(),
        }
    }

    /// A controller's ledger (role "controller"); `None` for other roles or
    /// when the stored ledger cannot be read.
    fn operator(&self, vault: &Vault, id: &Identity, cx: &mut Cx<'_>) -> Option<Operator> {
        if self.role.as_deref() != Some("controller") {
            return None;
        }
        let address = ControllerAddress {
            did: id.did().to_string(),
            amid: id.amid(),
            relay_url: self.relay_url.clone(),
            registry_url: self.registry_url.clone(),
            cluster: self
                .cluster_name
                .clone()
                .unwrap_or_else(|| "kars-cluster".into()),
        };
        Operator::load(vault, cx, address)
    }

    /// The URLs as users paste them, and `accept_sessions` as written by a
    /// user: "all" in any case, or DIDs
    /// (lower-cased, as DIDs are compared). Anything else is refused at the
    /// start: a typo ("ALL", a name for a DID) used to start a node that
    /// quietly refused every session and dropped what was sent.
    fn checked(mut self) -> Result<Self, AgentError> {
        // The registry's base URL as users paste it: spaces, a trailing
        // slash, or the API's own /v1 (which doubled every path to
        // /v1/v1/… and was answered 404).
        let reg = self.registry_url.trim().trim_end_matches('/');
        let reg = reg.strip_suffix("/v1").unwrap_or(reg).trim_end_matches('/');
        self.registry_url = reg.to_string();
        self.relay_url = self.relay_url.trim().to_string();
        // A name nobody could send to ("Alice Smith") used to be registered
        // and then refused by every mesh_send that named it.
        if let Some(n) = self
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            let why = match address::classify(n) {
                address::Address::Name(_) => None,
                address::Address::Invalid(e) => Some(e.to_string()),
                address::Address::Did(_) | address::Address::Amid { .. } => {
                    Some("it reads as an agent's DID or AMID".to_string())
                }
            };
            if let Some(why) = why {
                return Err(AgentError::Config(format!(
                    "the name {:?} cannot be sent to ({why}): give one word of at most 128 characters, such as \"alice\" or \"laptop-claw\"",
                    crate::tools::args::clip(n, 60)
                )));
            }
            self.name = Some(n.to_string());
        }
        let did = |s: &str| -> Result<String, AgentError> {
            let d = s.trim().to_ascii_lowercase();
            if crate::crypto::identity::is_mesh_did(&d) {
                Ok(d)
            } else {
                Err(AgentError::Config(format!(
                    "accept_sessions: {:?} is neither \"all\" nor a DID (did:mesh: and 32 hex digits); give \"all\", one DID, or a list of DIDs (an agent's DID is what `mesh_identity` or `kars-mesh id` prints)",
                    crate::tools::args::clip(s.trim(), 60)
                )))
            }
        };
        self.accept_sessions = match std::mem::take(&mut self.accept_sessions) {
            AcceptPolicy::Named(s) if s.trim().eq_ignore_ascii_case("all") => AcceptPolicy::All,
            AcceptPolicy::Named(s) => AcceptPolicy::Named(did(&s)?),
            AcceptPolicy::Only(list)
                if list.iter().any(|d| d.trim().eq_ignore_ascii_case("all")) =>
            {
                AcceptPolicy::All
            }
            AcceptPolicy::Only(list) => {
                AcceptPolicy::Only(list.iter().map(|d| did(d)).collect::<Result<_, _>>()?)
            }
            AcceptPolicy::All => AcceptPolicy::All,
        };
        Ok(self)
    }

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
    /// Our own record, after a 409 with settings it may not have.
    OwnRecord,
    /// Our own record deleted, to register it with new settings.
    Unregister,
    /// A sandbox's record deleted as it stops: its identity ends with it.
    Leave,
    AgentInfo {
        peer: String,
        for_session: bool,
    },
    Discover {
        call_id: String,
        capability: Option<String>,
        limit: u64,
    },
    /// A name a waiting `mesh_await` must bind to a DID.
    AwaitResolve {
        call_id: String,
        key: String,
    },
    Resolve {
        call_id: String,
        name: String,
        payload: Value,
        key: Option<String>,
    },
    /// The offload client's registry look-up (a kars sandbox by name).
    OffloadLookup(u64),
}

/// The registry's answer to a request, as its owner sees it: whether it
/// succeeded, the body, and the problem in words when it did not.
pub(super) struct HttpAnswer<'a> {
    pub(super) ok: bool,
    pub(super) body: &'a [u8],
    pub(super) problem: &'a str,
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

/// A committed send whose answer waits for the connection attempt.
struct HeldSend {
    call_id: String,
    to: String,
    frame_id: String,
    new_session: bool,
}

struct Queued {
    key: Option<String>,
    call_id: Option<String>,
    payload: Value,
}

/// A tool call left pending until the inbox changes or its timer fires.
enum Waiter {
    Inbox {
        call_id: String,
        timer: u64,
        since_ms: u64,
        query: tools::mesh_inbox::InboxQuery,
    },
    Await(tools::mesh_await::AwaitWait),
}

impl Waiter {
    fn call_id(&self) -> &str {
        match self {
            Waiter::Inbox { call_id, .. } => call_id,
            Waiter::Await(w) => &w.call_id,
        }
    }
    fn timer(&self) -> u64 {
        match self {
            Waiter::Inbox { timer, .. } => *timer,
            Waiter::Await(w) => w.timer,
        }
    }
}

pub use crate::io::Cx;

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
    /// New sessions whose peer's registration (does it speak receipts?) is
    /// still being fetched, beside its bundle: the bundle, if it came first,
    /// waits here for it (`send::fetch_for_session`).
    capabilities_pending: HashMap<String, Option<send::BundleAnswer>>,
    /// Sends committed while the link was connecting, answered when it opens
    /// or fails.
    held_sends: Vec<HeldSend>,
    /// Our sync marker's id while the relay may still be pushing frames it
    /// stored for us (`RelayFrame::sync_marker`).
    sync_id: Option<String>,
    /// This connection's marker until it is back: new sessions stop waiting
    /// for it after `SYNC_MAX_MS`, inbox reads only after
    /// `INBOX_SYNC_MAX_MS` (a far relay pushing many stored frames).
    marker_out: Option<String>,
    /// Sends to peers without receipts written on the link, waiting for a
    /// marker to follow them, and those whose marker is on its way.
    unconfirmed: Vec<HeldSend>,
    confirmations: Vec<handover::Confirmation>,
    /// Inbox reads waiting for the relay's stored frames (`sync_id`).
    after_sync_calls: Vec<(String, tools::mesh_inbox::InboxQuery)>,
    /// Peers whose new session waits for those frames (one of them may be
    /// the peer's own KNOCK: a reference AGT client never moves to a
    /// session we open while it has one, so we must take its).
    fetch_after_sync: std::collections::BTreeSet<String>,
    early: BTreeMap<String, Vec<(String, u64)>>,
    knocks_awaiting_identity: HashMap<String, Vec<String>>,
    /// The Ed25519 key just verified for a KNOCK's sender that is not a
    /// peer yet, while its held KNOCKs are replayed (`on_knocker_bundle`):
    /// the KNOCK makes the peer only once admitted, under the caps and the
    /// rate every new peer meets.
    knocker_verified: Option<(String, [u8; 32])>,
    receipts_due: BTreeMap<String, Vec<u64>>,
    /// When T_RESEND is set for (`arm_resend`), if it is.
    resend_at: Option<u64>,
    /// When T_RESEND last re-sent something.
    resend_round_ms: u64,
    /// Relay acks of frames whose loss costs nothing (`ack_later`).
    acks_due: Vec<String>,
    registered: bool,
    /// This start deleted its registry record to register new settings
    /// (once: a 409 after it keeps the record as it is).
    registration_renewed: bool,
    register_calls: Vec<String>,
    /// The sub-machines (`roles`): each owns its state and sees the node
    /// through `crate::port::Port`.
    pairing: PairingClient,
    offload: OffloadClient,
    controller: Option<Controller>,
    sandbox: Option<Sandbox>,
    /// How a mesh_send call's target is shown once sent ("name (did…)").
    send_labels: HashMap<String, String>,
    /// Consumed plaintext frames (no peer record for plaintext senders).
    plain_seen: plain_seen::PlainSeen,
    /// Plaintext frames to a kars controller written while the relay link
    /// was down (sent once it is up).
    plain_out: Vec<String>,
    /// How many peers we have never seen may open a session now.
    new_peers: crate::mesh::budget::Budget,
    /// Large transfers waiting for room in their peer's window.
    pacer: pacer::Pacer,
    /// Who owns each timer that is not one of the fixed `T_*`.
    timers: timers::Timers,
    /// HTTP requests waiting (under a timer) to be sent again.
    http_retry: HashMap<u64, InFlight>,
    /// When this engine started (the inbox counters count from here).
    started_at: String,
    /// Ratchet steps owed, taken in idle time (`ahead`).
    ahead: ahead::Ahead,
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
        let cfg = cfg.checked()?;
        let ws = cfg.relay_ws_url()?;
        let now = cx.now();
        let cfg = restore::registered_name(cfg, &vault, cx);
        let prekeys = restore::prekeys(&vault, &id, cx, now)?;
        let (mut peers, repairs) = restore::peers(&vault, cx);
        let inbox = restore::inbox(&vault, cx);
        let plain_seen = vault
            .get::<plain_seen::PlainSeen>(cx.host, keys::PLAIN_SEEN)
            .unwrap_or(None)
            .unwrap_or_default();
        let operator = cfg.operator(&vault, &id, cx);
        let mut pairing = PairingClient::load(&vault, cx, cfg.endpoints());
        if let Some(text) = &cfg.legacy_pairings {
            pairing.import_legacy(&vault, cx, text);
        }
        let offload = OffloadClient {
            name: cfg.name.clone(),
            ..Default::default()
        };
        let cfg = cfg.for_role();
        let relay_token_set = cfg.relay_token.as_deref().is_some_and(|t| !t.is_empty());
        let relay_token_hint = cfg.relay_token_hint.clone();
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
            link: Link::new(ws).with_token(relay_token_set, relay_token_hint.as_deref()),
            http: HashMap::new(),
            next_id: DYNAMIC_IDS,
            waiters: Vec::new(),
            awaiting_session: HashMap::new(),
            capabilities_pending: HashMap::new(),
            held_sends: Vec::new(),
            sync_id: None,
            marker_out: None,
            unconfirmed: Vec::new(),
            confirmations: Vec::new(),
            after_sync_calls: Vec::new(),
            fetch_after_sync: Default::default(),
            early: BTreeMap::new(),
            knocks_awaiting_identity: HashMap::new(),
            knocker_verified: None,
            receipts_due: BTreeMap::new(),
            resend_at: None,
            resend_round_ms: 0,
            acks_due: Vec::new(),
            registered: false,
            registration_renewed: false,
            register_calls: Vec::new(),
            pairing,
            offload,
            controller: None,
            sandbox: None,
            send_labels: HashMap::new(),
            plain_seen,
            plain_out: Vec::new(),
            new_peers: crate::mesh::budget::Budget::new(NEW_PEERS_BURST, NEW_PEER_REFILL_MS, now),
            pacer: Default::default(),
            timers: Default::default(),
            http_retry: HashMap::new(),
            started_at: time::format_millis(now),
            ahead: Default::default(),
            stats: Stats::default(),
        };
        agent.begin(cx, repairs, operator);
        Ok(agent)
    }

    /// Loaded: repair what an interrupted write left, then register,
    /// connect and pick up the offload, controller and sandbox roles.
    fn begin(&mut self, cx: &mut Cx<'_>, repairs: restore::Repairs, operator: Option<Operator>) {
        for did in repairs.fast_forwarded {
            cx.log(
                LogLevel::Warn,
                &format!("recovered the sending chain to {did} after an interrupted write"),
            );
            self.save_peer(cx, &did);
        }
        // Their messages wait for a session, as a send to a new peer does
        // (opened once the relay has handed over what it stored for us,
        // which may be the peer's own KNOCK).
        for did in repairs.without_session {
            self.awaiting_session.entry(did.clone()).or_default();
            self.fetch_after_sync.insert(did);
        }
        cx.log(
            LogLevel::Info,
            &format!(
                "agent {} starting; {} sessions, {} inbox entries",
                self.id.did(),
                self.peers.len(),
                self.inbox.len()
            ),
        );
        crate::offload::reassembly::sweep_stale(&self.vault, cx);
        self.vault.migrated();
        self.register(cx);
        self.connect(cx);
        self.arm(cx, T_REGISTRY, REGISTRY_HEARTBEAT_MS);
        self.start_roles(cx, operator);
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
        // Every stored entry's id is in `persisted_out` (both are set
        // together) and ids are unique (fresh per send; restore skips
        // repeats). So when the stored entries are as many as the ids,
        // they are the same set: nothing left the outbox since the last
        // save, and only entries not yet stored need a look. Otherwise
        // (receipts, hand-overs, reseals) the whole outbox is compared.
        let unchanged = p.outbox.iter().filter(|o| o.stored).count() == p.persisted_out.len();
        for o in p.outbox.iter_mut() {
            let needed = if unchanged {
                !o.stored
            } else {
                !p.persisted_out.contains(&o.frame_id)
            };
            if !needed {
                continue;
            }
            let key = format!("{}{}/{}", keys::OUTBOX, did, o.frame_id);
            let stored = match o.record_parts() {
                Ok((head, None)) => self.vault.put_bytes(cx.host, &mut cx.out, &key, &head),
                Ok((head, Some(frame))) => {
                    self.vault
                        .put_with_trailer(cx.host, &mut cx.out, &key, &head, frame)
                }
                Err(e) => Err(crate::store::StoreError::Corrupt {
                    key: key.clone(),
                    detail: crate::wire::describe_json_error(&e),
                }),
            };
            match stored {
                // Only the first entry under an id counts as stored: the
                // fast path above needs the stored entries' ids distinct
                // (a repeat, which no path is known to make, is written
                // again at each save instead).
                Ok(()) => {
                    if p.persisted_out.insert(o.frame_id.clone()) {
                        o.stored = true;
                    }
                }
                Err(e) => cx.host.log(LogLevel::Error, &e.to_string()),
            }
        }
        if !unchanged {
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

    /// Rewrite an entry's small record (read mark, held state). Its payload
    /// record is written once, by `store_entry`.
    fn save_entry(&self, cx: &mut Cx<'_>, e: &Entry) {
        if let Err(err) = self.vault.put(cx.host, &mut cx.out, &e.storage_key(), e) {
            cx.log(LogLevel::Error, &err.to_string());
        }
    }

    /// Store a new entry (payload first, then the entry that points at it)
    /// and keep only the entry in memory.
    fn store_entry(&mut self, cx: &mut Cx<'_>, mut e: Entry) {
        store_entry_records(&self.vault, cx, &mut e);
        self.inbox.insert(e);
    }

    /// An entry's payload, read back from storage.
    fn load_payload(&self, cx: &mut Cx<'_>, e: &Entry) -> Value {
        if !e.payload.is_null() || !e.split {
            return e.payload.clone();
        }
        // Stored in this very call (a waiter woken by the arrival): the
        // record is still among the commands the host has not carried out.
        match self
            .vault
            .get_pending::<Value>(cx.host, &cx.out, &e.payload_key())
        {
            Ok(Some(v)) => v,
            Ok(None) => Value::Null,
            Err(err) => {
                cx.log(LogLevel::Error, &format!("{err}"));
                Value::Null
            }
        }
    }

    /// Is there room in the inbox for a message of `bytes` from `from`?
    /// Read entries make way; a sender over its quota is refused, counted
    /// and logged (a kars sender re-sends until receipted).
    fn inbox_has_room(&mut self, cx: &mut Cx<'_>, from: &str, bytes: usize) -> bool {
        let (verdict, erased) = self.inbox.make_room(from, bytes as u64);
        for key in erased {
            cx.out.push(Command::Erase(key));
        }
        let Err(why) = verdict else {
            return true;
        };
        self.inbox.counters.refused_over_quota += 1;
        let why = match why {
            inbox::Refusal::SenderCount => {
                format!("{} unread messages", inbox::MAX_UNREAD_PER_SENDER)
            }
            inbox::Refusal::SenderBytes => format!(
                "{} MiB of unread messages",
                inbox::MAX_UNREAD_BYTES_PER_SENDER >> 20
            ),
            inbox::Refusal::TotalBytes => format!(
                "an inbox full of unread messages ({} MiB)",
                inbox::MAX_INBOX_BYTES >> 20
            ),
        };
        cx.log(
            LogLevel::Warn,
            &format!("a message from {from} was refused: {why}; more are taken once some are read"),
        );
        false
    }

    fn save_plain_seen(&self, cx: &mut Cx<'_>) {
        if let Err(e) = self
            .vault
            .put(cx.host, &mut cx.out, keys::PLAIN_SEEN, &self.plain_seen)
        {
            cx.log(LogLevel::Error, &e.to_string());
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
            let at_ms = cx.now() + (250u64 << f.attempt);
            let t = self.timers.set(cx, timers::Owner::HttpRetry, at_ms);
            self.http_retry.insert(
                t,
                InFlight {
                    purpose: f.purpose,
                    attempt: f.attempt + 1,
                    request: f.request,
                },
            );
            return;
        }
        // Whatever answers there with something that is not JSON (a web
        // server's page, a captive portal, a proxy's error page) is not the
        // registry, whatever its status: say what came back, briefly, and
        // where; its page is never shown.
        let route_miss = status.is_some_and(|s| reg::is_route_miss(s, body));
        let foreign = status.filter(|_| reg::is_foreign(body) || route_miss);
        let problem = match (status, failure) {
            (Some(s), _) if route_miss => format!(
                "the registry URL {} answered {s} \"Not Found\" for a path every AgentMesh registry serves: is it the registry's address (not the relay's)?",
                self.cfg.registry_url
            ),
            (Some(s), _) if foreign.is_some() => format!(
                "the registry URL {} answered {s} with {}, not with the AgentMesh registry's JSON: is it the registry's address?",
                self.cfg.registry_url,
                reg::describe_foreign(body)
            ),
            (Some(s), _) => format!("registry answered {s}: {}", reg::detail(body)),
            (None, Some(m)) => format!("registry unreachable at {}: {m}", self.cfg.registry_url),
            (None, None) => "registry request failed".to_string(),
        };
        // Not the registry's answer: to every purpose, no answer.
        let status = if foreign.is_some() { None } else { status };
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        let answer = HttpAnswer {
            ok,
            body,
            problem: &problem,
        };
        match f.purpose {
            Purpose::Register => self.on_registered(cx, status, &problem),
            Purpose::Upload => self.on_uploaded(cx, status, body, &problem),
            Purpose::RegistryHeartbeat => self.on_registry_heartbeat(cx, status),
            Purpose::OwnRecord => self.on_own_record(cx, status, body, &problem),
            Purpose::Unregister => self.on_unregistered(cx, status, &problem),
            Purpose::Leave => {
                if !matches!(status, Some(200..=299) | Some(404)) {
                    cx.log(
                        LogLevel::Warn,
                        &format!("could not take this sandbox out of the registry ({problem}); discover lists it until the registry forgets it"),
                    );
                }
            }
            Purpose::Bundle(peer) => self.on_bundle_fetched(cx, &peer, status, body, &problem),
            Purpose::VerifyKnocker(peer) => self.on_knocker_bundle(cx, &peer, ok, body, &problem),
            Purpose::AgentInfo { peer, for_session } => {
                self.on_agent_info(cx, &peer, for_session, ok, body)
            }
            Purpose::Discover {
                call_id,
                capability,
                limit,
            } => tools::discover::answer(self, cx, &call_id, capability.as_deref(), limit, &answer),
            Purpose::AwaitResolve { call_id, key } => {
                tools::mesh_await::on_resolved(self, cx, &call_id, &key, &answer)
            }
            Purpose::Resolve {
                call_id,
                name,
                payload,
                key,
            } => {
                tools::mesh_send::on_send_resolved(self, cx, call_id, &name, payload, key, &answer)
            }
            Purpose::OffloadLookup(tag) => {
                self.with_offload(cx, |o, a, cx| o.on_lookup(a, cx, tag, (ok, body, &problem)))
            }
        }
    }

    /// The registry's answer to a prekey upload.
    fn on_uploaded(&mut self, cx: &mut Cx<'_>, status: Option<u16>, body: &[u8], problem: &str) {
        if status.is_some_and(|s| (200..300).contains(&s)) {
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
            self.finish_register_calls(cx, Some(problem));
        }
    }

    /// A registry heartbeat answered: core-5.0.0 checks the signature before
    /// the agent exists, so a registry that lost us answers 401, not 404.
    fn on_registry_heartbeat(&mut self, cx: &mut Cx<'_>, status: Option<u16>) {
        if matches!(status, Some(401) | Some(404)) {
            cx.log(
                LogLevel::Warn,
                "registry no longer knows this agent (restarted?); registering again",
            );
            self.registered = false;
            self.register(cx);
        }
    }

    /// What the registry says of a peer: does it speak kars receipts? For a
    /// new session (`for_session`), its bundle is used now if it came first.
    fn on_agent_info(
        &mut self,
        cx: &mut Cx<'_>,
        peer: &str,
        for_session: bool,
        ok: bool,
        body: &[u8],
    ) {
        let kars = ok
            && reg::parse_agent(body)
                .is_some_and(|a| a.capabilities.iter().any(|c| c == KARS_CAPABILITY));
        if kars {
            let p = self
                .peers
                .entry(peer.to_string())
                .or_insert_with(|| Peer::new(peer));
            if !p.kars {
                p.kars = true;
                if !for_session {
                    self.save_peer(cx, peer);
                }
            }
        }
        if for_session {
            self.capabilities_known(cx, peer);
        }
    }

    fn finish_register_calls(&mut self, cx: &mut Cx<'_>, problem: Option<&str>) {
        for call in std::mem::take(&mut self.register_calls) {
            match problem {
                None => render::ok(
                    cx,
                    &call,
                    &format!(
                        "✅ Registered as {} with a prekey bundle ({} one-time prekeys held)",
                        self.id.did(),
                        self.prekeys.opk_count()
                    ),
                    json!({"did": self.id.did(), "registered": true, "otk_count": self.prekeys.opk_count()}),
                ),
                Some(p) => render::fail(cx, &call, &format!("Registration failed: {p}")),
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
                // Waiting acks ride along, after the frame (which someone
                // may be waiting for): this batch commits before it sends
                // anyway (js-host/ENGINE.md).
                cx.out.push(Command::SocketSend { socket, text });
                self.push_acks(cx, socket);
                true
            }
            None => false,
        }
    }

    fn ack(&mut self, cx: &mut Cx<'_>, frame_id: &str) {
        self.send_frame(cx, RelayFrame::ack(frame_id).to_text());
    }

    /// Ack a frame later: one whose effects a crash may undo at no cost (a
    /// receipt, taken again if the relay delivers it again, and it takes
    /// nothing twice), or a message whose records this call stores (the
    /// ack is only carried out after they commit). The host commits a batch
    /// before anything of it leaves, so an ack sent at once would cost a
    /// commit (one fsync) of its own whenever nothing else of its batch
    /// leaves (a message that no reader waits for); held, it goes out with
    /// the next thing this engine sends out of the process (a frame, a tool
    /// result: `acks_ride_along`), whose batch commits anyway, or after
    /// ACK_DELAY_MS. The relay keeps a stored frame until it is acked and a
    /// live one needs no ack (agentmesh-wire.md §4.5), so the worst a crash
    /// before the ack does is one redelivery, which the seen ids drop.
    fn ack_later(&mut self, cx: &mut Cx<'_>, frame_id: &str) {
        if self.acks_due.len() >= ACKS_DUE_MAX {
            self.flush_acks(cx);
        }
        if self.acks_due.is_empty() {
            self.arm(cx, T_ACKS, ACK_DELAY_MS);
        }
        self.acks_due.push(frame_id.to_string());
    }

    /// Held acks leave with anything of this engine call that leaves the
    /// process: its batch commits before any of it is carried out, so they
    /// cost no commit of their own (`ack_later`).
    pub(crate) fn acks_ride_along(&mut self, cx: &mut Cx<'_>) {
        if !self.acks_due.is_empty() && cx.out.iter().any(Command::waits_for_commit) {
            self.flush_acks(cx);
        }
    }

    fn flush_acks(&mut self, cx: &mut Cx<'_>) {
        match self.link.open_socket() {
            Some(socket) => self.push_acks(cx, socket),
            // After a reconnect the relay pushes the stored ones again.
            None => self.acks_due.clear(),
        }
    }

    fn push_acks(&mut self, cx: &mut Cx<'_>, socket: u32) {
        for id in self.acks_due.drain(..) {
            cx.out.push(Command::SocketSend {
                socket,
                text: RelayFrame::ack(&id).to_text(),
            });
        }
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
        self.flush_plaintext(cx);
        self.release_held_sends(cx);
        // The marker goes last: when it comes back, the relay has accepted
        // this connection, pushed what it stored for us, and routed every
        // frame written above (it reads ours in order).
        let sync = frames::uuid_v4(cx.host);
        let ts = Self::timestamp(cx);
        cx.out.push(Command::SocketSend {
            socket,
            text: RelayFrame::sync_marker(self.id.did(), &sync, &ts).to_text(),
        });
        self.sync_id = Some(sync.clone());
        self.marker_out = Some(sync);
        self.arm(cx, T_SYNC, SYNC_MAX_MS);
    }

    pub fn on_socket_closed(&mut self, cx: &mut Cx<'_>, socket: u32, code: u16, reason: &str) {
        let before = self.link.last_problem.clone();
        match self.link.closed(socket, code, reason, cx.host) {
            CloseAction::Ignore => {}
            CloseAction::Reconnect { delay_ms, problem } => {
                // Said once, not at every reconnect while it lasts.
                if let Some(p) = problem.filter(|p| before.as_ref() != Some(p)) {
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
        self.release_held_sends(cx);
        self.give_up_confirmations(cx);
        // Without a link no KNOCK can come: the waiting sessions go ahead
        // (their messages wait in the outbox).
        self.marker_out = None;
        self.sync_done(cx);
    }

    pub fn on_timer(&mut self, cx: &mut Cx<'_>, id: u64) {
        match id {
            T_RELAY_HEARTBEAT => {
                if self.link.open_socket().is_some() {
                    let now = cx.now();
                    self.link.tick(now);
                    let ts = Self::timestamp(cx);
                    let hb = RelayFrame::heartbeat(self.id.did(), &ts).to_text();
                    self.send_frame(cx, hb);
                    self.flush_all(cx, false);
                    self.pump_outgoing(cx);
                    self.release_stale_holds(cx);
                    self.arm(cx, T_RELAY_HEARTBEAT, RELAY_HEARTBEAT_MS);
                }
            }
            T_RECONNECT => self.connect(cx),
            T_REREGISTER => self.register(cx),
            T_RECEIPTS => self.flush_receipts(cx),
            T_ACKS => self.flush_acks(cx),
            T_RESEND => {
                self.resend_at = None;
                let before = self.stats.resent;
                self.flush_all(cx, false);
                // A round counts only if it sent something (the timer may
                // fire for an entry receipted meanwhile).
                if self.stats.resent != before {
                    self.resend_round_ms = cx.now();
                }
            }
            T_HELD_SENDS => self.release_held_sends(cx),
            T_SYNC => {
                // The socket stayed open this long without a refusal: the
                // relay took it (agentmesh-wire.md §4.2, grace period).
                self.link.confirm();
                self.sync_done(cx)
            }
            T_INBOX_SYNC => self.answer_inbox_reads(cx, true),
            T_CONFIRM => self.give_up_confirmations(cx),
            T_PACE => self.pump_outgoing(cx),
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
            other => self.on_owned_timer(cx, other),
        }
    }

    /// A timer set through the table goes to its owner.
    fn on_owned_timer(&mut self, cx: &mut Cx<'_>, id: u64) {
        use timers::Owner;
        let Some(owner) = self.timers.fired(id) else {
            return;
        };
        match owner {
            Owner::HttpRetry => {
                if let Some(mut f) = self.http_retry.remove(&id) {
                    let nid = self.fresh_id();
                    if let Command::HttpRequest { id, .. } = &mut f.request {
                        *id = nid;
                    }
                    cx.out.push(f.request.clone());
                    self.http.insert(nid, f);
                }
            }
            Owner::Waiter => {
                if let Some(pos) = self.waiters.iter().position(|w| w.timer() == id) {
                    let w = self.waiters.remove(pos);
                    self.answer_waiter(cx, w, true);
                }
            }
            other => self.role_timer(cx, other, id),
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
        let frame = match RelayFrame::from_text(text) {
            Ok(f) => f,
            Err(ParseError::NotJson(_)) => {
                self.stats.malformed += 1;
                cx.log(LogLevel::Warn, "dropped a frame that is not JSON");
                return;
            }
            // Not an object, no string `type`, or one we do not take.
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        match frame {
            RelayFrame::Message(m) if m.from.as_deref() == Some(self.id.did()) => {
                self.on_own_frame(cx, &m)
            }
            RelayFrame::Message(m) => self.on_message(cx, &m, text),
            RelayFrame::Knock(k) => self.on_knock(cx, &k, text),
            RelayFrame::KnockAccept(r) => self.on_knock_reply(cx, &r, true),
            RelayFrame::KnockReject(r) => self.on_knock_reply(cx, &r, false),
            RelayFrame::Error(e) => {
                let detail = e
                    .detail
                    .as_deref()
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect::<String>();
                if !detail.contains("fetch_pending") {
                    cx.log(LogLevel::Warn, &format!("relay error: {detail}"));
                }
            }
            // Ours to the relay; the relay never sends them.
            RelayFrame::Ack(_) | RelayFrame::Heartbeat(_) | RelayFrame::Disconnect(_) => {
                self.stats.malformed += 1;
            }
        }
    }

    /// Common checks on a routed frame: sender DID, id, addressee.
    fn routed<'v>(&mut self, cx: &mut Cx<'_>, route: Route<'v>) -> Option<(&'v str, &'v str)> {
        let Route { from, to, id } = route;
        let to = to.unwrap_or(self.id.did());
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

    /// Answer every waiting tool call the inbox now satisfies. Called after
    /// each change that can satisfy one (a message delivered, a name bound).
    fn wake_waiters(&mut self, cx: &mut Cx<'_>) {
        let mut i = 0;
        while i < self.waiters.len() {
            let ready = match &self.waiters[i] {
                Waiter::Inbox { query, .. } => !query.visible(self).is_empty(),
                Waiter::Await(w) => tools::mesh_await::complete(self, w),
            };
            if ready {
                let w = self.waiters.remove(i);
                self.timers.cancel(cx, w.timer());
                self.answer_waiter(cx, w, false);
            } else {
                i += 1;
            }
        }
    }

    fn answer_waiter(&mut self, cx: &mut Cx<'_>, w: Waiter, timed_out: bool) {
        match w {
            Waiter::Inbox {
                call_id,
                since_ms,
                query,
                ..
            } => {
                let waited = timed_out.then(|| cx.now().saturating_sub(since_ms));
                tools::mesh_inbox::answer(self, cx, &call_id, &query, waited);
            }
            Waiter::Await(w) => tools::mesh_await::answer(self, cx, &w),
        }
    }

    pub fn on_abort(&mut self, cx: &mut Cx<'_>, call_id: &str) {
        if let Some(pos) = self.waiters.iter().position(|w| w.call_id() == call_id) {
            let w = self.waiters.remove(pos);
            self.timers.cancel(cx, w.timer());
            render::fail(
                cx,
                call_id,
                "Cancelled: the caller aborted the wait. Nothing was marked read.",
            );
        }
    }

    pub fn on_stop(&mut self, cx: &mut Cx<'_>) {
        for w in std::mem::take(&mut self.waiters) {
            self.timers.cancel(cx, w.timer());
            self.answer_waiter(cx, w, true);
        }
        self.flush_receipts(cx);
        self.flush_acks(cx);
        if let Some(socket) = self.link.open_socket() {
            let bye = RelayFrame::disconnect(self.id.did()).to_text();
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
            T_ACKS,
        ] {
            cx.out.push(Command::TimerCancel(t));
        }
        self.link.state = LinkState::Replaced;
        if self.is_sandbox() && self.registered {
            // A sandbox lives for one offload and its identity with it (its
            // directory is erased): left in the registry, it would be listed
            // by discover, and a message to it would look sent but never be
            // read. The host waits for this request, bounded, as it stops.
            self.registered = false;
            let path = format!("/v1/agents/{}", self.id.did());
            self.http(cx, Purpose::Leave, "DELETE", &path, true, None);
        }
    }

    /// The protocol messages taken in plaintext: a `pair_request` to a
    /// controller (the original plugin's, authenticated by its token
    /// secret), and from a kars controller (which speaks nothing else) the
    /// `pair_response` a `mesh_pair` waits for and the news of the active
    /// offload. Whoever forges such a frame can at most answer or end what
    /// we asked that DID for; where a sandbox is is checked elsewhere.
    fn takes_plaintext(&self, from: &str, payload: &Value) -> bool {
        match PayloadType::of(payload) {
            Ok(PayloadType::PairRequest) => self.is_controller(),
            Ok(PayloadType::PairResponse) => self.pairing.waits_in_plaintext_for(from),
            Ok(PayloadType::OffloadStatus | PayloadType::OffloadError) => {
                self.offload.takes_plain(from, payload)
            }
            _ => false,
        }
    }

    /// Hand a consumed protocol payload to its owner.
    /// `encrypted`: it came under a Double Ratchet session (else it is
    /// plaintext from a peer trusted for that).
    fn intercept(&mut self, cx: &mut Cx<'_>, from: &str, payload: Value, encrypted: bool) {
        if !encrypted && !self.takes_plaintext(from, &payload) {
            // Anyone can put any DID in a plaintext frame's `from`: such a
            // frame never starts, moves or ends an offload or a pairing.
            let kind = match PayloadType::of(&payload) {
                Ok(t) => t.as_str().to_string(),
                Err(ParseError::UnknownType { kind, .. }) => crate::wire::escape_for_log(&kind, 40),
                Err(_) => "?".into(),
            };
            cx.log(
                LogLevel::Warn,
                &format!("ignored a plaintext {kind} claiming to be from {from}: protocol messages are taken end-to-end encrypted only"),
            );
            return;
        }
        self.hand_to_role(cx, from, payload, encrypted);
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
            // Open and accepted by the relay (not merely a socket that opened).
            "connected": self.link.is_confirmed(),
            "relay_problem": self.link.last_problem,
            // "token", "identity", "proxy", "replaced", ... (link.rs ProblemKind).
            "relay_problem_kind": self.link.problem_kind.map(|k| k.as_str()),
            // Why the relay cannot be reached right now, also for a plain
            // connect error (null once the relay accepted a connection).
            "relay_error": self.link.last_error,
            // Connection attempts that failed since the relay last accepted
            // one (a CLI stops waiting for a relay that is not there).
            "relay_attempts": self.link.attempt(),
            "name": self.cfg.name,
            "sessions": self.peers.values().filter(|p| p.active.is_some()).count(),
            "unread": self.inbox.unread_count(),
            // Messages not yet confirmed by their recipient (or still waiting
            // for a session): a short-lived host waits for this to reach 0.
            "outbox": self.peers.values().map(|p| p.outbox.len()).sum::<usize>()
                + self.awaiting_session.values().map(Vec::len).sum::<usize>(),
            "stats": self.stats,
        })
    }
}

/// Write an entry's payload record, then the entry, and drop the payload
/// from memory.
fn store_entry_records(vault: &Vault, cx: &mut Cx<'_>, e: &mut Entry) {
    let payload = std::mem::take(&mut e.payload);
    e.split = true;
    if let Err(err) = vault.put(cx.host, &mut cx.out, &e.payload_key(), &payload) {
        cx.log(LogLevel::Error, &err.to_string());
    }
    if let Err(err) = vault.put(cx.host, &mut cx.out, &e.storage_key(), e) {
        cx.log(LogLevel::Error, &err.to_string());
    }
}
