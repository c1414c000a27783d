//! The sans-I/O engine: `handle(event) -> commands`. It owns the agent's
//! identity and (in later layers) the relay link, sessions, pairing and
//! offloads. Reads go through [`Host`]; every write is a `Store` command the
//! host carries out, in order, before any later command.

use crate::agent::{Agent, Cx};
use crate::crypto::identity::Identity;
use crate::crypto::seal;
use crate::store::Vault;
use crate::wire::b64;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

/// Storage key of the sealed identity record.
pub const IDENTITY_KEY: &str = "identity";

// The ground types live in `crate::io`; they are named here too, where
// hosts and tests have always found them.
pub use crate::io::{Command, Event, Host, JobExit, LogLevel};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("start configuration is not valid JSON: {0}")]
    Config(String),
    /// The node's settings were read but cannot be used (a URL, a policy),
    /// or its state could not be written; the text says which.
    #[error("{0}")]
    Start(String),
    #[error("state_key must be base64 of 32 random bytes; the host creates it once and keeps it private")]
    StateKey,
    #[error("the stored identity could not be opened: {0}. Restore the state key that sealed it, or move the state directory aside to start a new identity")]
    IdentityUnreadable(seal::SealError),
    #[error("the engine has not been started")]
    NotStarted,
}

#[derive(Deserialize)]
struct StartConfig {
    state_key: String,
    /// The original plugin's `~/.kars/identity.json`, to keep its DID.
    #[serde(default)]
    legacy_identity: Option<LegacyIdentity>,
    /// `KARS_IDENTITY_SEED` (64 hex) or `PINNED_AGENT_IDENTITY_APP_ID`: a
    /// deterministic identity, used only when none is stored yet.
    #[serde(default)]
    identity_seed_hex: Option<String>,
    #[serde(default)]
    pinned_app_id: Option<String>,
}

/// The start configuration's secrets do not outlive it in the core's
/// memory (a later allocation could otherwise hand them on unwiped).
impl Drop for StartConfig {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.state_key.zeroize();
        if let Some(s) = self.identity_seed_hex.as_mut() {
            s.zeroize();
        }
        if let Some(s) = self.pinned_app_id.as_mut() {
            s.zeroize();
        }
    }
}

/// Overwrite the stack below the caller's frame (64 KiB, more than a start
/// uses): WebAssembly's stack lives in linear memory, where copies of a
/// seed moved between frames stay until something else is written there.
#[inline(never)]
fn scrub_stack() {
    let mut below = [0u8; 64 * 1024];
    zeroize::Zeroize::zeroize(&mut below[..]);
    core::hint::black_box(&below);
}

/// Wipe every string of a parsed configuration (the state key, the relay
/// token, an identity seed and legacy pairings travel in it).
fn wipe(v: &mut serde_json::Value) {
    use zeroize::Zeroize;
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(wipe),
        serde_json::Value::Object(o) => o.values_mut().for_each(wipe),
        _ => {}
    }
}

#[derive(Deserialize)]
struct LegacyIdentity {
    envelope: String,
    hostname: String,
    homedir: String,
}

