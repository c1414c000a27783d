//! The simulated world: engines, the registry and the relay, connected by a
//! virtual network, driven by one priority queue ordered by (virtual time,
//! insertion order). Hosts carry out every command of a `handle()` call in
//! order before the next event; a crash applies a prefix of them and loses
//! the rest together with the engine, its sockets, timers and pending HTTP
//! (requests already sent still reach the registry; answers are lost).
//!
//! Network model: per-frame latency 2–25 ms, FIFO per connection direction
//! (one WebSocket over TCP); faults ([`Faults`]) drop, duplicate, or delay a
//! frame by up to `reorder_max_ms` (a delayed frame lets later ones overtake
//! it). `connect` frames are exempt. A relay-side close reaches the client
//! after everything the relay sent before it. HTTP is reliable.
//!
//! Oracles recorded while running: every frame each agent put on the wire;
//! a `(from, to, header.dh, header.n)` → ciphertext map that flags message
//! key reuse; a frame id → body map that flags id reuse; every tool result
//! (a second result for one call is flagged); and, at a crash, whether each
//! unanswered `mesh_send` was already durable in the sender's outbox (read
//! by unsealing the stored session record with the agent's state key).

use super::host::SimHost;
use super::registry::Registry;
use super::relay::{Out, Owner, Relay, CONNECT_WINDOW_MS, IDLE_MS};
use super::{Fnv, Rng};
use kars_mesh::crypto::identity::Identity;
use kars_mesh::crypto::seal;
use kars_mesh::engine::{Command, Engine, Event};
use kars_mesh::store::packed;
use kars_mesh::wire::{b64, frames, time};
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

/// 2026-01-01T00:00:00Z: the registry and relay check timestamps against it.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
pub const RELAY_URL: &str = "http://relay";
pub const RELAY_WS: &str = "ws://relay/ws";
pub const REGISTRY_URL: &str = "http://registry";
/// Safety net against a livelock in the engine or the harness.
const EVENT_BUDGET: u64 = 20_000_000;

/// Faults on the relay path (both directions; `connect` frames exempt, as
/// they are the first frame on a fresh connection).
#[derive(Clone, Debug)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub reorder_max_ms: u64,
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Registry requests whose URL ends with this take that many ms more.
    pub registry_slow: Option<(String, u64)>,
}

impl Faults {
    pub fn none() -> Self {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_max_ms: 0,
            latency_min_ms: 2,
            latency_max_ms: 25,
            registry_slow: None,
        }
    }

    pub fn chaos() -> Self {
        Faults {
            drop: 0.04,
            duplicate: 0.04,
            reorder: 0.15,
            reorder_max_ms: 4_000,
            ..Self::none()
        }
    }
}

#[derive(Default, Debug, Clone)]
pub struct NetStats {
    pub frames: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub handles: u64,
    pub events: u64,
}

/// What kind of event an engine is handling (for crash targeting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvKind {
    Start,
    Tool(String),
    Frame(String),
    Opened,
    Closed,
    Http,
    Timer,
    Other,
}

