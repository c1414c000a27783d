//! The engine under fuzz: `Engine::handle` driven by a script of host events
//! after a normal start (registry answered by the simulation's registry,
//! the relay socket opened). One operation per line; `$SELF` and `$CTRL`
//! stand for the engine's DID and a controller it trusts for plaintext.
//!
//! ```text
//! mode agent|sandbox|controller   first line only: the start configuration
//! frame <text>                    a relay frame on the open socket
//! plain <json>                    a plaintext frame from $CTRL carrying <json>
//! plain2 <json>                   the same in the TS dialect (plaintext:true)
//! xfer <n> <json>                 <json> as a chunked transfer from $CTRL in n pieces
//! xferr <n> <json>                the same, chunks reversed and one repeated
//! http <status> <body>            answer the oldest pending HTTP request
//! httpfail                        fail it
//! auto                            answer every pending request from the registry
//! timer                           fire the earliest timer (the clock moves there)
//! tick <ms>                       move the clock
//! tool <name> <args json>         a tool call
//! abort                           abort the last tool call
//! close <code>                    the relay closes the socket
//! open                            open the sockets the engine asked for
//! file <text> | filefail          answer the oldest file read
//! jobready <info>                 the oldest job is ready
//! jobexit <code> <name>=<text>    the oldest job exited with one output
//! stop | restart                  stop the engine | a new engine on the same storage
//! ```
//!
//! Invariants after every event: every `Store` is a sealed record that opens
//! under the state key as its record type; no tool call is answered twice;
//! tool results and socket frames are JSON; requests go to the configured
//! services.

use crate::sim::host::SimHost;
use crate::sim::registry::Registry;
use kars_mesh::crypto::identity::Identity;
use kars_mesh::crypto::seal;
use kars_mesh::engine::{Command, Engine, Event, JobExit, LogLevel};
use kars_mesh::wire::{b64, plaintext, transfer};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub const EPOCH_MS: u64 = 1_767_225_600_000;
const RELAY_URL: &str = "http://relay";
const REGISTRY_URL: &str = "http://registry";
pub const STATE_KEY: [u8; 32] = [0x5a; 32];
/// The controller's seed (its DID is `$CTRL`).
pub const CTRL_SEED: [u8; 32] = [0x42; 32];
const SELF_SEED_HEX: &str = "1111111111111111111111111111111111111111111111111111111111111111";
/// Events handled per script line at most (a livelock guard).
const EVENTS_PER_OP: usize = 400;
/// Script lines run per input at most.
const MAX_OPS: usize = 64;

struct HttpReq {
    id: u64,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

pub struct Rig {
    config: String,
    engine: Engine,
    pub host: SimHost,
    registry: Registry,
    pub self_did: String,
    pub ctrl_did: String,
    http: VecDeque<HttpReq>,
    to_open: Vec<u32>,
    open: Option<u32>,
    timers: BTreeMap<u64, u64>,
    files: VecDeque<u64>,
    jobs: VecDeque<u64>,
    answered: BTreeSet<String>,
    events: VecDeque<Event>,
    next_call: u64,
    next_frame: u64,
    last_call: Option<String>,
    /// Command kinds seen (the outcome label).
    pub kinds: BTreeSet<&'static str>,
    /// Every tool result: (call id, result JSON).
    pub results: Vec<(String, String)>,
}

fn record_type(key: &str) -> String {
    format!("{}.v1", key.split('/').next().unwrap_or(key))
}

impl Rig {
    /// A started engine in `mode`, registered and connected.
    pub fn new(mode: &str) -> Self {
        let ctrl_did = Identity::from_seed(&CTRL_SEED).did().to_string();
        let mut cfg = json!({
            "state_key": b64::encode_std(&STATE_KEY),
            "relay_url": RELAY_URL,
            "registry_url": REGISTRY_URL,
            "name": "fuzzed",
            "identity_seed_hex": SELF_SEED_HEX,
            "trusted_plaintext": [ctrl_did],
        });
        match mode {
            "sandbox" => {
                cfg["sandbox"] = json!({
                    "name": "sb-fuzz", "requester": ctrl_did, "request_id": "req-1",
                    "task": "count the words", "files": ["a.txt", "b.bin"],
                });
            }
            "controller" => {
                cfg["role"] = json!("controller");
                cfg["cluster_name"] = json!("fuzz-cluster");
            }
            _ => {}
        }
        let mut rig = Rig {
            config: cfg.to_string(),
            engine: Engine::new(),
            host: SimHost::new(7, EPOCH_MS),
            registry: Registry::new(),
            self_did: String::new(),
            ctrl_did,
            http: VecDeque::new(),
            to_open: Vec::new(),
            open: None,
            timers: BTreeMap::new(),
            files: VecDeque::new(),
            jobs: VecDeque::new(),
            answered: BTreeSet::new(),
            events: VecDeque::new(),
            next_call: 0,
            next_frame: 0,
            last_call: None,
            kinds: BTreeSet::new(),
            results: Vec::new(),
        };
        rig.boot();
        rig
    }

