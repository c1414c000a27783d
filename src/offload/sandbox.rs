//! The sandbox role: a peer with its own identity that works for exactly one
//! requester. It says hello, reports that it is alive, takes the input
//! files, waits
//! for the requester's end-to-end `offload_start` naming the task's SHA-256
//! (a sandbox started on a forged request never runs anything), runs
//! the task (the built-in executor, or the operator's `--exec` command via a
//! host job: never anything a peer sends), returns the outputs as
//! `file_transfer` (chunked above 512 KiB) and ends with `offload_done` or
//! `offload_error`. Everything from anyone but the requester is dropped.
//!
//! Its reports are honest: it says when the task starts, then how long it
//! has been running, with a percentage only when the executor reported one
//! (an `--exec` command prints `KARS_PROGRESS <pct> <text>` lines; the
//! built-in executor finishes at once).

use super::progress::{parse_exec_progress, ExecProgress, MIN_REPORT_GAP_MS};
use super::reassembly::{Part, Reassembly, StreamedFile};
use crate::io::{Command, Cx, JobExit, LogLevel};
use crate::port::{Paced, Port, TimerOwner as Owner};
use crate::wire::limits::{
    DEFAULT_TIMEOUT_MINUTES, MAX_FILES, MAX_FILE_BYTES, MAX_RECEIVED_FILE_BYTES, MAX_SUMMARY_CHARS,
};
use crate::wire::offload_msg::{
    FileTransfer, FileTransferAck, NotReturned, OffloadDone, OffloadError, OffloadHello,
    OffloadMsg, OffloadProgress, OffloadStart,
};
use crate::wire::payload::Family;
use crate::wire::{time, transfer};
use serde::Deserialize;
use serde_json::{json, Value};

const DEFAULT_PROGRESS_MS: u64 = 20_000;
/// How long the sandbox waits for the inputs the request announced.
const INPUT_WAIT_MS: u64 = 10 * 60_000;

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SandboxSpec {
    pub name: String,
    pub requester: String,
    pub request_id: String,
    pub task: String,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default = "default_timeout_minutes")]
    pub timeout_minutes: u64,
    #[serde(default)]
    pub model: Option<String>,
    /// "builtin" (default) or "exec" (the host runs its configured command).
    #[serde(default)]
    pub executor: Option<String>,
    #[serde(default)]
    pub progress_ms: Option<u64>,
}

fn default_timeout_minutes() -> u64 {
    DEFAULT_TIMEOUT_MINUTES
}

pub struct Input {
    pub name: String,
    pub size: usize,
    pub sha256: String,
}

/// The one offload this sandbox works on.
pub struct Sandbox {
    pub spec: SandboxSpec,
    pub inputs: Vec<Input>,
    pub started_ms: u64,
    pub run_started_ms: Option<u64>,
    pub finished: bool,
    /// When the last `offload_progress` went.
    pub reported_ms: u64,
    /// The executor's last report on its progress (an `--exec` command's
    /// `KARS_PROGRESS` line), if it gave one.
    pub exec_report: Option<ExecProgress>,
    /// A report of the executor waits for `MIN_REPORT_GAP_MS` to pass.
    pub report_pending: bool,
    pub progress_timer: u64,
    pub deadline_timer: u64,
    pub input_timer: u64,
    pub job: Option<u64>,
    pub reassembly: Reassembly,
    /// The requester's go-ahead arrived, for this very task.
    pub go: bool,
}

impl Sandbox {
    /// Start work on `spec`: say hello to the requester and set the
    /// progress, deadline and input timers.
    pub fn start(spec: SandboxSpec, port: &mut dyn Port, cx: &mut Cx<'_>) -> Self {
        let now = cx.now();
        let every = spec.progress_ms.unwrap_or(DEFAULT_PROGRESS_MS).max(200);
        let progress_timer = port.set_timer(cx, Owner::SandboxProgress, now + every);
        let deadline_timer = port.set_timer(
            cx,
            Owner::SandboxDeadline,
            now + spec.timeout_minutes.max(1) * 60_000,
        );
        // Inputs and the go-ahead must come within this time, or the sandbox
        // gives up and its slot is freed.
        let input_timer = port.set_timer(cx, Owner::SandboxInputs, now + INPUT_WAIT_MS);
        let hello = OffloadHello::new(
            &spec.request_id,
            &spec.name,
            &spec.task,
            &time::format_millis(now),
        );
        port.send(cx, &spec.requester, OffloadMsg::from(hello).to_value());
        Sandbox {
            spec,
            inputs: Vec::new(),
            started_ms: now,
            run_started_ms: None,
            finished: false,
            reported_ms: now,
            exec_report: None,
            report_pending: false,
            progress_timer,
            deadline_timer,
            input_timer,
            job: None,
            reassembly: Reassembly::reading_when_idle(),
            go: false,
        }
    }

