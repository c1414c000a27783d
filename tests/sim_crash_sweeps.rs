//! Crash sweeps: one small two-agent scenario run again and again with a
//! crash after exactly k commands of one handle() call, for every k, at the
//! sender's mesh_send, session setup and receipt handling and at the
//! receiver's KNOCK, first message, any message and mesh_inbox, and at a
//! mesh_send whose stored session still owes the sending half of a ratchet
//! step (src/crypto/ratchet.rs). Every crash point must keep delivery
//! exactly-once and in order.
//! Virtual clock, seeded; the harness is in tests/sim/.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "sim/mod.rs"]
mod sim;

use serde_json::json;
use sim::scenario::{check_flow, common_checks, drain, world_with, Flow, JOURNAL};
use sim::world::{CrashOn, CrashPlan, Prefix, World};

// --------------------------------------------------------------- crash sweeps

/// Where a sweep crashes, and who.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// Alice handling her own mesh_send (existing session).
    SenderSend,
    /// Bob handling the incoming message frame.
    ReceiverMessage,
    /// Alice handling bob's receipt.
    SenderReceipt,
    /// Bob answering mesh_inbox.
    ReceiverInbox,
    /// Alice handling the registry answer that opens the first session (her
    /// peer's bundle or registration, whichever came last: both are asked
    /// for at once).
    SenderFirstHttp,
    /// Bob handling the first KNOCK.
    ReceiverKnock,
    /// Bob handling the first message of a new session.
    ReceiverFirstMessage,
    /// Bob handling his own mesh_send while his stored session record owes
    /// the sending half of a ratchet step: alice's receipt came under her
    /// new key, and idle time took the step in memory only (see
    /// `the_owing_sweep_starts_from_a_stored_owed_step`).
    ReceiverSendOwingStep,
}

/// Phase 1 of every sweep: open the session, learn that both are kars peers,
/// read both inboxes. It leaves bob's stored record owing a ratchet step.
fn open_session(w: &mut World, ab: &mut Flow, ba: &mut Flow, a: usize, b: usize) {
    ab.send_next(w);
    w.run_for(3_000);
    ba.send_next(w);
    w.run_for(3_000);
    for i in [a, b] {
        if w.agents[i].up() {
            w.call(i, "mesh_inbox", json!({"limit": 500, "mark_read": true}));
        }
    }
    w.run_for(2_000);
}

