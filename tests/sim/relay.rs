//! In-memory AgentMesh relay with the semantics of core-5.0.0
//! (`agentmesh/relay/app.py` + `store.py`, agentmesh-wire.md §4):
//!
//! * the first frame must be `connect` (else error frame + 4001), with `from`
//!   (else 4002) and a valid proof-of-possession (DID = sha256(pk), timestamp
//!   within ±5 min, Ed25519 over the timestamp; else error frame + 4005);
//!   nothing is sent back on success; no first frame within 10 s closes it;
//! * a second `connect` for the same DID closes the old socket with
//!   1000 `session_replaced`;
//! * routed frames (`message`, `knock`, `knock_accept`, `knock_reject`) need
//!   `to` and `id` (else silently dropped); `from` is **not** checked;
//!   delivered live when the recipient is connected and has heartbeated
//!   within 90 s, else stored;
//! * the store is keyed by frame id with global de-duplication, pushed
//!   oldest-first on every connect, and kept until an `ack` (from anyone)
//!   deletes it; TTL 72 h;
//! * `heartbeat` refreshes staleness; `disconnect` closes with 1000; other
//!   types get an error frame; a frame that is not a JSON object kills the
//!   socket; 90 s without any frame closes with 4004;
//! * `restart()` closes every socket with 1006 and loses the store.
//!
//! The relay is a pure state machine: it returns [`Out`] actions and the
//! world carries them over the (faulty) network.

use kars_mesh::crypto::identity::verify;
use kars_mesh::crypto::kdf::sha256;
use kars_mesh::wire::{b64, hex, time};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const STALE_MS: u64 = 90_000;
pub const IDLE_MS: u64 = 90_000;
pub const CONNECT_WINDOW_MS: u64 = 10_000;
pub const TTL_MS: u64 = 72 * 3600 * 1000;
const REPLAY_WINDOW_MS: i64 = 5 * 60 * 1000;

/// Who holds the client end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// An engine's socket, in one incarnation of that agent.
    Agent { agent: usize, inc: u32, socket: u32 },
    /// A scripted raw client (controller, attacker).
    Raw(usize),
}

#[derive(Clone, Debug)]
pub struct Conn {
    pub owner: Owner,
    pub did: Option<String>,
    pub open: bool,
    pub last_heartbeat: u64,
    pub last_frame: u64,
}

#[derive(Clone, Debug)]
pub enum Out {
    Send {
        conn: u64,
        text: String,
    },
    Close {
        conn: u64,
        code: u16,
        reason: String,
    },
}

#[derive(Clone, Debug)]
struct Stored {
    id: String,
    recipient: String,
    text: String,
    at: u64,
}

#[derive(Default, Debug, Clone)]
pub struct RelayStats {
    pub connects: u64,
    pub routed_live: u64,
    pub stored: u64,
    pub store_duplicates: u64,
    pub pushed: u64,
    pub acked: u64,
    pub replaced: u64,
    pub rejected: u64,
    pub unroutable: u64,
    pub restarts: u64,
    pub idle_closes: u64,
}

#[derive(Default)]
pub struct Relay {
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    by_did: BTreeMap<String, u64>,
    store: Vec<Stored>,
    pub stats: RelayStats,
}

impl Relay {
    pub fn new() -> Self {
        Self::default()
    }

    /// A WebSocket was accepted.
    pub fn open(&mut self, owner: Owner, now: u64) -> u64 {
        self.next_conn += 1;
        self.conns.insert(
            self.next_conn,
            Conn {
                owner,
                did: None,
                open: true,
                last_heartbeat: now,
                last_frame: now,
            },
        );
        self.next_conn
    }

    pub fn conn(&self, id: u64) -> Option<&Conn> {
        self.conns.get(&id)
    }

    pub fn is_open(&self, id: u64) -> bool {
        self.conns.get(&id).is_some_and(|c| c.open)
    }

