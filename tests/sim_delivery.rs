//! Delivery between two agents under faults: the big mesh_send exchange
//! (frames dropped, duplicated and reordered, relay restarts, crashes at a
//! random command of a random handle() call) with every confirmed or
//! committed message in the receiver's inbox exactly once and in order, no
//! message key ever reused, and the same run for the same seed; glare; the
//! minimal reproductions of reordering and of a crash after the inbox store;
//! the key-reuse oracle itself; idempotent retries and a full outbox; a copy
//! of a held message after a crash (it neither skips the gap nor is lost).
//! Virtual clock, seeded; the harness is in tests/sim/.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "sim/mod.rs"]
mod sim;

use serde_json::json;
use sim::scenario::{check_flow, common_checks, drain, fail_if, world_with, Flow};
use sim::world::{CrashOn, CrashPlan, Faults, Prefix, World, EPOCH_MS};
use sim::Rng;

// ------------------------------------------------------------------ helpers

fn crash_summary(w: &World) -> String {
    let mut out = String::new();
    for a in &w.agents {
        for c in a.crashes.iter().filter(|c| !c.skipped) {
            out.push_str(&format!(
                "\n    crash {} at {} ms on {} after {}/{} commands; lost {:?}",
                a.name,
                c.at - EPOCH_MS,
                c.on,
                c.applied,
                c.total,
                c.lost
            ));
        }
    }
    out
}

// ------------------------------------------------------- the big exchange

struct ExchangeCfg {
    each_way: usize,
    faults: Faults,
    crashes_per_agent: usize,
    relay_restarts: usize,
    max_pause_ms: u64,
}

