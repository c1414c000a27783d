//! The only module that knows about wit-bindgen: it adapts the WIT world in
//! `wit/world.wit` to the engine and the toolkit. wasm32 only.

wit_bindgen::generate!({ world: "core", path: "wit" });

use crate::engine::Engine;
use crate::entropy::Entropy;
use crate::io::{Command as Cmd, Event as Ev, Host, LogLevel};
use crate::toolkit::Toolkit;
use exports::kars::mesh::engine::{self as wit_engine, Command, Event};
use exports::kars::mesh::toolkit::{
    self as wit_toolkit, AeadImpl, IdentityInfo, Initiated, SealedMessage,
};
use kars::mesh::host;
use std::cell::RefCell;

thread_local! {
    static ENGINE: RefCell<Engine> = RefCell::new(Engine::new());
    static TOOLKIT: RefCell<Toolkit> = RefCell::new(Toolkit::default());
}

/// The host's CSPRNG and services, reached through the WIT imports.
struct WitHost;

impl Entropy for WitHost {
    fn fill(&mut self, out: &mut [u8]) {
        let bytes = host::random_bytes(out.len() as u32);
        if bytes.len() == out.len() {
            out.copy_from_slice(&bytes);
        } else {
            // A host that returns the wrong length is broken; never fall back
            // to weak randomness.
            #[allow(clippy::panic)]
            {
                panic!(
                    "host random-bytes returned {} bytes, {} requested",
                    bytes.len(),
                    out.len()
                )
            }
        }
    }
}

impl Host for WitHost {
    fn now_ms(&mut self) -> u64 {
        host::now_ms()
    }
    fn storage_get(&mut self, key: &str) -> Option<Vec<u8>> {
        host::storage_get(key)
    }
    fn storage_list(&mut self, prefix: &str) -> Vec<String> {
        host::storage_list(prefix)
    }
    fn log(&mut self, level: LogLevel, message: &str) {
        let l = match level {
            LogLevel::Debug => host::LogLevel::Debug,
            LogLevel::Info => host::LogLevel::Info,
            LogLevel::Warn => host::LogLevel::Warn,
            LogLevel::Error => host::LogLevel::Error,
        };
        host::log(l, message);
    }
}

struct Component;

impl wit_engine::Guest for Component {
    fn handle(event: Event) -> Vec<Command> {
        let ev = match event {
            Event::Start(c) => Ev::Start(c),
            Event::ToolCall(t) => Ev::ToolCall {
                call_id: t.call_id,
                tool: t.tool,
                args_json: t.args_json,
            },
            Event::ToolAbort(id) => Ev::ToolAbort(id),
            Event::SocketOpened(s) => Ev::SocketOpened(s),
            Event::SocketFrame(f) => Ev::SocketFrame {
                socket: f.socket,
                text: f.text,
            },
            Event::SocketClosed(c) => Ev::SocketClosed {
                socket: c.socket,
                code: c.code,
                reason: c.reason,
            },
            Event::HttpResponse(r) => Ev::HttpResponse {
                id: r.id,
                status: r.status,
                body: r.body,
            },
            Event::HttpFailed(f) => Ev::HttpFailed {
                id: f.id,
                message: f.message,
            },
            Event::TimerFired(t) => Ev::TimerFired(t),
            Event::FileLoaded(f) => Ev::FileLoaded {
                id: f.id,
                bytes: f.bytes,
            },
            Event::FileFailed(f) => Ev::FileFailed {
                id: f.id,
                message: f.message,
            },
            Event::JobReady((id, info)) => Ev::JobReady { id, info },
            Event::JobExited(x) => Ev::JobExited(crate::io::JobExit {
                id: x.id,
                code: x.code,
                outputs: x.outputs,
                refused: x.refused,
                log: x.log,
            }),
            Event::JobProgress((id, line)) => Ev::JobProgress { id, line },
            Event::Idle => Ev::Idle,
            Event::Stop => Ev::Stop,
        };
        let cmds = ENGINE.with(|e| e.borrow_mut().handle(ev, &mut WitHost));
        cmds.into_iter().map(lower_command).collect()
    }
}

