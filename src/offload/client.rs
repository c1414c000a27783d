//! The client side of an offload (kars-mesh-plugin.md §7): `cloud_offload`,
//! `offload_status`, `offload_cancel`, the phases, input files to the
//! sandbox and output files back. Every offload message is routed here and
//! nowhere else (the original's background drain swallowed early hellos), and
//! is accepted only from the paired controller or from the sandbox DID that
//! controller named in its end-to-end encrypted `ready`.

use super::phase::Phase;
use super::progress::{Count, Meter, ProgressInfo, ProgressKind, Report, TransferNews};
use super::reassembly::Part;
use super::reassembly::{Reassembly, StreamedFile};
use crate::crypto::kdf::Sha256Stream;
use crate::io::{Command, Cx, LogLevel};
use crate::pairing::client::PairingRecord;
use crate::port::{Paced, Port, TimerOwner as Owner};
use crate::store::keys;
use crate::tools::offload_args;
use crate::tools::render;
use crate::wire::limits::{
    ECHOED_NAME_CHARS, MAX_ERROR_CHARS, MAX_RECEIVED_FILE_BYTES, MAX_SUMMARY_CHARS,
};
use crate::wire::offload_msg::{
    CleanupReason, ErrorPhase, FileTooLarge, FileTransfer, FileTransferAck, NotReturned,
    OffloadCleanup, OffloadDone, OffloadError, OffloadHello, OffloadMsg, OffloadProgress,
    OffloadRequest, OffloadStart, OffloadStatus, MAX_NOT_RETURNED, STAGE_EXECUTING, STAGE_WAITING,
};
use crate::wire::payload::{Family, PayloadType};
use crate::wire::token::Dialect;
use crate::wire::{time, transfer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::VecDeque;

/// Controller's answer (`ready`) deadline.
const READY_TIMEOUT_MS: u64 = 300_000;
/// Sandbox hello deadline after `ready`.
pub(super) const HELLO_TIMEOUT_MS: u64 = 180_000;
/// Slack on top of `timeout_minutes` before the client gives up on a run.
pub(super) const RUN_GRACE_MS: u64 = 5 * 60_000;
/// Duplicate-offload window and guard size.
const DUPLICATE_WINDOW_MS: u64 = 10 * 60_000;
pub(super) const DUPLICATE_KEEP: usize = 20;
/// Events kept per offload, notifications queued for the hook.
const MAX_EVENTS: usize = 40;
const MAX_NOTES: usize = 10;
/// A repeated `offload_status` within this window with no news says so.
const NO_CHANGE_WINDOW_MS: u64 = 15_000;
/// Bytes of an input file hashed per engine call once it is read (about
/// 20 ms): a 30 MiB input hashed at once held the engine for 100 ms, and a
/// tool call or a message that came meanwhile waited behind it.
pub(super) const HASH_SLICE: usize = 4 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputFile {
    /// The local path the user gave (never sent).
    pub path: String,
    /// The basename sent to the sandbox.
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputFile {
    pub name: String,
    /// Relative to the host's private files directory.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OffloadEvent {
    /// 1, 2, 3, ... over the whole offload (the list keeps the last 40).
    #[serde(default)]
    pub seq: usize,
    pub at_ms: u64,
    pub phase: Phase,
    pub text: String,
    /// A progress report's numbers (absent on other events): a file's
    /// bytes and chunks acknowledged, or the sandbox's report on the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressInfo>,
}

/// One offload, persisted under `offload/active` while it runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Offload {
    pub request_id: String,
    pub task: String,
    pub model: Option<String>,
    pub timeout_minutes: u64,
    pub files: Vec<InputFile>,
    pub phase: Phase,
    pub events: Vec<OffloadEvent>,
    pub controller: String,
    pub sandbox_name: Option<String>,
    pub sandbox_did: Option<String>,
    pub started_ms: u64,
    pub updated_ms: u64,
    pub inputs_sent: bool,
    pub outputs: Vec<OutputFile>,
    pub summary: Option<String>,
    pub error: Option<String>,
    pub deadline_ms: u64,
    #[serde(default)]
    pub notes: Vec<String>,
    #[serde(default)]
    pub viewed_ms: u64,
    #[serde(default)]
    pub viewed_events: usize,
    #[serde(default)]
    pub last_note_coalescable: bool,
    /// Events recorded so far (`after_events` counts against this).
    #[serde(default)]
    pub events_total: usize,
    /// How the controller is spoken to (its pairing's dialect).
    #[serde(default)]
    pub dialect: Dialect,
    /// A kars sandbox found by name whose DID is not yet bound to this
    /// request (no hello naming it, no `task_received`): only its hello,
    /// pong, acks and `task_received` are taken.
    #[serde(default)]
    pub sandbox_unconfirmed: bool,
    /// Legacy path: the inputs the sandbox acknowledged.
    #[serde(default)]
    pub acked_inputs: Vec<String>,
    /// Output files that did not arrive, and why: the ones the sandbox
    /// names in `offload_done`, and the ones this client refused.
    #[serde(default)]
    pub not_returned: Vec<NotReturned>,
}

impl Offload {
    /// A new offload, submitted: its inputs are read (sizes and hashes
    /// filled in) before the request goes.
    fn new(
        request_id: String,
        task: String,
        args: &offload_args::Rest,
        (controller, dialect): (String, Dialect),
        now: u64,
    ) -> Self {
        Offload {
            dialect,
            sandbox_unconfirmed: false,
            acked_inputs: Vec::new(),
            request_id,
            task,
            model: args.model.clone(),
            timeout_minutes: args.timeout_minutes,
            files: args
                .files
                .iter()
                .map(|(path, name)| InputFile {
                    path: path.clone(),
                    name: name.clone(),
                    size: 0,
                    sha256: String::new(),
                })
                .collect(),
            phase: Phase::Submitted,
            events: Vec::new(),
            controller,
            sandbox_name: None,
            sandbox_did: None,
            started_ms: now,
            updated_ms: now,
            inputs_sent: false,
            outputs: Vec::new(),
            summary: None,
            error: None,
            deadline_ms: 0,
            notes: Vec::new(),
            viewed_ms: 0,
            viewed_events: 0,
            last_note_coalescable: false,
            events_total: 0,
            not_returned: Vec::new(),
        }
    }

    pub fn terminal(&self) -> bool {
        self.phase.is_terminal()
    }
    fn short(&self) -> String {
        self.request_id.chars().take(8).collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Recent {
    /// (normalised task, request id, started).
    pub tasks: Vec<(String, String, u64)>,
    /// News of a cleared offload not yet taken by the hook.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Sandboxes of earlier offloads: what they still send (progress after a
    /// cancel) is dropped, not put in the inbox.
    #[serde(default)]
    pub sandboxes: Vec<String>,
    /// How the offloads in `tasks` that are over ended (request id, `done`
    /// or `error`; a cancel is an error, spec §7.6): a duplicate answers
    /// with the request's real status after it was cleared.
    #[serde(default)]
    pub ended: Vec<(String, Phase)>,
}

impl Recent {
    /// Drop how an offload ended once the duplicate guard no longer holds
    /// its task.
    fn forget_untracked_ends(&mut self) {
        let tasks = &self.tasks;
        self.ended
            .retain(|(r, _)| tasks.iter().any(|(_, t, _)| t == r));
    }
}

/// Client state outside the persisted record.
/// The user's side of offloading: at most one offload at a time, its
/// inputs on the way out, its outputs on the way in.
#[derive(Default)]
pub struct OffloadClient {
    /// The name this agent gives itself to its sandbox (`from_agent`).
    pub name: Option<String>,
    pub active: Option<Offload>,
    pub recent: Recent,
    /// A `cloud_offload` reading its input files.
    pub submitting: Option<Submit>,
    /// Bytes of the inputs, kept until sent (re-read after a restart).
    pub input_bytes: Vec<(String, Vec<u8>)>,
    /// Names in `input_bytes` read again after a restart: only these can
    /// differ from what `cloud_offload` hashed (the others are those very
    /// bytes, and hashing 30 MiB again held the engine for 170 ms).
    pub reread: Vec<String>,
    pub reads: Vec<(u64, usize)>,
    /// Hello that came before the controller's `ready`.
    pub early_hello: Option<(String, OffloadHello)>,
    pub timer: Option<u64>,
    pub reassembly: Reassembly,
    /// `offload_status {wait_seconds}` callers: (call id, timer, events seen).
    pub watchers: Vec<(String, u64, usize)>,
    /// Finding and checking a kars sandbox (`kars.rs`).
    pub kars: super::kars::KarsSteps,
    /// Files on their way, by transfer id (inputs) or sender and transfer
    /// id (outputs): what they reported last.
    pub meters: Vec<(String, Meter)>,
}

pub struct Submit {
    pub call_id: String,
    pub offload: Offload,
    pub bytes: Vec<Option<Vec<u8>>>,
    pub pending: usize,
    pub failed: bool,
    /// Inputs read and larger than a slice, hashed a slice per call in
    /// order: (index, hash so far, bytes hashed).
    hashing: VecDeque<(usize, Sha256Stream, usize)>,
    /// The timer of the next slice.
    hash_timer: Option<u64>,
}

impl Submit {
    /// Input `i` as read (`res`), or the text refusing it: unreadable, or
    /// too large to send. The read is bounded by MAX_FILE_BYTES; the
    /// message the file makes is checked too (name and sender), so no file
    /// is accepted here that could not be sent later.
    fn checked(
        &self,
        i: usize,
        res: Result<Vec<u8>, String>,
        from_agent: &str,
        ts: &str,
    ) -> Result<Vec<u8>, String> {
        let file = self.offload.files.get(i);
        let path = file.map(|f| f.path.as_str()).unwrap_or_default();
        let bytes = res.map_err(|msg| {
            match msg
                .strip_prefix("too large: ")
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(size) => too_large_text(path, &FileTooLarge::Size { size }),
                None => format!("Cannot read file: {path} ({msg})"),
            }
        })?;
        let name = file.map(|f| f.name.as_str()).unwrap_or_default();
        let size = bytes.len() as u64;
        // As it will be sent: only the hash (same length) is unknown yet.
        let zeros = "0".repeat(64);
        let probe =
            FileTransfer::input(&self.offload.request_id, name, size, &zeros, from_agent, ts);
        probe
            .check_fits(size)
            .map_err(|e| too_large_text(path, &e))?;
        Ok(bytes)
    }
}

/// A peer's words as shown in offload events: control and direction
/// characters made visible, so they cannot pass for our own lines.
pub(super) fn peer_words(s: &str) -> String {
    crate::wire::escape_for_log(s, MAX_ERROR_CHARS)
}

/// The error a peer's `offload_error` carries (at most 4,000 characters).
fn peer_error(e: &OffloadError) -> String {
    e.error
        .as_deref()
        .unwrap_or("unknown error")
        .chars()
        .take(MAX_ERROR_CHARS)
        .collect()
}

/// How a controller's news reached us, for the offload's events: the
/// kars controller's plaintext names a sender the relay does not check.
fn evidence(encrypted: bool) -> &'static str {
    if encrypted {
        ""
    } else {
        " [plaintext: the relay does not authenticate the controller]"
    }
}

/// `cloud_offload`'s refusal of a file that cannot be sent: which file,
/// its size, the real limit, and what to do. Nothing has started then.
fn too_large_text(path: &str, e: &FileTooLarge) -> String {
    let fix = match e {
        FileTooLarge::Size { .. } => "compress the file or split it into parts",
        FileTooLarge::Envelope { .. } => {
            "give the file a shorter name (or this agent a shorter display name)"
        }
    };
    format!(
        "File too large: {path} ({e}). Nothing was started: {fix}, then call cloud_offload again."
    )
}

/// `name (N bytes): why`, for events and the snapshot.
fn not_returned_line(x: &NotReturned) -> String {
    let name = x.name.as_deref().unwrap_or("(no name)");
    let why = x.reason.as_deref().unwrap_or("no reason given");
    match x.size_bytes {
        Some(n) => format!("{name} ({n} bytes): {why}"),
        None => format!("{name}: {why}"),
    }
}

fn normalise_task(t: &str) -> String {
    t.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// What the duplicate guard compares: the task as the original plugin
/// normalised it, then the input files as given (in any order), each after
/// a NUL. See `same_offload`.
pub(super) fn guard_key<'a>(task: &str, paths: impl Iterator<Item = &'a str>) -> String {
    let mut paths: Vec<&str> = paths.map(str::trim).collect();
    paths.sort_unstable();
    paths.dedup();
    let mut key = normalise_task(task);
    for p in paths {
        key.push('\0');
        key.push_str(p);
    }
    key
}

/// Is a call with guard key `asked` the offload recorded under `recorded`?
/// The same task, and either the same input files or none named (a model
/// asking again for the task it gave). The same task on other files is
/// another offload: the original compared the task alone, and answered
/// "already offloaded 0s ago" for new inputs.
pub(super) fn same_offload(asked: &str, recorded: &str) -> bool {
    let (task, files) = asked.split_once('\0').unwrap_or((asked, ""));
    let (was, was_files) = recorded.split_once('\0').unwrap_or((recorded, ""));
    task == was && (files.is_empty() || files == was_files)
}

/// The input paths an offload's arguments name, read leniently (the guard
/// runs before they are checked).
fn arg_paths(args: &Value) -> impl Iterator<Item = &str> {
    args.get("files")
        .or_else(|| args.get("file_paths"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

impl OffloadClient {
    pub fn load_offload(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        match port.vault().get::<Offload>(cx.host, keys::OFFLOAD) {
            Ok(Some(o)) => {
                let remaining = o.deadline_ms.saturating_sub(cx.now()).max(1000);
                let at_ms = cx.now() + remaining;
                let t = port.set_timer(cx, Owner::OffloadDeadline, at_ms);
                self.timer = Some(t);
                // Said hello but the inputs never went (a crash while they
                // were being read): send them now.
                let resume = !o.terminal()
                    && !o.inputs_sent
                    && o.sandbox_did.is_some()
                    && o.phase.reached(Phase::Acknowledged);
                self.active = Some(o);
                if resume {
                    self.start_sending_inputs(port, cx);
                }
                self.kars_resume(port, cx);
            }
            Ok(None) => {}
            Err(e) => cx.log(LogLevel::Error, &format!("{e}; the active offload is lost")),
        }
        if let Ok(Some(r)) = port.vault().get::<Recent>(cx.host, keys::OFFLOAD_RECENT) {
            self.recent = r;
        }
    }

    pub(super) fn save_offload(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let res = match &self.active {
            Some(o) => port.vault().put(cx.host, &mut cx.out, keys::OFFLOAD, o),
            None => {
                cx.out.push(Command::Erase(keys::OFFLOAD.into()));
                Ok(())
            }
        };
        if let Err(e) = res {
            cx.log(LogLevel::Error, &e.to_string());
        }
    }

    /// Drop the active offload; its news not yet taken by the hook stays for
    /// the hook. The caller stores the (now empty) active record.
    fn clear_offload(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let Some(old) = self.active.take() else {
            return;
        };
        self.input_bytes.clear();
        self.reread.clear();
        self.meters.clear();
        if !old.notes.is_empty() {
            self.recent.notes.extend(old.notes);
            let n = self.recent.notes.len();
            self.recent.notes.drain(..n.saturating_sub(MAX_NOTES));
            self.save_recent(port, cx);
        }
    }

    pub(super) fn save_recent(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        if let Err(e) = port
            .vault()
            .put(cx.host, &mut cx.out, keys::OFFLOAD_RECENT, &self.recent)
        {
            cx.log(LogLevel::Error, &e.to_string());
        }
    }

    pub(super) fn set_deadline(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, after_ms: u64) {
        if let Some(t) = self.timer.take() {
            port.cancel_timer(cx, t);
        }
        let at_ms = cx.now() + after_ms;
        let t = port.set_timer(cx, Owner::OffloadDeadline, at_ms);
        self.timer = Some(t);
        if let Some(o) = self.active.as_mut() {
            o.deadline_ms = at_ms;
        }
    }

    /// Record a phase change in our own words (and a notification for the
    /// hook).
    pub(super) fn phase(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, phase: Phase, text: &str) {
        self.phase_noted(port, cx, phase, text, text);
    }

    /// Record a phase change whose text carries a peer's words (already
    /// marked as theirs); the hook's `note` is ours alone, because the hook
    /// puts it in front of the user's own outgoing message.
    pub(super) fn phase_noted(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        phase: Phase,
        text: &str,
        note: &str,
    ) {
        self.record(port, cx, phase, (text, note), None);
    }

    /// Record an event: a phase change, or (with `progress`) a progress
    /// report, whose notification coalesces with the next news whatever
    /// the phase.
    fn record(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        phase: Phase,
        (text, note): (&str, &str),
        progress: Option<ProgressInfo>,
    ) {
        let now = cx.now();
        let Some(o) = self.active.as_mut() else {
            return;
        };
        o.phase = phase;
        o.updated_ms = now;
        if o.events.len() >= MAX_EVENTS {
            o.events.remove(0);
        }
        o.events_total += 1;
        let lasting =
            progress.is_none() && matches!(phase, Phase::Returning | Phase::Done | Phase::Error);
        o.events.push(OffloadEvent {
            seq: o.events_total,
            at_ms: now,
            phase,
            text: text.to_string(),
            progress,
        });
        let line = format!("{} Offload {} {phase}: {note}", phase.icon(), o.short());
        // Consecutive progress or phase news coalesce (the newest is kept);
        // received files and the end are always kept.
        if o.notes.last().is_some() && o.last_note_coalescable && !lasting {
            o.notes.pop();
        }
        o.last_note_coalescable = !lasting;
        if o.notes.len() >= MAX_NOTES {
            o.notes.remove(0);
        }
        o.notes.push(line);
        if phase.is_terminal() {
            let id = o.request_id.clone();
            self.note_ended(port, cx, id, phase);
        }
        self.save_offload(port, cx);
        self.wake_offload_watchers(port, cx);
    }

    /// Keep how a guarded offload ended, for a duplicate asked after it was
    /// cleared.
    fn note_ended(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, id: String, phase: Phase) {
        if !self.recent.tasks.iter().any(|(_, r, _)| *r == id) {
            return;
        }
        self.recent.ended.retain(|(r, _)| *r != id);
        self.recent.ended.push((id, phase));
        self.recent.forget_untracked_ends();
        self.save_recent(port, cx);
    }

    /// The name this agent gives itself in the files it sends.
    fn sender_name(&self, port: &dyn Port) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| port.identity().did().to_string())
    }

    // ------------------------------------------------------------------ tools

    pub fn cloud_offload(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        call_id: &str,
        args: &Value,
        pairing: Option<&PairingRecord>,
    ) {
        let task = match offload_args::task(args) {
            Ok(t) => t,
            Err(e) => return render::refuse(cx, call_id, &e),
        };
        let Some(controller) = self.may_offload(cx, call_id, (&task, args), pairing) else {
            return;
        };
        let rest = match offload_args::rest(args) {
            Ok(r) => r,
            Err(e) => return render::refuse(cx, call_id, &e),
        };
        let now = cx.now();
        let request_id = crate::wire::frames::uuid_v4(cx.host);
        let offload = Offload::new(request_id, task, &rest, controller, now);
        let n = rest.files.len();
        self.reads.clear();
        self.read_inputs(
            port,
            cx,
            rest.files.into_iter().map(|(path, _)| path).enumerate(),
        );
        self.submitting = Some(Submit {
            call_id: call_id.to_string(),
            offload,
            bytes: vec![None; n],
            pending: n,
            failed: false,
            hashing: VecDeque::new(),
            hash_timer: None,
        });
        if n == 0 {
            self.finish_submit(port, cx);
        }
    }

    /// May a new offload start? The pairing must grant `offload`, nothing
    /// else may be running or being submitted, and the same task within the
    /// duplicate window answers with the first one (unless `force`). The
    /// controller's DID when it may; `None` once the call is answered.
    fn may_offload(
        &mut self,
        cx: &mut Cx<'_>,
        call_id: &str,
        (task, args): (&str, &Value),
        pairing: Option<&PairingRecord>,
    ) -> Option<(String, Dialect)> {
        let Some(pairing) = pairing else {
            render::fail(
                cx,
                call_id,
                "Not paired with any kars cluster. Use mesh_pair first.",
            );
            return None;
        };
        if !pairing.capabilities.iter().any(|c| c == "offload") {
            render::fail(cx, call_id, &format!("The pairing with \"{}\" does not grant the offload capability. Ask the operator for a token with --capabilities offload.", pairing.cluster_name));
            return None;
        }
        let force = offload_args::force(args);
        let key = guard_key(task, arg_paths(args));
        if let Some(o) = self.active.as_ref().filter(|o| !o.terminal()) {
            let id = o.request_id.clone();
            if !force && self.duplicate_of(cx, &key).as_deref() == Some(id.as_str()) {
                self.answer_duplicate(cx, call_id, &id);
            } else {
                render::fail(cx, call_id, &format!("Offload already in progress ({id}). Use `/offload` for status or `/offload cancel` to abort."));
            }
            return None;
        }
        if self.submitting.is_some() {
            render::fail(
                cx,
                call_id,
                "Another cloud_offload is being submitted. Wait for its answer.",
            );
            return None;
        }
        if !force {
            if let Some(id) = self.duplicate_of(cx, &key) {
                self.answer_duplicate(cx, call_id, &id);
                return None;
            }
        }
        Some((pairing.controller_did.clone(), pairing.dialect))
    }

    /// The offload within the duplicate window with this `guard_key`.
    fn duplicate_of(&mut self, cx: &mut Cx<'_>, key: &str) -> Option<String> {
        let now = cx.now();
        self.recent
            .tasks
            .retain(|(_, _, t)| now.saturating_sub(*t) < DUPLICATE_WINDOW_MS);
        self.recent.forget_untracked_ends();
        self.recent
            .tasks
            .iter()
            .find(|(k, _, _)| same_offload(key, k))
            .map(|(_, id, _)| id.clone())
    }

    fn answer_duplicate(&mut self, cx: &mut Cx<'_>, call_id: &str, id: &str) {
        let now = cx.now();
        let started = self
            .recent
            .tasks
            .iter()
            .find(|(_, i, _)| i == id)
            .map(|(_, _, t)| *t)
            .unwrap_or(now);
        let same = self.active.as_ref().filter(|o| o.request_id == id);
        let ended = || {
            self.recent
                .ended
                .iter()
                .find(|(r, _)| r == id)
                .map(|(_, p)| *p)
        };
        let phase = same.map(|o| o.phase).or_else(ended);
        // While it still runs, force=true would be refused as "already in
        // progress": say what works instead. One that failed or was
        // cancelled must not read as finished.
        let next = match phase {
            Some(p) if !p.is_terminal() => "It is still running: offload_status follows it, and offload_cancel stops it if the user wants it run again.",
            Some(Phase::Error) => "It did not complete (it failed or was cancelled). Pass force=true only if the user explicitly asked to run it again.",
            _ => "Pass force=true only if the user explicitly asked to run it again.",
        };
        // A request ended before this build kept how (`ended`).
        let phase = phase.map_or("ended", Phase::name);
        let text = format!(
            "⚠️  This task was already offloaded {}s ago — not starting a new sandbox.\nRequest ID: {id}\nStatus: {phase}\n{next}",
            now.saturating_sub(started) / 1000
        );
        render::ok(
            cx,
            call_id,
            &text,
            json!({"duplicate": true, "request_id": id, "phase": phase}),
        );
    }

    /// A `file-read` finished (a `cloud_offload` input).
    pub fn offload_file(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        id: u64,
        res: Result<Vec<u8>, String>,
    ) -> bool {
        let Some(pos) = self.reads.iter().position(|(r, _)| *r == id) else {
            return false;
        };
        let (_, i) = self.reads.remove(pos);
        let from_agent = self.sender_name(port);
        let ts = time::format_millis(cx.now());
        let Some(s) = self.submitting.as_mut() else {
            // A re-read after a restart, for sending.
            if let (Ok(bytes), Some(o)) = (res, self.active.as_ref()) {
                if let Some(f) = o.files.get(i) {
                    self.input_bytes.push((f.name.clone(), bytes));
                    self.reread.push(f.name.clone());
                }
            }
            if self.reads.is_empty() {
                self.send_inputs(port, cx);
            }
            return true;
        };
        match s.checked(i, res, &from_agent, &ts) {
            Ok(bytes) if !s.failed => {
                if let Some(f) = s.offload.files.get_mut(i) {
                    f.size = bytes.len() as u64;
                    if bytes.len() <= HASH_SLICE {
                        f.sha256 = transfer::sha256_hex(&bytes);
                    } else {
                        s.hashing.push_back((i, Sha256Stream::default(), 0));
                    }
                }
                if let Some(slot) = s.bytes.get_mut(i) {
                    *slot = Some(bytes);
                }
            }
            Ok(_) => {}
            Err(text) if !s.failed => {
                s.failed = true;
                let call_id = s.call_id.clone();
                // A file the call named that cannot be read or is too
                // large: nothing has gone to the controller yet.
                render::refuse(cx, &call_id, &text);
            }
            Err(_) => {}
        }
        s.pending = s.pending.saturating_sub(1);
        self.submit_next(port, cx);
        true
    }

    /// The submit's next step: its answer once every input is read and
    /// hashed (or one failed), else the next hash slice on a later call.
    fn submit_next(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let Some(s) = self.submitting.as_mut() else {
            return;
        };
        if s.pending == 0 && (s.failed || s.hashing.is_empty()) {
            if let Some(t) = s.hash_timer.take() {
                port.cancel_timer(cx, t);
            }
            return self.finish_submit(port, cx);
        }
        if !s.failed && !s.hashing.is_empty() && s.hash_timer.is_none() {
            let now = cx.now();
            s.hash_timer = Some(port.set_timer(cx, Owner::OffloadHash, now));
        }
    }

    /// Hash the next slice of the inputs being submitted.
    pub fn hash_due(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, timer: u64) {
        let Some(s) = self
            .submitting
            .as_mut()
            .filter(|s| s.hash_timer == Some(timer))
        else {
            return;
        };
        s.hash_timer = None;
        if let Some((i, h, at)) = s.hashing.front_mut() {
            let bytes = s
                .bytes
                .get(*i)
                .and_then(Option::as_deref)
                .unwrap_or_default();
            let end = bytes.len().min(*at + HASH_SLICE);
            h.update(bytes.get(*at..end).unwrap_or_default());
            *at = end;
            if end == bytes.len() {
                if let Some((i, h, _)) = s.hashing.pop_front() {
                    if let Some(f) = s.offload.files.get_mut(i) {
                        f.sha256 = crate::wire::hex::encode(&h.finish());
                    }
                }
            }
        }
        self.submit_next(port, cx);
    }

    fn finish_submit(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let Some(s) = self.submitting.take() else {
            return;
        };
        if s.failed {
            return;
        }
        // A finished offload nobody has looked at yet leaves its news behind
        // (before the new offload's inputs are kept).
        self.clear_offload(port, cx);
        let mut o = s.offload;
        self.input_bytes = o
            .files
            .iter()
            .zip(s.bytes)
            .filter_map(|(f, b)| b.map(|b| (f.name.clone(), b)))
            .collect();
        self.reread.clear();
        let ts = time::format_millis(cx.now());
        let total: u64 = o.files.iter().map(|f| f.size).sum();
        let request = OffloadRequest::new(
            &o.request_id,
            &o.task,
            o.files.iter().map(|f| f.name.clone()).collect(),
            total,
            o.timeout_minutes,
            o.model.clone(),
            &ts,
        );
        // A request that cannot leave yet is not "sent": it waits in the
        // outbox for the relay (a walk-through read "sent" with the
        // cluster down).
        let trouble = port.relay_trouble();
        o.events_total += 1;
        o.events.push(OffloadEvent {
            seq: o.events_total,
            at_ms: o.started_ms,
            phase: Phase::Submitted,
            text: match &trouble {
                None => "offload_request sent to the controller".into(),
                Some(why) => format!("offload_request waits to go to the controller: {why}; it goes out when the link is back"),
            },
            progress: None,
        });
        let controller = o.controller.clone();
        let key = guard_key(&o.task, o.files.iter().map(|f| f.path.as_str()));
        self.recent
            .tasks
            .push((key, o.request_id.clone(), o.started_ms));
        while self.recent.tasks.len() > DUPLICATE_KEEP {
            self.recent.tasks.remove(0);
        }
        self.save_recent(port, cx);
        let task_preview: String = o.task.chars().take(120).collect();
        let more = if o.task.chars().count() > 120 {
            "..."
        } else {
            ""
        };
        let files_line = if o.files.is_empty() {
            "no files".to_string()
        } else {
            format!(
                "{} file(s) ({:.1} KB) queued",
                o.files.len(),
                total as f64 / 1024.0
            )
        };
        let working = match &trouble {
            None => "The cloud sandbox is working on it.".to_string(),
            Some(why) => format!("⚠️ Not sent yet: {why}. The request goes out when the link is back, and the cloud sandbox starts then."),
        };
        let text = format!(
            "☁️ Offload submitted — orchestrating in background\nRequest ID: {}\nModel: {}\nTask: {task_preview}{more}\nFiles: {files_line}\nTimeout: {}m\n\n{working} Do not call more tools for this task now: progress and the result arrive on their own (offload_status shows a snapshot when the user asks).",
            o.request_id,
            o.model.as_deref().unwrap_or("default"),
            o.timeout_minutes
        );
        let mut details = json!({"request_id": o.request_id, "phase": Phase::Submitted, "files": o.files.iter().map(|f| json!({"name": f.name, "size": f.size, "sha256": f.sha256})).collect::<Vec<_>>(), "timeout_minutes": o.timeout_minutes});
        if let Some(why) = &trouble {
            details["queued_because"] = json!(why);
        }
        self.active = Some(o);
        self.early_hello = None;
        self.set_deadline(port, cx, READY_TIMEOUT_MS);
        self.save_offload(port, cx);
        self.to_controller(port, cx, &controller, OffloadMsg::from(request));
        render::ok(cx, &s.call_id, &text, details);
    }

    pub fn offload_status_tool(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        call_id: &str,
        args: &Value,
    ) {
        let now = cx.now();
        let wait = match crate::tools::args::number(args, "wait_seconds") {
            Ok(Some(w)) if w <= 600.0 => (w > 0.0).then_some((w * 1000.0) as u64),
            Ok(None) => None,
            _ => {
                return render::refuse(
                    cx,
                    call_id,
                    "offload_status: `wait_seconds` must be a number of seconds from 0 to 600.",
                )
            }
        };
        let after = match crate::tools::args::number(args, "after_events") {
            Ok(Some(n)) if n.fract() == 0.0 => Some(n as usize),
            Ok(None) => None,
            _ => {
                return render::refuse(
                    cx,
                    call_id,
                    "offload_status: `after_events` must be a whole number ≥ 0 (the `events_total` of the previous answer).",
                )
            }
        };
        let Some(o) = self.active.as_mut() else {
            return render::ok(
                cx,
                call_id,
                "No active offload. Use cloud_offload to start one.",
                json!({"active": false}),
            );
        };
        if let Some(ms) = wait {
            let seen = after.unwrap_or(o.events_total);
            if !o.terminal() && seen >= o.events_total {
                let t = port.set_timer(cx, Owner::OffloadWatcher, now + ms);
                self.watchers.push((call_id.to_string(), t, seen));
                return;
            }
            // News (or the end) already: answered at once, and a waiting call
            // never clears a finished offload (only a plain call does).
            return self.watch_answer(cx, call_id);
        }
        if !o.terminal()
            && o.viewed_ms != 0
            && now.saturating_sub(o.viewed_ms) < NO_CHANGE_WINDOW_MS
            && o.viewed_events == o.events_total
        {
            let text = format!("⏳ No change since last check {}s ago (offload still running, elapsed {}s). Stop polling — the result is reported when it arrives; check again on the user's next message.", now.saturating_sub(o.viewed_ms) / 1000, now.saturating_sub(o.started_ms) / 1000);
            return render::ok(
                cx,
                call_id,
                &text,
                json!({"request_id": o.request_id, "phase": o.phase, "no_change": true}),
            );
        }
        o.viewed_ms = now;
        o.viewed_events = o.events_total;
        self.answer_snapshot(port, cx, call_id);
    }

    fn snapshot(o: &Offload) -> (String, Value) {
        let mut lines = vec![
            format!("{} Offload {} — {}", o.phase.icon(), o.short(), o.phase),
            format!("Request ID: {}", o.request_id),
            format!("Started: {}", time::format_millis(o.started_ms)),
            format!("Last update: {}", time::format_millis(o.updated_ms)),
        ];
        if let Some(n) = &o.sandbox_name {
            lines.push(format!("Sandbox: {n}"));
        }
        lines.push("Events:".into());
        for e in &o.events {
            lines.push(format!(
                "  {} {} {} — {}",
                time::format_millis(e.at_ms),
                e.phase.icon(),
                e.phase,
                e.text
            ));
        }
        if let Some(s) = &o.summary {
            lines.push(format!("Summary:\n{s}"));
        }
        if !o.outputs.is_empty() {
            lines.push("Output files (in the private incoming directory):".into());
            for f in &o.outputs {
                lines.push(format!(
                    "  {} ({} bytes, sha256 {})",
                    f.path,
                    f.size,
                    &f.sha256[..16.min(f.sha256.len())]
                ));
            }
        }
        if !o.not_returned.is_empty() {
            lines.push("Output files NOT returned:".into());
            for x in &o.not_returned {
                lines.push(format!("  {}", peer_words(&not_returned_line(x))));
            }
        }
        if let Some(e) = &o.error {
            lines.push(format!("Error: {e}"));
        }
        let details = json!({
            "request_id": o.request_id, "phase": o.phase, "events": o.events,
            "sandbox_name": o.sandbox_name, "sandbox_did": o.sandbox_did,
            "summary": o.summary, "outputs": o.outputs, "error": o.error,
            "started_ms": o.started_ms, "updated_ms": o.updated_ms, "active": !o.terminal(),
            "events_total": o.events_total, "not_returned": o.not_returned,
            // Every input file handed over (behind them, the go-ahead): a
            // short-lived host (the CLI's `offload --no-follow`) stays
            // until then, as the sandbox waits for them.
            "inputs": o.files.len(), "inputs_sent": o.inputs_sent,
        });
        (lines.join("\n"), details)
    }

    fn answer_snapshot(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, call_id: &str) {
        let Some(o) = self.active.as_ref() else {
            return;
        };
        let (text, details) = Self::snapshot(o);
        // Rendering a finished offload clears it, so a new one can start; its
        // news not yet taken by the hook stays for the hook.
        if o.terminal() {
            self.clear_offload(port, cx);
        }
        self.save_offload(port, cx);
        render::ok(cx, call_id, &text, details);
    }

    fn wake_offload_watchers(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let n = self.active.as_ref().map(|o| o.events_total).unwrap_or(0);
        let due: Vec<(String, u64, usize)> = self
            .watchers
            .iter()
            .filter(|(_, _, seen)| n > *seen)
            .cloned()
            .collect();
        self.watchers.retain(|(_, _, seen)| n <= *seen);
        for (call_id, t, _) in due {
            port.cancel_timer(cx, t);
            self.watch_answer(cx, &call_id);
        }
    }

    /// A watcher's answer: the snapshot, without clearing a finished offload
    /// (the user has not seen it yet through offload_status).
    fn watch_answer(&mut self, cx: &mut Cx<'_>, call_id: &str) {
        match self.active.as_ref() {
            Some(o) => {
                let (text, details) = Self::snapshot(o);
                render::ok(cx, call_id, &text, details);
            }
            None => render::ok(
                cx,
                call_id,
                "No active offload. Use cloud_offload to start one.",
                json!({"active": false}),
            ),
        }
    }

    pub fn offload_cancel(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, call_id: &str) {
        let Some(o) = self.active.as_ref().filter(|o| !o.terminal()) else {
            return render::ok(
                cx,
                call_id,
                "No active cloud offload to cancel.",
                json!({"cancelled": false}),
            );
        };
        let short = o.short();
        let id = o.request_id.clone();
        // Recorded first: the cleanup goes out after the state that explains it.
        self.fail_offload(port, cx, "Cancelled by user via offload_cancel");
        self.send_cleanup(port, cx, CleanupReason::Cancelled);
        render::ok(
            cx,
            call_id,
            &format!("🛑 Offload {short} cancelled. Cleanup signal sent to the controller; the sandbox will be torn down shortly."),
            json!({"cancelled": true, "request_id": id}),
        );
    }

    pub fn offload_notifications(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, call_id: &str) {
        let mut lines = std::mem::take(&mut self.recent.notes);
        if !lines.is_empty() {
            self.save_recent(port, cx);
        }
        if let Some(o) = self.active.as_mut() {
            if !o.notes.is_empty() {
                lines.append(&mut o.notes);
                self.save_offload(port, cx);
            }
        }
        render::ok(cx, call_id, &lines.join("\n"), json!({"lines": lines}));
    }

    pub(super) fn send_cleanup(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        reason: CleanupReason,
    ) {
        let Some(o) = self.active.as_ref() else {
            return;
        };
        let msg = OffloadCleanup::new(&o.request_id, reason, &time::format_millis(cx.now()));
        let to = o.controller.clone();
        self.to_controller(port, cx, &to, OffloadMsg::from(msg));
    }

    /// A message to the controller, in its pairing's dialect.
    fn to_controller(&self, port: &mut dyn Port, cx: &mut Cx<'_>, to: &str, msg: OffloadMsg) {
        let kars = self
            .active
            .as_ref()
            .is_some_and(|o| o.dialect == Dialect::KarsPlaintext);
        if kars {
            port.send_plain(cx, to, msg.to_value());
        } else {
            port.send(cx, to, msg.to_value());
        }
    }

    /// May this plaintext (from `from`, claiming to be the controller) move
    /// the active offload? Only for a kars controller, which speaks nothing
    /// else, and only its `offload_status` or `offload_error` naming the
    /// active request.
    pub fn takes_plain(&self, from: &str, payload: &Value) -> bool {
        self.active.as_ref().is_some_and(|o| {
            !o.terminal()
                && o.dialect == Dialect::KarsPlaintext
                && o.controller == from
                && self.wants(from, payload)
        })
    }

    pub(super) fn fail_offload(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, error: &str) {
        self.fail_offload_noted(port, cx, error, error);
    }

    /// End the offload with an error that carries a peer's words; `note` is
    /// ours alone (see `phase_noted`).
    fn fail_offload_noted(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        error: &str,
        note: &str,
    ) {
        if let Some(t) = self.timer.take() {
            port.cancel_timer(cx, t);
        }
        self.kars_stop(port, cx);
        let mut refused = None;
        // What still waits to go to its sandbox goes nowhere now.
        if let Some(d) = self.active.as_ref().and_then(|o| o.sandbox_did.clone()) {
            port.drop_paced(&d);
        }
        if let Some(o) = self.active.as_mut() {
            o.error = Some(error.chars().take(MAX_ERROR_CHARS).collect());
            // The task never ran (the go-ahead, which follows the inputs,
            // never left: a sandbox runs nothing without it), so the
            // duplicate guard must not block a retry. An input that changed
            // since cloud_offload read it fails here after the sandbox is
            // ready, and its text asks for exactly that retry.
            if !o.inputs_sent {
                refused = Some(o.request_id.clone());
            }
        }
        if let Some(id) = refused {
            self.recent.tasks.retain(|(_, r, _)| *r != id);
            self.save_recent(port, cx);
        }
        self.phase_noted(port, cx, Phase::Error, error, note);
    }

    /// Offload deadline timers and `offload_status` watchers.
    /// An `offload_status {wait_seconds}` call waited long enough.
    pub fn offload_watcher_due(&mut self, cx: &mut Cx<'_>, timer: u64) {
        if let Some(pos) = self.watchers.iter().position(|w| w.1 == timer) {
            let (call_id, _, _) = self.watchers.remove(pos);
            self.watch_answer(cx, &call_id);
        }
    }

    /// The active offload's deadline passed.
    pub fn offload_deadline(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, timer: u64) {
        if self.timer != Some(timer) {
            return;
        }
        self.timer = None;
        let Some(o) = self.active.as_ref().filter(|o| !o.terminal()) else {
            return;
        };
        let why = match o.phase {
            Phase::Submitted | Phase::Validating | Phase::Spawning | Phase::Scheduled => format!(
                "the controller did not report the sandbox ready within {}s",
                READY_TIMEOUT_MS / 1000
            ),
            Phase::Ready | Phase::Connecting => format!(
                "the sandbox did not say hello within {}s",
                HELLO_TIMEOUT_MS / 1000
            ),
            _ => format!("no result within the {} minute timeout", o.timeout_minutes),
        };
        let reason = if o.phase == Phase::Connecting {
            CleanupReason::DiscoveryTimeout
        } else {
            CleanupReason::Error
        };
        // Recorded first: the cleanup goes out after the state that explains it.
        self.fail_offload(port, cx, &format!("Offload timed out: {why}"));
        self.send_cleanup(port, cx, reason);
    }

    // -------------------------------------------------------------- routing

    /// Does `from` take part in our offloads (the active offload's
    /// controller or sandbox, a recent sandbox)?
    pub fn is_party(&self, from: &str) -> bool {
        self.recent.sandboxes.iter().any(|d| d == from)
            || self
                .active
                .as_ref()
                .is_some_and(|o| o.controller == from || o.sandbox_did.as_deref() == Some(from))
    }

    /// Is this decrypted payload part of the active offload (and so not for
    /// the inbox)?
    pub fn wants(&self, from: &str, payload: &Value) -> bool {
        if self.recent.sandboxes.iter().any(|d| d == from) {
            return true;
        }
        let Some(o) = self.active.as_ref() else {
            return false;
        };
        let kind = PayloadType::of(payload);
        // Only for the small messages routed on it (status, error, hello).
        let names_ours = || {
            OffloadMsg::parse(payload).is_ok_and(|m| m.request_id() == Some(o.request_id.as_str()))
        };
        if from == o.controller {
            return matches!(
                kind,
                Ok(PayloadType::OffloadStatus | PayloadType::OffloadError)
            ) && names_ours();
        }
        if o.sandbox_did.as_deref() == Some(from) {
            return true;
        }
        // A hello may beat the controller's `ready`; held until then.
        kind == Ok(PayloadType::OffloadHello) && o.sandbox_did.is_none() && names_ours()
    }

    /// A message of the active offload (see `wants`), parsed once here: a
    /// message of another type, or without the fields its type requires,
    /// changes nothing.
    pub fn on_message(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        from: &str,
        payload: Value,
        encrypted: bool,
    ) {
        let Some(o) = self.active.as_ref() else {
            return;
        };
        if o.terminal() {
            return;
        }
        let msg = OffloadMsg::from_value(payload);
        if from == o.controller {
            match msg {
                Ok(OffloadMsg::Error(e)) => self.controller_error(port, cx, &e, encrypted),
                Ok(OffloadMsg::Status(s)) => self.controller_status(port, cx, &s, encrypted),
                _ => {}
            }
            return;
        }
        if o.sandbox_did.as_deref() != Some(from) {
            // Only a hello for this request, from a sandbox not yet named.
            if let Ok(OffloadMsg::Hello(h)) = msg {
                if o.sandbox_did.is_none() && h.request_id.as_deref() == Some(&o.request_id) {
                    self.early_hello = Some((from.to_string(), h));
                }
            }
            return;
        }
        if let Ok(m) = msg {
            self.on_sandbox_news(port, cx, from, m, None);
        }
    }

    /// The controller's `offload_status`: the phase it reports, if it
    /// moves the offload on.
    fn controller_status(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        s: &OffloadStatus,
        encrypted: bool,
    ) {
        let msg: String = s
            .message
            .as_deref()
            .unwrap_or_default()
            .chars()
            .take(500)
            .collect();
        let Some(phase) = s.phase.as_deref().and_then(Phase::parse) else {
            return;
        };
        let kars = self
            .active
            .as_ref()
            .is_some_and(|o| o.dialect == Dialect::KarsPlaintext);
        // The relay does not bind `from`: a plaintext `ready` could name an
        // attacker's sandbox and draw the input files to it. Only an
        // end-to-end message may say where the sandbox is, except from the
        // kars controller, whose `ready` only names the sandbox and the name
        // is checked in the registry (`kars.rs`).
        if phase == Phase::Ready && !encrypted && !kars {
            cx.log(
                LogLevel::Warn,
                "ignored a plaintext `ready`: the sandbox's DID is taken only from an end-to-end encrypted message",
            );
            return;
        }
        // Phases only move forward; a repeated or stale status changes nothing.
        let current = self.active.as_ref().map_or(Phase::Submitted, |o| o.phase);
        if !phase.advances(current) {
            return;
        }
        match phase {
            Phase::Validating | Phase::Spawning | Phase::Scheduled => {
                let own = match phase {
                    Phase::Validating => "the cluster is checking the request",
                    Phase::Spawning => "the cluster is starting a sandbox",
                    _ => "the sandbox is scheduled",
                };
                let text = format!(
                    "{own} (controller: {}){}",
                    peer_words(&msg),
                    evidence(encrypted)
                );
                self.phase_noted(port, cx, phase, &text, own)
            }
            Phase::Ready if kars => self.kars_ready(port, cx, s, encrypted),
            Phase::Ready => self.sandbox_ready(port, cx, s),
            _ => {}
        }
    }

    /// The controller ended or refused the offload; it may hold a slot for
    /// it, so the cleanup goes too (after the state that explains it).
    fn controller_error(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        e: &OffloadError,
        encrypted: bool,
    ) {
        let err = peer_error(e);
        let why = if e.phase.as_deref() == Some(ErrorPhase::Execution.as_str()) {
            "The cluster ended the offload"
        } else {
            "Controller refused the offload"
        };
        self.fail_offload_noted(
            port,
            cx,
            &format!("{why}: {}{}", peer_words(&err), evidence(encrypted)),
            &format!("{why}; offload_status has the controller's words"),
        );
        self.send_cleanup(port, cx, CleanupReason::Error);
    }

    /// The controller names the sandbox (end-to-end only, checked by the
    /// caller): only that DID's messages are the offload's from now on.
    fn sandbox_ready(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, s: &OffloadStatus) {
        let name = s
            .sandbox_name
            .as_deref()
            .map(|n| crate::wire::escape_for_log(n, 63));
        let did = s
            .sandbox_did
            .as_deref()
            .filter(|d| crate::crypto::identity::is_mesh_did(d))
            .map(str::to_string);
        let Some(did) = did else {
            // Recorded first: the cleanup goes out after the state that explains it.
            self.fail_offload(port, cx, "The controller reported the sandbox ready without its DID; this kars-mesh needs a controller that names the sandbox's did:mesh: (kars-mesh cluster).");
            self.send_cleanup(port, cx, CleanupReason::DiscoveryTimeout);
            return;
        };
        if let Some(o) = self.active.as_mut() {
            o.sandbox_name = name.clone();
            o.sandbox_did = Some(did.clone());
        }
        if !self.recent.sandboxes.contains(&did) {
            self.recent.sandboxes.push(did.clone());
            let n = self.recent.sandboxes.len();
            self.recent
                .sandboxes
                .drain(..n.saturating_sub(DUPLICATE_KEEP));
            self.save_recent(port, cx);
        }
        let up = format!("sandbox {} is up", name.unwrap_or_default());
        self.phase(port, cx, Phase::Ready, &up);
        let waiting = format!("waiting for hello from {did}");
        self.phase(port, cx, Phase::Connecting, &waiting);
        self.set_deadline(port, cx, HELLO_TIMEOUT_MS);
        if let Some((from, hello)) = self.early_hello.take() {
            if from == did {
                self.on_sandbox_news(port, cx, &from, OffloadMsg::Hello(hello), None);
            }
        }
    }

    /// News from the active offload's sandbox, for this request.
    pub(super) fn on_sandbox_news(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        from: &str,
        m: OffloadMsg,
        file: Option<StreamedFile>,
    ) {
        let Some(o) = self.active.as_ref() else {
            return;
        };
        if m.request_id().is_some_and(|r| r != o.request_id) {
            return;
        }
        if o.sandbox_unconfirmed {
            return self.unconfirmed_news(port, cx, m);
        }
        match m {
            OffloadMsg::Hello(_) => self.sandbox_hello(port, cx),
            OffloadMsg::Progress(p) => self.sandbox_progress(port, cx, &p),
            OffloadMsg::FileTransfer(f) => self.receive_output(port, cx, from, &f, file),
            OffloadMsg::TransferManifest(ref t) => {
                self.reassemble(port, cx, from, Part::Manifest(t))
            }
            OffloadMsg::TransferChunk(ref t) => self.reassemble(port, cx, from, Part::Chunk(t)),
            OffloadMsg::FileTransferAck(a) if !a.succeeded() => {
                self.sandbox_refused_input(port, cx, &a)
            }
            OffloadMsg::Done(d) => self.sandbox_done(port, cx, &d),
            OffloadMsg::Error(e) => {
                let err = peer_error(&e);
                // Recorded first: the cleanup goes out after the state that explains it.
                self.fail_offload_noted(
                    port,
                    cx,
                    &format!("Sandbox error: {}", peer_words(&err)),
                    "the sandbox reported an error; offload_status has its words",
                );
                self.send_cleanup(port, cx, CleanupReason::Error);
            }
            _ => {}
        }
    }

    /// A piece of a chunked transfer from the sandbox; the whole message,
    /// once complete, is its news like any other.
    fn reassemble(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, from: &str, part: Part<'_>) {
        let tid = match part {
            Part::Manifest(m) => m.transfer_id.clone(),
            Part::Chunk(c) => c.transfer_id.clone(),
        };
        match self.reassembly.accept(port.vault(), cx, from, part) {
            Ok(Some(whole)) => {
                let key = format!("out:{from}:{}", tid.unwrap_or_default());
                self.meters.retain(|(k, _)| *k != key);
                if let Ok(m) = OffloadMsg::from_value(whole.value) {
                    self.on_sandbox_news(port, cx, from, m, whole.file);
                }
                self.reassembly.flush(cx);
            }
            Ok(None) => {
                if let Some(t) = tid {
                    self.output_progress(port, cx, from, &t);
                }
            }
            Err(e) => {
                cx.log(LogLevel::Warn, &format!("transfer from {from}: {e}"));
                // Whatever it carried (an output file, most likely) is lost.
                let lost = NotReturned::new("a chunked transfer", None, &e.to_string());
                self.output_lost(port, cx, lost);
            }
        }
    }

    /// An output file that will not arrive: an event says which and why,
    /// and the final snapshot lists it.
    fn output_lost(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, lost: NotReturned) {
        let Some(o) = self.active.as_mut() else {
            return;
        };
        // The name is the sandbox's: marked as its words.
        let text = format!("not received: {}", peer_words(&not_returned_line(&lost)));
        if o.not_returned.len() < MAX_NOT_RETURNED {
            o.not_returned.push(lost);
        }
        let phase = o.phase;
        self.phase_noted(port, cx, phase, &text, "an output file was not received");
    }

    /// The sandbox is up and talking to us: the run's deadline starts, and
    /// the inputs (then the go-ahead) go to it.
    pub(super) fn sandbox_hello(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let Some(o) = self.active.as_ref() else {
            return;
        };
        // Verifying: a kars sandbox pinged on the legacy path may still say
        // hello; the hello path then takes over.
        if !matches!(o.phase, Phase::Connecting | Phase::Ready | Phase::Verifying) {
            return;
        }
        let minutes = o.timeout_minutes;
        // Not yet running: the inputs go first, and the sandbox says when
        // the task starts (its first `offload_progress`).
        self.phase(port, cx, Phase::Acknowledged, "the sandbox said hello");
        self.set_deadline(port, cx, minutes * 60_000 + RUN_GRACE_MS);
        self.start_sending_inputs(port, cx);
    }

    /// The sandbox's progress report, in its words (marked as its). Its
    /// first report on the run (stage `executing`, or none) is the sandbox
    /// saying the task runs; a percentage is shown only when the sandbox
    /// gave one, and never made up here.
    fn sandbox_progress(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, p: &OffloadProgress) {
        let Some(current) = self.active.as_ref().map(|o| o.phase) else {
            return;
        };
        let stage = p.stage.as_deref().unwrap_or(STAGE_EXECUTING);
        let pct = p.pct.map(|n| n.min(100));
        let m: String = p
            .message
            .as_deref()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        let runs = stage == STAGE_EXECUTING && Phase::Running.advances(current);
        let words = format!("sandbox: {} — {}", peer_words(stage), peer_words(&m));
        let mut lead = Vec::new();
        if runs {
            lead.push("task running in the sandbox".to_string());
        }
        if let Some(n) = pct {
            lead.push(format!("{n}%"));
        }
        let text = if lead.is_empty() {
            words
        } else {
            format!("{} ({words})", lead.join(", "))
        };
        if runs {
            // The sandbox starts only with every input: their meters end
            // here, before "running", whatever receipts are still on the way.
            self.complete_input_meters(port, cx, current);
            // A phase change: not coalesced away, and it ends a wait.
            return self.phase_noted(
                port,
                cx,
                Phase::Running,
                &text,
                "task running in the sandbox",
            );
        }
        let note = match pct {
            Some(n) => format!("the sandbox reports {n}%"),
            None => "the sandbox reports progress".to_string(),
        };
        let kind = if stage == STAGE_WAITING {
            ProgressKind::Wait
        } else {
            ProgressKind::Run
        };
        let info = ProgressInfo::sandbox(kind, pct);
        self.record(port, cx, current, (&text, &note), Some(info));
    }

    /// Receipts counted more of our input files at the sandbox: each file's
    /// meter reports what it is due (a tenth at a time, and the end).
    pub fn transfer_news(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, news: Vec<TransferNews>) {
        let now = cx.now();
        for n in news {
            let Some(o) = self.active.as_ref().filter(|o| !o.terminal()) else {
                return;
            };
            if o.sandbox_did.as_deref() != Some(n.to.as_str()) {
                continue;
            }
            // Our inputs' transfer ids: `<request id[..8]>-in-<index>`.
            let rid8: String = o.request_id.chars().take(8).collect();
            let prefix = format!("{rid8}-in-");
            let Some(f) = n
                .transfer_id
                .strip_prefix(&prefix)
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| o.files.get(i))
            else {
                continue;
            };
            let (name, size, phase) = (f.name.clone(), f.size, o.phase);
            let report = self
                .meter(&n.transfer_id, ProgressKind::Input, &name, Some(size))
                .observe(n.count, now);
            // A finished meter stays (it reports nothing more): it says the
            // file was followed (`inputs_handed_over`).
            if let Some(r) = report {
                self.record(port, cx, phase, (&r.text, &r.text), Some(r.info));
            }
        }
    }

    /// Every input meter of the active offload that has not reported its
    /// end: the final report (the sandbox said it has them all).
    fn complete_input_meters(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, phase: Phase) {
        let Some(o) = self.active.as_ref() else {
            return;
        };
        let rid8: String = o.request_id.chars().take(8).collect();
        let prefix = format!("{rid8}-in-");
        let now = cx.now();
        let reports: Vec<Report> = self
            .meters
            .iter_mut()
            .filter(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(_, m)| m.complete(now))
            .collect();
        for r in reports {
            self.record(port, cx, phase, (&r.text, &r.text), Some(r.info));
        }
    }

    /// The meter of transfer `key`, made on first use.
    fn meter(
        &mut self,
        key: &str,
        kind: ProgressKind,
        name: &str,
        size: Option<u64>,
    ) -> &mut Meter {
        let pos = match self.meters.iter().position(|(k, _)| k == key) {
            Some(p) => p,
            None => {
                self.meters
                    .push((key.to_string(), Meter::new(kind, name, size)));
                self.meters.len() - 1
            }
        };
        &mut self.meters[pos].1
    }

    /// More of an output file from the sandbox is stored here: its meter
    /// reports what is due. Its name and size are the sandbox's words
    /// (from the manifest), shown escaped; the file's own message names it
    /// for good once it is whole.
    fn output_progress(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, from: &str, tid: &str) {
        let Some(held) = self.reassembly.held(from, tid) else {
            return;
        };
        let key = format!("out:{from}:{tid}");
        let name = match &held.file_name {
            Some(n) => peer_words(n),
            None => format!("(transfer {})", peer_words(tid)),
        };
        let report = self
            .meter(&key, ProgressKind::Output, &name, held.file_size)
            .observe(held.count, cx.now());
        let Some(r) = report else {
            return;
        };
        let Count {
            parts_done,
            parts_total,
            ..
        } = held.count;
        // The hook's line is ours alone: no name the sandbox chose.
        let note = format!("receiving an output file ({parts_done} of {parts_total} chunks)");
        self.record(port, cx, Phase::Returning, (&r.text, &note), Some(r.info));
    }

    /// The sandbox refused one of our input files.
    pub(super) fn sandbox_refused_input(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        a: &FileTransferAck,
    ) {
        let name: String = a
            .file_name
            .as_deref()
            .unwrap_or_default()
            .chars()
            .take(ECHOED_NAME_CHARS)
            .collect();
        let err: String = a
            .error
            .as_deref()
            .unwrap_or("refused")
            .chars()
            .take(300)
            .collect();
        let text = format!(
            "the sandbox could not take {} (sandbox: {})",
            peer_words(&name),
            peer_words(&err)
        );
        self.phase_noted(
            port,
            cx,
            Phase::Running,
            &text,
            "the sandbox refused an input file",
        );
    }

    /// The sandbox finished: its summary is kept, the offload is done, and
    /// the controller is told to clean up.
    fn sandbox_done(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, d: &OffloadDone) {
        let summary: String = d
            .summary
            .as_deref()
            .unwrap_or_default()
            .chars()
            .take(MAX_SUMMARY_CHARS)
            .collect();
        if let Some(t) = self.timer.take() {
            port.cancel_timer(cx, t);
        }
        let Some(o) = self.active.as_mut() else {
            return;
        };
        o.summary = Some(summary);
        let n = o.outputs.len();
        let lost: Vec<NotReturned> = d
            .not_returned
            .iter()
            .flatten()
            .take(MAX_NOT_RETURNED)
            .map(|x| {
                let name = x.name.as_deref().unwrap_or_default();
                NotReturned::new(
                    name,
                    x.size_bytes,
                    x.reason.as_deref().unwrap_or("no reason given"),
                )
            })
            .collect();
        let text = if lost.is_empty() {
            format!("finished with {n} output file(s)")
        } else {
            let each: Vec<String> = lost
                .iter()
                .map(|x| peer_words(&not_returned_line(x)))
                .collect();
            format!(
                "finished with {n} output file(s); {} not returned (sandbox: {})",
                lost.len(),
                each.join("; ")
            )
        };
        o.not_returned.extend(lost);
        self.phase_noted(
            port,
            cx,
            Phase::Done,
            &text,
            &format!("finished with {n} output file(s)"),
        );
        self.send_cleanup(port, cx, CleanupReason::Done);
    }

    fn receive_output(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        from: &str,
        f: &FileTransfer,
        file: Option<StreamedFile>,
    ) {
        let raw = f.file_name.as_deref().unwrap_or_default();
        let ts = time::format_millis(cx.now());
        let Some(o) = self.active.as_ref() else {
            return;
        };
        let refuse = |why: &str| FileTransferAck::refused(raw, why, &ts);
        let (data, streamed_sha) = StreamedFile::or_decode(file, f);
        let ack = if o.outputs.len() >= transfer::MAX_FILES {
            Err(refuse("too many files"))
        } else {
            match (transfer::safe_file_name(raw), data) {
                (None, _) => Err(refuse("unusable file name")),
                (_, Err(_)) => Err(refuse("file_data is not base64")),
                (Some(_), Ok(b)) if b.len() > MAX_RECEIVED_FILE_BYTES => {
                    Err(refuse("file larger than 30 MiB"))
                }
                (Some(name), Ok(bytes)) => Ok((name, bytes)),
            }
        };
        let (name, bytes) = match ack {
            Err(msg) => {
                cx.log(LogLevel::Warn, &format!("refused a file from {from}"));
                let why = msg.error.clone().unwrap_or_default();
                let size = f.size_bytes;
                port.send(cx, from, OffloadMsg::from(msg).to_value());
                return self.output_lost(port, cx, NotReturned::new(raw, size, &why));
            }
            Ok(x) => x,
        };
        let sha = streamed_sha.unwrap_or_else(|| transfer::sha256_hex(&bytes));
        if o.outputs.iter().any(|f| f.name == name && f.sha256 == sha) {
            // The same file again (a replay after a crash): acked, not kept twice.
            // Found by name just above, so there is a path.
            let path = o
                .outputs
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.path.clone())
                .unwrap_or_default();
            let ack = FileTransferAck::saved(&name, &path, &ts);
            port.send(cx, from, OffloadMsg::from(ack).to_value());
            return;
        }
        let taken: Vec<String> = o.outputs.iter().map(|f| f.name.clone()).collect();
        let name = transfer::unique_name(&name, &taken);
        let dir: String = o.request_id.chars().take(8).collect();
        let path = format!("incoming/{dir}/{name}");
        let out = OutputFile {
            name: name.clone(),
            path: path.clone(),
            size: bytes.len() as u64,
            sha256: sha,
        };
        // The file lands before the record that lists it, and both before the ack.
        cx.out.push(Command::FileWrite(path.clone(), bytes));
        if let Some(o) = self.active.as_mut() {
            o.outputs.push(out.clone());
        }
        self.phase(
            port,
            cx,
            Phase::Returning,
            &format!("received {name} ({} bytes)", out.size),
        );
        let ack = FileTransferAck::saved(&name, &path, &ts);
        port.send(cx, from, OffloadMsg::from(ack).to_value());
    }

    pub(super) fn start_sending_inputs(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let Some(o) = self.active.as_ref() else {
            return;
        };
        if o.inputs_sent
            || o.sandbox_did
                .as_deref()
                .is_some_and(|d| !port.paced_idle(d))
        {
            return;
        }
        let missing: Vec<(usize, String)> = o
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| !self.input_bytes.iter().any(|(n, _)| *n == f.name))
            .map(|(i, f)| (i, f.path.clone()))
            .collect();
        if missing.is_empty() {
            return self.send_inputs(port, cx);
        }
        // After a restart the bytes are read again.
        self.read_inputs(port, cx, missing);
    }

    /// Ask the host to read input files (by their index in the offload).
    fn read_inputs(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        files: impl IntoIterator<Item = (usize, String)>,
    ) {
        for (i, path) in files {
            let id = port.fresh_id();
            self.reads.push((id, i));
            cx.out.push(Command::FileRead {
                id,
                path,
                max_bytes: transfer::MAX_FILE_BYTES as u64,
            });
        }
    }

    fn send_inputs(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let Some(o) = self.active.as_ref() else {
            return;
        };
        let Some(to) = o.sandbox_did.clone() else {
            return;
        };
        // Sent, or on their way (paced): never queued twice.
        if o.inputs_sent || !port.paced_idle(&to) {
            return;
        }
        let rid = o.request_id.clone();
        let from_agent = self.sender_name(port);
        let files = o.files.clone();
        if let Some(msg) = self.changed_input(&files) {
            // Recorded first: the cleanup goes out after the state that explains it.
            self.fail_offload(port, cx, &msg);
            self.send_cleanup(port, cx, CleanupReason::Error);
            return;
        }
        let ts = time::format_millis(cx.now());
        let mut items = match self.input_items(&files, &rid, &from_agent, &ts) {
            Ok(items) => items,
            Err(why) => {
                // Recorded first: the cleanup goes out after the state that explains it.
                self.fail_offload(port, cx, &why);
                self.send_cleanup(port, cx, CleanupReason::Error);
                return;
            }
        };
        self.input_bytes.clear();
        self.reread.clear();
        // The go-ahead, after the inputs: the sandbox runs nothing until this
        // end-to-end message from us names the task we asked for, so a
        // sandbox started on a forged request never runs it.
        let task_sha256 = self
            .active
            .as_ref()
            .map(|o| transfer::sha256_hex(o.task.as_bytes()))
            .unwrap_or_default();
        if self
            .active
            .as_ref()
            .is_some_and(|o| o.phase == Phase::Uploading)
        {
            // The kars sandbox's legacy path: the task follows once every
            // input is acknowledged (`kars.rs`), as `offload_task`.
            port.send_paced(cx, &to, items);
            return;
        }
        let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
        let go = OffloadStart::new(&rid, &task_sha256, names, &from_agent, &ts);
        items.push(Paced::Go(go));
        port.send_paced(cx, &to, items);
    }

    /// Every input is checked before any goes: none changed since
    /// cloud_offload hashed it. The text for the user if one did.
    fn changed_input(&self, files: &[InputFile]) -> Option<String> {
        files.iter().find_map(|f| {
            self.input_bytes
                .iter()
                .filter(|(n, _)| self.reread.contains(n))
                .find(|(n, _)| *n == f.name)
                .is_some_and(|(_, bytes)| transfer::sha256_hex(bytes) != f.sha256)
                .then(|| {
                    format!(
                        "Input file {} changed since cloud_offload read it; offload it again.",
                        f.path
                    )
                })
        })
    }

    /// The inputs as paced `file_transfer`s (their bytes taken from
    /// `input_bytes`), or why one cannot be sent.
    fn input_items(
        &mut self,
        files: &[InputFile],
        rid: &str,
        from_agent: &str,
        ts: &str,
    ) -> Result<Vec<Paced>, String> {
        let mut items = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let Some(pos) = self.input_bytes.iter().position(|(n, _)| *n == f.name) else {
                continue;
            };
            let (_, bytes) = self.input_bytes.swap_remove(pos);
            let size = bytes.len() as u64;
            let msg = FileTransfer::input(rid, &f.name, size, &f.sha256, from_agent, ts);
            let transfer_id = format!("{}-in-{i}", &rid[..8.min(rid.len())]);
            // cloud_offload checked this file; it can only fail here if the
            // agent's name changed since (a restart with a new config).
            let item = Paced::file(msg, bytes, transfer_id, from_agent.to_string()).map_err(|e| {
                format!(
                    "Input file {} cannot be sent ({e}); make it smaller (or its name shorter) and offload again.",
                    f.path
                )
            })?;
            items.push(item);
        }
        Ok(items)
    }

    /// The go-ahead is in the outbox: every input went before it. Their
    /// progress comes from the sandbox's receipts; a file the receipts do
    /// not follow (a sandbox that sends none) gets one line saying it left
    /// and that nothing will say when it arrived, short of the sandbox's
    /// answer. The phase does not change: the sandbox says when it runs.
    pub fn inputs_handed_over(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let Some(o) = self.active.as_mut() else {
            return;
        };
        o.inputs_sent = true;
        let rid8: String = o.request_id.chars().take(8).collect();
        let unfollowed: Vec<String> = o
            .files
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let tid = format!("{rid8}-in-{i}");
                !self.meters.iter().any(|(k, _)| *k == tid)
            })
            .map(|(_, f)| format!("{} ({} bytes)", f.name, f.size))
            .collect();
        let phase = o.phase;
        if unfollowed.is_empty() {
            return self.save_offload(port, cx);
        }
        let text = format!(
            "sent {}; this sandbox sends no receipts, so only its answer shows they arrived",
            unfollowed.join(", ")
        );
        self.phase(port, cx, phase, &text);
    }
}
