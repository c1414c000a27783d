//! In-memory AgentMesh registry with the semantics of core-5.0.0
//! (`agentmesh/registry/app.py` + `store.py`, agentmesh-wire.md §3):
//!
//! * `POST /v1/agents`: proof-of-possession checked (timestamp within ±5 min
//!   of the virtual clock, Ed25519 over `public_key ‖ proof_timestamp`); the
//!   DID is derived as `did:mesh:` + hex(sha256(pk))[..32]; 201, then 409.
//! * `GET /v1/agents/{did}`: record with capabilities and metadata, or 404.
//! * `PUT /v1/agents/{did}/prekeys`: 404 (checked before auth), then
//!   Ed25519-Timestamp auth (422 without header, 401, 403); replaces the whole
//!   bundle; `identity_key_ed` kept if omitted.
//! * `GET /v1/agents/{did}/prekeys`: pops the first OPK (FIFO), `null` when
//!   none are left; 404 without a bundle.
//! * `POST /v1/agents/{did}/heartbeat`: auth first (so an unknown DID gets
//!   **401** "Agent not registered", as the real server; [`UnknownHeartbeat`]
//!   can switch that to 404), then 404, 429 within 10 s, 200.
//! * `GET /v1/discover?capability=X&limit=N`: exact capability match in
//!   registration order, limit 1..=200 (422 otherwise).
//! * `restart()` wipes everything, as the in-memory store does.

use kars_mesh::crypto::identity::verify;
use kars_mesh::crypto::kdf::sha256;
use kars_mesh::wire::{b64, hex, time};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const REPLAY_WINDOW_MS: i64 = 5 * 60 * 1000;
const HEARTBEAT_MIN_INTERVAL_MS: u64 = 10_000;

/// What `POST …/heartbeat` answers for a DID the registry does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownHeartbeat {
    /// core-5.0.0: the auth check runs first and fails with 401
    /// "Agent not registered".
    Unauthorized401,
    /// An idealised registry answering 404 "Agent not found".
    NotFound404,
}

struct Bundle {
    identity_key: Vec<u8>,
    identity_key_ed: Option<Vec<u8>>,
    spk_id: Value,
    spk: Vec<u8>,
    spk_sig: Vec<u8>,
    opks: VecDeque<Value>,
}

struct Record {
    public_key: [u8; 32],
    capabilities: Vec<String>,
    metadata: Value,
    registered_at: u64,
    last_seen: u64,
    last_heartbeat: Option<u64>,
    bundle: Option<Bundle>,
    order: u64,
}

#[derive(Clone, Debug)]
pub struct RequestLog {
    pub at: u64,
    pub method: String,
    pub path: String,
    pub status: u16,
}