/// Identity-only until configured with a relay and registry, then an agent.
#[derive(Default)]
pub struct Engine {
    identity: Option<Identity>,
    agent: Option<Agent>,
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn did(&self) -> Option<&str> {
        match (&self.agent, &self.identity) {
            (Some(a), _) => Some(a.did()),
            (None, Some(i)) => Some(i.did()),
            _ => None,
        }
    }

    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }

    pub fn handle(&mut self, event: Event, host: &mut dyn Host) -> Vec<Command> {
        let mut cx = Cx {
            host,
            out: Vec::new(),
        };
        match (event, self.agent.as_mut()) {
            (Event::Start(mut config), _) => {
                if let Err(e) = self.start(&config, &mut cx) {
                    cx.host.log(LogLevel::Error, &e.to_string());
                }
                // The configuration (state key, relay token, seed) and what
                // the start left on the stack: moves of key-holding values
                // leave their old bytes in frames below this one.
                zeroize::Zeroize::zeroize(&mut config);
                scrub_stack();
            }
            (
                Event::ToolCall {
                    call_id,
                    tool,
                    args_json,
                },
                Some(agent),
            ) => match serde_json::from_str::<serde_json::Value>(&args_json) {
                Ok(args) if args.is_object() || args.is_null() => {
                    agent.tool(&mut cx, &call_id, &tool, &args)
                }
                _ => crate::tools::render::refuse(
                    &mut cx,
                    &call_id,
                    "tool arguments must be a JSON object",
                ),
            },
            (Event::ToolCall { call_id, tool, .. }, None) => {
                let result = self.tool(&tool);
                cx.out.push(Command::ToolResult {
                    call_id,
                    result_json: result.to_string(),
                });
            }
            (Event::ToolAbort(id), Some(a)) => a.on_abort(&mut cx, &id),
            (Event::SocketOpened(s), Some(a)) => a.on_socket_opened(&mut cx, s),
            (Event::SocketFrame { socket, text }, Some(a)) => a.on_frame(&mut cx, socket, &text),
            (
                Event::SocketClosed {
                    socket,
                    code,
                    reason,
                },
                Some(a),
            ) => a.on_socket_closed(&mut cx, socket, code, &reason),
            (Event::HttpResponse { id, status, body }, Some(a)) => {
                a.on_http(&mut cx, id, Some(status), &body, None)
            }
            (Event::HttpFailed { id, message }, Some(a)) => {
                a.on_http(&mut cx, id, None, &[], Some(&message))
            }
            (Event::TimerFired(t), Some(a)) => a.on_timer(&mut cx, t),
            (Event::FileLoaded { id, bytes }, Some(a)) => a.on_file(&mut cx, id, Ok(bytes)),
            (Event::FileFailed { id, message }, Some(a)) => a.on_file(&mut cx, id, Err(message)),
            (Event::JobReady { id, info }, Some(a)) => a.on_job_ready(&mut cx, id, &info),
            (Event::JobExited(exit), Some(a)) => a.on_job_exited(&mut cx, exit),
            (Event::JobProgress { id, line }, Some(a)) => a.on_job_progress(&mut cx, id, &line),
            (Event::Idle, Some(a)) => {
                // Changes no outbox: no resend to arm.
                a.on_idle(&mut cx);
                return cx.out;
            }
            (Event::Stop, Some(a)) => {
                a.on_stop(&mut cx);
                return cx.out;
            }
            (_, None) => {}
        }
        // After every event: outbox entries come and go in many places.
        if let Some(a) = self.agent.as_mut() {
            a.arm_resend(&mut cx);
            a.ask_idle(&mut cx);
            a.acks_ride_along(&mut cx);
        }
        cx.out
    }

    fn start(&mut self, config: &str, cx: &mut Cx<'_>) -> Result<(), EngineError> {
        if self.identity.is_some() || self.agent.is_some() {
            return Err(EngineError::Start("the engine is already started".into()));
        }
        let mut raw: serde_json::Value =
            serde_json::from_str(config).map_err(|e| EngineError::Config(e.to_string()))?;
        // Both read from the one parsed copy (not a clone of it), which is
        // wiped once they hold what they need.
        let parsed = StartConfig::deserialize(&raw).and_then(|cfg| {
            // Without relay and registry URLs the engine runs identity-only.
            let mesh = if raw.get("relay_url").is_some() || raw.get("registry_url").is_some() {
                Some(crate::agent::Config::deserialize(&raw)?)
            } else {
                None
            };
            Ok((cfg, mesh))
        });
        wipe(&mut raw);
        let (cfg, mesh) = parsed.map_err(|e| EngineError::Config(e.to_string()))?;
        let key = Zeroizing::new(b64::decode(&cfg.state_key).map_err(|_| EngineError::StateKey)?);
        if key.len() != 32 {
            return Err(EngineError::StateKey);
        }
        let mut vault = Vault::new(key);
        vault.migrate(cx.host, &mut cx.out);
        let identity = match vault.get_bytes(cx.host, IDENTITY_KEY) {
            Ok(Some(stored)) => Identity::from_seed_bytes(&stored).ok_or(
                EngineError::IdentityUnreadable(seal::SealError::Authentication),
            )?,
            Err(crate::store::StoreError::Sealed { source, .. }) => {
                return Err(EngineError::IdentityUnreadable(source))
            }
            Err(e) => return Err(EngineError::Start(e.to_string())),
            Ok(None) => {
                let id = new_identity(&cfg, cx);
                vault
                    .put_bytes(cx.host, &mut cx.out, IDENTITY_KEY, id.seed().as_ref())
                    .map_err(|e| EngineError::Start(e.to_string()))?;
                cx.host
                    .log(LogLevel::Info, &format!("created identity {}", id.did()));
                id
            }
        };
        match mesh {
            Some(mesh) => {
                let agent = Agent::start(mesh, vault, identity, cx)
                    .map_err(|e| EngineError::Start(e.to_string()))?;
                self.agent = Some(agent);
            }
            None => self.identity = Some(identity),
        }
        Ok(())
    }

    fn tool(&self, tool: &str) -> serde_json::Value {
        match (tool, &self.identity) {
            ("mesh_identity", Some(id)) => json!({
                "content": [{"type": "text", "text": format!("DID: {}\nAMID: {}", id.did(), id.amid())}],
                "details": {"mesh": {"did": id.did(), "amid": id.amid()}}
            }),
            (_, None) => error_result(&EngineError::NotStarted.to_string()),
            (other, _) => error_result(&format!(
                "unknown tool {:?}; this build of the kars-mesh core answers: mesh_identity",
                other.chars().take(64).collect::<String>()
            )),
        }
    }
}