    /// Everything a sandbox receives is its business: the requester's
    /// messages are handled (parsed once: any other message, or one without
    /// the fields its type requires, is ignored), anyone else's are dropped
    /// (never inboxed).
    pub fn on_message(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, from: &str, p: Value) {
        self.take_message(port, cx, from, p, None)
    }

    /// A message, with the file of a chunked `file_transfer` when it was
    /// read as its chunks came (`reassembly.rs`).
    fn take_message(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        from: &str,
        p: Value,
        file: Option<StreamedFile>,
    ) {
        if from != self.spec.requester {
            cx.log(
                LogLevel::Warn,
                &format!("sandbox: dropped a message from {from}, which is not the requester"),
            );
            return;
        }
        match OffloadMsg::from_value(p) {
            Ok(OffloadMsg::FileTransfer(f)) => self.input(port, cx, from, &f, file),
            Ok(OffloadMsg::Start(go)) => self.go(port, cx, &go),
            Ok(OffloadMsg::TransferManifest(m)) => {
                self.reassemble(port, cx, from, Part::Manifest(&m))
            }
            Ok(OffloadMsg::TransferChunk(c)) => self.reassemble(port, cx, from, Part::Chunk(&c)),
            _ => {}
        }
    }

    /// A piece of a chunked transfer; the whole message, once complete, is
    /// taken like any other.
    fn reassemble(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, from: &str, part: Part<'_>) {
        match self.reassembly.accept(port.vault(), cx, from, part) {
            Ok(Some(whole)) => {
                self.take_message(port, cx, from, whole.value, whole.file);
                self.reassembly.flush(cx);
            }
            Ok(None) => {}
            Err(e) => cx.log(LogLevel::Warn, &format!("sandbox: transfer: {e}")),
        }
    }

    fn input(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        from: &str,
        f: &FileTransfer,
        file: Option<StreamedFile>,
    ) {
        let ts = time::format_millis(cx.now());
        let s = &mut *self;
        let raw = f.file_name.as_deref().unwrap_or_default();
        let name = transfer::safe_file_name(raw);
        let (bytes, streamed_sha) = StreamedFile::or_decode(file, f);
        let verdict = match (&name, &bytes) {
            _ if s.run_started_ms.is_some() => Err("the task is already running"),
            (None, _) => Err("unusable file name"),
            (Some(n), _) if !s.spec.files.contains(n) => {
                Err("not one of the files the request announced")
            }
            (Some(n), _) if s.inputs.iter().any(|i| &i.name == n) => Err("already received"),
            (_, Err(_)) => Err("file_data is not base64"),
            (_, Ok(b)) if b.len() > MAX_RECEIVED_FILE_BYTES => Err("file larger than 30 MiB"),
            (Some(_), Ok(_)) => Ok(()),
        };
        // Hashed once, and only a file that passed every other check: the
        // comparison and the record both use it (a 30 MiB input is about
        // 0.2 s of SHA-256 in the engine).
        let sha = match (&verdict, &bytes) {
            (Ok(()), Ok(b)) => Some(streamed_sha.unwrap_or_else(|| transfer::sha256_hex(b))),
            _ => None,
        };
        let verdict = match (verdict, f.sha256.as_deref(), sha.as_deref()) {
            (Ok(()), Some(want), Some(got)) if !want.eq_ignore_ascii_case(got) => {
                Err("sha256 does not match the data")
            }
            (v, _, _) => v,
        };
        let ack = match (verdict, name, bytes) {
            (Ok(()), Some(n), Ok(b)) => {
                s.inputs.push(Input {
                    name: n.clone(),
                    size: b.len(),
                    sha256: sha.unwrap_or_default(),
                });
                if s.spec.executor.as_deref() == Some("exec") {
                    cx.out.push(Command::FileWrite(format!("work/in/{n}"), b));
                }
                FileTransferAck::saved(&n, &format!("in/{n}"), &ts)
            }
            (Err(why), _, _) => FileTransferAck::refused(raw, why, &ts),
            _ => return,
        };
        let ready = s.go && s.inputs.len() == s.spec.files.len();
        port.send(cx, from, OffloadMsg::from(ack).to_value());
        if ready {
            self.run_task(port, cx);
        }
    }

