//! The offload client, the controller and the sandbox, each driven alone
//! through a fake port. The whole-offload test hands each message one
//! machine sends to the machine it is for, as the mesh would after
//! decrypting it; the others check one machine's refusals.

use super::client::OffloadClient;
use super::controller::Controller;
use super::phase::Phase;
use super::sandbox::{Sandbox, SandboxSpec};
use crate::codec::b64;
use crate::io::{Command, Cx, JobExit};
use crate::pairing::client::PairingRecord;
use crate::pairing::ledger::{ControllerAddress, PairRequest};
use crate::pairing::operator::Operator;
use crate::port::testing::{result_text as text, tool_results, FakeHost, FakePort};
use crate::port::{Paced, TimerOwner};
use crate::wire::offload_msg::OffloadMsg;
use crate::wire::payload::Family;
use serde_json::{json, Value};

/// One machine's port, host and the commands of its last call.
struct Side {
    port: FakePort,
    host: FakeHost,
    out: Vec<Command>,
}

impl Side {
    fn new(seed: u8) -> Self {
        Side {
            port: FakePort::new(seed),
            host: FakeHost::default(),
            out: Vec::new(),
        }
    }

    fn did(&self) -> String {
        self.port.id.did().to_string()
    }

    /// Run `f` with this side's port and a context; keep what it commanded
    /// (stores are carried out, as the host does).
    fn call<R>(&mut self, f: impl FnOnce(&mut FakePort, &mut Cx<'_>) -> R) -> R {
        let mut cx = Cx {
            host: &mut self.host,
            out: Vec::new(),
        };
        let r = f(&mut self.port, &mut cx);
        let out = cx.out;
        self.out = self.host.apply(out);
        r
    }

    /// What was sent to `to` since the last look, in order.
    fn take_sent_to(&mut self, to: &str) -> Vec<Value> {
        let (mine, rest): (Vec<_>, Vec<_>) = self.port.sent.drain(..).partition(|(t, _)| t == to);
        self.port.sent = rest;
        mine.into_iter().map(|(_, v)| v).collect()
    }

    /// Paced items for `to` as the messages the node would send (files get
    /// their data; small enough here to need no chunks).
    fn take_paced_to(&mut self, to: &str) -> Vec<Value> {
        let mut msgs = Vec::new();
        for (t, items) in std::mem::take(&mut self.port.paced) {
            assert_eq!(t, to);
            for item in items {
                msgs.push(match item {
                    Paced::Message(v) => v,
                    Paced::Go(go) => OffloadMsg::from(go).to_value(),
                    Paced::File { mut msg, bytes, .. } => {
                        msg.set_data(&bytes);
                        OffloadMsg::from(msg).to_value()
                    }
                });
            }
        }
        msgs
    }

    /// Paced items for `to` as the pacer sends them: a file over 512 KiB as
    /// a manifest and its chunks (at most 80, or the test fails).
    fn take_paced_chunked_to(&mut self, to: &str) -> Vec<Value> {
        let mut msgs = Vec::new();
        for (t, items) in std::mem::take(&mut self.port.paced) {
            assert_eq!(t, to);
            for item in items {
                match item {
                    Paced::Message(v) => msgs.push(v),
                    Paced::Go(go) => msgs.push(OffloadMsg::from(go).to_value()),
                    Paced::File { msg, bytes, .. } => {
                        let text = msg.into_value_with(bytes).to_string();
                        let split =
                            crate::wire::transfer::split(&text, "t", "file_transfer", "a", "ts");
                        match split.expect("a paced file splits into at most 80 chunks") {
                            Some(parts) => msgs.extend(parts),
                            None => msgs.push(serde_json::from_str(&text).expect("JSON")),
                        }
                    }
                }
            }
        }
        msgs
    }

    fn results(&self) -> Vec<Value> {
        tool_results(&self.out)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }
}

fn types(msgs: &[Value]) -> Vec<&str> {
    msgs.iter()
        .map(|m| m["type"].as_str().unwrap_or("?"))
        .collect()
}

/// A controller whose ledger holds an active pairing for `user`.
fn controller(ctl: &mut Side, user: &Side, slots: u32) -> Controller {
    let address = ControllerAddress {
        did: ctl.did(),
        amid: ctl.port.id.amid(),
        relay_url: "http://127.0.0.1:1".into(),
        registry_url: "http://127.0.0.1:2".into(),
        cluster: "lab".into(),
    };
    let user_key = b64::encode_std(user.port.id.ed25519_public());
    let user_did = user.did();
    ctl.call(|port, cx| {
        let mut op = Operator::load(&port.vault, cx, address.clone()).expect("empty ledger");
        let req = PairRequest {
            name: "alice".into(),
            slots,
            capabilities: vec!["offload".into()],
            ..Default::default()
        };
        let (tok, _) = op
            .ledger
            .generate(&req, &address, 0, cx.host)
            .expect("generate");
        let secret = crate::wire::token::parse(&tok)
            .expect("token")
            .secret
            .clone();
        op.ledger
            .pair(&secret, &user_did, &user_key, 0)
            .expect("pair");
        Controller::load(op, port, cx)
    })
}

fn pairing_with(ctl: &Side) -> PairingRecord {
    PairingRecord {
        cluster_name: "lab".into(),
        controller_did: ctl.did(),
        controller_amid: ctl.port.id.amid(),
        relay_url: String::new(),
        registry_url: String::new(),
        capabilities: vec!["offload".into()],
        slots: 2,
        token_budget: 1,
        expires_at: String::new(),
        paired_ms: 0,
        dialect: Default::default(),
    }
}

fn job_start(out: &[Command]) -> Option<(u64, String, String)> {
    out.iter().find_map(|c| match c {
        Command::JobStart {
            id,
            kind,
            spec_json,
        } => Some((*id, kind.clone(), spec_json.clone())),
        _ => None,
    })
}

#[test]
fn a_whole_offload_from_request_to_done_and_cleanup() {
    let (mut user, mut ctl, mut sb_side) = (Side::new(1), Side::new(2), Side::new(3));
    let (u, c, s) = (user.did(), ctl.did(), sb_side.did());
    let mut client = OffloadClient::default();
    let mut controller = controller(&mut ctl, &user, 1);
    let pairing = pairing_with(&ctl);

    // The user's call: answered at once, the request goes to the controller.
    let args = json!({"task": "summarise the week"});
    user.call(|p, cx| client.cloud_offload(p, cx, "call-1", &args, Some(&pairing)));
    assert!(text(&user.results()[0]).starts_with("☁️ Offload submitted"));
    let request = user.take_sent_to(&c);
    assert_eq!(types(&request), ["offload_request"]);

    // The controller takes a slot and starts a sandbox.
    ctl.call(|p, cx| controller.on_message(p, cx, &u, request[0].clone()));
    let news = ctl.take_sent_to(&u);
    assert_eq!(types(&news), ["offload_status", "offload_status"]);
    assert_eq!(news[1]["phase"], "spawning");
    let (job, kind, spec) = job_start(&ctl.out).expect("a sandbox is started");
    assert_eq!(kind, "sandbox");
    let spec: SandboxSpec = serde_json::from_str(&spec).expect("the spec is a SandboxSpec");
    assert_eq!(spec.requester, u);
    assert!(spec.name.starts_with("offload-"));

    // The sandbox comes up and says hello; the controller names it.
    let mut sandbox = sb_side.call(|p, cx| Sandbox::start(spec, p, cx));
    let hello = sb_side.take_sent_to(&u);
    assert_eq!(types(&hello), ["offload_hello"]);
    ctl.call(|p, cx| controller.job_ready(p, cx, job, &s));
    let ready = ctl.take_sent_to(&u);
    assert_eq!(ready[1]["phase"], "ready");
    assert_eq!(ready[1]["sandbox_did"], s.as_str());

    // The client follows the controller's news, then the sandbox's hello:
    // it sends the go-ahead (paced, after the inputs: none here).
    for m in news.iter().chain(&ready) {
        user.call(|p, cx| client.on_message(p, cx, &c, m.clone(), true));
    }
    user.call(|p, cx| client.on_message(p, cx, &s, hello[0].clone(), true));
    let go = user.take_paced_to(&s);
    assert_eq!(types(&go), ["offload_start"]);
    user.call(|p, cx| client.inputs_handed_over(p, cx));
    // Not running yet: only the sandbox can say that.
    assert_eq!(
        client.active.as_ref().map(|o| o.phase),
        Some(Phase::Acknowledged)
    );

    // The sandbox runs (the built-in executor): it says the task started
    // (no percentage), returns report.md, then done.
    sb_side.call(|p, cx| sandbox.on_message(p, cx, &u, go[0].clone()));
    let started = sb_side.take_sent_to(&u);
    assert_eq!(types(&started), ["offload_progress"]);
    assert_eq!(started[0]["stage"], "executing");
    assert_eq!(
        started[0]["message"],
        "task started with 0 input file(s), 0 bytes"
    );
    assert!(started[0].get("pct").is_none(), "{}", started[0]);
    user.call(|p, cx| client.on_message(p, cx, &s, started[0].clone(), true));
    let o = client.active.as_ref().expect("the offload is kept");
    assert_eq!(o.phase, Phase::Running);
    assert_eq!(
        o.events.last().map(|e| e.text.as_str()),
        Some("task running in the sandbox (sandbox: executing — task started with 0 input file(s), 0 bytes)")
    );
    let back = sb_side.take_paced_to(&u);
    assert_eq!(types(&back), ["file_transfer", "offload_done"]);
    for m in &back {
        user.call(|p, cx| client.on_message(p, cx, &s, m.clone(), true));
    }
    let o = client.active.as_ref().expect("the offload is kept");
    assert_eq!(o.phase, Phase::Done);
    assert_eq!(o.outputs[0].name, "report.md");
    assert_eq!(types(&user.take_sent_to(&c)), ["offload_cleanup"]);

    // The cleanup from anyone else is refused; the requester's frees the slot.
    let cleanup = json!({"type": "offload_cleanup", "request_id": o.request_id, "reason": "done"});
    ctl.call(|p, cx| controller.on_message(p, cx, &s, cleanup.clone()));
    assert!(!ctl.out.iter().any(|c| matches!(c, Command::JobKill(_))));
    ctl.call(|p, cx| controller.on_message(p, cx, &u, cleanup.clone()));
    assert_eq!(
        ctl.out
            .iter()
            .filter(|c| matches!(c, Command::JobKill(j) if *j == job))
            .count(),
        1
    );
    assert_eq!(controller.operator.ledger.pairings[0].slots_used, 0);
    assert_eq!(controller.offload_list(), json!([]));

    // Once cleared, the same task is answered with how it ended.
    user.results();
    user.call(|p, cx| client.offload_status_tool(p, cx, "call-2", &json!({})));
    user.results();
    assert!(client.active.is_none());
    user.call(|p, cx| client.cloud_offload(p, cx, "call-3", &args, Some(&pairing)));
    let r = user.results();
    let dup = text(&r[0]);
    assert!(
        dup.contains("\nStatus: done\nPass force=true only if"),
        "{dup}"
    );
}

#[test]
fn the_controller_tells_a_stranger_only_the_refusal_and_a_full_pairing_waits() {
    let (user, mut ctl, stranger) = (Side::new(1), Side::new(2), Side::new(9));
    let mut controller = controller(&mut ctl, &user, 1);
    let rid = "0b6c6b0e-8f1c-4e6e-9d3a-6f1d2c3b4a59";
    let request = json!({"type": "offload_request", "request_id": rid, "task": "x", "files": []});
    ctl.call(|p, cx| controller.on_message(p, cx, &stranger.did(), request.clone()));
    let answer = ctl.take_sent_to(&stranger.did());
    assert_eq!(types(&answer), ["offload_error"]);
    assert_eq!(
        answer[0]["error"],
        "Not paired with this cluster. Pair first with mesh_pair."
    );
    assert!(job_start(&ctl.out).is_none());

    // The paired user's first request takes the one slot; a second waits.
    ctl.call(|p, cx| controller.on_message(p, cx, &user.did(), request.clone()));
    let (job, _, _) = job_start(&ctl.out).expect("the paired request starts a sandbox");
    let listed = controller.offload_list();
    assert_eq!(listed[0]["request_id"], rid);
    assert_eq!(listed[0]["phase"], "spawning");
    // A repeated request is answered from the record: nothing starts twice.
    ctl.call(|p, cx| controller.on_message(p, cx, &user.did(), request.clone()));
    assert!(job_start(&ctl.out).is_none());
    let second = json!({"type": "offload_request", "request_id": "1b6c6b0e-8f1c-4e6e-9d3a-6f1d2c3b4a59", "task": "y"});
    ctl.take_sent_to(&user.did());
    ctl.call(|p, cx| controller.on_message(p, cx, &user.did(), second.clone()));
    let answer = ctl.take_sent_to(&user.did());
    assert_eq!(types(&answer), ["offload_status", "offload_error"]);
    assert!(answer[1]["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("No free sandbox slot (1 of 1 in use)")));

    // The first sandbox fails to start: the requester hears why, the slot is free.
    let exit = JobExit {
        id: job,
        code: 2,
        outputs: Vec::new(),
        refused: Vec::new(),
        log: "no such command".into(),
    };
    assert!(ctl.call(|p, cx| controller.job_exited(p, cx, &exit)));
    let answer = ctl.take_sent_to(&user.did());
    assert_eq!(answer[0]["phase"], "spawning");
    assert_eq!(controller.operator.ledger.pairings[0].slots_used, 0);
}

#[test]
fn the_sandbox_runs_nothing_without_the_requesters_go_for_its_task() {
    let (user, mut sb_side, stranger) = (Side::new(1), Side::new(3), Side::new(9));
    let spec = SandboxSpec {
        name: "offload-00".into(),
        requester: user.did(),
        request_id: "r1".into(),
        task: "the real task".into(),
        files: Vec::new(),
        timeout_minutes: 5,
        model: None,
        executor: None,
        progress_ms: None,
    };
    let mut sandbox = sb_side.call(|p, cx| Sandbox::start(spec, p, cx));
    assert!(sb_side.port.timer_of(TimerOwner::SandboxInputs).is_some());
    sb_side.take_sent_to(&user.did());

    // Anyone but the requester is ignored, even with the right digest.
    let sha = crate::wire::transfer::sha256_hex(b"the real task");
    let go = json!({"type": "offload_start", "request_id": "r1", "task_sha256": sha});
    sb_side.call(|p, cx| sandbox.on_message(p, cx, &stranger.did(), go.clone()));
    assert!(sb_side.port.paced.is_empty() && sb_side.port.sent.is_empty());

    // The requester's go for another task ends it with an error.
    let forged = json!({"type": "offload_start", "request_id": "r1", "task_sha256": "00"});
    sb_side.call(|p, cx| sandbox.on_message(p, cx, &user.did(), forged.clone()));
    let answer = sb_side.take_sent_to(&user.did());
    assert_eq!(types(&answer), ["offload_error"]);
    assert!(answer[0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("task_sha256 differs")));
    sb_side.call(|p, cx| sandbox.on_message(p, cx, &user.did(), go.clone()));
    assert!(
        sb_side.port.paced.is_empty(),
        "an ended sandbox runs nothing"
    );
    assert_eq!(sb_side.port.cancelled.len(), 3, "its timers are cancelled");
}

#[test]
fn the_sandbox_refuses_an_input_whose_sha256_differs_and_takes_one_without() {
    let (user, mut sb_side) = (Side::new(1), Side::new(3));
    let spec = SandboxSpec {
        name: "offload-00".into(),
        requester: user.did(),
        request_id: "r1".into(),
        task: "t".into(),
        files: vec!["a.txt".into(), "b.txt".into(), "c.txt".into()],
        timeout_minutes: 5,
        model: None,
        executor: None,
        progress_ms: None,
    };
    let mut sandbox = sb_side.call(|p, cx| Sandbox::start(spec, p, cx));
    sb_side.take_sent_to(&user.did());
    let data = crate::wire::b64::encode_std(b"the input");
    let sha = crate::wire::transfer::sha256_hex(b"the input");
    let mut give = |name: &str, sha256: Option<&str>| {
        let mut m = json!({"type": "file_transfer", "request_id": "r1", "file_name": name,
            "file_data": data, "size_bytes": 9});
        if let Some(h) = sha256 {
            m["sha256"] = json!(h);
        }
        sb_side.call(|p, cx| sandbox.on_message(p, cx, &user.did(), m));
        let ack = sb_side.take_sent_to(&user.did());
        assert_eq!(types(&ack), ["file_transfer_ack"], "{name}");
        ack[0].clone()
    };
    let wrong = give("a.txt", Some(&crate::wire::transfer::sha256_hex(b"other")));
    assert_eq!(wrong["success"], false);
    assert!(wrong["error"]
        .as_str()
        .is_some_and(|e| e.contains("sha256 does not match")));
    // The same file with its digest (any case), and one sent without a digest.
    assert_eq!(give("a.txt", Some(&sha.to_uppercase()))["success"], true);
    assert_eq!(give("b.txt", None)["success"], true);
    // A refusal for another reason is not hashed first (nor said to differ).
    let again = give("a.txt", Some("00"));
    assert!(again["error"]
        .as_str()
        .is_some_and(|e| e.contains("already received")));
    let kept: Vec<(&str, &str)> = sandbox
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.sha256.as_str()))
        .collect();
    assert_eq!(kept, [("a.txt", sha.as_str()), ("b.txt", sha.as_str())]);
}

#[test]
fn the_client_needs_a_pairing_that_grants_offload_and_runs_one_at_a_time() {
    let (mut user, ctl) = (Side::new(1), Side::new(2));
    let mut client = OffloadClient::default();
    let args = json!({"task": "t"});
    user.call(|p, cx| client.cloud_offload(p, cx, "a", &args, None));
    assert_eq!(
        text(&user.results()[0]),
        "❌ Not paired with any kars cluster. Use mesh_pair first."
    );
    let mut no_offload = pairing_with(&ctl);
    no_offload.capabilities = vec!["handoff".into()];
    user.call(|p, cx| client.cloud_offload(p, cx, "b", &args, Some(&no_offload)));
    assert!(text(&user.results()[0]).contains("does not grant the offload capability"));
    assert!(user.port.sent.is_empty());

    let pairing = pairing_with(&ctl);
    user.call(|p, cx| client.cloud_offload(p, cx, "c", &args, Some(&pairing)));
    assert_eq!(types(&user.take_sent_to(&ctl.did())), ["offload_request"]);
    assert!(user.port.timer_of(TimerOwner::OffloadDeadline).is_some());
    // The same task again is the same offload; another one waits its turn.
    user.call(|p, cx| client.cloud_offload(p, cx, "d", &args, Some(&pairing)));
    let results = user.results();
    let dup = text(&results[0]);
    assert!(
        dup.starts_with("⚠️  This task was already offloaded"),
        "{dup}"
    );
    // Still running, force=true would be refused: the answer says what works.
    assert!(
        dup.ends_with("It is still running: offload_status follows it, and offload_cancel stops it if the user wants it run again."),
        "{dup}"
    );
    let forced = json!({"task": "t", "force": true});
    user.call(|p, cx| client.cloud_offload(p, cx, "d2", &forced, Some(&pairing)));
    assert!(text(&user.results()[0]).starts_with("❌ Offload already in progress"));
    let other = json!({"task": "another"});
    user.call(|p, cx| client.cloud_offload(p, cx, "e", &other, Some(&pairing)));
    assert!(text(&user.results()[0]).starts_with("❌ Offload already in progress"));
    // The same task on an input file is another offload, not the running
    // one again (the original compared the task alone).
    let on_a_file = json!({"task": "t", "files": ["/data/other.txt"]});
    user.call(|p, cx| client.cloud_offload(p, cx, "f", &on_a_file, Some(&pairing)));
    assert!(text(&user.results()[0]).starts_with("❌ Offload already in progress"));
    assert!(user.port.sent.is_empty());
}

/// A duplicate asked after the offload was over and cleared gives how it
/// really ended: one cancelled after its task ran (the local `error`
/// phase, spec §7.6) used to read "Status: finished".
#[test]
fn a_duplicate_of_a_cancelled_offload_says_it_did_not_complete() {
    let (mut user, mut ctl, mut sb_side) = (Side::new(1), Side::new(2), Side::new(3));
    let (u, c, s) = (user.did(), ctl.did(), sb_side.did());
    let mut client = OffloadClient::default();
    let mut controller = controller(&mut ctl, &user, 1);
    let pairing = pairing_with(&ctl);
    let args = json!({"task": "Count   the words"});
    user.call(|p, cx| client.cloud_offload(p, cx, "a", &args, Some(&pairing)));
    let request = user.take_sent_to(&c);
    ctl.call(|p, cx| controller.on_message(p, cx, &u, request[0].clone()));
    let news = ctl.take_sent_to(&u);
    let (job, _, spec) = job_start(&ctl.out).expect("a sandbox is started");
    let spec: SandboxSpec = serde_json::from_str(&spec).expect("the spec is a SandboxSpec");
    let _sandbox = sb_side.call(|p, cx| Sandbox::start(spec, p, cx));
    let hello = sb_side.take_sent_to(&u);
    ctl.call(|p, cx| controller.job_ready(p, cx, job, &s));
    for m in news.iter().chain(&ctl.take_sent_to(&u)) {
        user.call(|p, cx| client.on_message(p, cx, &c, m.clone(), true));
    }
    user.call(|p, cx| client.on_message(p, cx, &s, hello[0].clone(), true));
    assert_eq!(types(&user.take_paced_to(&s)), ["offload_start"]);
    user.call(|p, cx| client.inputs_handed_over(p, cx));
    user.results();

    // The go-ahead left (the task ran): a cancel keeps the guard.
    user.call(|p, cx| client.offload_cancel(p, cx, "b"));
    assert!(text(&user.results()[0]).contains("cancelled"));
    assert_eq!(types(&user.take_sent_to(&c)), ["offload_cleanup"]);
    // Rendering the ended offload clears it.
    user.call(|p, cx| client.offload_status_tool(p, cx, "c", &json!({})));
    user.results();
    assert!(
        client.active.is_none(),
        "the status cleared the ended offload"
    );
    // The same task (normalised) within the window: its real status.
    let again = json!({"task": "count the words"});
    user.call(|p, cx| client.cloud_offload(p, cx, "d", &again, Some(&pairing)));
    let r = user.results();
    let dup = text(&r[0]);
    assert!(
        dup.starts_with("⚠️  This task was already offloaded"),
        "{dup}"
    );
    assert!(dup.contains("\nStatus: error\n"), "{dup}");
    assert!(dup.contains("It did not complete"), "{dup}");
    assert!(!dup.contains("finished"), "{dup}");
    assert_eq!(r[0]["details"]["mesh"]["phase"], "error", "{}", r[0]);
    // `ended` is part of the stored record, and one written before it
    // existed still reads (its duplicate says "ended").
    let stored = serde_json::to_value(&client.recent).expect("serialises");
    let back: super::client::Recent = serde_json::from_value(stored).expect("reads back");
    assert_eq!(back.ended.len(), 1);
    let old: super::client::Recent =
        serde_json::from_value(json!({"tasks": [["count the words", "r-old", 1]]}))
            .expect("reads an older record");
    assert!(old.ended.is_empty());
    // force=true (as models write it) runs it again.
    let forced = json!({"task": "count the words", "force": "True"});
    user.call(|p, cx| client.cloud_offload(p, cx, "e", &forced, Some(&pairing)));
    assert_eq!(types(&user.take_sent_to(&c)), ["offload_request"]);
}

/// A client paired with a kars controller, its offload submitted at
/// `now` = 100 s: the request went out in plaintext.
fn kars_client(user: &mut Side, ctl_did: &str) -> (OffloadClient, String) {
    let mut pairing = pairing_with(&Side::new(9));
    pairing.controller_did = ctl_did.to_string();
    pairing.dialect = crate::wire::token::Dialect::KarsPlaintext;
    user.host.now = 100_000;
    let mut client = OffloadClient::default();
    user.call(|port, cx| {
        let args = json!({"task": "count the words", "timeout_minutes": 5});
        client.cloud_offload(port, cx, "c-1", &args, Some(&pairing));
    });
    let (to, request) = user
        .port
        .plain
        .pop()
        .expect("the request went in plaintext");
    assert_eq!(
        (to.as_str(), request["type"].as_str()),
        (ctl_did, Some("offload_request"))
    );
    assert!(
        user.port.sent.is_empty(),
        "nothing end to end to the kars controller"
    );
    (
        client,
        request["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// The kars controller's plaintext `ready` naming `name`, then the
/// registry's answers: one holder, registered at `registered_at`.
fn kars_found(
    user: &mut Side,
    client: &mut OffloadClient,
    ctl: &str,
    rid: &str,
    registered_at: &str,
) -> String {
    let holder = Side::new(33).did();
    let ready = json!({"type": "offload_status", "request_id": rid, "phase": "ready", "message": "Sandbox is ready", "sandbox_name": format!("offload-{}", &rid[..8])});
    user.call(|port, cx| client.on_message(port, cx, ctl, ready, false));
    let (tag, path) = user.port.gets.pop().expect("the name is looked up");
    assert_eq!(
        path,
        format!("/v1/discover?capability=offload-{}&limit=5", &rid[..8])
    );
    let found = json!({"results": [{"did": holder, "capabilities": [format!("offload-{}", &rid[..8])]}], "total": 1});
    let body = found.to_string().into_bytes();
    user.call(|port, cx| client.on_lookup(port, cx, tag, (true, &body, "")));
    let (tag, path) = user.port.gets.pop().expect("its record is fetched");
    assert_eq!(path, format!("/v1/agents/{}", holder.replace(':', "%3A")));
    let body = json!({"did": holder, "registered_at": registered_at})
        .to_string()
        .into_bytes();
    user.call(|port, cx| client.on_lookup(port, cx, tag, (true, &body, "")));
    holder
}

#[test]
fn a_kars_sandbox_name_held_since_before_the_request_is_refused() {
    let mut user = Side::new(11);
    let ctl = Side::new(12).did();
    let (mut client, rid) = kars_client(&mut user, &ctl);
    // 100 s after the epoch is when we asked; this holder registered at 60 s.
    kars_found(
        &mut user,
        &mut client,
        &ctl,
        &rid,
        "1970-01-01T00:01:00.000000+00:00",
    );
    let o = client.active.as_ref().expect("the offload");
    assert_eq!(o.phase, Phase::Error);
    assert!(o
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("registered before this offload was requested"));
    assert_eq!(o.sandbox_did, None);
    assert!(
        user.port.sent.is_empty() && user.port.paced.is_empty(),
        "nothing went to it"
    );
    let (_, cleanup) = user.port.plain.pop().expect("the controller is told");
    assert_eq!(cleanup["type"], "offload_cleanup");
}

#[test]
fn a_found_kars_sandbox_is_on_probation_until_its_hello_names_the_request() {
    let mut user = Side::new(11);
    let ctl = Side::new(12).did();
    let (mut client, rid) = kars_client(&mut user, &ctl);
    // Python's isoformat() without an offset is UTC.
    let holder = kars_found(&mut user, &mut client, &ctl, &rid, "1970-01-01T00:01:50.5");
    let o = client.active.as_ref().expect("the offload");
    assert_eq!((o.phase, o.sandbox_unconfirmed), (Phase::Connecting, true));
    assert_eq!(o.sandbox_did.as_deref(), Some(holder.as_str()));
    // Before its hello names our request, its news moves nothing.
    for early in [
        json!({"type": "offload_done", "request_id": rid, "summary": "fake"}),
        json!({"type": "offload_hello", "request_id": "someone-else"}),
        json!({"type": "offload_progress", "request_id": rid, "pct": 50}),
    ] {
        user.call(|port, cx| client.on_message(port, cx, &holder, early, true));
    }
    let o = client.active.as_ref().expect("the offload");
    assert_eq!(o.phase, Phase::Connecting);
    let hello = json!({"type": "offload_hello", "request_id": rid, "from_agent": "offload-x"});
    user.call(|port, cx| client.on_message(port, cx, &holder, hello, true));
    let o = client.active.as_ref().expect("the offload");
    assert_eq!(
        (o.phase, o.sandbox_unconfirmed),
        (Phase::Acknowledged, false)
    );
    assert!(client.recent.sandboxes.contains(&holder));
    // Confirmed now: its report on the run (a percentage it made up, shown
    // as its words) says the task runs.
    let progress = json!({"type": "offload_progress", "request_id": rid, "stage": "executing",
        "message": "Working on the task", "pct": 10});
    user.call(|port, cx| client.on_message(port, cx, &holder, progress, true));
    let o = client.active.as_ref().expect("the offload");
    assert_eq!(o.phase, Phase::Running);
    assert_eq!(
        o.events.last().map(|e| e.text.as_str()),
        Some("task running in the sandbox, 10% (sandbox: executing — Working on the task)")
    );
}

/// A client and an `exec` sandbox with the offload running: the sandbox has
/// its go-ahead and has started the operator's command (the job spec is
/// returned).
fn running_exec_offload(
    user: &mut Side,
    ctl: &mut Side,
    sb_side: &mut Side,
) -> (OffloadClient, Sandbox, u64, Value) {
    let (u, c, s) = (user.did(), ctl.did(), sb_side.did());
    let mut client = OffloadClient::default();
    let pairing = pairing_with(ctl);
    let args = json!({"task": "make outputs"});
    user.call(|p, cx| client.cloud_offload(p, cx, "call-1", &args, Some(&pairing)));
    let rid = user.take_sent_to(&c)[0]["request_id"].clone();
    let spec = SandboxSpec {
        name: "offload-0123456789abcdef".into(),
        requester: u.clone(),
        request_id: rid.as_str().unwrap_or_default().into(),
        task: "make outputs".into(),
        files: Vec::new(),
        timeout_minutes: 5,
        model: None,
        executor: Some("exec".into()),
        progress_ms: None,
    };
    let mut sandbox = sb_side.call(|p, cx| Sandbox::start(spec, p, cx));
    let hello = sb_side.take_sent_to(&u);
    let ready = json!({"type": "offload_status", "request_id": rid, "phase": "ready",
        "message": "up", "sandbox_name": "offload-0123456789abcdef", "sandbox_did": s});
    user.call(|p, cx| client.on_message(p, cx, &c, ready.clone(), true));
    user.call(|p, cx| client.on_message(p, cx, &s, hello[0].clone(), true));
    let go = user.take_paced_to(&s);
    user.call(|p, cx| client.inputs_handed_over(p, cx));
    sb_side.call(|p, cx| sandbox.on_message(p, cx, &u, go[0].clone()));
    let (job, kind, spec) = job_start(&sb_side.out).expect("the command is started");
    assert_eq!(kind, "exec");
    let spec: Value = serde_json::from_str(&spec).expect("a JSON job spec");
    (client, sandbox, job, spec)
}

#[test]
fn outputs_that_cannot_be_sent_are_named_in_done_and_in_the_final_status() {
    use crate::wire::limits::MAX_FILE_BYTES;
    let (mut user, mut ctl, mut sb_side) = (Side::new(1), Side::new(2), Side::new(3));
    let (u, s) = (user.did(), sb_side.did());
    let (mut client, mut sandbox, job, spec) =
        running_exec_offload(&mut user, &mut ctl, &mut sb_side);
    // The host leaves out what the core would refuse, by the core's numbers.
    assert_eq!(spec["max_outputs"], 10);
    assert_eq!(spec["max_output_bytes"], MAX_FILE_BYTES);

    // The largest file goes; one byte more, an unusable name and what the
    // host left out are named, each with why.
    let exit = JobExit {
        id: job,
        code: 0,
        outputs: vec![
            ("largest.bin".into(), vec![1u8; MAX_FILE_BYTES]),
            ("one-more.bin".into(), vec![2u8; MAX_FILE_BYTES + 1]),
            ("..".into(), b"x".to_vec()),
        ],
        refused: vec![("huge.iso".into(), "not a regular file".into())],
        log: "made the outputs".into(),
    };
    assert!(sb_side.call(|p, cx| sandbox.job_exited(p, cx, exit)));
    let back = sb_side.take_paced_chunked_to(&u);
    let done = back.last().cloned().expect("offload_done");
    assert_eq!(done["type"], "offload_done");
    assert_eq!(done["output_files"], json!(["largest.bin"]));
    let names: Vec<&str> = done["not_returned"]
        .as_array()
        .expect("not_returned")
        .iter()
        .map(|x| x["name"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(names, ["one-more.bin", "..", "huge.iso"]);
    assert!(done["not_returned"][0]["reason"]
        .as_str()
        .is_some_and(|r| r.starts_with("31454209 bytes; a file can be at most 31,454,208 bytes")));
    assert!(done["summary"].as_str().is_some_and(|t| t.ends_with(
        "(not returned: 3 file(s): one-more.bin, .., huge.iso; offload_status says why)"
    )));

    // The client reassembles the largest file and lists the rest, in the
    // events and in the final snapshot.
    for m in &back {
        user.call(|p, cx| client.on_message(p, cx, &s, m.clone(), true));
    }
    let o = client.active.as_ref().expect("the offload is kept");
    assert_eq!(o.phase, Phase::Done);
    assert_eq!(o.outputs[0].size, MAX_FILE_BYTES as u64);
    let last = &o.events.last().expect("events").text;
    assert!(
        last.starts_with("finished with 1 output file(s); 3 not returned (sandbox: one-more.bin (31454209 bytes): 31454209 bytes; a file can be at most"),
        "{last}"
    );
    user.call(|p, cx| client.offload_status_tool(p, cx, "st", &json!({})));
    let shown = text(&user.results()[0]).to_string();
    assert!(shown.contains("Output files NOT returned:\n  one-more.bin (31454209 bytes): 31454209 bytes; a file can be at most 31,454,208 bytes (30 MiB less 3 KiB)"), "{shown}");
    assert!(
        shown.contains("\n  .. (1 bytes): unusable file name"),
        "{shown}"
    );
    assert!(
        shown.contains("\n  huge.iso: not a regular file"),
        "{shown}"
    );
    assert_eq!(
        user.results()[0]["details"]["mesh"]["not_returned"][2]["name"],
        "huge.iso"
    );
}

#[test]
fn an_output_the_client_refuses_is_an_event_and_listed_at_the_end() {
    let (mut user, mut ctl, mut sb_side) = (Side::new(1), Side::new(2), Side::new(3));
    let s = sb_side.did();
    let (mut client, _sandbox, _job, _spec) =
        running_exec_offload(&mut user, &mut ctl, &mut sb_side);
    let rid = client.active.as_ref().map(|o| o.request_id.clone());
    let bad = json!({"type": "file_transfer", "request_id": rid, "file_name": "x.bin",
        "file_data": "not base64!", "size_bytes": 9});
    user.call(|p, cx| client.on_message(p, cx, &s, bad.clone(), true));
    let ack = user.take_sent_to(&s);
    assert_eq!(ack[0]["success"], false);
    let o = client.active.as_ref().expect("active");
    assert_eq!(
        o.events.last().map(|e| e.text.as_str()),
        Some("not received: x.bin (9 bytes): file_data is not base64")
    );
    assert_eq!(o.not_returned.len(), 1);
}

#[test]
fn cloud_offload_refuses_a_file_one_byte_over_the_limit_before_anything_starts() {
    use crate::wire::limits::MAX_FILE_BYTES;
    let (mut user, ctl) = (Side::new(1), Side::new(2));
    let pairing = pairing_with(&ctl);
    let read_of = |out: &[Command]| {
        out.iter().find_map(|c| match c {
            Command::FileRead { id, max_bytes, .. } => Some((*id, *max_bytes)),
            _ => None,
        })
    };
    // One byte more than the limit: the host's bounded read says so.
    let mut client = OffloadClient::default();
    let args = json!({"task": "t", "files": ["/data/big.bin"]});
    user.call(|p, cx| client.cloud_offload(p, cx, "a", &args, Some(&pairing)));
    let (id, max) = read_of(&user.out).expect("the file is read");
    assert_eq!(max, MAX_FILE_BYTES as u64);
    let over = format!("too large: {}", MAX_FILE_BYTES + 1);
    user.call(|p, cx| client.offload_file(p, cx, id, Err(over)));
    assert_eq!(
        text(&user.results()[0]),
        "❌ File too large: /data/big.bin (31454209 bytes; a file can be at most 31,454,208 bytes (30 MiB less 3 KiB), what fits in 80 chunks of 512 KiB once base64-encoded). Nothing was started: compress the file or split it into parts, then call cloud_offload again."
    );
    assert!(user.port.sent.is_empty() && client.active.is_none());

    // The largest file is taken. It is hashed a slice per engine call
    // (a timer due at once each time), so a tool call or a message that
    // comes meanwhile waits for one slice, not for the whole file; the
    // answer comes with the last slice.
    user.call(|p, cx| client.cloud_offload(p, cx, "b", &args, Some(&pairing)));
    let (id, _) = read_of(&user.out).expect("the file is read");
    let big: Vec<u8> = (0..MAX_FILE_BYTES).map(|i| (i % 253) as u8).collect();
    let sha = crate::wire::transfer::sha256_hex(&big);
    user.call(|p, cx| client.offload_file(p, cx, id, Ok(big)));
    let mut slices = 0;
    while let Some(t) = user.port.timer_of(TimerOwner::OffloadHash) {
        assert!(
            user.results().is_empty(),
            "answered before the file was hashed"
        );
        user.port.cancelled.push(t);
        user.call(|p, cx| client.hash_due(p, cx, t));
        slices += 1;
    }
    assert_eq!(slices, MAX_FILE_BYTES.div_ceil(super::client::HASH_SLICE));
    assert!(text(&user.results()[0]).starts_with("☁️ Offload submitted"));
    let o = client.active.as_ref().expect("active");
    assert_eq!(o.files[0].sha256, sha, "the hash of the whole file");
    assert_eq!(o.files[0].size, MAX_FILE_BYTES as u64);

    // A name and sender too long to fit beside the data are refused too.
    let mut client = OffloadClient {
        name: Some("n".repeat(4000)),
        ..Default::default()
    };
    let args = json!({"task": "u", "files": ["/data/small.txt"]});
    user.call(|p, cx| client.cloud_offload(p, cx, "c", &args, Some(&pairing)));
    let (id, _) = read_of(&user.out).expect("the file is read");
    user.call(|p, cx| client.offload_file(p, cx, id, Ok(b"hi".to_vec())));
    let t = text(&user.results()[0]).to_string();
    assert!(
        t.starts_with("❌ File too large: /data/small.txt (its name and sender take "),
        "{t}"
    );
    assert!(
        t.ends_with("or this agent a shorter display name), then call cloud_offload again."),
        "{t}"
    );
}

/// What the sandbox sent `to` since the last look: its `offload_progress`
/// messages.
fn progress_to(side: &mut Side, to: &str) -> Vec<Value> {
    side.take_sent_to(to)
        .into_iter()
        .filter(|m| m["type"] == "offload_progress")
        .collect()
}

#[test]
fn the_sandbox_reports_a_percentage_only_when_its_command_gave_one() {
    let (mut user, mut ctl, mut sb_side) = (Side::new(1), Side::new(2), Side::new(3));
    let (u, s) = (user.did(), sb_side.did());
    let (mut client, mut sandbox, job, _spec) =
        running_exec_offload(&mut user, &mut ctl, &mut sb_side);
    // The start: the sandbox's word that the task runs, no percentage.
    let started = progress_to(&mut sb_side, &u);
    assert_eq!(started.len(), 1);
    assert!(started[0].get("pct").is_none());
    user.call(|p, cx| client.on_message(p, cx, &s, started[0].clone(), true));
    assert_eq!(
        client.active.as_ref().map(|o| o.phase),
        Some(Phase::Running)
    );

    // The heartbeat says for how long, without a percentage.
    sb_side.host.now = 20_000;
    sb_side.call(|p, cx| sandbox.progress_due(p, cx));
    let beat = progress_to(&mut sb_side, &u);
    assert_eq!(
        beat[0]["message"],
        "running for 20 s; the executor has reported no progress"
    );
    assert!(beat[0].get("pct").is_none(), "{}", beat[0]);
    user.call(|p, cx| client.on_message(p, cx, &s, beat[0].clone(), true));
    let e = client
        .active
        .as_ref()
        .and_then(|o| o.events.last())
        .cloned();
    let e = e.expect("an event");
    assert_eq!(
        e.text,
        "sandbox: executing — running for 20 s; the executor has reported no progress"
    );
    assert_eq!(e.progress.and_then(|p| p.pct), None);

    // The command reports 42 % within a second of that: it waits for the
    // second to pass (the timer is moved up), then goes with its words.
    sb_side.host.now = 20_400;
    assert!(sb_side.call(|p, cx| sandbox.job_progress(p, cx, job, "42 indexing the inputs")));
    assert!(progress_to(&mut sb_side, &u).is_empty());
    let t = sb_side.port.timer_of(TimerOwner::SandboxProgress);
    let at = sb_side
        .port
        .timers
        .iter()
        .find(|x| Some(x.0) == t)
        .map(|x| x.2);
    assert_eq!(at, Some(21_000));
    // A newer report in the meantime replaces it.
    sb_side.host.now = 20_700;
    assert!(sb_side.call(|p, cx| sandbox.job_progress(p, cx, job, "43.9 indexing more")));
    sb_side.host.now = 21_000;
    sb_side.call(|p, cx| sandbox.progress_due(p, cx));
    let r = progress_to(&mut sb_side, &u);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["pct"], 43);
    assert_eq!(r[0]["message"], "indexing more (running for 21 s)");
    user.call(|p, cx| client.on_message(p, cx, &s, r[0].clone(), true));
    let e = client
        .active
        .as_ref()
        .and_then(|o| o.events.last())
        .cloned();
    let e = e.expect("an event");
    assert_eq!(
        e.text,
        "43% (sandbox: executing — indexing more (running for 21 s))"
    );
    assert_eq!(e.progress.and_then(|p| p.pct), Some(43));
    assert_eq!(
        client.active.as_ref().map(|o| o.phase),
        Some(Phase::Running)
    );

    // Later than a second after: at once. A bad line or another job's
    // changes nothing.
    sb_side.host.now = 30_000;
    assert!(sb_side.call(|p, cx| sandbox.job_progress(p, cx, job, "50")));
    let r = progress_to(&mut sb_side, &u);
    assert_eq!(
        (r[0]["pct"].as_u64(), r[0]["message"].as_str()),
        (Some(50), Some("running for 30 s"))
    );
    sb_side.host.now = 40_000;
    assert!(sb_side.call(|p, cx| sandbox.job_progress(p, cx, job, "lots done")));
    assert!(!sb_side.call(|p, cx| sandbox.job_progress(p, cx, job + 1, "60")));
    assert!(progress_to(&mut sb_side, &u).is_empty());
    // The last report stands in the heartbeat.
    sb_side.call(|p, cx| sandbox.progress_due(p, cx));
    assert_eq!(progress_to(&mut sb_side, &u)[0]["pct"], 50);

    // A report still waiting when the command ends goes before the outputs.
    sb_side.host.now = 40_300;
    assert!(sb_side.call(|p, cx| sandbox.job_progress(p, cx, job, "90 almost there")));
    assert!(progress_to(&mut sb_side, &u).is_empty());
    let exit = JobExit {
        id: job,
        code: 0,
        outputs: Vec::new(),
        refused: Vec::new(),
        log: "ok".into(),
    };
    assert!(sb_side.call(|p, cx| sandbox.job_exited(p, cx, exit)));
    let r = progress_to(&mut sb_side, &u);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["pct"], 90);
    assert_eq!(types(&sb_side.take_paced_to(&u)), ["offload_done"]);
}

#[test]
fn the_sandbox_waits_without_a_percentage_before_the_task_runs() {
    let (user, mut sb_side) = (Side::new(1), Side::new(3));
    let u = user.did();
    let spec = SandboxSpec {
        name: "offload-0123456789abcdef".into(),
        requester: u.clone(),
        request_id: "r".repeat(36),
        task: "t".into(),
        files: vec!["a.txt".into()],
        timeout_minutes: 5,
        model: None,
        executor: None,
        progress_ms: None,
    };
    let mut sandbox = sb_side.call(|p, cx| Sandbox::start(spec, p, cx));
    sb_side.host.now = 20_000;
    sb_side.call(|p, cx| sandbox.progress_due(p, cx));
    let beat = progress_to(&mut sb_side, &u);
    assert_eq!(beat[0]["stage"], "waiting");
    assert_eq!(beat[0]["message"], "waiting for input files (0/1)");
    assert!(beat[0].get("pct").is_none());
}

#[test]
fn inputs_report_what_the_sandbox_receipted_and_the_task_runs_only_when_it_says_so() {
    use crate::offload::progress::{Count, TransferNews};
    let (mut user, ctl, sb_side) = (Side::new(1), Side::new(2), Side::new(3));
    let (c, s) = (ctl.did(), sb_side.did());
    let pairing = pairing_with(&ctl);
    let mut client = OffloadClient::default();
    let args = json!({"task": "crunch", "files": ["/data/in.bin"]});
    user.call(|p, cx| client.cloud_offload(p, cx, "call-1", &args, Some(&pairing)));
    let id = user
        .out
        .iter()
        .find_map(|c| match c {
            Command::FileRead { id, .. } => Some(*id),
            _ => None,
        })
        .expect("the input is read");
    const MIB: u64 = 1024 * 1024;
    let size = 3 * MIB;
    user.call(|p, cx| client.offload_file(p, cx, id, Ok(vec![7u8; size as usize])));
    let rid = user.take_sent_to(&c)[0]["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ready = json!({"type": "offload_status", "request_id": rid, "phase": "ready",
        "message": "up", "sandbox_name": "offload-0123456789abcdef", "sandbox_did": s});
    user.call(|p, cx| client.on_message(p, cx, &c, ready, true));
    let hello = json!({"type": "offload_hello", "request_id": rid});
    user.call(|p, cx| client.on_message(p, cx, &s, hello, true));
    assert_eq!(
        types(&user.take_paced_to(&s)),
        ["file_transfer", "offload_start"]
    );

    // The pacer follows the file (8 chunks here) and hands over the go-ahead:
    // nothing is said yet, and nothing runs.
    let tid = format!("{}-in-0", &rid[..8]);
    let news = |done: u64| TransferNews {
        to: s.clone(),
        transfer_id: tid.clone(),
        count: Count {
            parts_done: done,
            parts_total: 8,
            text_done: done * 512 * 1024,
            text_total: 8 * 512 * 1024,
        },
    };
    let events = |client: &OffloadClient| client.active.as_ref().map_or(0, |o| o.events_total);
    user.call(|p, cx| client.transfer_news(p, cx, vec![news(0)]));
    user.call(|p, cx| client.inputs_handed_over(p, cx));
    let before = events(&client);
    // Receipts, 300 ms apart: a tenth and a second between reports.
    for done in 1..=8 {
        user.host.now = done * 300;
        user.call(|p, cx| client.transfer_news(p, cx, vec![news(done)]));
    }
    let o = client.active.as_ref().expect("active");
    assert_eq!(
        o.phase,
        Phase::Acknowledged,
        "the sandbox has not said it runs"
    );
    let shown: Vec<&str> = o.events[before..].iter().map(|e| e.text.as_str()).collect();
    assert_eq!(
        shown,
        [
            "input in.bin: 0.4 of 3.0 MiB (1 of 8 chunks acknowledged)",
            "input in.bin: 1.9 of 3.0 MiB (5 of 8 chunks acknowledged)",
            "input in.bin: 3.0 of 3.0 MiB (8 of 8 chunks acknowledged)",
        ]
    );
    let last = o
        .events
        .last()
        .and_then(|e| e.progress.clone())
        .expect("numbers");
    assert_eq!(
        (last.bytes_done, last.bytes_total),
        (Some(size), Some(size))
    );
    assert_eq!(
        (last.chunks_done, last.chunks_total, last.pct),
        (Some(8), Some(8), None)
    );
    // A finished file reports nothing more.
    let n = events(&client);
    user.call(|p, cx| client.transfer_news(p, cx, vec![news(8)]));
    assert_eq!(events(&client), n);

    // The hook's line for the progress coalesces with the next news.
    let notes = client
        .active
        .as_ref()
        .map(|o| o.notes.clone())
        .unwrap_or_default();
    assert!(
        notes
            .last()
            .is_some_and(|l| l.ends_with("(8 of 8 chunks acknowledged)")),
        "{notes:?}"
    );

    // A sandbox that waits does not run.
    let waiting = json!({"type": "offload_progress", "request_id": rid, "stage": "waiting",
        "message": "waiting for the requester's go-ahead"});
    user.call(|p, cx| client.on_message(p, cx, &s, waiting, true));
    let o = client.active.as_ref().expect("active");
    assert_eq!(o.phase, Phase::Acknowledged);
    let e = o.events.last().expect("an event");
    assert_eq!(
        e.text,
        "sandbox: waiting — waiting for the requester's go-ahead"
    );
    assert_eq!(
        e.progress.as_ref().map(|p| p.kind),
        Some(crate::offload::progress::ProgressKind::Wait)
    );

    // The sandbox's word: now it runs.
    let started = json!({"type": "offload_progress", "request_id": rid, "stage": "executing",
        "message": "task started with 1 input file(s), 3145728 bytes"});
    user.call(|p, cx| client.on_message(p, cx, &s, started, true));
    let o = client.active.as_ref().expect("active");
    assert_eq!(o.phase, Phase::Running);
    assert!(
        o.events.last().is_some_and(
            |e| e.text.starts_with("task running in the sandbox") && e.progress.is_none()
        )
    );
}

#[test]
fn refused_arguments_say_so_to_the_host() {
    // A host (the CLI's exit code) must tell "called wrong" from a network
    // failure it saw meanwhile: refusals of the arguments carry bad_input.
    let (mut user, ctl) = (Side::new(1), Side::new(2));
    let pairing = pairing_with(&ctl);
    let mut client = OffloadClient::default();
    user.call(|p, cx| client.cloud_offload(p, cx, "a", &json!({}), Some(&pairing)));
    let r = user.results();
    assert!(text(&r[0]).starts_with("❌ "), "{}", r[0]);
    assert_eq!(r[0]["details"]["mesh"]["bad_input"], true, "{}", r[0]);
    user.call(|p, cx| client.offload_status_tool(p, cx, "b", &json!({"wait_seconds": 601})));
    let r = user.results();
    assert!(
        text(&r[0]).starts_with("❌ offload_status: `wait_seconds`"),
        "{}",
        r[0]
    );
    assert_eq!(r[0]["details"]["mesh"]["bad_input"], true, "{}", r[0]);
    assert!(user.port.sent.is_empty() && client.active.is_none());
}

#[test]
fn the_duplicate_guard_compares_the_task_as_the_original_and_the_input_files_in_any_order() {
    use super::client::{guard_key, same_offload};
    let key = |t: &str, f: &[&str]| guard_key(t, f.iter().copied());
    let recorded = key("Summarise  the\nNotes", &["/a", "/b"]);
    let same = |asked: String| same_offload(&asked, &recorded);
    assert!(same(key("summarise the notes", &["/b", " /a"])));
    // Other files: another offload. None named: the same task asked again.
    assert!(!same(key("summarise the notes", &["/c"])));
    assert!(!same(key("summarise the notes", &["/a"])));
    assert!(same(key("summarise the notes", &[])));
    assert!(!same(key("summarise other notes", &[])));
    // Without files the key is the original's (guards saved before still
    // match); a call with files is not one recorded without.
    assert_eq!(key("  Count   it ", &[]), "count it");
    assert!(!same_offload(&key("count it", &["/x"]), "count it"));
}

/// A walk-through read "offload_request sent to the controller" and "The
/// cloud sandbox is working on it" with the cluster's relay down: the
/// request only waited in the outbox. Said as waiting, with why; it still
/// goes (the outbox sends it when the link is back).
#[test]
fn a_request_made_while_the_relay_is_down_is_said_to_wait_not_sent() {
    let (mut user, ctl) = (Side::new(1), Side::new(2));
    let c = ctl.did();
    let mut client = OffloadClient::default();
    let pairing = pairing_with(&ctl);
    user.port.trouble =
        Some("the relay is not reachable (connect ECONNREFUSED 127.0.0.1:18083)".into());
    let args = json!({"task": "summarise the week"});
    user.call(|p, cx| client.cloud_offload(p, cx, "call-1", &args, Some(&pairing)));
    let result = &user.results()[0];
    let said = text(result);
    assert!(said.starts_with("☁️ Offload submitted"), "{said}");
    assert!(
        said.contains("⚠️ Not sent yet: the relay is not reachable (connect ECONNREFUSED 127.0.0.1:18083). The request goes out when the link is back"),
        "{said}"
    );
    assert!(!said.contains("is working on it"), "{said}");
    assert_eq!(
        result["details"]["mesh"]["queued_because"],
        "the relay is not reachable (connect ECONNREFUSED 127.0.0.1:18083)"
    );
    let events = &client.active.as_ref().unwrap().events;
    assert!(events[0]
        .text
        .starts_with("offload_request waits to go to the controller: the relay is not reachable"));
    // Handed to the outbox all the same.
    assert_eq!(types(&user.take_sent_to(&c)), ["offload_request"]);
}
