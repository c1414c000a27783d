//! The sans-I/O engine: `handle(event) -> commands`. It owns the agent's
//! identity and (in later layers) the relay link, sessions, pairing and
//! offloads. Reads go through [`Host`]; every write is a `Store` command the
//! host carries out, in order, before any later command.

use crate::crypto::identity::Identity;
use crate::crypto::seal;
use crate::entropy::Entropy;
use crate::wire::b64;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

/// Storage key of the sealed identity record.
pub const IDENTITY_KEY: &str = "identity";
const IDENTITY_RECORD: &str = "identity.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// What the engine may ask of its host synchronously.
pub trait Host: Entropy {
    fn now_ms(&mut self) -> u64;
    fn storage_get(&mut self, key: &str) -> Option<Vec<u8>>;
    fn storage_list(&mut self, prefix: &str) -> Vec<String>;
    fn log(&mut self, level: LogLevel, message: &str);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start(String),
    ToolCall {
        call_id: String,
        tool: String,
        args_json: String,
    },
    ToolAbort(String),
    SocketOpened(u32),
    SocketFrame {
        socket: u32,
        text: String,
    },
    SocketClosed {
        socket: u32,
        code: u16,
        reason: String,
    },
    HttpResponse {
        id: u64,
        status: u16,
        body: Vec<u8>,
    },
    HttpFailed {
        id: u64,
        message: String,
    },
    TimerFired(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Store(String, Vec<u8>),
    Erase(String),
    SocketOpen {
        socket: u32,
        url: String,
    },
    SocketSend {
        socket: u32,
        text: String,
    },
    SocketClose {
        socket: u32,
        code: u16,
        reason: String,
    },
    HttpRequest {
        id: u64,
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
        timeout_ms: u32,
    },
    TimerSet {
        id: u64,
        at_ms: u64,
    },
    TimerCancel(u64),
    ToolResult {
        call_id: String,
        result_json: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("start configuration is not valid JSON: {0}")]
    Config(String),
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
}

#[derive(Default)]
pub struct Engine {
    state_key: Option<Zeroizing<Vec<u8>>>,
    identity: Option<Identity>,
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn did(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.did())
    }

    pub fn handle(&mut self, event: Event, host: &mut dyn Host) -> Vec<Command> {
        let mut out = Vec::new();
        match event {
            Event::Start(config) => {
                if let Err(e) = self.start(&config, host, &mut out) {
                    host.log(LogLevel::Error, &e.to_string());
                }
            }
            Event::ToolCall {
                call_id,
                tool,
                args_json: _,
            } => {
                let result = self.tool(&tool);
                out.push(Command::ToolResult {
                    call_id,
                    result_json: result.to_string(),
                });
            }
            // Later layers: relay link, registry, timers.
            Event::ToolAbort(_)
            | Event::SocketOpened(_)
            | Event::SocketFrame { .. }
            | Event::SocketClosed { .. }
            | Event::HttpResponse { .. }
            | Event::HttpFailed { .. }
            | Event::TimerFired(_) => {}
        }
        out
    }

    fn start(
        &mut self,
        config: &str,
        host: &mut dyn Host,
        out: &mut Vec<Command>,
    ) -> Result<(), EngineError> {
        let cfg: StartConfig =
            serde_json::from_str(config).map_err(|e| EngineError::Config(e.to_string()))?;
        let key = Zeroizing::new(b64::decode(&cfg.state_key).map_err(|_| EngineError::StateKey)?);
        if key.len() != 32 {
            return Err(EngineError::StateKey);
        }
        let identity = match host.storage_get(IDENTITY_KEY) {
            Some(sealed) => {
                let seed = seal::unseal(&key, IDENTITY_RECORD, &sealed)
                    .map_err(EngineError::IdentityUnreadable)?;
                let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| {
                    EngineError::IdentityUnreadable(seal::SealError::Authentication)
                })?;
                let mut seed = Zeroizing::new(seed);
                let id = Identity::from_seed(&seed);
                zeroize::Zeroize::zeroize(&mut *seed);
                id
            }
            None => {
                let id = Identity::generate(host);
                let sealed = seal::seal(&key, IDENTITY_RECORD, id.seed().as_ref(), host)
                    .map_err(EngineError::IdentityUnreadable)?;
                out.push(Command::Store(IDENTITY_KEY.to_string(), sealed));
                host.log(LogLevel::Info, &format!("created identity {}", id.did()));
                id
            }
        };
        self.identity = Some(identity);
        self.state_key = Some(key);
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

fn error_result(text: &str) -> serde_json::Value {
    json!({
        "content": [{"type": "text", "text": format!("❌ {text}")}],
        "details": {"mesh": {"error": text}}
    })
}