/// A first identity: imported from the original plugin when its file is
/// given and opens, else deterministic from the configured seed, else fresh.
fn new_identity(cfg: &StartConfig, cx: &mut Cx<'_>) -> Identity {
    if let Some(l) = &cfg.legacy_identity {
        match crate::store::legacy::import_identity(&l.envelope, &l.hostname, &l.homedir) {
            Ok(seed) => {
                let id = Identity::from_seed(&seed);
                cx.host.log(
                    LogLevel::Info,
                    &format!("imported the identity {} of the original kars plugin (~/.kars/identity.json); that file still holds its private key, sealed under a key made from this host's name and home directory (public facts): delete it once the original plugin no longer runs here", id.did()),
                );
                return id;
            }
            Err(e) => cx.host.log(
                LogLevel::Warn,
                &format!("~/.kars/identity.json was not imported: {e}; a new identity is created and pairings of the old one must be redone"),
            ),
        }
    }
    if let Some(h) = cfg.identity_seed_hex.as_deref().map(str::trim) {
        if let Some(id) = crate::wire::hex::decode(h)
            .map(Zeroizing::new)
            .and_then(|b| Identity::from_seed_bytes(&b))
        {
            return id;
        }
        cx.host.log(
            LogLevel::Warn,
            "KARS_IDENTITY_SEED is not 64 hex digits; ignored",
        );
    }
    if let Some(app) = cfg
        .pinned_app_id
        .as_deref()
        .filter(|a| !a.trim().is_empty())
    {
        let seed = crate::crypto::identity::seed_from_app_id(app);
        let id = Identity::from_seed(&seed);
        // The original's pinned agents: a key anyone who knows the app id
        // can compute. Kept so such an agent keeps its DID, and said.
        cx.host.log(
            LogLevel::Warn,
            &format!(
                "the identity {} is derived from PINNED_AGENT_IDENTITY_APP_ID: anyone who knows that app id can compute its private key and act as this agent. Meant only to keep an original kars agent's DID; for a key of its own, unset PINNED_AGENT_IDENTITY_APP_ID and start on a new state directory",
                id.did()
            ),
        );
        return id;
    }
    Identity::generate(cx.host)
}

fn error_result(text: &str) -> serde_json::Value {
    json!({
        "content": [{"type": "text", "text": format!("❌ {text}")}],
        "details": {"mesh": {"error": text}}
    })
}
