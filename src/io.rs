//! The ground floor: what the engine and its host say to each other. Events
//! come in, commands go out in order, and the few synchronous needs (clock,
//! randomness, storage reads, logging) go through [`Host`]. Everything above
//! imports this; this imports nothing of theirs.

use crate::entropy::Entropy;

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
    FileLoaded {
        id: u64,
        bytes: Vec<u8>,
    },
    FileFailed {
        id: u64,
        message: String,
    },
    JobReady {
        id: u64,
        info: String,
    },
    JobExited(JobExit),
    /// A running job reported progress: for an `exec` job, what follows
    /// `KARS_PROGRESS ` on a line of the command's stdout.
    JobProgress {
        id: u64,
        line: String,
    },
    /// Nothing else waits: work the engine asked for with
    /// [`Command::IdleWanted`] and may do ahead of need.
    Idle,
    Stop,
}

/// What a host job left behind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobExit {
    pub id: u64,
    pub code: i32,
    pub outputs: Vec<(String, Vec<u8>)>,
    /// Files left out of `outputs`: name, why.
    pub refused: Vec<(String, String)>,
    pub log: String,
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
    FileRead {
        id: u64,
        path: String,
        max_bytes: u64,
    },
    FileWrite(String, Vec<u8>),
    FileErase(String),
    JobStart {
        id: u64,
        kind: String,
        spec_json: String,
    },
    JobKill(u64),
    /// The engine has work it may do ahead of need (a ratchet step's
    /// sending half): send [`Event::Idle`] once no other event waits. A
    /// host that never does loses nothing; the work is done when needed.
    IdleWanted,
}

impl Command {
    /// The case of the WIT's `variant command` (wit/world.wit) this command
    /// crosses the component boundary as: the name hosts switch on.
    pub fn wire_name(&self) -> &'static str {
        match self {
            Command::Store(..) => "store",
            Command::Erase(_) => "erase",
            Command::SocketOpen { .. } => "socket-open",
            Command::SocketSend { .. } => "socket-send",
            Command::SocketClose { .. } => "socket-close",
            Command::HttpRequest { .. } => "http-request",
            Command::TimerSet { .. } => "timer-set",
            Command::TimerCancel(_) => "timer-cancel",
            Command::ToolResult { .. } => "tool-result",
            Command::FileRead { .. } => "file-read",
            Command::FileWrite(..) => "file-write",
            Command::FileErase(_) => "file-erase",
            Command::JobStart { .. } => "job-start",
            Command::JobKill(_) => "job-kill",
            Command::IdleWanted => "idle-wanted",
        }
    }

    /// Whether the host carries this out only after the batch's commit
    /// (js-host/ENGINE.md, group commit): anything that leaves the process.
    /// Records, timers, reading a file the user named and the idle request
    /// stay in it, and a batch of only those need not commit at once (the
    /// host's `STAYS_HERE` in js-host/event-loop.js; tests/host_contract.rs
    /// checks that the two agree). A file write commits the batch before it.
    pub fn waits_for_commit(&self) -> bool {
        !matches!(
            self,
            Command::Store(..)
                | Command::Erase(_)
                | Command::TimerSet { .. }
                | Command::TimerCancel(_)
                | Command::FileRead { .. }
                | Command::IdleWanted
        )
    }
}

/// Context of one engine call: the host and the commands produced so far.
pub struct Cx<'a> {
    pub host: &'a mut dyn Host,
    pub out: Vec<Command>,
}

impl Cx<'_> {
    /// Bytes this call has handed out so far: frames, records and files.
    /// What a long job measures to stop and go on in a later call.
    pub fn bytes_out(&self) -> usize {
        self.out
            .iter()
            .map(|c| match c {
                Command::Store(_, b) | Command::FileWrite(_, b) => b.len(),
                Command::SocketSend { text, .. } => text.len(),
                _ => 0,
            })
            .sum()
    }

    pub fn now(&mut self) -> u64 {
        self.host.now_ms()
    }
    pub fn log(&mut self, level: LogLevel, msg: &str) {
        self.host.log(level, msg);
    }
}