    fn boot(&mut self) {
        self.engine = Engine::new();
        self.open = None;
        self.to_open.clear();
        self.http.clear();
        self.timers.clear();
        self.files.clear();
        self.jobs.clear();
        self.deliver(Event::Start(self.config.clone()));
        self.self_did = self.engine.did().unwrap_or_default().to_string();
        self.settle();
    }

    /// Answer everything from the registry and open the socket, until quiet.
    pub fn settle(&mut self) {
        for _ in 0..20 {
            if self.http.is_empty() && self.to_open.is_empty() {
                break;
            }
            self.auto_http();
            self.open_sockets();
        }
    }

    fn auto_http(&mut self) {
        while let Some(r) = self.http.pop_front() {
            let ev = match r.url.strip_prefix(REGISTRY_URL) {
                Some(path) => {
                    let (status, body) = self.registry.handle(
                        &r.method,
                        path,
                        &r.headers,
                        r.body.as_deref(),
                        self.host.now,
                    );
                    Event::HttpResponse {
                        id: r.id,
                        status,
                        body,
                    }
                }
                None => Event::HttpFailed {
                    id: r.id,
                    message: "no such host".into(),
                },
            };
            self.deliver(ev);
        }
    }

    fn open_sockets(&mut self) {
        for s in std::mem::take(&mut self.to_open) {
            self.open = Some(s);
            self.deliver(Event::SocketOpened(s));
        }
    }

    /// Handle one event and everything it leads to, checking each command.
    pub fn deliver(&mut self, ev: Event) {
        self.events.push_back(ev);
        let mut n = 0;
        while let Some(ev) = self.events.pop_front() {
            n += 1;
            if n > EVENTS_PER_OP {
                self.events.clear();
                break;
            }
            let cmds = self.engine.handle(ev, &mut self.host);
            for c in cmds {
                self.check(c);
            }
        }
    }

    fn check(&mut self, c: Command) {
        self.kinds.insert(c.wire_name());
        match c {
            Command::Store(ref k, ref v) if v.first() == Some(&seal::VERSION_TRAILER) => {
                // A file chunk's outbox entry: sealed fields, then its frame.
                assert!(
                    k.starts_with("outbox/"),
                    "Store {k:?}: a trailer outside the outbox"
                );
                let opened = seal::unseal_with_trailer(&STATE_KEY, &record_type(k), k, v);
                assert!(
                    opened.is_ok_and(|(_, t)| t.starts_with(b"{\"v\":1,\"type\":\"message\",")),
                    "Store {k:?} does not open as {} with a message frame after it",
                    record_type(k)
                );
                self.host.apply_storage(&c);
            }
            Command::Store(ref k, ref v) => {
                assert!(
                    v.len() >= 29 && v[0] == seal::VERSION_BOUND,
                    "Store {k:?}: {} bytes, first {:?} is not a sealed record",
                    v.len(),
                    v.first()
                );
                assert!(
                    seal::unseal_bound(&STATE_KEY, &record_type(k), k, v, false).is_ok(),
                    "Store {k:?} does not open as {}",
                    record_type(k)
                );
                self.host.apply_storage(&c);
            }
            Command::Erase(_) => {
                self.host.apply_storage(&c);
            }
            Command::SocketOpen { socket, url } => {
                assert!(url.starts_with("ws://relay"), "socket to {url}");
                self.to_open.push(socket);
            }
            Command::SocketSend { socket, text } => {
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("socket {socket} sent non-JSON ({e}): {text:.200}"));
                assert!(v.is_object(), "socket frame is not an object: {text:.200}");
                // As the relay does: a message to ourselves comes back (the
                // engine's markers, `agent::handover`).
                if v["type"] == "message"
                    && v["to"] == v["from"]
                    && v["to"] == self.self_did.as_str()
                {
                    self.events.push_back(Event::SocketFrame { socket, text });
                }
            }
            Command::SocketClose {
                socket,
                code,
                reason,
            } => {
                if self.open == Some(socket) {
                    self.open = None;
                    self.events.push_back(Event::SocketClosed {
                        socket,
                        code,
                        reason,
                    });
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
                assert!(
                    url.starts_with(REGISTRY_URL) || url.starts_with(RELAY_URL),
                    "request to {url}"
                );
                self.http.push_back(HttpReq {
                    id,
                    method,
                    url,
                    headers,
                    body,
                });
            }
            Command::TimerSet { id, at_ms } => {
                self.timers.insert(id, at_ms);
            }
            Command::TimerCancel(id) => {
                self.timers.remove(&id);
            }
            // Idle time comes after what already waits.
            Command::IdleWanted => self.events.push_back(Event::Idle),
            Command::ToolResult {
                call_id,
                result_json,
            } => {
                let v: Value = serde_json::from_str(&result_json).unwrap_or_else(|e| {
                    panic!("tool result is not JSON ({e}): {result_json:.200}")
                });
                assert!(
                    v.is_object(),
                    "tool result is not an object: {result_json:.200}"
                );
                assert!(
                    self.answered.insert(call_id.clone()),
                    "tool call {call_id} answered twice: {result_json:.300}"
                );
                self.results.push((call_id, result_json));
            }
            Command::FileRead { id, .. } => self.files.push_back(id),
            Command::JobStart { id, .. } => self.jobs.push_back(id),
            Command::FileWrite(..) | Command::FileErase(_) | Command::JobKill(_) => {}
        }
    }