/// Where a planned crash strikes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashOn {
    Any,
    /// Any event except a call of this tool.
    AnyBut(&'static str),
    Start,
    Tool(&'static str),
    Frame(&'static str),
    Http,
    /// A registry answer whose handling sends a frame of this type (the
    /// one that opens a session sends its `knock`, whichever of the
    /// session's registry answers came last).
    HttpSending(&'static str),
    Timer,
}

impl CrashOn {
    fn matches(&self, k: &EvKind, cmds: &[Command]) -> bool {
        match (self, k) {
            (CrashOn::HttpSending(t), EvKind::Http) => cmds.iter().any(|c| {
                matches!(c, Command::SocketSend { text, .. }
                    if serde_json::from_str::<Value>(text).is_ok_and(|v| v["type"] == *t))
            }),
            (CrashOn::Any, _) => true,
            (CrashOn::AnyBut(t), EvKind::Tool(x)) => t != x,
            (CrashOn::AnyBut(_), _) => true,
            (CrashOn::Start, EvKind::Start) => true,
            (CrashOn::Tool(t), EvKind::Tool(x)) => t == x,
            (CrashOn::Frame(t), EvKind::Frame(x)) => t == x,
            (CrashOn::Http, EvKind::Http) => true,
            (CrashOn::Timer, EvKind::Timer) => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// Uniform over 0..=len commands applied.
    Random,
    /// Exactly k applied; a plan with k > len does not crash (recorded as
    /// skipped), which ends a sweep.
    Exactly(usize),
}

#[derive(Debug, Clone)]
pub struct CrashPlan {
    pub not_before: u64,
    pub on: CrashOn,
    pub prefix: Prefix,
    pub restart_after_ms: u64,
}

#[derive(Debug, Clone)]
pub struct CrashRecord {
    pub at: u64,
    pub on: String,
    pub applied: usize,
    pub total: usize,
    pub lost: Vec<String>,
    pub skipped: bool,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Pending,
    Done(Value),
    /// The agent crashed before answering; `committed` when the message was
    /// durably in the sender's outbox at that moment.
    Lost {
        committed: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Call {
    pub tool: String,
    pub args: Value,
    pub issued_at: u64,
    pub outcome: Outcome,
}

impl Call {
    pub fn result(&self) -> Option<&Value> {
        match &self.outcome {
            Outcome::Done(v) => Some(v),
            _ => None,
        }
    }
    pub fn text(&self) -> String {
        self.result()
            .and_then(|v| v["content"][0]["text"].as_str())
            .unwrap_or("")
            .to_string()
    }
    /// A mesh_send says ✓ (the original's text), other tools ✅.
    pub fn ok(&self) -> bool {
        let t = self.text();
        t.starts_with('✅') || t.starts_with('✓')
    }
}

/// One message as a `mesh_inbox` result returned it.
#[derive(Debug, Clone)]
pub struct ReadMsg {
    pub at: u64,
    pub call_id: String,
    pub id: String,
    pub from: String,
    pub evidence: String,
    pub payload: Value,
}

impl ReadMsg {
    pub fn content(&self) -> String {
        match &self.payload["content"] {
            Value::String(s) => s.clone(),
            Value::Null => self.payload.to_string(),
            other => other.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sock {
    conn: Option<u64>,
    opened: bool,
    closed: bool,
}

pub struct SimAgent {
    pub name: String,
    pub config: String,
    pub state_key: [u8; 32],
    pub host: SimHost,
    pub engine: Option<Engine>,
    /// Incarnation: bumped by every crash; events for an older one are lost.
    pub inc: u32,
    pub did: String,
    timers: BTreeMap<u64, u64>,
    /// An `idle-wanted` not yet answered with `idle`.
    idle_wanted: bool,
    sockets: BTreeMap<u32, Sock>,
    pub calls: BTreeMap<String, Call>,
    next_call: u64,
    pub reads: Vec<ReadMsg>,
    /// Every frame this agent handed to its socket (all incarnations).
    pub wire: Vec<(u64, String)>,
    pub crash_plans: Vec<CrashPlan>,
    pub crashes: Vec<CrashRecord>,
    /// While set, frames the agent sends are kept here instead of sent.
    pub capture: bool,
    pub captured: Vec<String>,
    pub unexpected_results: Vec<(String, Value)>,
    /// `job-start` commands seen (kind, spec JSON); jobs are not run here.
    pub jobs_started: Vec<(String, String)>,
}

impl SimAgent {
    pub fn up(&self) -> bool {
        self.engine.is_some()
    }
    pub fn connected(&self) -> bool {
        self.sockets.values().any(|s| s.opened && !s.closed)
    }
}

pub struct RawClient {
    pub identity: Identity,
    pub did: String,
    pub conn: u64,
    pub received: Vec<String>,
    pub closed: Option<(u16, String)>,
}

enum Ev {
    Agent {
        agent: usize,
        inc: u32,
        event: Event,
    },
    Timer {
        agent: usize,
        inc: u32,
        id: u64,
        gen: u64,
    },
    /// The host's idle time, after what is due at the same moment.
    Idle {
        agent: usize,
        inc: u32,
    },
    Boot {
        agent: usize,
        inc: u32,
    },
    Http {
        agent: usize,
        inc: u32,
        id: u64,
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
    },
    RelayIn {
        conn: u64,
        text: String,
    },
    RelayIdle {
        conn: u64,
    },
    RelayDeadline {
        conn: u64,
    },
    RelayRestart {
        down_ms: u64,
    },
    RegistryRestart,
    RawFrame {
        raw: usize,
        text: String,
    },
    RawClosed {
        raw: usize,
        code: u16,
        reason: String,
    },
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    // Min-heap on (at, seq).
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

pub struct World {
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    pub agents: Vec<SimAgent>,
    pub raws: Vec<RawClient>,
    pub relay: Relay,
    pub registry: Registry,
    pub faults: Faults,
    pub rng: Rng,
    relay_down_until: u64,
    pub net: NetStats,
    last_down: BTreeMap<u64, u64>,
    /// The next `message` frame the relay sends this agent arrives this
    /// many ms late, after frames sent after it (a frame the relay stored
    /// and pushes while later ones come live): late, not lost.
    pub late_message: Option<(usize, u64)>,
    /// (conn, client→relay) → arrival time of the last in-order frame.
    fifo: BTreeMap<(u64, bool), u64>,
    /// "from>to|dh|n" → ciphertext of every encrypted frame put on the wire.
    keys_seen: BTreeMap<String, String>,
    /// frame id → fingerprint of the frame body put on the wire.
    ids_seen: BTreeMap<String, String>,
    /// Invariant violations noticed while running (key or id reuse, double
    /// tool results).
    pub violations: Vec<String>,
    pub trace: Fnv,
    /// When set, a human-readable line per handle() call (for diagnosis).
    pub journal: Option<Vec<String>>,
}

/// Short description of an event (for the journal).
pub fn brief_event(e: &Event) -> String {
    let frame = |t: &str| -> String {
        let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
        let id = v["id"].as_str().unwrap_or("");
        format!(
            "{} id={} hdr={}",
            v["type"].as_str().unwrap_or("?"),
            &id[..id.len().min(8)],
            v["header"]["n"]
        )
    };
    match e {
        Event::FileLoaded { id, bytes } => format!("file-loaded {id} ({} B)", bytes.len()),
        Event::FileFailed { id, .. } => format!("file-failed {id}"),
        Event::JobReady { id, .. } => format!("job-ready {id}"),
        Event::JobExited(x) => format!("job-exited {} {}", x.id, x.code),
        Event::JobProgress { id, .. } => format!("job-progress {id}"),
        Event::Start(_) => "start".into(),
        Event::ToolCall {
            call_id,
            tool,
            args_json,
        } => {
            format!(
                "tool {tool} {call_id} {}",
                &args_json[..args_json.len().min(90)]
            )
        }
        Event::ToolAbort(c) => format!("abort {c}"),
        Event::SocketOpened(s) => format!("opened {s}"),
        Event::SocketFrame { socket, text } => format!("frame@{socket} {}", frame(text)),
        Event::SocketClosed {
            socket,
            code,
            reason,
        } => format!("closed {socket} {code} {reason}"),
        Event::HttpResponse { id, status, .. } => format!("http {id} -> {status}"),
        Event::HttpFailed { id, message } => format!("http {id} failed {message}"),
        Event::TimerFired(t) => format!("timer {t}"),
        Event::Idle => "idle".into(),
        Event::Stop => "stop".into(),
    }
}

fn kind_of(e: &Event) -> EvKind {
    match e {
        Event::Start(_) => EvKind::Start,
        Event::ToolCall { tool, .. } => EvKind::Tool(tool.clone()),
        Event::SocketFrame { text, .. } => EvKind::Frame(
            serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_string))
                .unwrap_or_default(),
        ),
        Event::SocketOpened(_) => EvKind::Opened,
        Event::SocketClosed { .. } => EvKind::Closed,
        Event::HttpResponse { .. } | Event::HttpFailed { .. } => EvKind::Http,
        Event::TimerFired(_) => EvKind::Timer,
        _ => EvKind::Other,
    }
}

/// Open a sealed record with the agent's state key (record type = key kind).
pub fn unseal_json(state_key: &[u8; 32], key: &str, sealed: &[u8]) -> Option<Value> {
    let kind = key.split('/').next().unwrap_or(key);
    let record_type = format!("{kind}.v1");
    if sealed.first() == Some(&seal::VERSION_TRAILER) {
        // A large outbox entry: its fields, and its frame stored after them.
        let (head, frame) = seal::unseal_with_trailer(state_key, &record_type, key, sealed).ok()?;
        let mut v: Value = serde_json::from_slice(&head).ok()?;
        v["frame"] = Value::String(String::from_utf8(frame.to_vec()).ok()?);
        return Some(v);
    }
    // Records are bound to their storage key (seal version 2).
    let pt = seal::unseal_bound(state_key, &record_type, key, sealed, false).ok()?;
    if !packed::is_packed(&pt) {
        return serde_json::from_slice(&pt).ok();
    }
    // A file's chunk, packed, read as the JSON that builds before it wrote.
    let (_, text) = packed::unpack(&pt).ok()?;
    Some(serde_json::json!({ "data": String::from_utf8(text.to_vec()).ok()? }))
}

impl World {
    pub fn new(seed: u64) -> Self {
        World {
            now: EPOCH_MS,
            seq: 0,
            queue: BinaryHeap::new(),
            agents: Vec::new(),
            raws: Vec::new(),
            relay: Relay::new(),
            registry: Registry::new(),
            faults: Faults::none(),
            rng: Rng::new(seed),
            relay_down_until: 0,
            net: NetStats::default(),
            last_down: BTreeMap::new(),
            late_message: None,
            fifo: BTreeMap::new(),
            keys_seen: BTreeMap::new(),
            ids_seen: BTreeMap::new(),
            violations: Vec::new(),
            trace: Fnv::default(),
            journal: None,
        }
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    fn latency(&mut self) -> u64 {
        let (lo, hi) = (self.faults.latency_min_ms, self.faults.latency_max_ms);
        self.rng.range(lo, hi + 1)
    }

    /// Arrival times for one frame on connection `conn` in one direction:
    /// none (dropped), one, or two (duplicated). The base path is FIFO, as
    /// one WebSocket over TCP is; only the reorder fault lets a frame arrive
    /// after frames sent later (it never overtakes earlier ones, so nothing
    /// ever overtakes the `connect` frame).
    fn transmit(&mut self, conn: u64, up: bool, exempt: bool) -> Vec<u64> {
        let now = self.now;
        let f = self.faults.clone();
        let mut copies = 1;
        if !exempt {
            self.net.frames += 1;
            if self.rng.chance(f.drop) {
                self.net.dropped += 1;
                return Vec::new();
            }
            if self.rng.chance(f.duplicate) {
                self.net.duplicated += 1;
                copies = 2;
            }
        }
        let mut out = Vec::new();
        for _ in 0..copies {
            let floor = self.fifo.get(&(conn, up)).copied().unwrap_or(0);
            let at = (now + self.latency()).max(floor);
            if !exempt && self.rng.chance(f.reorder) {
                self.net.reordered += 1;
                out.push(at + self.rng.range(1, f.reorder_max_ms + 1));
            } else {
                self.fifo.insert((conn, up), at);
                out.push(at);
            }
        }
        out
    }

    // ------------------------------------------------------------- agents

    /// Add and start an agent. `extra` is merged into the start config.
    /// A controller and a paired client "alice" whose offload waits for
    /// its sandbox: the simulator runs no jobs, so it stays in "spawning".
    /// (world, controller, alice, request id)
    pub fn paired_offload(seed: u64) -> (World, usize, usize, String) {
        let (mut w, ctrl, alice) = World::paired(seed);
        let sub = w.call_sync(alice, "cloud_offload", json!({"task": "t"}), 5_000);
        let rid = sub["details"]["mesh"]["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        w.run_for(3_000);
        (w, ctrl, alice, rid)
    }

    /// A controller and a client "alice" paired with it for offloads.
    /// (world, controller, alice)
    pub fn paired(seed: u64) -> (World, usize, usize) {
        let mut w = World::new(seed);
        let ctrl = w.add_agent(
            "controller",
            json!({"role": "controller", "cluster_name": "lab"}),
        );
        let alice = w.add_agent("alice", json!({}));
        w.run_for(3_000);
        let gen = w.call_sync(
            ctrl,
            "pair_generate",
            json!({"name": "alice", "capabilities": "offload"}),
            5_000,
        );
        let tok = gen["details"]["mesh"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let paired = w.call_sync(alice, "mesh_pair", json!({"token": tok}), 60_000);
        assert!(World::call_text(&paired).starts_with('✅'), "{paired}");
        (w, ctrl, alice)
    }

    pub fn add_agent(&mut self, name: &str, extra: Value) -> usize {
        let state_key = self.rng.bytes32();
        let mut cfg = json!({
            "state_key": b64::encode_std(&state_key),
            "relay_url": RELAY_URL,
            "registry_url": REGISTRY_URL,
            "name": name,
        });
        if let (Value::Object(o), Some(c)) = (extra, cfg.as_object_mut()) {
            c.extend(o);
        }
        let host_seed = self.rng.next_u64();
        self.agents.push(SimAgent {
            name: name.to_string(),
            config: cfg.to_string(),
            state_key,
            host: SimHost::new(host_seed, self.now),
            engine: None,
            inc: 0,
            did: String::new(),
            timers: BTreeMap::new(),
            idle_wanted: false,
            sockets: BTreeMap::new(),
            calls: BTreeMap::new(),
            next_call: 0,
            reads: Vec::new(),
            wire: Vec::new(),
            crash_plans: Vec::new(),
            crashes: Vec::new(),
            capture: false,
            captured: Vec::new(),
            unexpected_results: Vec::new(),
            jobs_started: Vec::new(),
        });
        let i = self.agents.len() - 1;
        self.boot(i);
        i
    }

    /// (Re)create the engine from storage and start it.
    pub fn boot(&mut self, i: usize) {
        if self.agents[i].engine.is_some() {
            return;
        }
        self.agents[i].engine = Some(Engine::new());
        let cfg = self.agents[i].config.clone();
        self.deliver(i, Event::Start(cfg));
        let a = &mut self.agents[i];
        if let Some(d) = a.engine.as_ref().and_then(|e| e.did()) {
            a.did = d.to_string();
        }
    }

    pub fn did(&self, i: usize) -> String {
        self.agents[i].did.clone()
    }

    /// Issue a tool call (handled at the current virtual instant, in queue
    /// order). `None` while the agent is down.
    pub fn call(&mut self, i: usize, tool: &str, args: Value) -> Option<String> {
        let now = self.now;
        let a = &mut self.agents[i];
        a.engine.as_ref()?;
        a.next_call += 1;
        let id = format!("{}#{}", a.name, a.next_call);
        a.calls.insert(
            id.clone(),
            Call {
                tool: tool.to_string(),
                args: args.clone(),
                issued_at: now,
                outcome: Outcome::Pending,
            },
        );
        let inc = a.inc;
        self.schedule(
            now,
            Ev::Agent {
                agent: i,
                inc,
                event: Event::ToolCall {
                    call_id: id.clone(),
                    tool: tool.to_string(),
                    args_json: args.to_string(),
                },
            },
        );
        Some(id)
    }

    /// The caller gives up on a pending call (the host's `tool-abort`).
    pub fn abort(&mut self, i: usize, call_id: &str) {
        let now = self.now;
        let inc = self.agents[i].inc;
        self.schedule(
            now,
            Ev::Agent {
                agent: i,
                inc,
                event: Event::ToolAbort(call_id.to_string()),
            },
        );
    }

    /// Call and run the world until the result arrives (panics after
    /// `max_ms` of virtual time or if the call is lost).
    pub fn call_sync(&mut self, i: usize, tool: &str, args: Value, max_ms: u64) -> Value {
        let id = self
            .call(i, tool, args)
            .unwrap_or_else(|| panic!("{} is down; cannot call {tool}", self.agents[i].name));
        self.wait_result(i, &id, max_ms).unwrap_or_else(|| {
            panic!(
                "{tool} on {} got no result within {max_ms} ms",
                self.agents[i].name
            )
        })
    }

    /// Run until the call has a result; `None` if lost or out of time.
    pub fn wait_result(&mut self, i: usize, id: &str, max_ms: u64) -> Option<Value> {
        let deadline = self.now + max_ms;
        loop {
            match &self.agents[i].calls.get(id)?.outcome {
                Outcome::Done(v) => return Some(v.clone()),
                Outcome::Lost { .. } => return None,
                Outcome::Pending => {}
            }
            match self.queue.peek() {
                Some(e) if e.at <= deadline => self.step(),
                _ => {
                    self.now = self.now.max(deadline);
                    return None;
                }
            }
        }
    }

    pub fn call_text(v: &Value) -> String {
        v["content"][0]["text"].as_str().unwrap_or("").to_string()
    }

    pub fn send(&mut self, from: usize, to: usize, content: &str) -> Option<String> {
        let did = self.did(to);
        self.call(from, "mesh_send", json!({"to": did, "message": content}))
    }

    /// Read (and mark read) everything unread; returns the new messages.
    pub fn read_inbox(&mut self, i: usize) -> Vec<ReadMsg> {
        let before = self.agents[i].reads.len();
        self.call_sync(
            i,
            "mesh_inbox",
            json!({"limit": 500, "mark_read": true}),
            60_000,
        );
        self.agents[i].reads[before..].to_vec()
    }

    /// What `read_inbox` returned, as the messages' contents.
    pub fn read_texts(&mut self, i: usize) -> Vec<String> {
        self.read_inbox(i).iter().map(|m| m.content()).collect()
    }

    pub fn status(&mut self, i: usize) -> Value {
        let v = self.call_sync(i, "mesh_identity", json!({}), 10_000);
        v["details"]["mesh"].clone()
    }

    pub fn plan_crash(&mut self, i: usize, plan: CrashPlan) {
        self.agents[i].crash_plans.push(plan);
    }

    /// Crash between two handle() calls and restart after `restart_after_ms`.
    pub fn crash_now(&mut self, i: usize, restart_after_ms: u64) {
        if self.agents[i].engine.is_some() {
            self.crash(
                i,
                "between handles".into(),
                0,
                0,
                Vec::new(),
                restart_after_ms,
            );
        }
    }

    // -------------------------------------------------------- environment

    pub fn schedule_relay_restart(&mut self, at: u64, down_ms: u64) {
        self.schedule(at, Ev::RelayRestart { down_ms });
    }

    pub fn schedule_registry_restart(&mut self, at: u64) {
        self.schedule(at, Ev::RegistryRestart);
    }

    /// Deliver `text` on the agent's open relay socket now, as if the relay
    /// had forwarded it. `false` when the agent has no open socket.
    pub fn inject(&mut self, i: usize, text: &str) -> bool {
        let a = &self.agents[i];
        let Some((&socket, _)) = a.sockets.iter().find(|(_, s)| s.opened && !s.closed) else {
            return false;
        };
        let inc = a.inc;
        let now = self.now;
        self.schedule(
            now,
            Ev::Agent {
                agent: i,
                inc,
                event: Event::SocketFrame {
                    socket,
                    text: text.to_string(),
                },
            },
        );
        true
    }

    /// A scripted client connected to the relay with a valid connect frame
    /// (no idle timeout is applied to scripted clients).
    pub fn raw_connect(&mut self, seed: [u8; 32]) -> usize {
        let identity = Identity::from_seed(&seed);
        let did = identity.did().to_string();
        let idx = self.raws.len();
        let now = self.now;
        let conn = self.relay.open(Owner::Raw(idx), now);
        let connect = frames::connect_frame(&identity, &time::format_millis(now), None);
        self.raws.push(RawClient {
            identity,
            did,
            conn,
            received: Vec::new(),
            closed: None,
        });
        let outs = self.relay.frame(conn, &connect, now);
        self.relay_out(outs);
        idx
    }

    /// Send a frame from a raw client through the relay (no faults).
    pub fn raw_send(&mut self, raw: usize, text: &str) {
        let conn = self.raws[raw].conn;
        let at =
            (self.now + self.latency()).max(self.fifo.get(&(conn, true)).copied().unwrap_or(0));
        self.fifo.insert((conn, true), at);
        self.schedule(
            at,
            Ev::RelayIn {
                conn,
                text: text.to_string(),
            },
        );
    }

    // --------------------------------------------------------------- loop

    fn step(&mut self) {
        let Some(s) = self.queue.pop() else {
            return;
        };
        self.now = self.now.max(s.at);
        self.net.events += 1;
        assert!(
            self.net.events < EVENT_BUDGET,
            "event budget exhausted at {} ms: livelock?",
            self.now - EPOCH_MS
        );
        self.dispatch(s.ev);
    }

    pub fn run_until(&mut self, t: u64) {
        while self.queue.peek().is_some_and(|e| e.at <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    pub fn run_for(&mut self, ms: u64) {
        let t = self.now + ms;
        self.run_until(t);
    }

    fn dispatch(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Agent { agent, inc, event } => {
                let a = &mut self.agents[agent];
                if a.inc != inc || a.engine.is_none() {
                    if let Event::ToolCall { call_id, .. } = &event {
                        if let Some(c) = a.calls.get_mut(call_id) {
                            c.outcome = Outcome::Lost { committed: false };
                        }
                    }
                    return;
                }
                // What a host reports on a socket: nothing before it opened
                // or after it was reported closed, one close per socket.
                match &event {
                    Event::SocketOpened(s) => match a.sockets.get_mut(s) {
                        Some(sk) if !sk.closed => sk.opened = true,
                        _ => return,
                    },
                    Event::SocketFrame { socket, .. } => match a.sockets.get(socket) {
                        Some(sk) if sk.opened && !sk.closed => {}
                        _ => return,
                    },
                    Event::SocketClosed { socket, .. } if a.sockets.remove(socket).is_none() => {
                        return;
                    }
                    _ => {}
                }
                self.deliver(agent, event);
            }
            Ev::Timer {
                agent,
                inc,
                id,
                gen,
            } => {
                let a = &mut self.agents[agent];
                if a.inc == inc && a.timers.get(&id) == Some(&gen) {
                    a.timers.remove(&id);
                    self.deliver(agent, Event::TimerFired(id));
                }
            }
            Ev::Idle { agent, inc } => {
                let a = &mut self.agents[agent];
                if a.inc == inc && a.idle_wanted {
                    a.idle_wanted = false;
                    self.deliver(agent, Event::Idle);
                }
            }
            Ev::Boot { agent, inc } => {
                if self.agents[agent].inc == inc {
                    self.boot(agent);
                }
            }
            Ev::Http {
                agent,
                inc,
                id,
                method,
                url,
                headers,
                body,
            } => {
                // The request reached the server even if its sender died since.
                let event = match url.strip_prefix(REGISTRY_URL) {
                    Some(path) => {
                        let (status, body) =
                            self.registry
                                .handle(&method, path, &headers, body.as_deref(), now);
                        Event::HttpResponse { id, status, body }
                    }
                    None => Event::HttpFailed {
                        id,
                        message: format!("connect ECONNREFUSED {url}"),
                    },
                };
                let at = now + self.latency();
                self.schedule(at, Ev::Agent { agent, inc, event });
            }
            Ev::RelayIn { conn, text } => {
                let outs = self.relay.frame(conn, &text, now);
                self.relay_out(outs);
            }
            Ev::RelayIdle { conn } => {
                let (outs, next) = self.relay.idle(conn, now);
                self.relay_out(outs);
                if let Some(t) = next {
                    self.schedule(t, Ev::RelayIdle { conn });
                }
            }
            Ev::RelayDeadline { conn } => {
                let outs = self.relay.connect_deadline(conn);
                self.relay_out(outs);
            }
            Ev::RelayRestart { down_ms } => {
                if let Some(j) = self.journal.as_mut() {
                    j.push(format!(
                        "{:>8} *** RELAY RESTART (down {down_ms} ms)",
                        now - EPOCH_MS
                    ));
                }
                let outs = self.relay.restart();
                self.relay_out(outs);
                self.relay_down_until = now + down_ms;
            }
            Ev::RegistryRestart => self.registry.restart(),
            Ev::RawFrame { raw, text } => self.raws[raw].received.push(text),
            Ev::RawClosed { raw, code, reason } => self.raws[raw].closed = Some((code, reason)),
        }
    }

    /// One `handle()` call and its commands, possibly cut short by a crash.
    fn deliver(&mut self, i: usize, event: Event) {
        let now = self.now;
        let a = &mut self.agents[i];
        let kind = if a.crash_plans.is_empty() {
            EvKind::Other
        } else {
            kind_of(&event)
        };
        let Some(engine) = a.engine.as_mut() else {
            return;
        };
        a.host.now = now;
        let ev_text = self.journal.as_ref().map(|_| brief_event(&event));
        let cmds = engine.handle(event, &mut a.host);
        if let (Some(j), Some(e)) = (self.journal.as_mut(), ev_text) {
            let cs: Vec<String> = cmds
                .iter()
                .filter(|c| !matches!(c, Command::TimerSet { .. } | Command::TimerCancel(_)))
                .map(brief)
                .collect();
            j.push(format!(
                "{:>8} {:<6} {e}\n{:>16}=> {}",
                now - EPOCH_MS,
                self.agents[i].name,
                "",
                cs.join(", ")
            ));
        }
        self.net.handles += 1;
        self.trace.feed_u64(now);
        self.trace.feed_u64(i as u64);
        let total = cmds.len();
        let cut = self.crash_cut(i, &kind, &cmds);
        let take = cut.map_or(total, |(k, _)| k);
        let mut cmds = cmds.into_iter();
        for c in cmds.by_ref().take(take) {
            self.apply(i, c);
        }
        if let Some((k, restart_after)) = cut {
            let lost: Vec<String> = cmds.map(|c| brief(&c)).collect();
            self.crash(i, format!("{kind:?}"), k, total, lost, restart_after);
        }
    }

    fn crash_cut(&mut self, i: usize, kind: &EvKind, cmds: &[Command]) -> Option<(usize, u64)> {
        let now = self.now;
        let len = cmds.len();
        let a = &mut self.agents[i];
        let pos = a
            .crash_plans
            .iter()
            .position(|p| now >= p.not_before && p.on.matches(kind, cmds))?;
        let p = a.crash_plans.remove(pos);
        let k = match p.prefix {
            Prefix::Random => self.rng.below(len as u64 + 1) as usize,
            Prefix::Exactly(k) if k <= len => k,
            Prefix::Exactly(k) => {
                self.agents[i].crashes.push(CrashRecord {
                    at: now,
                    on: format!("{kind:?}"),
                    applied: k,
                    total: len,
                    lost: Vec::new(),
                    skipped: true,
                });
                return None;
            }
        };
        Some((k, p.restart_after_ms))
    }

    fn crash(
        &mut self,
        i: usize,
        on: String,
        applied: usize,
        total: usize,
        lost: Vec<String>,
        restart_after_ms: u64,
    ) {
        let now = self.now;
        let pending: Vec<String> = self.agents[i]
            .calls
            .iter()
            .filter(|(_, c)| matches!(c.outcome, Outcome::Pending))
            .map(|(id, _)| id.clone())
            .collect();
        for id in pending {
            let committed = self.committed(i, &id);
            if let Some(c) = self.agents[i].calls.get_mut(&id) {
                c.outcome = Outcome::Lost { committed };
            }
        }
        let a = &mut self.agents[i];
        a.engine = None;
        a.inc += 1;
        a.timers.clear();
        a.idle_wanted = false;
        let conns: Vec<u64> = a.sockets.values().filter_map(|s| s.conn).collect();
        a.sockets.clear();
        a.crashes.push(CrashRecord {
            at: now,
            on,
            applied,
            total,
            lost,
            skipped: false,
        });
        let inc = a.inc;
        let name = a.name.clone();
        if let Some(j) = self.journal.as_mut() {
            j.push(format!(
                "{:>8} {name:<6} *** CRASH after {applied}/{total} commands",
                now - EPOCH_MS
            ));
        }
        // The process died: the kernel closes its TCP connections.
        for c in conns {
            self.relay.gone(c);
        }
        self.schedule(now + restart_after_ms, Ev::Boot { agent: i, inc });
    }

    /// Whether a lost `mesh_send` had durably reached the sender's outbox.
    fn committed(&self, i: usize, call_id: &str) -> bool {
        let Some(c) = self.agents[i].calls.get(call_id) else {
            return false;
        };
        if c.tool != "mesh_send" {
            return false;
        }
        let (Some(to), Some(content)) = (c.args["to"].as_str(), c.args["message"].as_str()) else {
            return false;
        };
        self.outbox_contents(i, to).iter().any(|m| m == content)
    }

    /// Carry out one command, as a host must.
    fn apply(&mut self, i: usize, cmd: Command) {
        let now = self.now;
        let inc = self.agents[i].inc;
        self.trace_cmd(&cmd);
        if self.agents[i].host.apply_storage(&cmd) {
            return;
        }
        match cmd {
            Command::Store(..) | Command::Erase(_) => {}
            Command::SocketOpen { socket, url } => {
                let lat = self.latency();
                if url != RELAY_WS || now < self.relay_down_until {
                    self.agents[i].sockets.insert(
                        socket,
                        Sock {
                            conn: None,
                            opened: false,
                            closed: true,
                        },
                    );
                    self.schedule(
                        now + lat,
                        Ev::Agent {
                            agent: i,
                            inc,
                            event: Event::SocketClosed {
                                socket,
                                code: 1006,
                                reason: "connection refused".into(),
                            },
                        },
                    );
                } else {
                    let conn = self.relay.open(
                        Owner::Agent {
                            agent: i,
                            inc,
                            socket,
                        },
                        now,
                    );
                    self.agents[i].sockets.insert(
                        socket,
                        Sock {
                            conn: Some(conn),
                            opened: false,
                            closed: false,
                        },
                    );
                    self.schedule(
                        now + lat,
                        Ev::Agent {
                            agent: i,
                            inc,
                            event: Event::SocketOpened(socket),
                        },
                    );
                    self.schedule(now + CONNECT_WINDOW_MS, Ev::RelayDeadline { conn });
                    self.schedule(now + IDLE_MS, Ev::RelayIdle { conn });
                }
            }
            Command::SocketSend { socket, text } => {
                self.note_wire(i, &text);
                let a = &mut self.agents[i];
                if a.capture {
                    a.captured.push(text);
                    return;
                }
                let Some(Sock {
                    conn: Some(conn),
                    closed: false,
                    ..
                }) = a.sockets.get(&socket).copied()
                else {
                    return;
                };
                let exempt = text.contains("\"type\":\"connect\"");
                for at in self.transmit(conn, true, exempt) {
                    self.schedule(
                        at,
                        Ev::RelayIn {
                            conn,
                            text: text.clone(),
                        },
                    );
                }
            }
            Command::SocketClose {
                socket,
                code,
                reason,
            } => {
                let a = &mut self.agents[i];
                if let Some(s) = a.sockets.get_mut(&socket) {
                    if !s.closed {
                        s.closed = true;
                        if let Some(c) = s.conn {
                            self.relay.gone(c);
                        }
                        self.schedule(
                            now + 1,
                            Ev::Agent {
                                agent: i,
                                inc,
                                event: Event::SocketClosed {
                                    socket,
                                    code,
                                    reason,
                                },
                            },
                        );
                    }
                }
            }
            Command::HttpRequest {
                id,
                method,
                url,
                headers,
                body,
                ..
            } => {
                let slow = match &self.faults.registry_slow {
                    Some((suffix, ms)) if url.ends_with(suffix.as_str()) => *ms,
                    _ => 0,
                };
                let at = now + self.latency() + slow;
                self.schedule(
                    at,
                    Ev::Http {
                        agent: i,
                        inc,
                        id,
                        method,
                        url,
                        headers,
                        body,
                    },
                );
            }
            Command::TimerSet { id, at_ms } => {
                self.seq += 1;
                let gen = self.seq;
                self.agents[i].timers.insert(id, gen);
                self.schedule(
                    at_ms,
                    Ev::Timer {
                        agent: i,
                        inc,
                        id,
                        gen,
                    },
                );
            }
            Command::TimerCancel(id) => {
                self.agents[i].timers.remove(&id);
            }
            // Files and jobs are not emulated here (tests/*.test.mjs run them
            // through the real host).
            Command::JobStart {
                kind, spec_json, ..
            } => {
                self.agents[i].jobs_started.push((kind, spec_json));
            }
            Command::FileRead { .. }
            | Command::FileWrite(..)
            | Command::FileErase(_)
            | Command::JobKill(_) => {}
            Command::IdleWanted => {
                if !self.agents[i].idle_wanted {
                    self.agents[i].idle_wanted = true;
                    self.schedule(now, Ev::Idle { agent: i, inc });
                }
            }
            Command::ToolResult {
                call_id,
                result_json,
            } => {
                let v: Value = serde_json::from_str(&result_json).unwrap_or(Value::Null);
                let a = &mut self.agents[i];
                let Some(call) = a.calls.get_mut(&call_id) else {
                    a.unexpected_results.push((call_id, v));
                    return;
                };
                if matches!(call.outcome, Outcome::Done(_)) {
                    let msg = format!("{}: a second result for tool call {call_id}", a.name);
                    self.violations.push(msg);
                    return;
                }
                if call.tool == "mesh_inbox" {
                    if let Some(ms) = v["details"]["mesh"]["messages"].as_array() {
                        for m in ms {
                            a.reads.push(ReadMsg {
                                at: now,
                                call_id: call_id.clone(),
                                id: m["id"].as_str().unwrap_or("").to_string(),
                                from: m["from"].as_str().unwrap_or("").to_string(),
                                evidence: m["evidence"].as_str().unwrap_or("").to_string(),
                                payload: m["payload"].clone(),
                            });
                        }
                    }
                }
                call.outcome = Outcome::Done(v);
            }
        }
    }

    /// Carry relay actions over the network to their clients.
    fn relay_out(&mut self, outs: Vec<Out>) {
        let now = self.now;
        for o in outs {
            match o {
                Out::Send { conn, text } => {
                    let Some(owner) = self.relay.conn(conn).map(|c| c.owner) else {
                        continue;
                    };
                    let late = match (self.late_message, owner) {
                        (Some((to, ms)), Owner::Agent { agent, .. })
                            if to == agent && text.contains("\"type\":\"message\"") =>
                        {
                            self.late_message = None;
                            ms
                        }
                        _ => 0,
                    };
                    for at in self.transmit(conn, false, false) {
                        let last = self.last_down.entry(conn).or_insert(0);
                        *last = (*last).max(at);
                        let at = at + late;
                        let ev = match owner {
                            Owner::Agent { agent, inc, socket } => Ev::Agent {
                                agent,
                                inc,
                                event: Event::SocketFrame {
                                    socket,
                                    text: text.clone(),
                                },
                            },
                            Owner::Raw(raw) => Ev::RawFrame {
                                raw,
                                text: text.clone(),
                            },
                        };
                        self.schedule(at, ev);
                    }
                }
                Out::Close { conn, code, reason } => {
                    let Some(owner) = self.relay.conn(conn).map(|c| c.owner) else {
                        continue;
                    };
                    // After whatever the relay already sent on this socket.
                    let at = (now + self.latency())
                        .max(self.last_down.get(&conn).copied().unwrap_or(0) + 1);
                    let ev = match owner {
                        Owner::Agent { agent, inc, socket } => Ev::Agent {
                            agent,
                            inc,
                            event: Event::SocketClosed {
                                socket,
                                code,
                                reason,
                            },
                        },
                        Owner::Raw(raw) => Ev::RawClosed { raw, code, reason },
                    };
                    self.schedule(at, ev);
                }
            }
        }
    }

    /// Record a frame put on the wire and check that no message key and no
    /// frame id is ever used for two different frames.
    fn note_wire(&mut self, i: usize, text: &str) {
        let now = self.now;
        self.agents[i].wire.push((now, text.to_string()));
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let kind = v["type"].as_str().unwrap_or("");
        if let (Some(id), true) = (
            v["id"].as_str(),
            matches!(kind, "message" | "knock" | "knock_accept" | "knock_reject"),
        ) {
            let mut body = v.clone();
            if let Some(o) = body.as_object_mut() {
                o.remove("ts");
            }
            let fp = body.to_string();
            match self.ids_seen.get(id) {
                Some(prev) if *prev != fp => self.violations.push(format!(
                    "{}: frame id {id} reused for a different frame:\n  first: {prev}\n  now:   {fp}",
                    self.agents[i].name
                )),
                Some(_) => {}
                None => {
                    self.ids_seen.insert(id.to_string(), fp);
                }
            }
        }
        if kind != "message" {
            return;
        }
        let (Some(dh), Some(n), Some(ct)) = (
            v["header"]["dh"].as_str(),
            v["header"]["n"].as_u64(),
            v["ciphertext"].as_str(),
        ) else {
            return;
        };
        let key = format!(
            "{}>{}|{}|{}",
            v["from"].as_str().unwrap_or(""),
            v["to"].as_str().unwrap_or(""),
            dh,
            n
        );
        match self.keys_seen.get(&key) {
            Some(prev) if prev != ct => self.violations.push(format!(
                "{}: MESSAGE KEY REUSE at {} ms: (dh={dh}, n={n}) to {} carried two different ciphertexts",
                self.agents[i].name,
                now - EPOCH_MS,
                v["to"].as_str().unwrap_or("")
            )),
            Some(_) => {}
            None => {
                self.keys_seen.insert(key, ct.to_string());
            }
        }
    }

    pub fn distinct_message_keys(&self) -> usize {
        self.keys_seen.len()
    }

    fn trace_cmd(&mut self, c: &Command) {
        let t = &mut self.trace;
        match c {
            Command::Store(k, v) => {
                t.feed(b"S");
                t.feed(k.as_bytes());
                t.feed(v);
            }
            Command::Erase(k) => {
                t.feed(b"E");
                t.feed(k.as_bytes());
            }
            Command::SocketOpen { socket, url } => {
                t.feed(b"O");
                t.feed_u64(*socket as u64);
                t.feed(url.as_bytes());
            }
            Command::SocketSend { socket, text } => {
                t.feed(b"W");
                t.feed_u64(*socket as u64);
                t.feed(text.as_bytes());
            }
            Command::SocketClose { socket, code, .. } => {
                t.feed(b"C");
                t.feed_u64(*socket as u64);
                t.feed_u64(*code as u64);
            }
            Command::HttpRequest {
                id,
                method,
                url,
                body,
                ..
            } => {
                t.feed(b"H");
                t.feed_u64(*id);
                t.feed(method.as_bytes());
                t.feed(url.as_bytes());
                if let Some(b) = body {
                    t.feed(b);
                }
            }
            Command::TimerSet { id, at_ms } => {
                t.feed(b"T");
                t.feed_u64(*id);
                t.feed_u64(*at_ms);
            }
            Command::TimerCancel(id) => {
                t.feed(b"X");
                t.feed_u64(*id);
            }
            Command::ToolResult {
                call_id,
                result_json,
            } => {
                t.feed(b"R");
                t.feed(call_id.as_bytes());
                t.feed(result_json.as_bytes());
            }
            other => t.feed(brief(other).as_bytes()),
        }
    }

    /// A copy of agent `i`'s durable storage.
    pub fn snapshot_storage(&self, i: usize) -> BTreeMap<String, Vec<u8>> {
        self.agents[i].host.storage.clone()
    }

    /// Replace agent `i`'s durable storage (a host that lost writes).
    pub fn restore_storage(&mut self, i: usize, s: BTreeMap<String, Vec<u8>>) {
        self.agents[i].host.storage = s;
    }

    /// Start a second engine on a copy of agent `i`'s storage and state key
    /// (the same identity running twice).
    pub fn clone_agent(&mut self, i: usize, name: &str) -> usize {
        let host_seed = self.rng.next_u64();
        let src = &self.agents[i];
        let mut host = SimHost::new(host_seed, self.now);
        host.storage = src.host.storage.clone();
        let a = SimAgent {
            name: name.to_string(),
            config: src.config.clone(),
            state_key: src.state_key,
            host,
            engine: None,
            inc: 0,
            did: String::new(),
            timers: BTreeMap::new(),
            idle_wanted: false,
            sockets: BTreeMap::new(),
            calls: BTreeMap::new(),
            next_call: 0,
            reads: Vec::new(),
            wire: Vec::new(),
            crash_plans: Vec::new(),
            crashes: Vec::new(),
            capture: false,
            captured: Vec::new(),
            unexpected_results: Vec::new(),
            jobs_started: Vec::new(),
        };
        self.agents.push(a);
        let j = self.agents.len() - 1;
        self.boot(j);
        j
    }

    // ------------------------------------------------------------ oracles

    /// A persisted record of agent `i`, unsealed.
    pub fn persisted(&self, i: usize, key: &str) -> Option<Value> {
        let a = &self.agents[i];
        let sealed = a.host.storage.get(key)?;
        unseal_json(&a.state_key, key, sealed)
    }

    /// The persisted inbox of agent `i` (read and unread), by arrival order.
    pub fn persisted_inbox(&self, i: usize) -> Vec<Value> {
        let a = &self.agents[i];
        let mut v: Vec<Value> = a
            .host
            .storage
            .range("inbox/".to_string()..)
            .take_while(|(k, _)| k.starts_with("inbox/"))
            .filter_map(|(k, s)| {
                let mut e = unseal_json(&a.state_key, k, s)?;
                // The payload lives in its own record beside the entry.
                if e.get("payload").is_none() {
                    let pk = k.replacen("inbox/", "inboxp/", 1);
                    let p = a.host.storage.get(&pk)?;
                    e["payload"] = unseal_json(&a.state_key, &pk, p)?;
                }
                Some(e)
            })
            .collect();
        v.sort_by_key(|e| e["n"].as_u64().unwrap_or(0));
        v
    }

    /// The keys of agent `i`'s stored outbox entries for `peer`.
    pub fn outbox_keys(&self, i: usize, peer: &str) -> Vec<String> {
        let prefix = format!("outbox/{peer}/");
        self.agents[i]
            .host
            .storage
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Contents of the messages in agent `i`'s outbox for `peer`: the
    /// per-entry records `outbox/<peer>/<frame id>` (and the session
    /// record's own list, which only records from older builds use).
    pub fn outbox_contents(&self, i: usize, peer: &str) -> Vec<String> {
        let content = |e: &Value| -> Option<String> {
            // Text behind `~` (this build), base64 (older builds).
            let stored = e["plaintext"].as_str()?;
            let pt = match stored.strip_prefix('~') {
                Some(text) => text.as_bytes().to_vec(),
                None => b64::decode(stored).ok()?,
            };
            let v: Value = serde_json::from_slice(&pt).ok()?;
            v["content"].as_str().map(str::to_string)
        };
        let keys = self.outbox_keys(i, peer);
        let mut out: Vec<String> = keys
            .iter()
            .filter_map(|k| self.persisted(i, k))
            .filter_map(|e| content(&e))
            .collect();
        if let Some(rec) = self.persisted(i, &format!("session/{peer}")) {
            out.extend(
                rec["outbox"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(content),
            );
        }
        out
    }

    /// Frames of one type that agent `i` put on the wire towards `to`.
    pub fn wire_frames(&self, i: usize, kind: &str, to: &str) -> Vec<Value> {
        self.agents[i]
            .wire
            .iter()
            .filter_map(|(_, t)| serde_json::from_str::<Value>(t).ok())
            .filter(|v| v["type"] == kind && v["to"] == to)
            .collect()
    }

    pub fn warnings(&self, i: usize) -> Vec<String> {
        self.agents[i]
            .host
            .logs_at_least(kars_mesh::engine::LogLevel::Warn)
            .map(|(t, l, m)| format!("{:>9} ms {l:?}: {m}", t - EPOCH_MS))
            .collect()
    }
}

/// Short description of a command (for crash records).
pub fn brief(c: &Command) -> String {
    match c {
        Command::Store(k, v) => {
            let k = k
                .strip_prefix("session/did:mesh:")
                .map_or(k.clone(), |d| format!("session/{}", &d[..6]));
            let k = k
                .strip_prefix("inbox/")
                .map_or(k.clone(), |d| format!("inbox/{}", &d[..8]));
            format!("store {k} ({} B)", v.len())
        }
        Command::Erase(k) => format!("erase {k}"),
        Command::SocketOpen { socket, .. } => format!("socket-open {socket}"),
        Command::SocketSend { text, .. } => {
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            let id = v["id"].as_str().unwrap_or("");
            match v["type"].as_str().unwrap_or("?") {
                "message" => format!(
                    "send message id={} n={}",
                    &id[..id.len().min(8)],
                    v["header"]["n"]
                ),
                "ack" => format!("send ack {}", &id[..id.len().min(8)]),
                t => format!("send {t}"),
            }
        }
        Command::SocketClose { socket, code, .. } => format!("socket-close {socket} {code}"),
        Command::HttpRequest { method, url, .. } => format!("http {method} {url}"),
        Command::TimerSet { id, .. } => format!("timer-set {id}"),
        Command::TimerCancel(id) => format!("timer-cancel {id}"),
        Command::ToolResult { call_id, .. } => format!("tool-result {call_id}"),
        Command::FileRead { id, .. } => format!("file-read {id}"),
        Command::FileWrite(p, b) => format!("file-write {p} ({} B)", b.len()),
        Command::FileErase(p) => format!("file-erase {p}"),
        Command::JobStart { id, kind, .. } => format!("job-start {id} {kind}"),
        Command::JobKill(id) => format!("job-kill {id}"),
        Command::IdleWanted => "idle-wanted".into(),
    }
}