pub struct Registry {
    agents: BTreeMap<String, Record>,
    next_order: u64,
    pub unknown_heartbeat: UnknownHeartbeat,
    /// DIDs whose served bundle gets a corrupted SPK signature.
    pub tamper_spk_signature: BTreeSet<String>,
    pub requests: Vec<RequestLog>,
    pub restarts: u32,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

fn iso(ms: u64) -> String {
    // Python isoformat(): microseconds and +00:00.
    let z = time::format_millis(ms);
    format!("{}000+00:00", z.trim_end_matches('Z'))
}

fn detail(status: u16, msg: &str) -> (u16, Vec<u8>) {
    (status, json!({ "detail": msg }).to_string().into_bytes())
}

fn ok(status: u16, v: Value) -> (u16, Vec<u8>) {
    (status, v.to_string().into_bytes())
}

/// Python `base64.urlsafe_b64decode(s + "==")`: our decoder takes both
/// alphabets with or without padding, which is at least as lenient.
fn b64url(s: &str) -> Option<Vec<u8>> {
    b64::decode(s).ok()
}

fn did_of(pk: &[u8]) -> String {
    format!("did:mesh:{}", &hex::encode(&sha256(pk))[..32])
}

fn within_window(ts: &str, now: u64) -> Result<(), &'static str> {
    let t = time::parse_millis(ts).map_err(|_| "Invalid timestamp format")?;
    if (now as i64 - t).abs() > REPLAY_WINDOW_MS {
        return Err("Timestamp outside replay window");
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

impl Registry {
    pub fn new() -> Self {
        Registry {
            agents: BTreeMap::new(),
            next_order: 0,
            unknown_heartbeat: UnknownHeartbeat::Unauthorized401,
            tamper_spk_signature: BTreeSet::new(),
            requests: Vec::new(),
            restarts: 0,
        }
    }

    /// The process restarted: the in-memory store is gone.
    pub fn restart(&mut self) {
        self.agents.clear();
        self.restarts += 1;
    }

    pub fn is_registered(&self, did: &str) -> bool {
        self.agents.contains_key(did)
    }

    /// Take every one-time prekey out of `did`'s bundle, as anyone can by
    /// fetching it repeatedly: later sessions open without one.
    pub fn drain_opks(&mut self, did: &str) {
        if let Some(b) = self.agents.get_mut(did).and_then(|r| r.bundle.as_mut()) {
            b.opks.clear();
        }
    }

    /// OPKs left in `did`'s bundle; `None` without a bundle.
    pub fn opk_count(&self, did: &str) -> Option<usize> {
        self.agents
            .get(did)
            .and_then(|r| r.bundle.as_ref())
            .map(|b| b.opks.len())
    }

    pub fn count(&self, method: &str, path_prefix: &str, status: u16) -> usize {
        self.requests
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix) && r.status == status)
            .count()
    }

    /// Serve one request. `path` is everything after the base URL.
    pub fn handle(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
        now: u64,
    ) -> (u16, Vec<u8>) {
        let (status, out) = self.route(method, path, headers, body, now);
        self.requests.push(RequestLog {
            at: now,
            method: method.to_string(),
            path: path.to_string(),
            status,
        });
        (status, out)
    }