    fn subst(&self, s: &str) -> String {
        s.replace("$SELF", &self.self_did)
            .replace("$CTRL", &self.ctrl_did)
    }

    fn frame(&mut self, text: String) {
        if self.open.is_none() {
            self.settle();
        }
        if let Some(socket) = self.open {
            self.deliver(Event::SocketFrame { socket, text });
        }
    }

    fn plain(&mut self, payload: &str, ts_dialect: bool) {
        self.next_frame += 1;
        let id = format!("fz-{:08}", self.next_frame);
        let body = plaintext::encode_body(payload);
        let f = if ts_dialect {
            json!({"v":1,"type":"message","from":self.ctrl_did,"to":self.self_did,"id":id,
                "ts":"2026-01-01T00:00:00.000Z","ciphertext":body,"plaintext":true})
        } else {
            json!({"type":"message","from":self.ctrl_did,"to":self.self_did,"id":id,"payload":body})
        };
        self.frame(f.to_string());
    }

    /// `text` as a manifest and chunks (cut on character boundaries).
    fn transfer(&mut self, pieces: usize, text: &str, shuffle: bool) {
        let pieces = pieces.clamp(1, transfer::MAX_CHUNKS);
        let per = text.len().div_ceil(pieces).max(1);
        let mut parts: Vec<&str> = Vec::new();
        let mut start = 0;
        while start < text.len() {
            let mut end = (start + per).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            parts.push(&text[start..end]);
            start = end;
        }
        if parts.is_empty() {
            parts.push("");
        }
        self.next_frame += 1;
        let tid = format!("t-{}", self.next_frame);
        let hashes: Vec<String> = parts
            .iter()
            .map(|p| transfer::sha256_hex(p.as_bytes()))
            .collect();
        let manifest = json!({
            "type": "mesh:transfer_manifest", "transfer_id": tid, "original_type": "file_transfer",
            "total_chunks": parts.len(), "total_bytes": text.len(), "chunk_hashes": hashes,
            "manifest_hash": transfer::manifest_hash(&hashes), "from_agent": "sb", "timestamp": "t",
        });
        self.plain(&manifest.to_string(), false);
        let mut order: Vec<usize> = (0..parts.len()).collect();
        if shuffle {
            order.reverse();
            order.insert(order.len() / 2, order[0]);
        }
        for i in order {
            let chunk = json!({
                "type": "mesh:transfer_chunk", "transfer_id": tid, "chunk_index": i,
                "total_chunks": parts.len(), "data": parts[i], "hash": hashes[i], "from_agent": "sb",
            });
            self.plain(&chunk.to_string(), false);
        }
    }