    /// The requester's go-ahead: it must name this request and the SHA-256
    /// of the task this sandbox was given, or nothing runs.
    fn go(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, p: &OffloadStart) {
        let s = &mut *self;
        if s.go || p.request_id != s.spec.request_id {
            return;
        }
        let want = transfer::sha256_hex(s.spec.task.as_bytes());
        let got = p.task_sha256.as_deref().unwrap_or_default();
        if !got.eq_ignore_ascii_case(&want) {
            return self.fail(
                port,
                cx,
                "the task this sandbox was given is not the one the requester asked for (task_sha256 differs); nothing was run",
            );
        }
        s.go = true;
        if s.inputs.len() == s.spec.files.len() {
            self.run_task(port, cx);
        }
    }

    fn run_task(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let now = cx.now();
        let s = &mut *self;
        if s.run_started_ms.is_some() || s.finished {
            return;
        }
        s.run_started_ms = Some(now);
        port.cancel_timer(cx, s.input_timer);
        // The sandbox's own word that the task runs: every input is here
        // and the go-ahead named this task.
        let bytes: usize = s.inputs.iter().map(|i| i.size).sum();
        let started = format!(
            "task started with {} input file(s), {bytes} bytes",
            s.inputs.len()
        );
        self.report(port, cx, &started);
        let s = &mut *self;
        if s.spec.executor.as_deref() == Some("exec") {
            let job = port.fresh_id();
            s.job = Some(job);
            // The host's job spec, not a message. The output limits are the
            // core's, so the host names what it leaves out for the same
            // reasons the core would (and reads no larger file).
            let spec = json!({
                "workdir": "work",
                "timeout_ms": s.spec.timeout_minutes.max(1) * 60_000,
                "max_outputs": MAX_FILES,
                "max_output_bytes": MAX_FILE_BYTES,
                "env": {
                    "KARS_TASK": s.spec.task,
                    "KARS_REQUEST_ID": s.spec.request_id,
                    "KARS_MODEL": s.spec.model.clone().unwrap_or_default(),
                },
            });
            cx.out.push(Command::JobStart {
                id: job,
                kind: "exec".into(),
                spec_json: spec.to_string(),
            });
            return;
        }
        // The built-in executor runs nothing: it reports what it was given.
        let mut report = format!(
            "# kars-mesh sandbox report\n\nSandbox: {}\nRequest: {}\nModel: {}\n\n## Task\n\n{}\n\n## Inputs\n\n",
            s.spec.name,
            s.spec.request_id,
            s.spec.model.as_deref().unwrap_or("default"),
            s.spec.task
        );
        if s.inputs.is_empty() {
            report.push_str("(none)\n");
        }
        for i in &s.inputs {
            report.push_str(&format!(
                "- {} — {} bytes — sha256 {}\n",
                i.name, i.size, i.sha256
            ));
        }
        report.push_str("\nThe built-in executor runs no commands. Start the cluster with --exec CMD to run a command of your choice.\n");
        let summary = format!(
            "Built-in executor: received the task ({} characters) and {} input file(s); see report.md.",
            s.spec.task.chars().count(),
            s.inputs.len()
        );
        self.finish_task(
            port,
            cx,
            vec![("report.md".into(), report.into_bytes())],
            Vec::new(),
            summary,
        );
    }

    /// The run is over: the outputs that can go (a window at a time), then
    /// `offload_done` naming every output that cannot, and why. `refused`:
    /// outputs the host already left out (name, reason).
    fn finish_task(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        outputs: Vec<(String, Vec<u8>)>,
        refused: Vec<(String, String)>,
        summary: String,
    ) {
        if self.finished {
            return;
        }
        // The executor's last report, if it still waits, goes first.
        if self.report_pending {
            self.progress_due(port, cx);
        }
        let now = cx.now();
        let s = &mut *self;
        s.finished = true;
        let spec = s.spec.clone();
        let started_ms = s.started_ms;
        for t in [s.progress_timer, s.deadline_timer] {
            port.cancel_timer(cx, t);
        }
        let duration = now.saturating_sub(started_ms) / 1000;
        let ts = time::format_millis(now);
        let (mut items, names, mut not_returned) = outgoing(&spec, &ts, outputs);
        not_returned.extend(
            refused
                .iter()
                .map(|(name, why)| NotReturned::new(name, None, why)),
        );
        let summary = with_not_returned_note(&summary, &not_returned);
        // `new` cuts the summary to MAX_SUMMARY_CHARS.
        let done = OffloadDone::new(&spec.request_id, &summary, names, duration, &spec.name, &ts)
            .with_not_returned(not_returned);
        items.push(Paced::Message(OffloadMsg::from(done).to_value()));
        port.send_paced(cx, &spec.requester, items);
        cx.log(LogLevel::Info, &format!("sandbox {}: done", spec.name));
    }