    fn route(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
        now: u64,
    ) -> (u16, Vec<u8>) {
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let segs: Vec<&str> = p.trim_start_matches('/').split('/').collect();
        let auth = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str());
        match (method, segs.as_slice()) {
            ("POST", ["v1", "agents"]) => self.register(body, now),
            ("GET", ["v1", "agents", did]) => self.get_agent(did),
            ("PUT", ["v1", "agents", did, "prekeys"]) => self.put_prekeys(did, auth, body, now),
            ("GET", ["v1", "agents", did, "prekeys"]) => self.get_prekeys(did),
            ("POST", ["v1", "agents", did, "heartbeat"]) => self.heartbeat(did, auth, now),
            ("GET", ["v1", "discover"]) => self.discover(&query(q)),
            ("GET", ["health"]) => ok(
                200,
                json!({"status":"healthy","service":"agentmesh-registry","entra_verify_enabled":false}),
            ),
            _ => detail(404, "Not Found"),
        }
    }

    fn register(&mut self, body: Option<&[u8]>, now: u64) -> (u16, Vec<u8>) {
        let Some(v) = body.and_then(|b| serde_json::from_slice::<Value>(b).ok()) else {
            return detail(422, "body is not JSON");
        };
        let (Some(pk_s), Some(proof_s), Some(ts)) = (
            v["public_key"].as_str(),
            v["proof"].as_str(),
            v["proof_timestamp"].as_str(),
        ) else {
            return detail(422, "missing field");
        };
        let Some(pk) = b64url(pk_s) else {
            return detail(400, "Invalid public_key encoding");
        };
        let Ok(pk) = <[u8; 32]>::try_from(pk.as_slice()) else {
            return detail(400, "public_key must be 32 bytes");
        };
        let t = match time::parse_millis(ts) {
            Ok(t) => t,
            Err(time::TimeError::NoOffset(_)) => {
                // The real server compares a naive datetime with an aware one.
                return detail(500, "Internal Server Error");
            }
            Err(_) => return detail(400, "Invalid proof_timestamp"),
        };
        if (now as i64 - t).abs() > REPLAY_WINDOW_MS {
            return detail(401, "Proof timestamp outside replay window");
        }
        let Some(sig) = b64url(proof_s).and_then(|s| <[u8; 64]>::try_from(s.as_slice()).ok())
        else {
            return detail(400, "Malformed proof");
        };
        let mut msg = pk_s.as_bytes().to_vec();
        msg.extend_from_slice(ts.as_bytes());
        if !verify(&pk, &msg, &sig) {
            return detail(401, "Invalid proof-of-possession");
        }
        let did = did_of(&pk);
        if self.agents.contains_key(&did) {
            return detail(409, "Agent already registered");
        }
        let capabilities = v["capabilities"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        self.next_order += 1;
        self.agents.insert(
            did.clone(),
            Record {
                public_key: pk,
                capabilities,
                metadata: v.get("metadata").cloned().unwrap_or_else(|| json!({})),
                registered_at: now,
                last_seen: now,
                last_heartbeat: None,
                bundle: None,
                order: self.next_order,
            },
        );
        ok(201, json!({"did": did, "status": "registered"}))
    }

    fn get_agent(&self, did: &str) -> (u16, Vec<u8>) {
        let Some(r) = self.agents.get(did) else {
            return detail(404, "Agent not found");
        };
        ok(
            200,
            json!({
                "did": did,
                "capabilities": r.capabilities,
                "metadata": r.metadata,
                "registered_at": iso(r.registered_at),
                "last_seen": iso(r.last_seen),
                "reputation_score": 0.5,
                "total_sessions": 0,
                "successful_sessions": 0,
                "failed_sessions": 0,
                "timeout_sessions": 0,
                "last_session_at": null,
                "completion_rate": null,
                "tier": "anonymous",
                "verified_app_id": null,
                "verified_tenant_id": null,
                "verified_at": null,
            }),
        )
    }

    /// `verify_ed25519_timestamp_auth`: returns the authenticated DID.
    fn auth(&self, header: Option<&str>, now: u64) -> Result<String, (u16, Vec<u8>)> {
        let Some(h) = header.filter(|h| h.starts_with("Ed25519-Timestamp ")) else {
            return Err(detail(401, "Missing or invalid Authorization header"));
        };
        let parts: Vec<&str> = h.splitn(4, ' ').collect();
        let [_, did, ts, sig] = parts.as_slice() else {
            return Err(detail(401, "Malformed Ed25519-Timestamp header"));
        };
        within_window(ts, now).map_err(|m| detail(401, m))?;
        let Some(rec) = self.agents.get(*did) else {
            return Err(detail(401, "Agent not registered"));
        };
        let Some(sig) = b64url(sig).and_then(|s| <[u8; 64]>::try_from(s.as_slice()).ok()) else {
            return Err(detail(401, "Invalid signature"));
        };
        if !verify(&rec.public_key, ts.as_bytes(), &sig) {
            return Err(detail(401, "Invalid signature"));
        }
        Ok(did.to_string())
    }

    fn put_prekeys(
        &mut self,
        did: &str,
        auth: Option<&str>,
        body: Option<&[u8]>,
        now: u64,
    ) -> (u16, Vec<u8>) {
        let Some(v) = body.and_then(|b| serde_json::from_slice::<Value>(b).ok()) else {
            return detail(422, "body is not JSON");
        };
        if v["identity_key"].as_str().is_none() || !v["signed_pre_key"].is_object() {
            return detail(422, "missing field");
        }
        if auth.is_none() {
            // FastAPI: Header(...) is required.
            return detail(422, "Authorization header required");
        }
        if !self.agents.contains_key(did) {
            return detail(404, "Agent not found");
        }
        match self.auth(auth, now) {
            Ok(a) if a == did => {}
            Ok(_) => return detail(403, "DID mismatch"),
            Err(e) => return e,
        }
        let parse = || -> Option<Bundle> {
            let spk = &v["signed_pre_key"];
            let ed = match v["identity_key_ed"].as_str() {
                Some(s) => {
                    let b = b64url(s)?;
                    if b.len() != 32 {
                        return None;
                    }
                    Some(b)
                }
                None => None,
            };
            Some(Bundle {
                identity_key: b64url(v["identity_key"].as_str()?)?,
                identity_key_ed: ed,
                spk_id: spk.get("key_id")?.clone(),
                spk: b64url(spk["public_key"].as_str()?)?,
                spk_sig: b64url(spk["signature"].as_str()?)?,
                opks: v["one_time_pre_keys"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into(),
            })
        };
        let Some(mut bundle) = parse() else {
            return detail(400, "Invalid pre-key bundle");
        };
        let Some(rec) = self.agents.get_mut(did) else {
            return detail(404, "Agent not found");
        };
        if bundle.identity_key_ed.is_none() {
            bundle.identity_key_ed = rec.bundle.as_ref().and_then(|b| b.identity_key_ed.clone());
        }
        let n = bundle.opks.len();
        rec.bundle = Some(bundle);
        ok(200, json!({"did": did, "otk_count": n}))
    }

    fn get_prekeys(&mut self, did: &str) -> (u16, Vec<u8>) {
        let tamper = self.tamper_spk_signature.contains(did);
        let Some(b) = self.agents.get_mut(did).and_then(|r| r.bundle.as_mut()) else {
            return detail(404, "Pre-key bundle not found");
        };
        let otk = b.opks.pop_front().unwrap_or(Value::Null);
        let mut sig = b.spk_sig.clone();
        if tamper {
            if let Some(x) = sig.get_mut(7) {
                *x ^= 0x40;
            }
        }
        ok(
            200,
            json!({
                "identity_key": b64::encode_url(&b.identity_key),
                "identity_key_ed": b.identity_key_ed.as_ref().map(|k| b64::encode_url(k)),
                "signed_pre_key": {
                    "key_id": b.spk_id,
                    "public_key": b64::encode_url(&b.spk),
                    "signature": b64::encode_url(&sig),
                },
                "one_time_pre_key": otk,
            }),
        )
    }

    fn heartbeat(&mut self, did: &str, auth: Option<&str>, now: u64) -> (u16, Vec<u8>) {
        if !self.agents.contains_key(did) && self.unknown_heartbeat == UnknownHeartbeat::NotFound404
        {
            return detail(404, "Agent not found");
        }
        match self.auth(auth, now) {
            Ok(a) if a == did => {}
            Ok(_) => return detail(403, "Authenticated DID does not match heartbeat target"),
            Err(e) => return e,
        }
        let Some(rec) = self.agents.get_mut(did) else {
            return detail(404, "Agent not found");
        };
        if rec
            .last_heartbeat
            .is_some_and(|t| now.saturating_sub(t) < HEARTBEAT_MIN_INTERVAL_MS)
        {
            return detail(429, "Heartbeat throttled; retry after 10s");
        }
        rec.last_heartbeat = Some(now);
        rec.last_seen = now;
        ok(200, json!({"did": did, "last_seen": iso(now)}))
    }

    fn discover(&self, q: &BTreeMap<String, String>) -> (u16, Vec<u8>) {
        let Some(cap) = q.get("capability") else {
            return detail(422, "capability is required");
        };
        let limit = match q.get("limit").map(|l| l.parse::<u64>()) {
            None => 50,
            Some(Ok(l)) if (1..=200).contains(&l) => l as usize,
            Some(_) => return detail(422, "limit must be 1..200"),
        };
        let mut found: Vec<(&String, &Record)> = self
            .agents
            .iter()
            .filter(|(_, r)| r.capabilities.iter().any(|c| c == cap))
            .collect();
        found.sort_by_key(|(_, r)| r.order);
        let results: Vec<Value> = found
            .into_iter()
            .take(limit)
            .map(|(d, r)| {
                json!({"did": d, "capabilities": r.capabilities, "reputation_score": 0.5, "last_seen": iso(r.last_seen)})
            })
            .collect();
        let total = results.len();
        ok(200, json!({"results": results, "total": total}))
    }
}
