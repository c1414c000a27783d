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
            (Event::Start(config), _) => {
                if let Err(e) = self.start(&config, &mut cx) {
                    cx.host.log(LogLevel::Error, &e.to_string());
                }
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
        let raw: serde_json::Value =
            serde_json::from_str(config).map_err(|e| EngineError::Config(e.to_string()))?;
        let cfg: StartConfig =
            serde_json::from_value(raw.clone()).map_err(|e| EngineError::Config(e.to_string()))?;
        // Without relay and registry URLs the engine runs identity-only.
        let mesh = if raw.get("relay_url").is_some() || raw.get("registry_url").is_some() {
            Some(
                serde_json::from_value::<crate::agent::Config>(raw)
                    .map_err(|e| EngineError::Config(e.to_string()))?,
            )
        } else {
            None
        };
        let key = Zeroizing::new(b64::decode(&cfg.state_key).map_err(|_| EngineError::StateKey)?);
        if key.len() != 32 {
            return Err(EngineError::StateKey);
        }
        let mut vault = Vault::new(key);
        vault.migrate(cx.host, &mut cx.out);
        let identity = match vault.get_bytes(cx.host, IDENTITY_KEY) {
            Ok(Some(seed)) => {
                let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| {
                    EngineError::IdentityUnreadable(seal::SealError::Authentication)
                })?;
                let mut seed = Zeroizing::new(seed);
                let id = Identity::from_seed(&seed);
                zeroize::Zeroize::zeroize(&mut *seed);
                id
            }
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
                    &format!("imported the identity {} of the original kars plugin (~/.kars/identity.json)", id.did()),
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
        if let Some(b) = crate::wire::hex::decode(h) {
            if let Ok(seed) = <[u8; 32]>::try_from(b.as_slice()) {
                let seed = Zeroizing::new(seed);
                return Identity::from_seed(&seed);
            }
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
        return Identity::from_seed(&seed);
    }
    Identity::generate(cx.host)
}

fn error_result(text: &str) -> serde_json::Value {
    json!({
        "content": [{"type": "text", "text": format!("❌ {text}")}],
        "details": {"mesh": {"error": text}}
    })
}