    fn fail(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, error: &str) {
        let now = cx.now();
        let s = &mut *self;
        if s.finished {
            return;
        }
        s.finished = true;
        if let Some(j) = s.job.take() {
            cx.out.push(Command::JobKill(j));
        }
        let spec = s.spec.clone();
        for t in [s.progress_timer, s.deadline_timer, s.input_timer] {
            port.cancel_timer(cx, t);
        }
        // `sandbox` cuts the error to MAX_ERROR_CHARS.
        let msg = OffloadError::sandbox(
            &spec.request_id,
            error,
            &spec.name,
            &time::format_millis(now),
        );
        port.send(cx, &spec.requester, OffloadMsg::from(msg).to_value());
        cx.log(LogLevel::Info, &format!("sandbox {}: error", spec.name));
    }

    /// Time for a progress report: the heartbeat, or an executor's report
    /// that waited.
    pub fn progress_due(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        if self.finished {
            return;
        }
        let now = cx.now();
        let message = match (self.run_started_ms, &self.exec_report) {
            (Some(t), report) => {
                let secs = now.saturating_sub(t) / 1000;
                match report {
                    Some(r) if !r.text.is_empty() => format!("{} (running for {secs} s)", r.text),
                    Some(_) => format!("running for {secs} s"),
                    None => format!("running for {secs} s; the executor has reported no progress"),
                }
            }
            (None, _) if self.inputs.len() < self.spec.files.len() => format!(
                "waiting for input files ({}/{})",
                self.inputs.len(),
                self.spec.files.len()
            ),
            (None, _) => "waiting for the requester's go-ahead".to_string(),
        };
        self.report(port, cx, &message);
    }

    /// Send a report now and arm the next heartbeat: `executing` (with the
    /// executor's percentage, if it gave one) once the task runs, `waiting`
    /// before.
    fn report(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, message: &str) {
        let now = cx.now();
        let s = &mut *self;
        let elapsed = now.saturating_sub(s.started_ms) / 1000;
        let ts = time::format_millis(now);
        let (rid, name) = (&s.spec.request_id, &s.spec.name);
        let msg = if s.run_started_ms.is_some() {
            let pct = s.exec_report.as_ref().and_then(|r| r.pct);
            OffloadProgress::executing(rid, message, pct, elapsed, name, &ts)
        } else {
            OffloadProgress::waiting(rid, message, elapsed, name, &ts)
        };
        let every = s.spec.progress_ms.unwrap_or(DEFAULT_PROGRESS_MS).max(200);
        let to = s.spec.requester.clone();
        port.cancel_timer(cx, s.progress_timer);
        s.progress_timer = port.set_timer(cx, Owner::SandboxProgress, now + every);
        s.reported_ms = now;
        s.report_pending = false;
        port.send(cx, &to, OffloadMsg::from(msg).to_value());
    }

    /// The running `--exec` command printed a `KARS_PROGRESS` line (`rest`:
    /// what follows the prefix). It goes to the requester at once, or, within
    /// `MIN_REPORT_GAP_MS` of the last report, when that has passed (the
    /// newest report wins). `true` when `id` is this sandbox's job.
    pub fn job_progress(
        &mut self,
        port: &mut dyn Port,
        cx: &mut Cx<'_>,
        id: u64,
        rest: &str,
    ) -> bool {
        if self.job != Some(id) {
            return false;
        }
        if self.finished {
            return true;
        }
        let report = match parse_exec_progress(rest) {
            Ok(r) => r,
            Err(e) => {
                cx.log(
                    LogLevel::Warn,
                    &format!("sandbox: ignored a KARS_PROGRESS line of the command: {e}"),
                );
                return true;
            }
        };
        let now = cx.now();
        self.exec_report = Some(report);
        let due = self.reported_ms + MIN_REPORT_GAP_MS;
        if now >= due {
            self.progress_due(port, cx);
        } else if !self.report_pending {
            self.report_pending = true;
            port.cancel_timer(cx, self.progress_timer);
            self.progress_timer = port.set_timer(cx, Owner::SandboxProgress, due);
        }
        true
    }