/// One run of the sweep scenario with a crash after exactly `k` commands of
/// the target handle() call. Returns problems, or `None` when `k` is past
/// the number of commands of that call (end of the sweep).
fn sweep_run(seed: u64, target: Target, k: usize) -> Option<(Vec<String>, String)> {
    let (mut w, ids) = world_with(seed, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let mut ab = Flow::new(&w, a, b);
    let mut ba = Flow::new(&w, b, a);
    let plan = |on| CrashPlan {
        not_before: 0,
        on,
        prefix: Prefix::Exactly(k),
        restart_after_ms: 1_500,
    };
    let who = match target {
        Target::SenderSend | Target::SenderReceipt | Target::SenderFirstHttp => a,
        _ => b,
    };
    let early = match target {
        Target::SenderFirstHttp => Some(CrashOn::HttpSending("knock")),
        Target::ReceiverKnock => Some(CrashOn::Frame("knock")),
        Target::ReceiverFirstMessage => Some(CrashOn::Frame("message")),
        _ => None,
    };
    if let Some(on) = early {
        w.plan_crash(who, plan(on));
    }
    open_session(&mut w, &mut ab, &mut ba, a, b);
    // Phase 2: the targeted call.
    let late = match target {
        Target::SenderSend | Target::ReceiverSendOwingStep => Some(CrashOn::Tool("mesh_send")),
        Target::ReceiverMessage | Target::SenderReceipt => Some(CrashOn::Frame("message")),
        Target::ReceiverInbox => Some(CrashOn::Tool("mesh_inbox")),
        _ => None,
    };
    if let Some(on) = late {
        w.plan_crash(who, plan(on));
    }
    if target == Target::ReceiverSendOwingStep {
        // Bob's send comes first, so the step his record owes is still owed.
        ba.send_next(&mut w);
        w.run_for(3_000);
        w.call(a, "mesh_inbox", json!({"limit": 500, "mark_read": true}));
        w.run_for(3_000);
    }
    ab.send_next(&mut w);
    w.run_for(3_000);
    w.call(b, "mesh_inbox", json!({"limit": 500, "mark_read": true}));
    w.run_for(3_000);
    // Phase 3: more traffic both ways, then heal.
    ab.send_next(&mut w);
    ba.send_next(&mut w);
    w.run_for(120_000);
    let rec = w.agents[who].crashes.first().cloned();
    if rec.as_ref().is_none_or(|r| r.skipped) {
        return None;
    }
    drain(&mut w, a);
    drain(&mut w, b);
    if let Some(j) = &w.journal {
        eprintln!("{}", j.join("\n"));
        for i in [a, b] {
            for e in w.persisted_inbox(i) {
                eprintln!(
                    "{} inbox: id={} seq={} n={} read={} held={} {}",
                    w.agents[i].name,
                    e["id"],
                    e["seq"],
                    e["n"],
                    e["read"],
                    e["held"],
                    e["payload"]["content"]
                );
            }
        }
    }
    let mut problems = Vec::new();
    check_flow(&w, &ab, &mut problems);
    check_flow(&w, &ba, &mut problems);
    common_checks(&w, &mut problems);
    let rec = rec.unwrap();
    // A crash after `mesh_inbox` handed its answer to the caller but before
    // the read marks were stored cannot be exactly-once: the answer has left
    // the process. The engine chooses to show such messages again (the
    // alternative is losing them), so a repeat - and only a repeat - is
    // expected there. Loss and reordering are still failures.
    if target == Target::ReceiverInbox
        && !rec.lost.is_empty()
        && rec.lost.iter().all(|l| l.starts_with("store inbox/"))
    {
        problems.retain(|p| {
            !p.contains("returned messages more than once")
                && !p.contains("across mesh_inbox answers")
        });
    }
    let point = format!(
        "{target:?}: crash of {} on {} after {}/{} commands (lost: {:?})",
        w.agents[who].name, rec.on, rec.applied, rec.total, rec.lost
    );
    Some((problems, point))
}

/// Crash points one sweep may take; a sweep that has more fails instead of
/// stopping quietly short.
const MAX_POINTS: usize = 64;

fn sweep(target: Target) {
    let seed = 77;
    let mut failures = Vec::new();
    let mut points = 0;
    let mut swept_all = false;
    for k in 0..MAX_POINTS {
        let Some((problems, point)) = sweep_run(seed, target, k) else {
            swept_all = true;
            break;
        };
        points += 1;
        if !problems.is_empty() {
            failures.push(format!("{point}\n      {}", problems.join("\n      ")));
        }
    }
    assert!(points > 1, "{target:?}: the crash point was never reached");
    assert!(
        swept_all,
        "{target:?}: more than {MAX_POINTS} crash points; raise MAX_POINTS so the sweep covers every one"
    );
    assert!(
        failures.is_empty(),
        "{target:?} (seed {seed}): {} of {points} crash points break exactly-once delivery:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Crash alice at every command boundary of her mesh_send.
#[test]
fn crash_sweep_sender_mesh_send() {
    sweep(Target::SenderSend);
}

/// Crash bob at every command boundary of handling an incoming message.
#[test]
fn crash_sweep_receiver_message() {
    sweep(Target::ReceiverMessage);
}

/// Crash alice at every command boundary of handling bob's receipt.
#[test]
fn crash_sweep_sender_receipt() {
    sweep(Target::SenderReceipt);
}

/// Crash bob at every command boundary of answering mesh_inbox.
#[test]
fn crash_sweep_receiver_mesh_inbox() {
    sweep(Target::ReceiverInbox);
}

/// Crash alice at every command boundary of her first registry answer
/// while she opens the session.
#[test]
fn crash_sweep_sender_session_setup() {
    sweep(Target::SenderFirstHttp);
}

/// Crash bob at every command boundary of handling the first KNOCK.
#[test]
fn crash_sweep_receiver_knock() {
    sweep(Target::ReceiverKnock);
}

/// Crash bob at every command boundary of the first message of a session.
#[test]
fn crash_sweep_receiver_first_message() {
    sweep(Target::ReceiverFirstMessage);
}

/// Crash bob at every command boundary of a mesh_send that takes the
/// sending half of a ratchet step his stored session record owes.
#[test]
fn crash_sweep_sender_owing_a_ratchet_step() {
    sweep(Target::ReceiverSendOwingStep);
}

/// The premise of the sweep above: after phase 1, bob's stored record owes
/// a step (a restart brings it back owed), and his send takes it.
#[test]
fn the_owing_sweep_starts_from_a_stored_owed_step() {
    let (mut w, ids) = world_with(77, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let mut ab = Flow::new(&w, a, b);
    let mut ba = Flow::new(&w, b, a);
    open_session(&mut w, &mut ab, &mut ba, a, b);
    let ad = w.did(a);
    let owes = |w: &World| {
        let e = w.agents[b].engine.as_ref().and_then(|e| e.agent());
        e.map(|ag| ag.owes_ratchet_step(&ad))
    };
    assert_eq!(owes(&w), Some(false), "idle time took the step in memory");
    w.crash_now(b, 1_000);
    w.run_for(2_000);
    assert_eq!(owes(&w), Some(true), "the stored record owes it");
    ba.send_next(&mut w);
    w.run_for(3_000);
    assert_eq!(owes(&w), Some(false), "the send took it");
    drain(&mut w, a);
    drain(&mut w, b);
    let mut problems = Vec::new();
    check_flow(&w, &ab, &mut problems);
    check_flow(&w, &ba, &mut problems);
    common_checks(&w, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
}

/// Diagnosis aid, not a check: `SIM_SWEEP=ReceiverMessage:1 cargo test --test
/// sim_crash_sweeps debug_sweep -- --ignored --nocapture` prints the journal of
/// one sweep run.
#[test]
#[ignore = "diagnosis tool; run by hand"]
fn debug_sweep() {
    let spec = std::env::var("SIM_SWEEP").unwrap_or_else(|_| "ReceiverMessage:1".into());
    let (t, k) = spec.split_once(':').unwrap();
    let target = match t {
        "SenderSend" => Target::SenderSend,
        "ReceiverMessage" => Target::ReceiverMessage,
        "SenderReceipt" => Target::SenderReceipt,
        "ReceiverInbox" => Target::ReceiverInbox,
        "SenderFirstHttp" => Target::SenderFirstHttp,
        "ReceiverKnock" => Target::ReceiverKnock,
        "ReceiverSendOwingStep" => Target::ReceiverSendOwingStep,
        _ => Target::ReceiverFirstMessage,
    };
    JOURNAL.with(|j| j.set(true));
    let r = sweep_run(77, target, k.parse().unwrap());
    eprintln!("{r:?}");
}