fn run_exchange(seed: u64, cfg: &ExchangeCfg) -> (World, Vec<String>, String) {
    let (mut w, ids) = world_with(seed, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
    w.faults = cfg.faults.clone();
    let mut flows = [Flow::new(&w, a, b), Flow::new(&w, b, a)];
    let total = 2 * cfg.each_way as u64;
    // Faults strike when the running message count passes these marks.
    let mut relay_marks: Vec<u64> = (0..cfg.relay_restarts)
        .map(|_| rng.range(total / 10, total * 9 / 10))
        .collect();
    let mut crash_marks: Vec<(u64, usize)> = (0..cfg.crashes_per_agent)
        .flat_map(|_| [a, b])
        .map(|who| (rng.range(total / 20, total * 19 / 20), who))
        .collect();
    // Events that keep happening (KNOCK handling is covered by the sweeps;
    // mesh_inbox crashes by crash_sweep_receiver_mesh_inbox).
    let targets = [
        CrashOn::AnyBut("mesh_inbox"),
        CrashOn::Frame("message"),
        CrashOn::Tool("mesh_send"),
        CrashOn::Timer,
        CrashOn::Http,
    ];
    while flows.iter().any(|f| f.sent.len() < cfg.each_way) {
        let count = (flows[0].sent.len() + flows[1].sent.len()) as u64;
        relay_marks.retain(|&m| {
            if count >= m {
                let at = w.now;
                w.schedule_relay_restart(at, rng.range(0, 4_000));
                false
            } else {
                true
            }
        });
        crash_marks.retain(|&(m, who)| {
            if count >= m {
                let on = targets[rng.below(targets.len() as u64) as usize].clone();
                let plan = CrashPlan {
                    not_before: w.now,
                    on,
                    prefix: Prefix::Random,
                    restart_after_ms: rng.range(100, 8_000),
                };
                w.plan_crash(who, plan);
                false
            } else {
                true
            }
        });
        match rng.below(10) {
            0..=3 if flows[0].sent.len() < cfg.each_way => {
                flows[0].send_next(&mut w);
            }
            4..=7 if flows[1].sent.len() < cfg.each_way => {
                flows[1].send_next(&mut w);
            }
            8 => {
                w.call(a, "mesh_inbox", json!({"limit": 500, "mark_read": true}));
            }
            9 => {
                w.call(b, "mesh_inbox", json!({"limit": 500, "mark_read": true}));
            }
            _ => {}
        }
        let pause = rng.range(0, cfg.max_pause_ms + 1);
        w.run_for(pause);
    }
    // A crash planned near the end may not have found its event yet (its
    // agent was down, or no send came): keep the exchange going, bounded,
    // until every planned crash has happened, so each run has them all.
    for _ in 0..200 {
        let Some(k) = (0..2).find(|&k| !w.agents[flows[k].from].crash_plans.is_empty()) else {
            break;
        };
        flows[k].send_next(&mut w);
        w.run_for(1_000);
    }
    // Heal: no more faults; give resends (every 25 s) and holds (10 min) time.
    w.faults = Faults::none();
    for i in [a, b] {
        w.agents[i].crash_plans.clear();
    }
    w.run_for(12 * 60_000);
    for i in [a, b] {
        if !w.agents[i].up() {
            w.run_for(10_000);
        }
        drain(&mut w, i);
    }
    let mut problems = Vec::new();
    let s0 = check_flow(&w, &flows[0], &mut problems);
    let s1 = check_flow(&w, &flows[1], &mut problems);
    common_checks(&w, &mut problems);
    for i in [a, b] {
        let n = w.agents[i].crashes.iter().filter(|c| !c.skipped).count();
        assert_eq!(
            n, cfg.crashes_per_agent,
            "harness: {} crashed {n} times",
            w.agents[i].name
        );
    }
    assert_eq!(
        w.relay.stats.restarts as usize, cfg.relay_restarts,
        "harness: relay restarts"
    );
    let report = format!(
        "seed {seed}: virtual {:.1} min, {} handle() calls; net {:?}; relay {:?}; \
         crashes alice {} bob {}; {} distinct message keys on the wire\n  alice->bob {s0:?}\n  bob->alice {s1:?}",
        (w.now - EPOCH_MS) as f64 / 60_000.0,
        w.net.handles,
        w.net,
        w.relay.stats,
        w.agents[a].crashes.iter().filter(|c| !c.skipped).count(),
        w.agents[b].crashes.iter().filter(|c| !c.skipped).count(),
        w.distinct_message_keys(),
    );
    (w, problems, report)
}

/// The headline scenario: 300 messages each way through mesh_send, random
/// virtual pauses, random mesh_inbox reads, frames dropped, duplicated and
/// reordered in both directions, one relay restart and two crashes of each
/// agent at a random command of a random handle() call. Every confirmed or
/// committed message must be in the receiver's inbox exactly once, in order
/// per sender, with exact counts, and no message key may ever be reused.
#[test]
fn exchange_300_each_way_under_faults_and_crashes() {
    let seed = 20_260_101;
    let cfg = ExchangeCfg {
        each_way: 300,
        faults: Faults::chaos(),
        crashes_per_agent: 2,
        relay_restarts: 1,
        max_pause_ms: 1_500,
    };
    let (w, problems, report) = run_exchange(seed, &cfg);
    eprintln!("{report}");
    fail_if(seed, "300 each way under faults", &problems, &w);
}

/// The same invariants with the network clean and no crashes: isolates
/// protocol problems from fault handling.
#[test]
fn exchange_clean_network() {
    let seed = 7;
    let cfg = ExchangeCfg {
        each_way: 60,
        faults: Faults::none(),
        crashes_per_agent: 0,
        relay_restarts: 0,
        max_pause_ms: 1_500,
    };
    let (w, problems, report) = run_exchange(seed, &cfg);
    eprintln!("{report}");
    fail_if(seed, "clean exchange", &problems, &w);
}

/// Smaller exchanges over several seeds, for breadth of fault timing.
#[test]
fn exchange_many_seeds_under_faults() {
    let mut failures = Vec::new();
    for seed in 1..=6u64 {
        let cfg = ExchangeCfg {
            each_way: 40,
            faults: Faults::chaos(),
            crashes_per_agent: 2,
            relay_restarts: 1,
            max_pause_ms: 2_000,
        };
        let (w, problems, report) = run_exchange(seed, &cfg);
        eprintln!("{report}");
        if !problems.is_empty() {
            failures.push(format!(
                "seed {seed}:\n    {}{}",
                problems.join("\n    "),
                crash_summary(&w)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Same seed, same run: the harness and the engine are deterministic.
#[test]
fn simulation_is_deterministic() {
    let cfg = ExchangeCfg {
        each_way: 15,
        faults: Faults::chaos(),
        crashes_per_agent: 1,
        relay_restarts: 1,
        max_pause_ms: 2_000,
    };
    let (w1, _, _) = run_exchange(99, &cfg);
    let (w2, _, _) = run_exchange(99, &cfg);
    let (w3, _, _) = run_exchange(100, &cfg);
    assert_eq!(w1.trace, w2.trace, "two runs with seed 99 diverged");
    assert_eq!(w1.now, w2.now);
    assert_ne!(w1.trace, w3.trace, "seeds 99 and 100 gave the same trace");
}

// -------------------------------------------------------------------- glare

/// Both agents mesh_send to each other at the same virtual instant with no
/// session: both messages arrive (once), and later messages flow both ways.
#[test]
fn glare_both_send_first_at_the_same_instant() {
    let seed = 42;
    let (mut w, ids) = world_with(seed, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let mut f = [Flow::new(&w, a, b), Flow::new(&w, b, a)];
    assert!(f[0].send_next(&mut w) && f[1].send_next(&mut w));
    w.run_for(5_000);
    // It really was glare: both opened a session and knocked.
    for (i, flow) in [(a, &f[0]), (b, &f[1])] {
        let first = &w.agents[i].calls[&flow.sent[0].1];
        assert_eq!(
            first.result().unwrap()["details"]["mesh"]["session"],
            "new",
            "{}",
            first.text()
        );
        assert_eq!(w.wire_frames(i, "knock", &w.did(flow.to)).len(), 1);
    }
    for _ in 0..5 {
        f[0].send_next(&mut w);
        w.run_for(700);
        f[1].send_next(&mut w);
        w.run_for(700);
    }
    w.run_for(90_000);
    drain(&mut w, a);
    drain(&mut w, b);
    let mut problems = Vec::new();
    let s0 = check_flow(&w, &f[0], &mut problems);
    let s1 = check_flow(&w, &f[1], &mut problems);
    common_checks(&w, &mut problems);
    for (s, name) in [(&s0, "alice->bob"), (&s1, "bob->alice")] {
        if s.confirmed != 6 || s.read != 6 {
            problems.push(format!("{name}: {s:?}, expected 6 confirmed and 6 read"));
        }
    }
    fail_if(seed, "glare", &problems, &w);
}

/// Alice and bob once alice's "m0" has been read: a session open and
/// receipts flowing (the setup of most tests here).
fn after_m0(seed: u64) -> (World, usize, usize) {
    let (mut w, ids) = world_with(seed, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    w.send(a, b, "m0");
    w.run_for(3_000);
    assert_eq!(w.read_texts(b), ["m0"], "setup: alice's m0 read");
    (w, a, b)
}

/// The journal's lines of the agent called `name` (with the journal on).
fn journal_of(w: &World, name: &str) -> Vec<String> {
    let tag = format!(" {name} ");
    let j = w.journal.as_deref().unwrap_or_default();
    j.iter().filter(|l| l.contains(&tag)).cloned().collect()
}

/// Frames `i` put on the wire while `f` ran, captured instead of sent.
fn capture_during(w: &mut World, i: usize, f: impl FnOnce(&mut World)) -> Vec<String> {
    w.agents[i].capture = true;
    f(w);
    w.agents[i].capture = false;
    std::mem::take(&mut w.agents[i].captured)
}

fn of_type<'a>(frames: &'a [String], kind: &str) -> Vec<&'a String> {
    frames
        .iter()
        .filter(|t| t.contains(&format!("\"type\":\"{kind}\"")))
        .collect()
}

/// Glare, then a late frame of the losing session. The smaller DID (S)
/// keeps its own session A when the bigger one's (L) session B crosses it;
/// L gives way and re-sends under A, which confirms A at S. A frame L sent
/// under B before giving way (delayed, duplicated or pushed late by the
/// relay) then reaches S. It must not make S swap A for B: L has dropped
/// B, so the two would be left in different sessions for good, every frame
/// either way refused ("authentication failed", "would skip N message
/// keys"), and nothing delivered again (seeds 1 and 40 of the 300-message
/// exchange).
#[test]
fn glare_late_frame_of_the_losing_session_does_not_split_it() {
    glare_then_late_frame(31, false);
}

/// The same with L's KNOCK itself late: S gets it (and L's first message
/// under B) only after L has moved to A and S has read L's messages under
/// A (seed 74 of the 300-message exchange).
#[test]
fn glare_late_knock_of_the_losing_session_does_not_split_it() {
    glare_then_late_frame(37, true);
}

fn glare_then_late_frame(seed: u64, knock_late: bool) {
    let (mut w, ids) = world_with(seed, &["alice", "bob"]);
    // S: the smaller DID, whose session wins the glare.
    let (s, l) = if w.did(ids[0]) < w.did(ids[1]) {
        (ids[0], ids[1])
    } else {
        (ids[1], ids[0])
    };
    let mut fs = Flow::new(&w, s, l);
    let mut fl = Flow::new(&w, l, s);
    // L opens B and sends two messages; S opens A and sends one. Neither
    // has seen the other's KNOCK yet.
    let from_l = capture_during(&mut w, l, |w| {
        fl.send_next(w);
        fl.send_next(w);
        w.run_for(1_000);
    });
    let from_s = capture_during(&mut w, s, |w| {
        fs.send_next(w);
        w.run_for(1_000);
    });
    let (kb, mb) = (of_type(&from_l, "knock"), of_type(&from_l, "message"));
    let (ka, ma) = (of_type(&from_s, "knock"), of_type(&from_s, "message"));
    assert_eq!((kb.len(), mb.len(), ka.len(), ma.len()), (1, 2, 1, 1));
    // S gets L's KNOCK and first message: glare, S keeps A (B is set aside).
    let to_s = |w: &mut World| {
        w.inject(s, kb[0]);
        w.run_for(200);
        w.inject(s, mb[0]);
        w.run_for(200);
    };
    if !knock_late {
        capture_during(&mut w, s, to_s);
    }
    // L gets S's KNOCK and message: L gives way to A and re-sends under A,
    // which S decrypts under A (A is confirmed).
    w.inject(l, ka[0]);
    w.run_for(200);
    w.inject(l, ma[0]);
    w.run_for(3_000);
    if knock_late {
        to_s(&mut w);
    }
    // The late copy of L's second message under B.
    w.inject(s, mb[1]);
    w.run_for(1_000);
    for _ in 0..5 {
        fs.send_next(&mut w);
        w.run_for(700);
        fl.send_next(&mut w);
        w.run_for(700);
    }
    w.run_for(90_000);
    drain(&mut w, s);
    drain(&mut w, l);
    let mut problems = Vec::new();
    let ss = check_flow(&w, &fs, &mut problems);
    let sl = check_flow(&w, &fl, &mut problems);
    common_checks(&w, &mut problems);
    if ss.read != 6 || sl.read != 7 {
        problems.push(format!(
            "S->L {ss:?} (want 6 read), L->S {sl:?} (want 7 read)"
        ));
    }
    fail_if(
        seed,
        "glare, late frame of the losing session",
        &problems,
        &w,
    );
}

/// Glare in which the bigger DID (L) gives way, and the first frame it
/// reads under the smaller one's session A is a receipt that names a later
/// message (m2) while an earlier one (m1, lost) waits. A receipt by number
/// makes a sender send again, at once, what went before the named message
/// was sealed; not under a session that replaces ours: the old frame is
/// under the session L just dropped, and L seals everything unreceipted
/// again under A anyway. S reads m1 and m2 once, in order, with no extra
/// copy (receive.rs, `how != Decrypted::Promoted`).
#[test]
fn a_receipt_under_the_session_that_replaces_ours_sends_nothing_again_under_the_old_one() {
    let (mut w, ids) = world_with(41, &["alice", "bob"]);
    let (s, l) = if w.did(ids[0]) < w.did(ids[1]) {
        (ids[0], ids[1])
    } else {
        (ids[1], ids[0])
    };
    let sd = w.did(s);
    // L opens B and sends m1, then m2 a moment later; S opens A and sends
    // s1. Neither has seen the other's KNOCK.
    let from_l = capture_during(&mut w, l, |w| {
        assert!(w.send(l, s, "m1").is_some());
        w.run_for(50);
        assert!(w.send(l, s, "m2").is_some());
        w.run_for(1_000);
    });
    let from_s = capture_during(&mut w, s, |w| {
        assert!(w.send(s, l, "s1").is_some());
        w.run_for(1_000);
    });
    let (kb, mb) = (of_type(&from_l, "knock"), of_type(&from_l, "message"));
    let (ka, ma) = (of_type(&from_s, "knock"), of_type(&from_s, "message"));
    assert_eq!((kb.len(), mb.len(), ka.len(), ma.len()), (1, 2, 1, 1));
    // S gets B's KNOCK and m2 (m1 is lost): glare, S keeps A, holds m2
    // behind the gap and receipts it by number, under A.
    let from_s2 = capture_during(&mut w, s, |w| {
        w.inject(s, kb[0]);
        w.run_for(200);
        w.inject(s, mb[1]);
        w.run_for(5_000);
    });
    assert!(w.read_texts(s).is_empty(), "m2 is held behind m1");
    let receipts = of_type(&from_s2, "message");
    assert!(!receipts.is_empty(), "S sent a receipt: {from_s2:#?}");
    // L gets A's KNOCK, then that receipt before anything else under A: it
    // gives way to A there.
    w.inject(l, ka[0]);
    w.run_for(200);
    let after = capture_during(&mut w, l, |w| {
        for r in &receipts {
            w.inject(l, r);
            w.run_for(100);
        }
    });
    // Nothing goes under B again: what L sends now is under A, and m2 is
    // receipted, so only m1 goes, once.
    let copies_of_m1: Vec<&String> = of_type(&after, "message")
        .into_iter()
        .filter(|f| mb.contains(f))
        .collect();
    assert!(
        copies_of_m1.is_empty(),
        "an old frame under B went again: {copies_of_m1:#?}"
    );
    for f in of_type(&after, "message") {
        assert!(w.inject(s, f), "S takes L's frames");
    }
    // And s1, which L has not had yet.
    w.inject(l, ma[0]);
    w.run_for(5_000);
    assert_eq!(w.read_texts(s), ["m1", "m2"]);
    assert_eq!(w.read_texts(l), ["s1"]);
    let stats = w.status(s)["stats"].clone();
    assert_eq!(stats["duplicates"].as_u64(), Some(0), "{stats}");
    assert_eq!(stats["undecryptable"].as_u64(), Some(0), "{stats}");
    w.run_for(60_000);
    assert!(w.read_texts(s).is_empty(), "each is read once");
    assert!(w.outbox_keys(l, &sd).is_empty(), "all receipted");
}

/// Seeds of the 300-message exchange whose glare ended with the two agents
/// in different sessions: almost nothing delivered either way.
#[test]
fn exchange_glare_seeds_stay_in_one_session() {
    let mut failures = Vec::new();
    for seed in [1, 40, 74] {
        let cfg = ExchangeCfg {
            each_way: 300,
            faults: Faults::chaos(),
            crashes_per_agent: 2,
            relay_restarts: 1,
            max_pause_ms: 1_500,
        };
        let (w, problems, report) = run_exchange(seed, &cfg);
        eprintln!("{report}");
        if !problems.is_empty() {
            failures.push(format!(
                "seed {seed}:\n    {}{}",
                problems.join("\n    "),
                crash_summary(&w)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ------------------------------------------------- minimal reproductions

/// Two messages delivered in reverse order (no crash, no loss): the second is
/// held until the first arrives, and mesh_inbox must then return them in
/// send order.
#[test]
fn reordered_messages_are_returned_in_send_order() {
    let (mut w, a, b) = after_m0(17);
    let bd = w.did(b);
    w.agents[a].capture = true;
    w.send(a, b, "m1");
    w.send(a, b, "m2");
    w.run_for(1_000);
    w.agents[a].capture = false;
    let frames: Vec<String> = std::mem::take(&mut w.agents[a].captured)
        .into_iter()
        .filter(|t| t.contains("\"type\":\"message\"") && t.contains(&bd))
        .collect();
    assert_eq!(frames.len(), 2);
    w.inject(b, &frames[1]);
    w.run_for(500);
    w.inject(b, &frames[0]);
    w.run_for(500);
    let got = w.read_texts(b);
    assert_eq!(
        got,
        ["m1", "m2"],
        "mesh_inbox order after a reordered delivery"
    );
}

/// Bob crashes after the first command of handling a message (its inbox
/// record is durable, the session update that records it as received is
/// not). The relay-level redelivery of the same frame must not make it a
/// second inbox entry.
#[test]
fn crash_after_the_inbox_store_does_not_deliver_twice() {
    let (mut w, a, b) = after_m0(19);
    w.plan_crash(
        b,
        CrashPlan {
            not_before: 0,
            on: CrashOn::Frame("message"),
            // The payload record, then the inbox entry: both durable.
            prefix: Prefix::Exactly(2),
            restart_after_ms: 1_000,
        },
    );
    w.send(a, b, "m1");
    // Alice re-sends the unreceipted frame after 20 s, on a heartbeat tick.
    w.run_for(60_000);
    let rec = &w.agents[b].crashes[0];
    assert!(
        rec.lost[0].starts_with("store session/"),
        "crash point: {rec:?}"
    );
    let got = w.read_texts(b);
    assert_eq!(got, ["m1"], "m1 must be delivered exactly once");
}

/// Alice and bob with a session (m0 read), bob set to crash on the next
/// message before any of its handling lands (restarting 1 s later), and m1
/// just sent to him.
fn m1_sent_to_a_bob_about_to_crash() -> (World, usize, usize) {
    let (mut w, a, b) = after_m0(23);
    w.plan_crash(
        b,
        CrashPlan {
            not_before: 0,
            on: CrashOn::Frame("message"),
            // Nothing of the message's handling lands.
            prefix: Prefix::Exactly(0),
            restart_after_ms: 1_000,
        },
    );
    w.send(a, b, "m1");
    (w, a, b)
}

/// A message delivered live is gone from the relay; if the receiver crashes
/// before its commit, only the sender's re-send brings it back. That comes
/// at the oldest unreceipted entry's due time (RESEND_AFTER_MS, 20 s, plus
/// a second of slack), not at the next relay heartbeat after it (which made
/// it up to 45 s).
#[test]
fn a_message_lost_to_a_receivers_crash_comes_back_about_20_s_later() {
    let (mut w, _, b) = m1_sent_to_a_bob_about_to_crash();
    w.run_for(19_000);
    assert!(
        !w.agents[b].crashes.is_empty() && !w.agents[b].crashes[0].skipped,
        "bob crashed on m1"
    );
    // (Each read marks what it returns: a later one shows only what is new.)
    assert!(
        w.read_texts(b).is_empty(),
        "m1 is lost until alice sends it again"
    );
    w.run_for(4_000);
    assert_eq!(
        w.read_texts(b),
        ["m1"],
        "m1 came back within 23 s of its send"
    );
    w.run_for(60_000);
    assert!(w.read_texts(b).is_empty(), "and only once");
}

/// The same loss, and then a later message: bob holds it behind the gap
/// and receipts it by number, which tells alice that m1, sent before it on
/// the same ordered path, was lost. She sends m1 again at once instead of
/// 20 s after it went, and bob's reader gets both, in order, within a
/// second or two of m2.
#[test]
fn a_message_lost_to_a_receivers_crash_comes_back_with_the_next_receipt() {
    let (mut w, a, b) = m1_sent_to_a_bob_about_to_crash();
    w.run_for(4_000);
    assert_eq!(w.status(a)["stats"]["resent"].as_u64(), Some(0), "setup");
    assert!(
        !w.agents[b].crashes.is_empty() && !w.agents[b].crashes[0].skipped,
        "bob crashed on m1"
    );
    assert!(w.agents[b].connected(), "setup: bob is back on the relay");
    assert!(w.read_texts(b).is_empty(), "m1 is lost for now");
    w.send(a, b, "m2");
    w.run_for(2_000);
    assert_eq!(
        w.read_texts(b),
        ["m1", "m2"],
        "m1 came back with m2's receipt, 6 s after it was sent, not 21 s"
    );
    assert_eq!(w.status(a)["stats"]["resent"].as_u64(), Some(1));
    w.run_for(60_000);
    assert!(w.read_texts(b).is_empty(), "and each only once");
    assert_eq!(
        w.status(a)["stats"]["resent"].as_u64(),
        Some(1),
        "nothing was sent a third time"
    );
}

/// A message that is only late, not lost (the relay pushing a frame it
/// stored while later ones come live): bob holds m2 behind the gap and
/// receipts it by number, so alice takes m1 for lost and sends it again at
/// once; then the late m1 arrives too. Bob's reader gets each once, in
/// order, and the late copy is dropped as a repeat: one extra copy, the
/// price of not waiting 20 s when m1 really was lost.
#[test]
fn a_late_message_costs_one_extra_copy_and_is_read_once_in_order() {
    let (mut w, a, b) = after_m0(31);
    w.late_message = Some((b, 6_000));
    w.send(a, b, "m1");
    w.run_for(1_000);
    assert!(w.read_texts(b).is_empty(), "m1 is late");
    w.send(a, b, "m2");
    w.run_for(2_000);
    assert_eq!(
        w.read_texts(b),
        ["m1", "m2"],
        "m1 went again with m2's receipt"
    );
    assert_eq!(w.status(a)["stats"]["resent"].as_u64(), Some(1));
    let dups = |w: &mut World| w.status(b)["stats"]["duplicates"].as_u64();
    assert_eq!(dups(&mut w), Some(0), "the late m1 has not come yet");
    w.run_for(10_000);
    assert_eq!(dups(&mut w), Some(1), "the late m1 came, and was dropped");
    assert!(w.read_texts(b).is_empty(), "each is read once");
    w.run_for(60_000);
    assert!(w.read_texts(b).is_empty());
    assert_eq!(
        w.status(a)["stats"]["resent"].as_u64(),
        Some(1),
        "nothing was sent a third time"
    );
}

/// A message under a new ratchet key leaves the receiver owing the sending
/// half of the DH ratchet step. The engine asks for idle time last, after
/// the message's records and frames, and the idle event takes the step in
/// memory, storing nothing: a crash right after it finds the record still
/// owing the step, and the reply takes a fresh one, which the peer reads;
/// no message key is used twice.
#[test]
fn an_owed_ratchet_step_is_taken_in_idle_time_and_afresh_after_a_crash() {
    let (mut w, ids) = world_with(29, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let ad = w.did(a);
    let owes = |w: &World| {
        let e = w.agents[b].engine.as_ref().and_then(|e| e.agent());
        e.map(|ag| ag.owes_ratchet_step(&ad))
    };
    w.send(a, b, "m0");
    w.run_for(3_000);
    assert_eq!(w.read_texts(b), ["m0"]);
    // Bob's receipts are under the step he took: alice owes one now, and
    // her next message makes bob owe one. Watch it arrive, ms by ms.
    w.send(a, b, "m1");
    w.journal = Some(Vec::new());
    let bob_lines = |w: &World| journal_of(w, "bob");
    let mut waited = 0;
    while !bob_lines(&w)
        .iter()
        .any(|l| l.contains("frame@") && l.contains("message"))
    {
        assert!(waited < 1_000, "m1 did not reach bob");
        w.run_for(1);
        waited += 1;
    }
    let lines = bob_lines(&w);
    let arrival = lines
        .iter()
        .position(|l| l.contains("frame@") && l.contains("message"))
        .unwrap_or(0);
    let cmds = lines[arrival].split_once("=> ").map(|x| x.1).unwrap_or("");
    assert!(
        cmds.contains("store session/") && cmds.trim_end().ends_with("idle-wanted"),
        "asked for idle time last: {cmds}"
    );
    let after: Vec<&String> = lines[arrival + 1..].iter().collect();
    assert!(
        after.iter().any(|l| l.contains(" idle")),
        "bob got idle time: {after:?}"
    );
    assert!(
        after
            .iter()
            .all(|l| !l.contains("store") && !l.contains("send message")),
        "the idle step stores and sends nothing: {after:?}"
    );
    assert_eq!(owes(&w), Some(false), "idle time took the step");
    w.crash_now(b, 1_000);
    w.run_for(2_000);
    assert_eq!(owes(&w), Some(true), "the record still owed it");
    w.send(b, a, "r1");
    w.run_for(3_000);
    assert_eq!(owes(&w), Some(false));
    assert_eq!(w.read_texts(a), ["r1"]);
    w.send(a, b, "m2");
    w.run_for(3_000);
    assert_eq!(w.read_texts(b), ["m1", "m2"]);
    assert!(w.violations.is_empty(), "{:?}", w.violations);
}

/// A sender owing a ratchet step takes it for its next send, in memory.
/// A host without one transaction per batch may lose the session record
/// after the outbox entry was written: the entry's frame is under a key no
/// stored state reaches, and it never left. A restart seals it again under
/// the session, so the peer reads it and everything after it (the frame
/// under the lost key, read first, would strand the peer on a chain ours
/// does not continue). Every crash point of that send.
#[test]
fn a_send_whose_lost_session_record_held_its_ratchet_step_is_sealed_again() {
    for k in 0..4 {
        let (mut w, ids) = world_with(29, &["alice", "bob"]);
        let (a, b) = (ids[0], ids[1]);
        w.send(a, b, "m0");
        w.run_for(3_000);
        assert_eq!(w.read_texts(b), ["m0"]);
        // Bob's receipts came under his new key: alice's record owes a step
        // (idle time took it in memory only).
        w.plan_crash(
            a,
            CrashPlan {
                not_before: 0,
                on: CrashOn::Tool("mesh_send"),
                prefix: Prefix::Exactly(k),
                restart_after_ms: 1_000,
            },
        );
        w.send(a, b, "m1");
        w.run_for(30_000);
        assert!(!w.agents[a].crashes.is_empty(), "k={k}: alice crashed");
        w.send(a, b, "m2");
        w.run_for(30_000);
        w.send(a, b, "m3");
        w.run_for(30_000);
        let got = w.read_texts(b);
        // m1's record may have been lost before its entry (k = 0): then it
        // was never sent, and its caller had no answer.
        let want: &[&str] = if k == 0 {
            &["m2", "m3"]
        } else {
            &["m1", "m2", "m3"]
        };
        assert_eq!(got, want, "k={k}: bob reads every message sent, once");
        assert!(w.violations.is_empty(), "k={k}: {:?}", w.violations);
    }
}

// ----------------------------------------------------------- oracle checks

/// The key-reuse oracle fires when it should: a host that loses writes (its
/// storage rolled back past a sent message) makes the engine encrypt a new
/// message under a message key it already used.
#[test]
fn key_reuse_oracle_catches_a_host_that_loses_writes() {
    let (mut w, ids) = world_with(21, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    w.send(a, b, "m0");
    w.run_for(3_000);
    // Bob's receipts under his new ratchet key left alice owing a step; m1
    // takes it, so the rollback lands inside her new sending chain (rolled
    // back to a step still owed, she would take it again with a fresh key
    // and reuse nothing).
    let bd = w.did(b);
    w.call_sync(a, "mesh_send", json!({"to": bd, "message": "m1"}), 10_000);
    let snap = w.snapshot_storage(a);
    w.send(a, b, "m2");
    w.run_for(3_000);
    assert!(w.violations.is_empty(), "{:?}", w.violations);
    // Nothing of bob's reaches alice from here: his answer to her re-sent
    // m1 would start a new step, which she would take with a fresh key.
    w.agents[b].capture = true;
    w.crash_now(a, 1_000);
    w.restore_storage(a, snap);
    w.run_for(3_000);
    w.send(a, b, "m3 (after the rollback)");
    w.run_for(3_000);

    assert!(
        w.violations.iter().any(|v| v.contains("MESSAGE KEY REUSE")),
        "the oracle missed a rolled-back ratchet: {:?}",
        w.violations
    );
}

// ----------------------------------------- sends: retries and a full outbox

/// A caller that retries `mesh_send` with the same idempotency key (it was
/// cut off before the answer) gets the first send's result, and the peer
/// receives the message once.
#[test]
fn a_retried_send_with_the_same_key_is_not_sent_twice() {
    let (mut w, ids) = world_with(23, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let bd = w.did(b);
    let args = json!({"to": bd, "message": "once", "idempotency_key": "k-1"});
    let first = w.call_sync(a, "mesh_send", args.clone(), 5_000);
    let second = w.call_sync(a, "mesh_send", args, 5_000);
    assert_eq!(
        first["details"]["mesh"]["id"], second["details"]["mesh"]["id"],
        "{first} / {second}"
    );
    assert_eq!(second["details"]["mesh"]["duplicate"], true);
    let other = w.call_sync(
        a,
        "mesh_send",
        json!({"to": bd, "message": "twice", "idempotency_key": "k-2"}),
        5_000,
    );
    assert_ne!(
        other["details"]["mesh"]["id"],
        first["details"]["mesh"]["id"]
    );
    let bad = w.call_sync(
        a,
        "mesh_send",
        json!({"to": bd, "message": "x", "idempotency_key": 7}),
        5_000,
    );
    assert!(
        bad["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("idempotency_key"),
        "{bad}"
    );
    w.run_for(3_000);
    let got = w.read_texts(b);
    assert_eq!(got, ["once", "twice"]);
}

/// A peer that stays away does not make the sender drop anything: past the
/// outbox limit `mesh_send` refuses with a clear error, and every message it
/// accepted arrives once the peer is back.
#[test]
fn a_full_outbox_refuses_new_sends_instead_of_dropping_old_ones() {
    let (mut w, a, b) = after_m0(29);
    let bd = w.did(b);
    w.crash_now(b, 120_000);
    let limit = kars_mesh::mesh::session::OUTBOX_MAX;
    for i in 0..limit {
        let r = w.call_sync(
            a,
            "mesh_send",
            json!({"to": bd, "message": format!("q{i}")}),
            5_000,
        );
        assert!(r["details"]["mesh"]["error"].is_null(), "send {i}: {r}");
    }
    let refused = w.call_sync(
        a,
        "mesh_send",
        json!({"to": bd, "message": "one too many"}),
        5_000,
    );
    let text = refused["content"][0]["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("❌") && text.contains("waiting for its receipt"),
        "{refused}"
    );
    w.run_for(400_000);
    let mut got: Vec<String> = Vec::new();
    loop {
        // mesh_inbox answers at most 500 at a time.
        let batch = w.read_texts(b);
        if batch.is_empty() {
            break;
        }
        got.extend(batch);
    }
    let want: Vec<String> = (0..limit).map(|i| format!("q{i}")).collect();
    assert_eq!(got, want, "every accepted message, once, in order");
}
/// Alice's frames for `contents`, captured instead of sent (in send order).
fn captured_messages(w: &mut World, a: usize, b: usize, contents: &[&str]) -> Vec<String> {
    let bd = w.did(b);
    w.agents[a].capture = true;
    for c in contents {
        w.send(a, b, c);
    }
    w.run_for(1_000);
    let frames: Vec<String> = std::mem::take(&mut w.agents[a].captured)
        .into_iter()
        .filter(|t| t.contains("\"type\":\"message\"") && t.contains(&bd))
        .collect();
    assert_eq!(frames.len(), contents.len(), "setup: one frame per message");
    frames
}

/// Crash bob on its next `message` frame after `applied` commands, and let
/// it restart and reconnect.
fn crash_bob_on_next_message(w: &mut World, b: usize, applied: usize, frame: &str) {
    w.plan_crash(
        b,
        CrashPlan {
            not_before: 0,
            on: CrashOn::Frame("message"),
            prefix: Prefix::Exactly(applied),
            restart_after_ms: 1_000,
        },
    );
    w.inject(b, frame);
    w.run_for(5_000);
    let rec = w.agents[b].crashes.last().cloned();
    assert!(
        rec.as_ref()
            .is_some_and(|r| !r.skipped && r.applied == applied),
        "setup: crash point: {rec:?}"
    );
    assert!(w.agents[b].connected(), "setup: bob is back on the relay");
}

/// Bob holds m2 (it overtook m1) and crashes after storing it but before
/// the session record that marks it consumed. A copy of m2 (the relay's
/// redelivery of the unacked frame, or alice's re-send) then decrypts
/// again: it is a duplicate of the held copy, which must neither move the
/// expected number past m1 nor throw the held copy away.
#[test]
fn copy_of_a_held_message_after_a_crash_loses_nothing() {
    let (mut w, a, b) = after_m0(23);
    let f = captured_messages(&mut w, a, b, &["m1", "m2", "m3"]);
    w.agents[a].capture = true; // alice's re-sends stay out of the way
                                // The payload record and the held entry are durable; the session
                                // record, the ack and the receipt are not.
    crash_bob_on_next_message(&mut w, b, 2, &f[1]);
    w.inject(b, &f[1]);
    w.run_for(500);
    w.inject(b, &f[0]);
    w.run_for(500);
    w.inject(b, &f[2]);
    w.run_for(500);
    w.agents[a].capture = false;
    w.run_for(60_000);
    let got = w.read_texts(b);
    assert_eq!(got, ["m1", "m2", "m3"], "every message once, in order");
}

/// The same with the gap filled in between: bob crashes again while m1
/// releases the held m2 (m1's entry is durable, m2's release and the
/// session record are not), so after the restart bob expects m2 and holds
/// it. A copy of m2 must release it, not skip it: exactly one message lost
/// and no gap left behind (durability.test.mjs: "missing: 377").
#[test]
fn copy_of_a_held_message_at_the_expected_number_releases_it() {
    let (mut w, a, b) = after_m0(29);
    let f = captured_messages(&mut w, a, b, &["m1", "m2", "m3"]);
    w.agents[a].capture = true;
    crash_bob_on_next_message(&mut w, b, 2, &f[1]);
    crash_bob_on_next_message(&mut w, b, 2, &f[0]);
    w.inject(b, &f[1]);
    w.run_for(500);
    w.inject(b, &f[2]);
    w.run_for(500);
    w.agents[a].capture = false;
    w.run_for(60_000);
    let got = w.read_texts(b);
    assert_eq!(got, ["m1", "m2", "m3"], "every message once, in order");
}

/// A receipt is acked to the relay later, not in the handle() call that
/// takes it: that call would otherwise cost the host a commit (one fsync)
/// of its own for every receipt. The ack still comes (after ACK_DELAY_MS,
/// or with the next frame), so the relay forgets a receipt it stored while
/// the sender was away.
#[test]
fn a_stored_receipt_is_acked_later_and_the_relay_forgets_it() {
    let (mut w, ids) = world_with(31, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    (w.faults.latency_min_ms, w.faults.latency_max_ms) = (5, 5);
    let ad = w.did(a);
    assert!(w.send(a, b, "one").is_some());
    w.run_for(2_000);
    assert_eq!(w.outbox_contents(a, &w.did(b)), Vec::<String>::new());
    // Alice away: bob's receipt for her next message waits at the relay.
    assert!(w.send(a, b, "two").is_some());
    w.run_for(8); // at the relay (5 ms a hop), not yet receipted
    w.crash_now(a, 5_000);
    w.run_for(1_000);
    assert!(
        w.relay.stored_for(&ad) >= 1,
        "bob's receipt is stored for alice"
    );
    // Back: alice takes the receipt (her outbox empties); whatever she sent
    // meanwhile carried the ack, or the ack timer did.
    w.run_for(6_000);
    assert_eq!(w.outbox_contents(a, &w.did(b)), Vec::<String>::new());
    assert_eq!(
        w.relay.stored_for(&ad),
        0,
        "the relay still holds frames for alice: a receipt was never acked"
    );
    let got = w.read_texts(b);
    assert_eq!(got, ["one", "two"]);
}

/// The handle() call that takes a receipt sends nothing, so the host need
/// not commit before it (js-host/event-loop.js: a batch whose commands all
/// stay in the process commits later, with the next one).
#[test]
fn taking_a_receipt_sends_nothing_at_once() {
    let (mut w, ids) = world_with(32, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    // 5 ms a hop: the receipt is back after about 45 ms, its ack due 200 ms later.
    (w.faults.latency_min_ms, w.faults.latency_max_ms) = (5, 5);
    let bd = w.did(b);
    assert!(w.send(a, b, "one").is_some());
    w.run_for(2_000);
    // Bob's receipt for the next message is back after about 45 ms; its
    // ack leaves 200 ms after that (ACK_DELAY_MS), not with it.
    let t0 = w.now;
    assert!(w.send(a, b, "two").is_some());
    w.run_for(120);
    assert_eq!(
        w.outbox_contents(a, &bd),
        Vec::<String>::new(),
        "the receipt came"
    );
    let acks_since = |w: &World, t: u64| {
        w.agents[a]
            .wire
            .iter()
            .filter(|(at, text)| *at > t && text.contains("\"type\":\"ack\""))
            .count()
    };
    assert_eq!(acks_since(&w, t0), 0, "an ack left with the receipt");
    w.run_for(500);
    assert_eq!(acks_since(&w, t0), 1, "the ack goes after ACK_DELAY_MS");
}

/// A reply sent while a receipt is due carries the receipt inside it (the
/// peer's envelopes say it reads nested receipts): one frame, one commit,
/// instead of a receipt of its own RECEIPT_DELAY_MS later.
#[test]
fn a_receipt_due_leaves_with_the_next_message_to_that_peer() {
    let (mut w, ids) = world_with(33, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    (w.faults.latency_min_ms, w.faults.latency_max_ms) = (5, 5);
    let (ad, bd) = (w.did(a), w.did(b));
    assert!(w.send(a, b, "warm").is_some());
    w.run_for(2_000);
    let t0 = w.now;
    assert!(w.send(a, b, "ping").is_some());
    w.run_for(12); // at bob (two 5 ms hops), his receipt due in 25 ms
    assert!(w.send(b, a, "pong").is_some());
    w.run_for(1_000);
    let sent: Vec<u64> = w.agents[b]
        .wire
        .iter()
        .filter(|(at, t)| *at > t0 && t.contains("\"type\":\"message\"") && t.contains(&ad))
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(
        sent.len(),
        1,
        "the reply alone, the receipt inside it: {sent:?}"
    );
    assert_eq!(
        w.outbox_contents(a, &bd),
        Vec::<String>::new(),
        "the ping was receipted"
    );
    let got = w.read_texts(a);
    assert_eq!(got, ["pong"]);
}

/// Alice and bob exchange a first message (read by bob), then bob crashes
/// and stays away for `away_ms`. The world, alice, bob and bob's DID.
fn warm_then_bob_away(seed: u64, away_ms: u64) -> (World, usize, usize, String) {
    let (mut w, ids) = world_with(seed, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let bd = w.did(b);
    assert!(w.send(a, b, "warm").is_some());
    w.run_for(2_000);
    assert_eq!(w.read_texts(b), ["warm"]);
    w.crash_now(b, away_ms);
    (w, a, b, bd)
}

/// A session record that cannot be read (a newer kars-mesh's, a damaged
/// one) is left alone with its outbox: its messages are not taken for ones
/// whose record was lost, so no new session is opened over it and nothing
/// is written in its place.
#[test]
fn an_unreadable_session_record_is_left_alone_with_its_outbox() {
    let (mut w, a, _b, bd) = warm_then_bob_away(37, 60_000);
    assert!(w.send(a, _b, "waiting").is_some());
    w.run_for(200);
    assert_eq!(w.outbox_keys(a, &bd).len(), 1, "setup: one entry waits");
    let knocks = w.wire_frames(a, "knock", &bd).len();
    w.crash_now(a, 1_000);
    let key = format!("session/{bd}");
    let mut storage = w.snapshot_storage(a);
    storage.insert(key.clone(), b"not a sealed record".to_vec());
    w.restore_storage(a, storage);
    w.run_for(10_000);
    assert!(w.agents[a].up(), "alice is back");
    assert_eq!(
        w.wire_frames(a, "knock", &bd).len(),
        knocks,
        "no new session"
    );
    assert_eq!(
        w.snapshot_storage(a).get(&key).map(Vec::as_slice),
        Some(&b"not a sealed record"[..]),
        "the record is not written over"
    );
    assert_eq!(w.outbox_keys(a, &bd).len(), 1, "the entry is kept");
}

/// Alice said that the entries she repaired wait for a session to go under
/// (the warning restore logs when it cannot open one yet).
fn assert_repair_waits_for_a_session(w: &World, a: usize) {
    let warned = w.warnings(a);
    assert!(
        warned.iter().any(|l| l.contains("no session to go under")),
        "{warned:#?}"
    );
}

/// Alice sends bob "first" and crashes as the registry answer that opens
/// the session is taken: its outbox entry lands, the session record does
/// not (a host without one transaction per batch). She is back 1.5 s
/// later; this returns 500 ms after the send, with her still down.
fn first_session_record_lost(seed: u64) -> (World, usize, usize) {
    let (mut w, ids) = world_with(seed, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    w.plan_crash(
        a,
        CrashPlan {
            not_before: 0,
            on: CrashOn::HttpSending("knock"),
            prefix: Prefix::Exactly(1),
            restart_after_ms: 1_500,
        },
    );
    w.send(a, b, "first");
    w.run_for(500);
    let crash = w.agents[a].crashes.first().cloned().expect("alice crashed");
    assert!(!crash.skipped && crash.applied == 1, "{crash:?}");
    assert!(
        crash.lost.iter().any(|l| l.starts_with("store session/")),
        "{crash:?}"
    );
    (w, a, b)
}

/// The first session's record lost after its message's entry was written
/// (a host without one transaction per batch), and a second restart before
/// the new session could open (its bundle request never answered): the
/// next start repairs it again, and bob reads the message once.
#[test]
fn a_message_whose_first_session_record_was_lost_survives_a_second_restart() {
    let (mut w, a, b) = first_session_record_lost(38);
    // Back, alice asks for bob's bundle again; it does not come.
    w.faults.registry_slow = Some(("/prekeys".into(), 600_000));
    w.run_for(4_000);
    assert_repair_waits_for_a_session(&w, a);
    assert!(w.read_texts(b).is_empty(), "nothing reached bob yet");
    w.crash_now(a, 1_000);
    w.faults.registry_slow = None;
    w.run_for(6_000);
    assert_eq!(w.read_texts(b), ["first"]);
    w.run_for(60_000);
    assert!(w.read_texts(b).is_empty(), "once");
}

/// The same loss, and then a session record of bob saved with no session
/// in it (as a repair that did not finish would leave it, before another
/// restart): a record that holds no session cannot open its entries, so
/// they are repaired as if there were no record, and bob reads the
/// message once.
#[test]
fn entries_under_a_session_record_with_no_session_are_sealed_again() {
    use kars_mesh::crypto::seal;
    use kars_mesh::entropy::SeededEntropy;
    use kars_mesh::mesh::session::Peer;

    let (mut w, a, b) = first_session_record_lost(39);
    let bd = w.did(b);
    assert!(!w.agents[a].up(), "alice is still down");
    // While she is down: a readable session record of bob with no session.
    let key = format!("session/{bd}");
    let mut storage = w.snapshot_storage(a);
    assert!(!storage.contains_key(&key), "setup: the record was lost");
    assert_eq!(w.outbox_keys(a, &bd).len(), 1, "setup: the entry was kept");
    let empty = Peer::new(&bd);
    assert!(empty.active.is_none());
    let sealed = seal::seal_bound(
        &w.agents[a].state_key,
        "session.v1",
        &key,
        &empty.to_bytes(),
        &mut SeededEntropy::new(39),
    )
    .unwrap();
    storage.insert(key.clone(), sealed);
    w.restore_storage(a, storage);
    w.run_for(6_000);
    assert!(w.agents[a].up(), "alice is back");
    assert_repair_waits_for_a_session(&w, a);
    assert_eq!(w.read_texts(b), ["first"]);
    w.run_for(60_000);
    assert!(w.read_texts(b).is_empty(), "once");
}

/// Alice and bob have talked; bob goes away (back after 8 s) and alice
/// sends him a 100 KiB message of `fill`, which waits unreceipted. The
/// world, alice, bob, bob's DID and the message.
fn big_message_while_bob_is_away(seed: u64, fill: &str) -> (World, usize, usize, String, String) {
    let (mut w, a, b, bd) = warm_then_bob_away(seed, 8_000);
    let big = fill.repeat(100 * 1024);
    assert!(w.send(a, b, &big).is_some());
    w.run_for(200);
    (w, a, b, bd, big)
}

/// A large message's frame is not stored with its outbox entry (the
/// plaintext is, and the frame's place in the sending chain): a restart
/// seals it again under the session with its sequence number, and the peer
/// gets it once, whether or not the first copy reached it.
#[test]
fn a_large_message_sent_before_a_restart_arrives_once_without_its_frame_stored() {
    // Bob away: the big message waits at the relay, unreceipted.
    let (mut w, a, b, bd, big) = big_message_while_bob_is_away(34, "x");
    let keys = w.outbox_keys(a, &bd);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let rec = w.persisted(a, &keys[0]).unwrap();
    assert!(rec.get("frame").is_none(), "the large frame was stored");
    assert!(rec["sent_under"]["n"].is_u64(), "{}", rec["sent_under"]);
    assert_eq!(w.outbox_contents(a, &bd), std::slice::from_ref(&big));
    // Alice restarts: the entry is sealed again and sent; the relay now
    // holds both copies for bob.
    let sent_before = w.wire_frames(a, "message", &bd).len();
    w.crash_now(a, 1_000);
    w.run_for(12_000);
    let copies = w.wire_frames(a, "message", &bd);
    assert!(
        copies.len() > sent_before
            && copies.iter().all(
                |f| f["ciphertext"].as_str().is_some_and(|c| c.len() > 100_000)
                    || f["ciphertext"].as_str().is_some_and(|c| c.len() < 1_000)
            ),
        "the restarted alice sent the message again, sealed anew"
    );
    assert_eq!(w.read_texts(b), std::slice::from_ref(&big));
    assert_eq!(w.outbox_contents(a, &bd), Vec::<String>::new());
    assert!(w.send(a, b, "after").is_some());
    w.run_for(2_000);
    assert_eq!(w.read_texts(b), ["after"]);
}

/// Alice sends bob a 100 KiB message while he is away; she restarts (with
/// that entry kept as a file's chunk is when `frame_only`), and bob comes
/// back without his sessions (not his identity). His next message opens a
/// new session, which alice takes; then she sends "after". Bob numbers from
/// scratch, so what comes after a gap is held back until HOLD_MAX_MS at
/// most. The world, alice, bob's DID, the large message, and what bob read.
fn big_message_meets_a_new_session(
    frame_only: bool,
) -> (World, usize, String, String, Vec<String>) {
    let (mut w, ids) = world_with(35, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let bd = w.did(b);
    assert!(w.send(a, b, "warm").is_some());
    assert!(w.send(b, a, "hi").is_some());
    w.run_for(2_000);
    assert_eq!(w.read_texts(b), ["warm"]);
    assert_eq!(w.read_texts(a), ["hi"]);
    let mut kept = w.snapshot_storage(b);
    w.crash_now(b, 6_000);
    let big = "y".repeat(100 * 1024);
    assert!(w.send(a, b, &big).is_some());
    w.run_for(200);
    if !frame_only {
        assert_eq!(w.outbox_contents(a, &bd), std::slice::from_ref(&big));
    }
    w.crash_now(a, 500);
    if frame_only {
        keep_as_frame_only(&mut w, a, &bd);
    }
    w.run_for(1_000);
    kept.retain(|k, _| {
        !k.starts_with("session/") && !k.starts_with("outbox/") && !k.starts_with("seen/")
    });
    w.restore_storage(b, kept);
    w.run_for(8_000);
    assert!(w.send(b, a, "new session").is_some());
    w.run_for(8_000);
    assert_eq!(w.read_texts(a), ["new session"]);
    assert!(w.send(a, b, "after").is_some());
    w.run_for(kars_mesh::agent::HOLD_MAX_MS + 60_000);
    let got = w.read_texts(b);
    (w, a, bd, big, got)
}

/// A large message the user sent keeps its plaintext (only a file's chunks
/// keep just their frame): when the peer opens a new session after our
/// restart, it is sealed again under that session and arrives, nothing
/// dropped and no warning.
#[test]
fn a_large_message_waiting_across_a_restart_goes_under_the_peers_new_session() {
    let (w, a, _, big, got) = big_message_meets_a_new_session(false);
    assert_eq!(got, [big, "after".to_string()]);
    let warned = w.warnings(a);
    assert!(
        !warned
            .iter()
            .any(|l| l.contains("cannot go under its new session")),
        "{warned:#?}"
    );
}

/// Alice's one outbox entry for `bd` rewritten, while she is down, as a
/// file's chunk is kept (seal format 3: its fields sealed with no
/// plaintext, its frame after them as it went out). The simulator's agents
/// send no files, so a large message's own record and frame stand in.
fn keep_as_frame_only(w: &mut World, a: usize, bd: &str) -> String {
    let keys = w.outbox_keys(a, bd);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = keys[0].clone();
    let mut head = w.persisted(a, &key).expect("the entry's record");
    let fid = head["frame_id"].as_str().expect("frame id").to_string();
    let frame = w.agents[a]
        .wire
        .iter()
        .map(|(_, t)| t.clone())
        .find(|t| {
            serde_json::from_str::<serde_json::Value>(t).is_ok_and(|v| v["id"] == fid.as_str())
        })
        .expect("the frame as it went out");
    head["plaintext"] = json!("~");
    if let Some(o) = head.as_object_mut() {
        o.remove("frame");
    }
    let mut rng = kars_mesh::entropy::SeededEntropy::new(77);
    let rec = kars_mesh::crypto::seal::seal_with_trailer(
        &w.agents[a].state_key,
        "outbox.v1",
        &key,
        head.to_string().as_bytes(),
        frame.as_bytes(),
        &mut rng,
    )
    .expect("sealed");
    let mut storage = w.snapshot_storage(a);
    storage.insert(key, rec);
    w.restore_storage(a, storage);
    frame
}

/// A file's chunk waiting in the outbox keeps only its frame: after a
/// restart that frame goes again as it was, the same bytes, and the peer
/// reads the message once.
#[test]
fn a_frame_only_entry_goes_again_as_it_was_after_a_restart() {
    let (mut w, a, b, bd, big) = big_message_while_bob_is_away(36, "z");
    w.crash_now(a, 1_000);
    let frame = keep_as_frame_only(&mut w, a, &bd);
    let ct = |t: &str| {
        serde_json::from_str::<serde_json::Value>(t).ok()?["ciphertext"]
            .as_str()
            .map(str::to_string)
    };
    let first = ct(&frame).expect("ciphertext");
    let before = w.wire_frames(a, "message", &bd).len();
    w.run_for(12_000);
    let again: Vec<String> = w.wire_frames(a, "message", &bd)[before..]
        .iter()
        .filter_map(|f| f["ciphertext"].as_str().map(str::to_string))
        .filter(|c| c.len() > 100_000)
        .collect();
    assert!(
        !again.is_empty() && again.iter().all(|c| *c == first),
        "sent again as it was"
    );
    assert_eq!(w.read_texts(b), std::slice::from_ref(&big));
    assert!(w.outbox_keys(a, &bd).is_empty(), "receipted, erased");
    assert!(w.warnings(a).is_empty(), "{:#?}", w.warnings(a));
}

/// What a frame-only entry cannot do: go under a new session. It is
/// dropped with a warning naming the peer (no `null` goes in its place);
/// what alice sends after it arrives.
#[test]
fn a_frame_only_entry_is_dropped_with_a_warning_under_a_new_session() {
    let (w, a, bd, _, got) = big_message_meets_a_new_session(true);
    let warned = w.warnings(a);
    assert!(
        warned
            .iter()
            .any(|l| l.contains("cannot go under its new session") && l.contains(&bd)),
        "{warned:#?}"
    );
    assert_eq!(got, ["after"]);
}

/// A 0.1.0 peer (its envelopes list no `caps`) reads only receipts of
/// their own: a reply to it while a receipt is due carries none, and the
/// receipt goes as a `kars_receipt`. Scripted from the relay's side with
/// the crate's own X3DH and ratchet, speaking exactly what 0.1.0 sent: a
/// KNOCK, then data messages whose envelope has `seq` and `epoch` only.
#[test]
fn a_peer_before_nested_receipts_gets_receipts_of_their_own() {
    use kars_mesh::crypto::identity::Identity;
    use kars_mesh::crypto::ratchet::{channel_ad, Ratchet};
    use kars_mesh::crypto::x3dh;
    use kars_mesh::entropy::SeededEntropy;
    use kars_mesh::wire::{frames, registry as wreg, time};
    use serde_json::Value;

    let (mut w, ids) = world_with(35, &["bob"]);
    let b = ids[0];
    (w.faults.latency_min_ms, w.faults.latency_max_ms) = (5, 5);
    let bd = w.did(b);
    let old = Identity::from_seed(&[0x42; 32]);
    let od = old.did().to_string();
    // Registered with prekeys, as any agent is: bob checks a KNOCK's
    // identity against the registry.
    {
        use kars_mesh::toolkit::Toolkit;
        let mut tk = Toolkit::default();
        let h = tk.identity_import(&[0x42; 32]).unwrap();
        let ts = time::format_millis(w.now);
        let reg = tk.registration_body(h, &ts, &[]).unwrap();
        let (st, _) = w
            .registry
            .handle("POST", "/v1/agents", &[], Some(reg.as_bytes()), w.now);
        assert!(st < 300, "register: {st}");
        let pk = tk
            .prekeys_generate(h, 4, &mut SeededEntropy::new(36))
            .unwrap();
        let auth = tk.authorization_header(h, &ts).unwrap();
        let (st, body) = w.registry.handle(
            "PUT",
            &format!("/v1/agents/{od}/prekeys"),
            &[("Authorization".to_string(), auth)],
            Some(pk.as_bytes()),
            w.now,
        );
        assert!(st < 300, "prekeys: {st} {}", String::from_utf8_lossy(&body));
    }
    let (_, bundle) =
        w.registry
            .handle("GET", &format!("/v1/agents/{bd}/prekeys"), &[], None, w.now);
    let bundle = wreg::parse_bundle(std::str::from_utf8(&bundle).unwrap()).unwrap();
    let mut rng = SeededEntropy::new(35);
    let (agreement, est) = x3dh::initiate(&old, &bundle, &mut rng).unwrap();
    let adata = channel_ad(&od, &bd, &agreement.associated_data);
    let mut r = Ratchet::new_initiator(
        &agreement.shared_secret,
        &bundle.signed_prekey,
        adata,
        &mut rng,
    )
    .unwrap();
    let ts = time::format_millis(w.now);
    let est_v: Value = serde_json::from_str(&frames::establishment_json(&est)).unwrap();
    let knock = json!({"v":1,"type":"knock","from":od,"to":bd,"id":frames::uuid_v4(&mut rng),
        "ts":ts,"intent":{"action":"establish_session"},"establishment":est_v});
    let message = |r: &mut Ratchet, rng: &mut SeededEntropy, seq: u64, text: &str| {
        let body = json!({"type":"message","content":text,"kars":{"seq":seq,"epoch":77}});
        let (h, ct) = r.encrypt(body.to_string().as_bytes(), rng).unwrap();
        frames::message_frame(&od, &bd, &frames::uuid_v4(rng), &ts, &h, &ct)
    };
    let raw = w.raw_connect([0x42; 32]);
    w.raw_send(raw, &knock.to_string());
    w.run_for(100);
    let first = message(&mut r, &mut rng, 0, "hello from 0.1");
    w.raw_send(raw, &first);
    w.run_for(12); // at bob (two 5 ms hops), his receipt due in 25 ms
    let reply = w.call(
        b,
        "mesh_send",
        json!({"to": od, "message": "hi, old friend"}),
    );
    assert!(reply.is_some());
    w.run_for(1_000);
    let logs: Vec<String> = w.agents[b]
        .host
        .logs
        .iter()
        .map(|(_, _, l)| l.clone())
        .collect();
    assert_eq!(w.read_texts(b), ["hello from 0.1"], "{logs:#?}");
    // What reached the old peer, decrypted as it would.
    let mut payloads = Vec::new();
    for text in w.raws[raw].received.clone() {
        let Ok(m) = frames::parse_message_frame(&text) else {
            continue;
        };
        let pt = r.decrypt(&m.header, &m.ciphertext, &mut rng).unwrap();
        payloads.push(serde_json::from_slice::<Value>(&pt).unwrap());
    }
    let data: Vec<&Value> = payloads.iter().filter(|p| p["type"] == "message").collect();
    let receipts: Vec<&Value> = payloads
        .iter()
        .filter(|p| p["type"] == "kars_receipt")
        .collect();
    assert_eq!(data.len(), 1, "{payloads:?}");
    assert_eq!(data[0]["content"], "hi, old friend");
    assert!(
        data[0]["kars"].get("ack").is_none(),
        "no receipt nested for a peer that does not read them: {}",
        data[0]
    );
    assert_eq!(receipts.len(), 1, "{payloads:?}");
    assert_eq!(receipts[0]["kars"]["upto"], 1);
    assert_eq!(receipts[0]["kars"]["epoch"], 77);
    // Once its envelopes list `ack` (it moved to a newer version), receipts ride along.
    let newer = {
        let body = json!({"type":"message","content":"upgraded","kars":{"seq":1,"epoch":77,"caps":["ack"]}});
        let (h, ct) = r.encrypt(body.to_string().as_bytes(), &mut rng).unwrap();
        frames::message_frame(&od, &bd, &frames::uuid_v4(&mut rng), &ts, &h, &ct)
    };
    let seen_before = w.raws[raw].received.len();
    w.raw_send(raw, &newer);
    w.run_for(12);
    assert!(w
        .call(b, "mesh_send", json!({"to": od, "message": "welcome"}))
        .is_some());
    w.run_for(1_000);
    let mut later = Vec::new();
    for text in &w.raws[raw].received[seen_before..] {
        let Ok(m) = frames::parse_message_frame(text) else {
            continue;
        };
        let pt = r.decrypt(&m.header, &m.ciphertext, &mut rng).unwrap();
        later.push(serde_json::from_slice::<Value>(&pt).unwrap());
    }
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0]["content"], "welcome");
    assert_eq!(later[0]["kars"]["ack"]["upto"], 2, "{}", later[0]);

    // A copy of its first message sealed again (as 0.1.0 re-sends after a
    // session change: same `seq`, no `caps`) is a duplicate: it says
    // nothing about what the peer reads now.
    let seal = |r: &mut Ratchet, rng: &mut SeededEntropy, body: Value| {
        let (h, ct) = r.encrypt(body.to_string().as_bytes(), rng).unwrap();
        frames::message_frame(&od, &bd, &frames::uuid_v4(rng), &ts, &h, &ct)
    };
    let read_new = |w: &World, r: &mut Ratchet, rng: &mut SeededEntropy, from: usize| {
        let mut out = Vec::new();
        for text in &w.raws[raw].received[from..] {
            if let Ok(m) = frames::parse_message_frame(text) {
                let pt = r.decrypt(&m.header, &m.ciphertext, rng).unwrap();
                out.push(serde_json::from_slice::<Value>(&pt).unwrap());
            }
        }
        out
    };
    let fresh = seal(
        &mut r,
        &mut rng,
        json!({"type":"message","content":"still here","kars":{"seq":2,"epoch":77,"caps":["ack"]}}),
    );
    let resealed = message(&mut r, &mut rng, 0, "hello from 0.1");
    let mark = w.raws[raw].received.len();
    w.raw_send(raw, &fresh);
    w.raw_send(raw, &resealed);
    w.run_for(15);
    assert!(w
        .call(b, "mesh_send", json!({"to": od, "message": "got it"}))
        .is_some());
    w.run_for(1_000);
    assert_eq!(w.read_texts(b), ["upgraded", "still here"]);
    let got = read_new(&w, &mut r, &mut rng, mark);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["kars"]["ack"]["upto"], 3, "{}", got[0]);

    // A large reply (a file's part, which the peer's inbox quota may
    // refuse unread) carries no receipt: the receipt goes on its own.
    let ping = seal(
        &mut r,
        &mut rng,
        json!({"type":"message","content":"ping","kars":{"seq":3,"epoch":77,"caps":["ack"]}}),
    );
    let mark = w.raws[raw].received.len();
    w.raw_send(raw, &ping);
    w.run_for(12);
    let big = "y".repeat(20 * 1024);
    assert!(w
        .call(b, "mesh_send", json!({"to": od, "message": big}))
        .is_some());
    w.run_for(1_000);
    let got = read_new(&w, &mut r, &mut rng, mark);
    assert_eq!(got.len(), 2, "the large reply and a receipt: {got:?}");
    assert_eq!(got[0]["type"], "message");
    assert!(got[0]["kars"].get("ack").is_none(), "{}", got[0]["kars"]);
    assert_eq!(got[1]["type"], "kars_receipt");
    assert_eq!(got[1]["kars"]["upto"], 4);
}

/// Sends waiting for a receipt (the peer is away) each write their own
/// outbox record and the session record, never the records of the sends
/// before them; a restart reads the records back without writing them
/// again; the peer's receipts erase every one.
#[test]
fn sends_awaiting_receipts_write_only_their_own_records() {
    let (mut w, a, b, bd) = warm_then_bob_away(36, 120_000);
    let send = |w: &mut World, text: &str| {
        let before = w.agents[a].host.stores;
        let r = w.call_sync(
            a,
            "mesh_send",
            json!({"to": bd.clone(), "message": text}),
            5_000,
        );
        assert!(!World::call_text(&r).starts_with('❌'), "{r}");
        w.agents[a].host.stores - before
    };
    let mut most = 0;
    for k in 0..40 {
        most = most.max(send(&mut w, &format!("m{k}")));
    }
    assert!(
        most <= 3,
        "one send wrote {most} records with up to 40 waiting"
    );
    assert_eq!(w.outbox_keys(a, &bd).len(), 40);
    w.crash_now(a, 500);
    w.run_for(3_000);
    assert_eq!(w.outbox_keys(a, &bd).len(), 40, "kept across the restart");
    let after_restart = send(&mut w, "m40");
    assert!(
        after_restart <= 3,
        "the first send after a restart wrote {after_restart} records"
    );
    assert_eq!(w.outbox_keys(a, &bd).len(), 41);
    // Bob comes back: everything arrives once, and every record goes.
    w.run_for(150_000);
    let got = w.read_texts(b);
    let want: Vec<String> = (0..41).map(|k| format!("m{k}")).collect();
    assert_eq!(got, want);
    w.run_for(30_000);
    assert_eq!(
        w.outbox_keys(a, &bd),
        Vec::<String>::new(),
        "receipted records erased"
    );
    // And a send after the receipts is stored and erased the same way.
    assert!(send(&mut w, "later") <= 3);
    w.run_for(5_000);
    assert_eq!(w.read_texts(b), ["later"]);
    w.run_for(30_000);
    assert_eq!(w.outbox_keys(a, &bd), Vec::<String>::new());
}

/// A message that no reader waits for costs no commit of its own. Its frame's
/// engine call stores it and sends nothing (a group-commit host carries such
/// a batch out without committing, js-host/ENGINE.md rule 5); its relay ack
/// leaves with the next thing that leaves anyway, in the same engine call:
/// the reader's answer if it comes first, else the receipt to the sender
/// (RECEIPT_DELAY_MS later). Acked at once, every message made its batch
/// commit for the ack alone, and the reader's call commit again: two fsyncs
/// per message where one does (bench/mesh.mjs's throughput pair, whose
/// reader is not always waiting).
#[test]
fn a_message_no_reader_waits_for_costs_no_commit_of_its_own() {
    let (mut w, ids) = world_with(31, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    w.send(a, b, "m0");
    w.run_for(3_000);
    assert_eq!(w.read_texts(b), ["m0"]);
    w.run_for(3_000);
    let bob_lines = |w: &World| journal_of(w, "bob");
    let arrived = |w: &World| {
        bob_lines(w)
            .iter()
            .position(|l| l.contains("frame@") && l.contains("message"))
    };
    let cmds_of = |l: &str| {
        l.split_once("=> ")
            .map_or(String::new(), |x| x.1.to_string())
    };
    let until_arrival = |w: &mut World, what: &str| {
        let mut waited = 0;
        while arrived(w).is_none() {
            assert!(waited < 1_000, "{what} did not reach bob");
            w.run_for(1);
            waited += 1;
        }
    };

    // m1: the reader comes 5 ms after it, before the receipt is due.
    w.journal = Some(Vec::new());
    w.send(a, b, "m1");
    until_arrival(&mut w, "m1");
    let at = arrived(&w).unwrap_or(0);
    let cmds = cmds_of(&bob_lines(&w)[at]);
    assert!(cmds.contains("store inbox/"), "m1 is stored: {cmds}");
    assert!(
        !cmds.contains("send ") && !cmds.contains("tool-result") && !cmds.contains("http "),
        "nothing of the arrival leaves, so its batch need not commit: {cmds}"
    );
    w.run_for(5);
    let before_read = bob_lines(&w)[at + 1..].to_vec();
    assert!(
        before_read.iter().all(|l| !l.contains("send ")),
        "nothing left before the reader came: {before_read:?}"
    );
    let first = bob_lines(&w).len();
    assert_eq!(w.read_texts(b), ["m1"]);
    let read = bob_lines(&w)[first..]
        .iter()
        .find(|l| l.contains("tool mesh_inbox"))
        .cloned()
        .unwrap_or_default();
    let cmds = cmds_of(&read);
    assert!(
        cmds.contains("tool-result") && cmds.contains("send ack"),
        "the held ack leaves with the reader's answer, in one engine call: {cmds}"
    );

    // m2: no reader; the ack leaves with the receipt, in one engine call.
    w.run_for(3_000);
    w.journal = Some(Vec::new());
    w.send(a, b, "m2");
    until_arrival(&mut w, "m2");
    let at = arrived(&w).unwrap_or(0);
    w.run_for(100);
    let after = bob_lines(&w)[at + 1..].to_vec();
    let leaving: Vec<&String> = after.iter().filter(|l| l.contains("send ")).collect();
    assert_eq!(leaving.len(), 1, "one engine call sends: {after:?}");
    let cmds = cmds_of(leaving[0]);
    assert!(
        cmds.contains("send message") && cmds.contains("send ack"),
        "the receipt and the held ack together: {cmds}"
    );
    assert_eq!(w.read_texts(b), ["m2"]);
    assert!(w.violations.is_empty(), "{:?}", w.violations);
}