    /// The task's time is up.
    pub fn deadline(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let m = self.spec.timeout_minutes;
        self.fail(port, cx, &format!("timed out after {m} minute(s)"));
    }

    /// The inputs or the go-ahead did not come in time.
    pub fn inputs_overdue(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>) {
        let s = &*self;
        let (got, want) = (s.inputs.len(), s.spec.files.len());
        let minutes = INPUT_WAIT_MS / 60_000;
        let why = if got < want {
            format!("only {got} of {want} input files arrived within {minutes} minutes")
        } else {
            format!("the requester's go-ahead (offload_start) did not arrive within {minutes} minutes; nothing was run")
        };
        self.fail(port, cx, &why);
    }

    /// `true` when `exit` is this sandbox's task.
    pub fn job_exited(&mut self, port: &mut dyn Port, cx: &mut Cx<'_>, exit: JobExit) -> bool {
        let s = &mut *self;
        if s.job != Some(exit.id) {
            return false;
        }
        s.job = None;
        let tail: String = {
            let chars: Vec<char> = exit.log.chars().collect();
            let start = chars.len().saturating_sub(MAX_SUMMARY_CHARS - 200);
            chars[start..].iter().collect()
        };
        if exit.code == 0 {
            let summary = if tail.trim().is_empty() {
                format!(
                    "The command finished with {} output file(s).",
                    exit.outputs.len()
                )
            } else {
                tail
            };
            self.finish_task(port, cx, exit.outputs, exit.refused, summary);
        } else {
            let last: String = tail
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            self.fail(
                port,
                cx,
                &format!("the command exited with code {}: {last}", exit.code),
            );
        }
        true
    }
}

/// The outputs as paced `file_transfer`s (each checked to fit in one
/// transfer), their names as sent, and the ones that cannot go with why.
fn outgoing(
    spec: &SandboxSpec,
    ts: &str,
    outputs: Vec<(String, Vec<u8>)>,
) -> (Vec<Paced>, Vec<String>, Vec<NotReturned>) {
    let mut names: Vec<String> = Vec::new();
    let mut not_returned = Vec::new();
    let mut items = Vec::new();
    for (raw, bytes) in outputs {
        let size = bytes.len() as u64;
        let Some(name) = transfer::safe_file_name(&raw) else {
            not_returned.push(NotReturned::new(&raw, Some(size), "unusable file name"));
            continue;
        };
        if names.len() >= transfer::MAX_FILES {
            let why = format!("more than {} output files", transfer::MAX_FILES);
            not_returned.push(NotReturned::new(&raw, Some(size), &why));
            continue;
        }
        let name = transfer::unique_name(&name, &names);
        let sha = transfer::sha256_hex(&bytes);
        let msg = FileTransfer::output(&spec.request_id, &name, size, &sha, &spec.name, ts);
        let id = format!("{}-out-{}", spec.name, names.len());
        match Paced::file(msg, bytes, id, spec.name.clone()) {
            Ok(item) => {
                items.push(item);
                names.push(name);
            }
            Err(e) => not_returned.push(NotReturned::new(&raw, Some(size), &e.to_string())),
        }
    }
    (items, names, not_returned)
}

/// The summary with a line naming the outputs not returned, kept whole
/// when the summary is cut (a client that does not read `not_returned`,
/// like the original, still sees it).
fn with_not_returned_note(summary: &str, not_returned: &[NotReturned]) -> String {
    if not_returned.is_empty() {
        return summary.to_string();
    }
    let names: Vec<String> = not_returned
        .iter()
        .map(|n| n.name.clone().unwrap_or_default())
        .collect();
    let listed: String = names.join(", ").chars().take(500).collect();
    let note = format!(
        "\n(not returned: {} file(s): {listed}; offload_status says why)",
        not_returned.len()
    );
    let room = MAX_SUMMARY_CHARS.saturating_sub(note.chars().count());
    let body: String = summary.chars().take(room).collect();
    format!("{body}{note}")
}