    /// The client end went away (closed it, or its process died).
    pub fn gone(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.open = false;
            if let Some(d) = c.did.clone() {
                if self.by_did.get(&d) == Some(&id) {
                    self.by_did.remove(&d);
                }
            }
        }
    }

    fn close(&mut self, id: u64, code: u16, reason: &str, out: &mut Vec<Out>) {
        if self.is_open(id) {
            self.gone(id);
            out.push(Out::Close {
                conn: id,
                code,
                reason: reason.to_string(),
            });
        }
    }

    fn error(id: u64, detail: &str, out: &mut Vec<Out>) {
        out.push(Out::Send {
            conn: id,
            text: json!({"type": "error", "detail": detail}).to_string(),
        });
    }

    /// The DID currently connected with this conn, if any.
    pub fn connected(&self, did: &str) -> Option<u64> {
        self.by_did.get(did).copied()
    }

    pub fn stored_for(&self, did: &str) -> usize {
        self.store.iter().filter(|s| s.recipient == did).count()
    }

    pub fn stored_total(&self) -> usize {
        self.store.len()
    }

    /// A text frame arrived from the client of `id`.
    pub fn frame(&mut self, id: u64, text: &str, now: u64) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(c) = self.conns.get_mut(&id) else {
            return out;
        };
        if !c.open {
            return out;
        }
        c.last_frame = now;
        let v: Value = match serde_json::from_str::<Value>(text) {
            Ok(v) if v.is_object() => v,
            // json.loads fails, or frame.get on a non-dict raises: the
            // handler ends and the socket dies without a close frame.
            _ => {
                self.close(id, 1006, "", &mut out);
                return out;
            }
        };
        let kind = v["type"].as_str().unwrap_or("").to_string();
        if c.did.is_none() {
            if kind != "connect" {
                self.stats.rejected += 1;
                Self::error(id, "First frame must be 'connect'", &mut out);
                self.close(id, 4001, "", &mut out);
                return out;
            }
            let Some(from) = v["from"]
                .as_str()
                .filter(|f| !f.is_empty())
                .map(str::to_string)
            else {
                self.stats.rejected += 1;
                Self::error(id, "Missing 'from' field", &mut out);
                self.close(id, 4002, "", &mut out);
                return out;
            };
            if let Err(reason) = verify_connect_pop(&v, &from, now) {
                self.stats.rejected += 1;
                Self::error(id, &format!("DID proof failed: {reason}"), &mut out);
                self.close(id, 4005, "", &mut out);
                return out;
            }
            if let Some(old) = self.by_did.get(&from).copied() {
                if old != id {
                    self.stats.replaced += 1;
                    self.close(old, 1000, "session_replaced", &mut out);
                }
            }
            if let Some(c) = self.conns.get_mut(&id) {
                c.did = Some(from.clone());
                c.last_heartbeat = now;
            }
            self.by_did.insert(from.clone(), id);
            self.stats.connects += 1;
            let mut pending: Vec<&Stored> = self
                .store
                .iter()
                .filter(|s| s.recipient == from && now.saturating_sub(s.at) < TTL_MS)
                .collect();
            pending.sort_by_key(|s| s.at);
            for s in pending {
                self.stats.pushed += 1;
                out.push(Out::Send {
                    conn: id,
                    text: s.text.clone(),
                });
            }
            return out;
        }
        match kind.as_str() {
            "message" | "knock" | "knock_accept" | "knock_reject" => self.route(&v, now, &mut out),
            "ack" => {
                if let Some(fid) = v["id"].as_str() {
                    let before = self.store.len();
                    self.store.retain(|s| s.id != fid);
                    if self.store.len() != before {
                        self.stats.acked += 1;
                    }
                }
            }
            "heartbeat" => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.last_heartbeat = now;
                }
            }
            "disconnect" => self.close(id, 1000, "", &mut out),
            other => Self::error(id, &format!("Unknown frame type: {other}"), &mut out),
        }
        out
    }

    fn route(&mut self, v: &Value, now: u64, out: &mut Vec<Out>) {
        let (Some(to), Some(fid)) = (
            v["to"].as_str().filter(|s| !s.is_empty()),
            v["id"].as_str().filter(|s| !s.is_empty()),
        ) else {
            self.stats.unroutable += 1;
            return;
        };
        // Re-serialised (compact); nothing may depend on the byte layout.
        let text = v.to_string();
        if let Some(rc) = self.by_did.get(to).copied() {
            if let Some(c) = self.conns.get(&rc) {
                if c.open && now.saturating_sub(c.last_heartbeat) <= STALE_MS {
                    self.stats.routed_live += 1;
                    out.push(Out::Send { conn: rc, text });
                    return;
                }
            }
        }
        if self.store.iter().any(|s| s.id == fid) {
            self.stats.store_duplicates += 1;
            return;
        }
        self.stats.stored += 1;
        self.store.push(Stored {
            id: fid.to_string(),
            recipient: to.to_string(),
            text,
            at: now,
        });
    }

    /// The 10 s window for the first frame ended.
    pub fn connect_deadline(&mut self, id: u64) -> Vec<Out> {
        let mut out = Vec::new();
        if self
            .conns
            .get(&id)
            .is_some_and(|c| c.open && c.did.is_none())
        {
            self.close(id, 1006, "", &mut out);
        }
        out
    }

    /// Idle check: closes with 4004 after 90 s without a frame; otherwise
    /// returns when to look again.
    pub fn idle(&mut self, id: u64, now: u64) -> (Vec<Out>, Option<u64>) {
        let mut out = Vec::new();
        let Some(c) = self.conns.get(&id) else {
            return (out, None);
        };
        if !c.open {
            return (out, None);
        }
        if now.saturating_sub(c.last_frame) >= IDLE_MS {
            self.stats.idle_closes += 1;
            self.close(id, 4004, "", &mut out);
            return (out, None);
        }
        let next = c.last_frame + IDLE_MS;
        (out, Some(next))
    }

    /// The relay process restarted: every socket drops (1006) and the
    /// in-memory store is gone.
    pub fn restart(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.open)
            .map(|(i, _)| *i)
            .collect();
        for id in ids {
            self.close(id, 1006, "", &mut out);
        }
        self.store.clear();
        self.by_did.clear();
        self.stats.restarts += 1;
        out
    }
}

fn verify_connect_pop(v: &Value, did: &str, now: u64) -> Result<(), &'static str> {
    let (Some(pk), Some(ts), Some(sig)) = (
        v["public_key"].as_str(),
        v["timestamp"].as_str(),
        v["signature"].as_str(),
    ) else {
        return Err("connect frame missing did/public_key/timestamp/signature");
    };
    // base64.b64decode: the standard alphabet only.
    if pk.contains(['-', '_']) || sig.contains(['-', '_']) {
        return Err("invalid public_key encoding");
    }
    let pk: [u8; 32] = b64::decode(pk)
        .map_err(|_| "invalid public_key encoding")?
        .try_into()
        .map_err(|_| "public_key must be 32 bytes")?;
    if did != format!("did:mesh:{}", &hex::encode(&sha256(&pk))[..32]) {
        return Err("DID does not match public_key (sha256 mismatch)");
    }
    let t = time::parse_millis(ts).map_err(|_| "invalid timestamp format")?;
    if (now as i64 - t).abs() > REPLAY_WINDOW_MS {
        return Err("timestamp outside replay window");
    }
    let sig: [u8; 64] = b64::decode(sig)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or("signature verification failed")?;
    if !verify(&pk, ts.as_bytes(), &sig) {
        return Err("invalid signature");
    }
    Ok(())
}