    /// Run one script line.
    pub fn op(&mut self, line: &str) {
        let line = self.subst(line);
        let (op, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let num = |s: &str| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        };
        let after_num = |s: &str| {
            s.split_once(' ')
                .map(|(_, r)| r.to_string())
                .unwrap_or_default()
        };
        match op {
            "frame" => self.frame(rest.to_string()),
            "plain" => self.plain(rest, false),
            "plain2" => self.plain(rest, true),
            "xfer" | "xferr" => {
                let n = num(rest).unwrap_or(1) as usize;
                self.transfer(n, &after_num(rest), op == "xferr")
            }
            "http" => {
                if let Some(r) = self.http.pop_front() {
                    let status = num(rest).unwrap_or(200).min(999) as u16;
                    let body = after_num(rest).into_bytes();
                    self.deliver(Event::HttpResponse {
                        id: r.id,
                        status,
                        body,
                    });
                }
            }
            "httpfail" => {
                if let Some(r) = self.http.pop_front() {
                    self.deliver(Event::HttpFailed {
                        id: r.id,
                        message: rest.to_string(),
                    });
                }
            }
            "auto" => self.auto_http(),
            "open" => self.open_sockets(),
            "timer" => {
                if let Some((&id, &at)) = self.timers.iter().min_by_key(|(id, at)| (**at, **id)) {
                    self.timers.remove(&id);
                    self.host.now = self.host.now.max(at);
                    self.deliver(Event::TimerFired(id));
                }
            }
            "tick" => self.host.now += num(rest).unwrap_or(1000).min(30 * 86_400_000),
            "tool" => {
                let (name, args) = rest.split_once(' ').unwrap_or((rest, "{}"));
                self.next_call += 1;
                let call_id = format!("call-{}", self.next_call);
                self.last_call = Some(call_id.clone());
                self.deliver(Event::ToolCall {
                    call_id,
                    tool: name.to_string(),
                    args_json: args.to_string(),
                });
            }
            "abort" => {
                if let Some(c) = self.last_call.clone() {
                    self.deliver(Event::ToolAbort(c));
                }
            }
            "close" => {
                if let Some(socket) = self.open.take() {
                    let code = num(rest).unwrap_or(1006).min(65535) as u16;
                    self.deliver(Event::SocketClosed {
                        socket,
                        code,
                        reason: after_num(rest),
                    });
                }
            }
            "file" => {
                if let Some(id) = self.files.pop_front() {
                    self.deliver(Event::FileLoaded {
                        id,
                        bytes: rest.as_bytes().to_vec(),
                    });
                }
            }
            "filefail" => {
                if let Some(id) = self.files.pop_front() {
                    self.deliver(Event::FileFailed {
                        id,
                        message: rest.to_string(),
                    });
                }
            }
            "jobready" => {
                if let Some(&id) = self.jobs.front() {
                    self.deliver(Event::JobReady {
                        id,
                        info: rest.to_string(),
                    });
                }
            }
            "jobexit" => {
                if let Some(id) = self.jobs.pop_front() {
                    let code = rest
                        .split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<i32>().ok())
                        .unwrap_or(0);
                    let out = after_num(rest);
                    let (name, content) = out.split_once('=').unwrap_or(("out.txt", out.as_str()));
                    self.deliver(Event::JobExited(JobExit {
                        id,
                        code,
                        outputs: vec![(name.to_string(), content.as_bytes().to_vec())],
                        refused: Vec::new(),
                        log: "log".into(),
                    }));
                }
            }
            "stop" => self.deliver(Event::Stop),
            "restart" => self.boot(),
            _ => {}
        }
    }

    /// The relay socket is open.
    pub fn connected(&self) -> bool {
        self.open.is_some()
    }

    /// Warnings and errors logged so far, as first words (for labels).
    pub fn problems(&self) -> BTreeSet<String> {
        self.host
            .logs_at_least(LogLevel::Warn)
            .map(|(_, _, m)| m.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }
}

/// The engine target: a script (see the module documentation).
pub fn engine_script(input: &[u8]) -> String {
    let s = super::text(input);
    let mut lines = s.lines().peekable();
    let mode = match lines.peek().and_then(|l| l.strip_prefix("mode ")) {
        Some(m) => {
            let m = m.trim().to_string();
            lines.next();
            m
        }
        None => "agent".into(),
    };
    let mut rig = Rig::new(&mode);
    for line in lines.take(MAX_OPS) {
        rig.op(line);
    }
    // The state it left must open again after a restart.
    rig.op("restart");
    rig.op("tool mesh_inbox {}");
    let mut label: Vec<String> = rig.kinds.iter().map(|k| k.to_string()).collect();
    label.extend(rig.problems());
    format!("{mode}:{}", label.join(","))
}

pub const TARGET: super::Target = super::Target {
    name: "engine",
    run: engine_script,
    max_len: 64 << 10,
    bounded: 20_000,
};