fn lower_command(c: Cmd) -> Command {
    match c {
        Cmd::Store(k, v) => Command::Store((k, v)),
        Cmd::Erase(k) => Command::Erase(k),
        Cmd::SocketOpen { socket, url } => Command::SocketOpen((socket, url)),
        Cmd::SocketSend { socket, text } => {
            Command::SocketSend(wit_engine::SocketFrame { socket, text })
        }
        Cmd::SocketClose {
            socket,
            code,
            reason,
        } => Command::SocketClose(wit_engine::SocketClosed {
            socket,
            code,
            reason,
        }),
        Cmd::HttpRequest {
            id,
            method,
            url,
            headers,
            body,
            timeout_ms,
        } => Command::HttpRequest(wit_engine::HttpRequest {
            id,
            method,
            url,
            headers,
            body,
            timeout_ms,
        }),
        Cmd::TimerSet { id, at_ms } => Command::TimerSet((id, at_ms)),
        Cmd::TimerCancel(id) => Command::TimerCancel(id),
        Cmd::ToolResult {
            call_id,
            result_json,
        } => Command::ToolResult(wit_engine::ToolResult {
            call_id,
            result_json,
        }),
        Cmd::FileRead {
            id,
            path,
            max_bytes,
        } => Command::FileRead(wit_engine::FileRead {
            id,
            path,
            max_bytes,
        }),
        Cmd::FileWrite(path, bytes) => Command::FileWrite((path, bytes)),
        Cmd::FileErase(path) => Command::FileErase(path),
        Cmd::JobStart {
            id,
            kind,
            spec_json,
        } => Command::JobStart(wit_engine::Job {
            id,
            kind,
            spec_json,
        }),
        Cmd::JobKill(id) => Command::JobKill(id),
        Cmd::IdleWanted => Command::IdleWanted,
    }
}

fn aead_impl(which: AeadImpl) -> crate::toolkit::AeadImpl {
    match which {
        AeadImpl::Messages => crate::toolkit::AeadImpl::Messages,
        AeadImpl::Chacha20Crate => crate::toolkit::AeadImpl::Chacha20Crate,
    }
}

fn with<T>(
    f: impl FnOnce(&mut Toolkit) -> Result<T, crate::toolkit::ToolkitError>,
) -> Result<T, String> {
    TOOLKIT
        .with(|t| f(&mut t.borrow_mut()))
        .map_err(|e| e.to_string())
}

impl wit_toolkit::Guest for Component {
    fn identity_import(seed: Vec<u8>) -> Result<u32, String> {
        with(|t| t.identity_import(&seed))
    }
    fn identity_generate() -> u32 {
        TOOLKIT.with(|t| t.borrow_mut().identity_generate(&mut WitHost))
    }
    fn identity_describe(identity: u32) -> Result<IdentityInfo, String> {
        with(|t| {
            let id = t.identity(identity)?;
            Ok(IdentityInfo {
                did: id.did().to_string(),
                amid: id.amid(),
                ed25519_public: id.ed25519_public().to_vec(),
                x25519_public: id.x25519_public().to_vec(),
            })
        })
    }
    fn identity_drop(identity: u32) {
        TOOLKIT.with(|t| t.borrow_mut().identity_drop(identity))
    }
    fn connect_frame(identity: u32, timestamp: String) -> Result<String, String> {
        with(|t| t.connect_frame(identity, &timestamp))
    }
    fn registration_body(
        identity: u32,
        timestamp: String,
        capabilities: Vec<String>,
    ) -> Result<String, String> {
        with(|t| t.registration_body(identity, &timestamp, &capabilities))
    }
    fn authorization_header(identity: u32, timestamp: String) -> Result<String, String> {
        with(|t| t.authorization_header(identity, &timestamp))
    }
    fn prekeys_generate(identity: u32, one_time_count: u32) -> Result<String, String> {
        with(|t| t.prekeys_generate(identity, one_time_count, &mut WitHost))
    }
    fn session_initiate(
        identity: u32,
        peer_did: String,
        bundle_json: String,
    ) -> Result<Initiated, String> {
        with(|t| {
            let i = t.session_initiate(identity, &peer_did, &bundle_json, &mut WitHost)?;
            Ok(Initiated {
                session: i.session,
                establishment_json: i.establishment_json,
            })
        })
    }
    fn session_respond(
        identity: u32,
        peer_did: String,
        establishment_json: String,
    ) -> Result<u32, String> {
        with(|t| t.session_respond(identity, &peer_did, &establishment_json))
    }
    fn session_encrypt(session: u32, plaintext: Vec<u8>) -> Result<SealedMessage, String> {
        with(|t| {
            let (h, ct) = t.session_encrypt(session, &plaintext, &mut WitHost)?;
            Ok(SealedMessage {
                header: h.to_bytes().to_vec(),
                ciphertext: ct,
            })
        })
    }
    fn session_decrypt(
        session: u32,
        header: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        with(|t| t.session_decrypt(session, &header, &ciphertext, &mut WitHost))
    }
    fn session_encrypt_frame(session: u32, plaintext: Vec<u8>) -> Result<String, String> {
        let now = host::now_ms();
        with(|t| t.session_encrypt_frame(session, &plaintext, now, &mut WitHost))
    }
    fn session_decrypt_frame(session: u32, frame_json: String) -> Result<Vec<u8>, String> {
        with(|t| t.session_decrypt_frame(session, &frame_json, &mut WitHost))
    }
    fn session_export(session: u32) -> Result<Vec<u8>, String> {
        with(|t| Ok(t.session_export(session)?.to_vec()))
    }
    fn session_import(snapshot: Vec<u8>) -> Result<u32, String> {
        with(|t| t.session_import(&snapshot))
    }
    fn session_drop(session: u32) {
        TOOLKIT.with(|t| t.borrow_mut().session_drop(session))
    }
    fn seal(key: Vec<u8>, record_type: String, plaintext: Vec<u8>) -> Result<Vec<u8>, String> {
        Toolkit::seal(&key, &record_type, &plaintext, &mut WitHost).map_err(|e| e.to_string())
    }
    fn unseal(key: Vec<u8>, record_type: String, sealed: Vec<u8>) -> Result<Vec<u8>, String> {
        Toolkit::unseal(&key, &record_type, &sealed)
            .map(|z| z.to_vec())
            .map_err(|e| e.to_string())
    }
    fn aead_seal(
        which: AeadImpl,
        key: Vec<u8>,
        nonce: Vec<u8>,
        aad: Vec<u8>,
        plaintext: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        Toolkit::aead_seal(aead_impl(which), &key, &nonce, &aad, &plaintext)
            .map_err(|e| e.to_string())
    }
    fn aead_open(
        which: AeadImpl,
        key: Vec<u8>,
        nonce: Vec<u8>,
        aad: Vec<u8>,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        Toolkit::aead_open(aead_impl(which), &key, &nonce, &aad, &sealed).map_err(|e| e.to_string())
    }
    fn pairing_token_parse(token: String) -> Result<String, String> {
        Toolkit::pairing_token_parse(&token).map_err(|e| e.to_string())
    }
    fn plaintext_encode(json: String) -> String {
        crate::wire::plaintext::encode_body(&json)
    }
    fn plaintext_decode(body: String) -> Result<String, String> {
        crate::wire::plaintext::decode_body(&body)
            .map(|v| v.to_string())
            .map_err(|e| e.to_string())
    }
    fn x3dh_kdf(dh_concat: Vec<u8>) -> Vec<u8> {
        crate::crypto::kdf::x3dh(&dh_concat).to_vec()
    }
    fn legacy_identity_kek(hostname: String, homedir: String) -> Vec<u8> {
        crate::crypto::identity::legacy_identity_kek(&hostname, &homedir).to_vec()
    }
}

export!(Component);
