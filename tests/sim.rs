//! Deterministic simulation tests: real engines (native build) against an
//! emulated core-5.0.0 relay and registry, over a virtual network with
//! drops, duplicates, reordering, relay restarts and agent crashes at any
//! point between two commands. The harness is in tests/sim/.
//!
//! Every test is seeded and runs on a virtual clock; a failure message
//! carries the seed, the scenario and what was expected versus seen.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "sim/mod.rs"]
mod sim;

use kars_mesh::crypto::identity::Identity;
use kars_mesh::crypto::ratchet::{channel_ad, Ratchet};
use kars_mesh::crypto::x3dh;
use kars_mesh::entropy::SeededEntropy;
use kars_mesh::wire::{b64, frames, registry as wreg, time};
use serde_json::{json, Value};
use sim::registry::UnknownHeartbeat;
use sim::world::{CrashOn, CrashPlan, Faults, Outcome, Prefix, World, EPOCH_MS};
use sim::Rng;
use std::collections::{BTreeMap, BTreeSet};

// ------------------------------------------------------------------ helpers

/// One direction of traffic: the mesh_send calls made, in order.
struct Flow {
    from: usize,
    to: usize,
    /// Prefix of every message content in this flow; the suffix is the index.
    prefix: String,
    sent: Vec<(usize, String)>,
}

impl Flow {
    fn new(w: &World, from: usize, to: usize) -> Self {
        Flow {
            from,
            to,
            prefix: format!("{}->{} #", w.agents[from].name, w.agents[to].name),
            sent: Vec::new(),
        }
    }

    fn content(&self, idx: usize) -> String {
        format!("{}{idx:04}", self.prefix)
    }

    /// Issue the next mesh_send; `false` if the sender is down.
    fn send_next(&mut self, w: &mut World) -> bool {
        let idx = self.sent.len();
        match w.send(self.from, self.to, &self.content(idx)) {
            Some(call) => {
                self.sent.push((idx, call));
                true
            }
            None => false,
        }
    }

    fn idx(&self, content: &str) -> Option<usize> {
        content.strip_prefix(&self.prefix)?.parse().ok()
    }
}

#[derive(Default, Debug)]
struct FlowSummary {
    confirmed: usize,
    lost_committed: usize,
    lost_uncommitted: usize,
    failed: usize,
    read: usize,
}

/// Check one flow end to end; appends human-readable problems.
///
/// * must arrive: every call answered ✅, and every call lost in a crash
///   whose message was already durable in the sender's outbox;
/// * may arrive: calls lost in a crash before the message was committed;
/// * `mesh_inbox` results: each message at most once, in send order;
/// * the receiver's persisted inbox: each message exactly once, and exactly
///   the set `mesh_inbox` returned.
fn check_flow(w: &World, f: &Flow, problems: &mut Vec<String>) -> FlowSummary {
    let mut s = FlowSummary::default();
    let label = f.prefix.trim_end_matches(" #").to_string();
    let mut must = BTreeSet::new();
    let mut may = BTreeSet::new();
    for (idx, call) in &f.sent {
        let c = &w.agents[f.from].calls[call];
        match &c.outcome {
            Outcome::Done(_) if c.ok() => {
                s.confirmed += 1;
                must.insert(*idx);
            }
            Outcome::Done(_) => {
                s.failed += 1;
                problems.push(format!("{label}: mesh_send #{idx} failed: {}", c.text()));
            }
            Outcome::Lost { committed: true } => {
                s.lost_committed += 1;
                must.insert(*idx);
            }
            Outcome::Lost { committed: false } => {
                s.lost_uncommitted += 1;
                may.insert(*idx);
            }
            Outcome::Pending => problems.push(format!(
                "{label}: mesh_send #{idx} (issued at {} ms) never answered",
                c.issued_at - EPOCH_MS
            )),
        }
    }
    let from_did = w.did(f.from);
    let reads: Vec<(usize, &str)> = w.agents[f.to]
        .reads
        .iter()
        .filter(|r| r.from == from_did)
        .filter_map(|r| {
            let i = f.idx(&r.content());
            if i.is_none() {
                problems.push(format!("{label}: unexpected message {:?}", r.content()));
            }
            if r.evidence != "encrypted" {
                problems.push(format!(
                    "{label}: evidence {:?} for {:?}",
                    r.evidence,
                    r.content()
                ));
            }
            i.map(|i| (i, r.call_id.as_str()))
        })
        .collect();
    s.read = reads.len();
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, _) in &reads {
        *counts.entry(*i).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    if !dups.is_empty() {
        problems.push(format!(
            "{label}: mesh_inbox returned messages more than once (#idx: times): {dups:?}"
        ));
    }
    // An inversion inside one mesh_inbox answer means the inbox listed a
    // later message before an earlier one it already had; across answers,
    // that the later one was released before the earlier one arrived.
    let (mut within, mut across) = (Vec::new(), Vec::new());
    for pair in reads.windows(2) {
        if pair[1].0 <= pair[0].0 {
            if pair[0].1 == pair[1].1 {
                within.push((pair[0].0, pair[1].0));
            } else {
                across.push((pair[0].0, pair[1].0));
            }
        }
    }
    for (v, how) in [
        (&within, "within one mesh_inbox answer"),
        (&across, "across mesh_inbox answers"),
    ] {
        if !v.is_empty() {
            problems.push(format!(
                "{label}: {} message(s) returned out of send order {how} (previous #, next #): {:?}",
                v.len(),
                &v[..v.len().min(12)]
            ));
        }
    }
    let got: BTreeSet<usize> = counts.keys().copied().collect();
    let missing: Vec<_> = must.difference(&got).collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{label}: {} confirmed/committed message(s) never delivered: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        ));
    }
    let phantom: Vec<_> = got
        .iter()
        .filter(|i| !must.contains(i) && !may.contains(i))
        .collect();
    if !phantom.is_empty() {
        problems.push(format!(
            "{label}: delivered but never sent/committed: {phantom:?}"
        ));
    }
    // The durable inbox: one record per message.
    let mut stored: BTreeMap<usize, usize> = BTreeMap::new();
    for e in w.persisted_inbox(f.to) {
        if e["from"] == from_did.as_str() {
            if let Some(i) = e["payload"]["content"].as_str().and_then(|c| f.idx(c)) {
                *stored.entry(i).or_default() += 1;
            }
        }
    }
    let multi: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    if !multi.is_empty() {
        problems.push(format!(
            "{label}: persisted inbox holds messages more than once: {multi:?}"
        ));
    }
    let unreturned: Vec<_> = stored.keys().filter(|i| !got.contains(i)).collect();
    if !unreturned.is_empty() {
        problems.push(format!(
            "{label}: in the persisted inbox but never returned by mesh_inbox: {unreturned:?}"
        ));
    }
    s
}

fn common_checks(w: &World, problems: &mut Vec<String>) {
    problems.extend(w.violations.iter().cloned());
    for a in &w.agents {
        for (id, v) in &a.unexpected_results {
            problems.push(format!("{}: result for unknown call {id}: {v}", a.name));
        }
        if !a.up() {
            problems.push(format!("{} is down at the end", a.name));
        }
    }
}

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

fn fail_if(seed: u64, scenario: &str, problems: &[String], w: &World) {
    if problems.is_empty() {
        return;
    }
    let mut msg = format!(
        "{scenario} (seed {seed}): {} problem(s):\n  - {}\n",
        problems.len(),
        problems.join("\n  - ")
    );
    for a in &w.agents {
        msg.push_str(&format!("\n{} ({}) crashes:", a.name, a.did));
        for c in &a.crashes {
            msg.push_str(&format!(
                "\n    at {} ms on {} after {}/{} commands{}; lost: {:?}",
                c.at - EPOCH_MS,
                c.on,
                c.applied,
                c.total,
                if c.skipped { " (skipped)" } else { "" },
                c.lost
            ));
        }
        let warns = w.warnings(w.agents.iter().position(|x| x.did == a.did).unwrap_or(0));
        msg.push_str(&format!("\n  last warnings ({} total):", warns.len()));
        for l in warns.iter().rev().take(8).rev() {
            msg.push_str(&format!("\n    {l}"));
        }
    }
    panic!("{msg}");
}

/// Start `names` and let them register and connect.
fn world_with(seed: u64, names: &[&str]) -> (World, Vec<usize>) {
    let mut w = World::new(seed);
    if JOURNAL.with(|j| j.get()) {
        w.journal = Some(Vec::new());
    }
    let ids = names.iter().map(|n| w.add_agent(n, json!({}))).collect();
    w.run_for(3_000);
    (w, ids)
}

/// Drain an inbox after the network settled (the agent must be up).
fn drain(w: &mut World, i: usize) {
    for _ in 0..3 {
        if w.read_inbox(i).is_empty() {
            break;
        }
    }
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

// ------------------------------------------------------ forged and malformed

fn frame_with(v: &Value, edits: &[(&str, Value)]) -> String {
    let mut v = v.clone();
    for (k, x) in edits {
        v[*k] = x.clone();
    }
    v.to_string()
}

fn uuid(rng: &mut Rng) -> String {
    let mut e = SeededEntropy::new(rng.next_u64());
    frames::uuid_v4(&mut e)
}

/// Forged and malformed input injected into an agent's socket is rejected,
/// the agent keeps working, and nothing already in its inbox is lost.
#[test]
fn forged_and_malformed_frames_are_rejected() {
    let seed = 5;
    let (mut w, ids) = world_with(seed, &["alice", "bob", "carol"]);
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let (ad, bd, cd) = (w.did(a), w.did(b), w.did(c));
    let mut rng = Rng::new(seed);
    let mut to_b = Flow::new(&w, a, b);
    let mut to_a = Flow::new(&w, b, a);
    // A session with three messages waiting unread in bob's inbox.
    for _ in 0..3 {
        to_b.send_next(&mut w);
        w.run_for(1_000);
    }
    to_a.send_next(&mut w);
    w.run_for(3_000);
    assert_eq!(w.status(b)["unread"], 3, "setup: three unread at bob");

    // Carol (a real agent) writes to bob, but her frames are intercepted.
    w.agents[c].capture = true;
    w.send(c, b, "carol's own words");
    w.run_for(3_000);
    let carol_msg: Value = w.agents[c]
        .captured
        .iter()
        .filter_map(|t| serde_json::from_str::<Value>(t).ok())
        .find(|v| v["type"] == "message")
        .expect("carol produced a message frame");
    let genuine_text = w.agents[a]
        .wire
        .iter()
        .rev()
        .map(|(_, t)| t.clone())
        .find(|t| t.contains("\"type\":\"message\""))
        .unwrap();
    let ts = time::format_millis(w.now);
    let b64s = |s: &str| b64::encode_std(s.as_bytes());
    let rand_b64 = |rng: &mut Rng, n: usize| {
        let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
        b64::encode_std(&bytes)
    };
    let msg = |id: String, from: &str, dh: Value, ct: Value| {
        json!({"v":1,"type":"message","from":from,"to":bd,"id":id,"ts":ts,"header":{"dh":dh,"pn":0,"n":0},"ciphertext":ct}).to_string()
    };
    let knock = |id: String, from: &str, est: Value| {
        json!({"v":1,"type":"knock","from":from,"to":bd,"id":id,"ts":ts,"intent":{"action":"establish_session"},"establishment":est}).to_string()
    };
    let valid_key = b64::encode_std(Identity::from_seed(&[9; 32]).x25519_public());
    let mut bad: Vec<(&str, String)> = vec![
        // Spoofed `from`: carol's genuine ciphertext claiming to be alice.
        ("spoofed from (carol's ciphertext)", frame_with(&carol_msg, &[("from", json!(ad)), ("id", json!(uuid(&mut rng)))])),
        ("garbage ciphertext as alice", {
            let (dh, ct) = (rand_b64(&mut rng, 32), rand_b64(&mut rng, 80));
            msg(uuid(&mut rng), &ad, json!(dh), json!(ct))
        }),
        ("replay of alice's last frame under a new id", {
            let v: Value = serde_json::from_str(&genuine_text).unwrap();
            frame_with(&v, &[("id", json!(uuid(&mut rng)))])
        }),
        // Plaintext from DIDs not trusted for it.
        ("plaintext:true from a stranger (TS dialect)", json!({"v":1,"type":"message","from":cd,"to":bd,"id":uuid(&mut rng),"ts":ts,"ciphertext":b64s(r#"{"type":"message","content":"trust me"}"#),"plaintext":true}).to_string()),
        ("payload from a stranger (controller dialect)", json!({"type":"message","to":bd,"from":cd,"id":"ctrl-00112233445566778899aabbccddeeff","payload":b64s(r#"{"type":"message","content":"trust me 2"}"#)}).to_string()),
        ("plaintext:true claiming to be alice", json!({"v":1,"type":"message","from":ad,"to":bd,"id":uuid(&mut rng),"ts":ts,"ciphertext":b64s(r#"{"type":"message","content":"it's me, alice"}"#),"plaintext":true}).to_string()),
        // Broken frames.
        ("truncated frame", genuine_text[..genuine_text.len() / 2].to_string()),
        ("truncated frame (one byte short)", genuine_text[..genuine_text.len() - 1].to_string()),
        ("oversized frame (4 MiB + 1)", {
            let pad = "A".repeat(4 * 1024 * 1024);
            let f = msg(uuid(&mut rng), &ad, json!(rand_b64(&mut rng, 32)), json!(pad));
            format!("{f}{}", " ".repeat((4 * 1024 * 1024 + 1usize).saturating_sub(f.len())))
        }),
        ("bad base64 in header.dh", msg(uuid(&mut rng), &ad, json!("!!not*base64!!"), json!(rand_b64(&mut rng, 64)))),
        ("header.dh of 16 bytes", msg(uuid(&mut rng), &ad, json!(rand_b64(&mut rng, 16)), json!(rand_b64(&mut rng, 64)))),
        ("header.dh not a string", msg(uuid(&mut rng), &ad, json!(12345), json!(rand_b64(&mut rng, 64)))),
        ("bad base64 in ciphertext", msg(uuid(&mut rng), &ad, json!(rand_b64(&mut rng, 32)), json!("%%%%"))),
        ("ciphertext shorter than nonce+tag", msg(uuid(&mut rng), &ad, json!(rand_b64(&mut rng, 32)), json!(rand_b64(&mut rng, 10)))),
        ("header.n not a number", json!({"v":1,"type":"message","from":ad,"to":bd,"id":uuid(&mut rng),"header":{"dh":rand_b64(&mut rng, 32),"pn":0,"n":"zero"},"ciphertext":rand_b64(&mut rng, 64)}).to_string()),
        ("not JSON", "hello relay".to_string()),
        ("empty frame", String::new()),
        ("JSON array", "[1,2,3]".to_string()),
        ("JSON null", "null".to_string()),
        ("type is a number", r#"{"type":42}"#.to_string()),
        ("unknown type", json!({"type":"pending_messages","messages":[genuine_text.clone()]}).to_string()),
        ("message without id", json!({"v":1,"type":"message","from":ad,"to":bd,"header":{"dh":rand_b64(&mut rng, 32),"pn":0,"n":0},"ciphertext":rand_b64(&mut rng, 64)}).to_string()),
        ("message with a non-DID from", msg(uuid(&mut rng), "mallory", json!(rand_b64(&mut rng, 32)), json!(rand_b64(&mut rng, 64)))),
        ("message for someone else", frame_with(&serde_json::from_str(&genuine_text).unwrap(), &[("to", json!(cd)), ("id", json!(uuid(&mut rng)))])),
        // KNOCKs with bad establishments, claiming to be alice.
        ("knock without establishment", json!({"v":1,"type":"knock","from":ad,"to":bd,"id":uuid(&mut rng),"ts":ts}).to_string()),
        ("knock: ik bad base64", knock(uuid(&mut rng), &ad, json!({"ik":"***","ek":valid_key}))),
        ("knock: ek 31 bytes", knock(uuid(&mut rng), &ad, json!({"ik":valid_key,"ek":rand_b64(&mut rng, 31)}))),
        ("knock: ek all zero (low order)", knock(uuid(&mut rng), &ad, json!({"ik":valid_key,"ek":b64::encode_std(&[0u8; 32])}))),
        ("knock: unknown one-time prekey", knock(uuid(&mut rng), &ad, json!({"ik":valid_key,"ek":valid_key,"otk":987654}))),
        ("knock: establishment is a string", knock(uuid(&mut rng), &ad, json!("ik=...,ek=..."))),
        ("knock: valid-looking keys, no OPK", knock(uuid(&mut rng), &ad, json!({"ik":valid_key,"ek":b64::encode_std(Identity::from_seed(&[8; 32]).x25519_public())}))),
        ("knock_accept for an unknown knock", json!({"v":1,"type":"knock_accept","from":ad,"to":bd,"id":uuid(&mut rng),"knock_id":"nope","ts":ts}).to_string()),
        ("knock_reject for an unknown knock", json!({"v":1,"type":"knock_reject","from":ad,"to":bd,"id":uuid(&mut rng),"knock_id":"nope","reason":"policy_denied","ts":ts}).to_string()),
    ];
    let mut problems = Vec::new();
    let before = w.status(b);
    for (name, text) in bad.drain(..) {
        assert!(w.inject(b, &text), "bob has an open socket");
        w.run_for(200);
        let s = w.status(b);
        if s["unread"] != 3 {
            problems.push(format!(
                "after {name:?}: bob's unread count is {} (expected 3)",
                s["unread"]
            ));
        }
        if !w.agents[b].up() {
            problems.push(format!("{name:?} crashed bob"));
        }
    }
    let after = w.status(b);
    let stat = |v: &Value, k: &str| v["stats"][k].as_u64().unwrap_or(0);
    if stat(&after, "plaintext_dropped") < stat(&before, "plaintext_dropped") + 3 {
        problems.push(format!(
            "plaintext_dropped went {} -> {}; expected +3 (stranger TS, stranger payload, alice plaintext)",
            stat(&before, "plaintext_dropped"),
            stat(&after, "plaintext_dropped")
        ));
    }
    // The sessions still work both ways.
    to_b.send_next(&mut w);
    w.run_for(1_000);
    to_a.send_next(&mut w);
    w.run_for(5_000);
    drain(&mut w, b);
    drain(&mut w, a);
    let sb = check_flow(&w, &to_b, &mut problems);
    let sa = check_flow(&w, &to_a, &mut problems);
    if sb.read != 4 || sa.read != 2 {
        problems.push(format!(
            "expected 4 messages at bob and 2 at alice; got {sb:?} / {sa:?}"
        ));
    }
    let extra: Vec<String> = w.agents[b]
        .reads
        .iter()
        .filter(|r| r.from != ad)
        .map(|r| format!("{} from {} ({})", r.content(), r.from, r.evidence))
        .collect();
    if !extra.is_empty() {
        problems.push(format!("bob's inbox accepted forged input: {extra:?}"));
    }
    common_checks(&w, &mut problems);
    eprintln!("bob stats after the barrage: {}", after["stats"]);
    fail_if(seed, "forged and malformed input", &problems, &w);
}

/// A KNOCK claiming `from: alice` but carrying the attacker's own identity
/// key must not give the attacker a session that bob attributes to alice.
/// The relay does not bind `from` (agentmesh-wire.md §12.2, §14) and KNOCKs
/// are unsigned, so the only binding is the initiator's X25519 identity key:
/// the responder must check it against alice's registered identity
/// (`identity_key` / `identity_key_ed` hashing to her DID, §3.4) before it
/// accepts the session.
#[test]
fn knock_impersonation_with_attackers_own_identity_key_is_refused() {
    let seed = 11;
    let (mut w, ids) = world_with(seed, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let (ad, bd) = (w.did(a), w.did(b));
    // A genuine session exists (alice opened it) and works.
    let mut ab = Flow::new(&w, a, b);
    let mut ba = Flow::new(&w, b, a);
    ab.send_next(&mut w);
    w.run_for(2_000);
    ba.send_next(&mut w);
    w.run_for(2_000);
    // Mallory: any key pair she owns; she fetches bob's bundle like anyone.
    let mallory = Identity::from_seed(&[0x66; 32]);
    let (_, bundle) =
        w.registry
            .handle("GET", &format!("/v1/agents/{bd}/prekeys"), &[], None, w.now);
    let bundle = wreg::parse_bundle(std::str::from_utf8(&bundle).unwrap()).unwrap();
    bundle.verify_for(&bd).unwrap();
    let mut rng = SeededEntropy::new(3);
    let (agreement, est) = x3dh::initiate(&mallory, &bundle, &mut rng).unwrap();
    // Channel AD with alice's DID as the initiator, exactly as bob computes it.
    let adata = channel_ad(&ad, &bd, &agreement.associated_data);
    let mut r = Ratchet::new_initiator(
        &agreement.shared_secret,
        &bundle.signed_prekey,
        adata,
        &mut rng,
    )
    .unwrap();
    let ts = time::format_millis(w.now);
    let est_v: Value = serde_json::from_str(&frames::establishment_json(&est)).unwrap();
    let knock = json!({"v":1,"type":"knock","from":ad,"to":bd,"id":frames::uuid_v4(&mut rng),"ts":ts,"intent":{"action":"establish_session"},"establishment":est_v});
    let (h, ct) = r
        .encrypt(
            br#"{"type":"message","content":"alice here: please send me the keys"}"#,
            &mut rng,
        )
        .unwrap();
    let msg = frames::message_frame(&ad, &bd, &frames::uuid_v4(&mut rng), &ts, &h, &ct);
    // Through the relay, from mallory's own authenticated connection.
    let m = w.raw_connect([0x66; 32]);
    w.raw_send(m, &knock.to_string());
    w.run_for(100);
    w.raw_send(m, &msg);
    w.run_for(5_000);
    // The genuine session must be unaffected.
    ab.send_next(&mut w);
    w.run_for(2_000);
    ba.send_next(&mut w);
    // Five minutes of resends (every 25 s) to recover, if it can.
    w.run_for(5 * 60_000);
    drain(&mut w, a);
    drain(&mut w, b);
    let mut problems = Vec::new();
    let forged: Vec<String> = w.agents[b]
        .reads
        .iter()
        .filter(|r| r.from == ad && ab.idx(&r.content()).is_none())
        .map(|r| format!("{:?} (evidence {})", r.content(), r.evidence))
        .collect();
    if !forged.is_empty() {
        problems.push(format!(
            "bob accepted a session KNOCKed in alice's name with mallory's identity key and \
             delivered mallory's message as alice's: {forged:?}"
        ));
    }
    let sab = check_flow(&w, &ab, &mut Vec::new());
    let sba = check_flow(&w, &ba, &mut Vec::new());
    if sab.read != 2 || sba.read != 2 {
        problems.push(format!(
            "the forged KNOCK disturbed the genuine session: alice->bob read {} of 2, bob->alice read {} of 2",
            sab.read, sba.read
        ));
    }
    check_flow(&w, &ab, &mut problems);
    check_flow(&w, &ba, &mut problems);
    fail_if(seed, "KNOCK impersonation", &problems, &w);
}

// ----------------------------------------------------------- bad bundles

/// A bundle whose SPK signature does not verify: mesh_send fails with a
/// clear error about the signature and nothing is sent; once the registry
/// serves the genuine bundle again, sending works.
#[test]
fn bundle_with_bad_spk_signature_is_refused() {
    let seed = 3;
    let (mut w, ids) = world_with(seed, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let bd = w.did(b);
    w.registry.tamper_spk_signature.insert(bd.clone());
    let r = w.call_sync(
        a,
        "mesh_send",
        json!({"to": bd, "message": "hello?"}),
        10_000,
    );
    let text = World::call_text(&r);
    assert!(text.starts_with('❌'), "expected an error, got {text:?}");
    assert!(
        text.to_lowercase().contains("signature"),
        "error does not mention the signature: {text:?}"
    );
    assert!(r["details"]["mesh"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("signature")));
    w.run_for(5_000);
    let sent: Vec<Value> = ["knock", "message"]
        .iter()
        .flat_map(|k| w.wire_frames(a, k, &bd))
        .collect();
    assert!(
        sent.is_empty(),
        "frames went to bob despite the bad bundle: {sent:?}"
    );
    assert_eq!(w.relay.stored_for(&bd), 0);
    assert!(w.read_inbox(b).is_empty());
    assert_eq!(
        w.status(a)["sessions"],
        0,
        "a session was created from a refused bundle"
    );
    // The registry serves the genuine bundle again: a retry works.
    w.registry.tamper_spk_signature.clear();
    let r = w.call_sync(
        a,
        "mesh_send",
        json!({"to": bd, "message": "hello again"}),
        10_000,
    );
    assert!(
        World::call_text(&r).starts_with("✓ Message sent to "),
        "{r}"
    );
    w.run_for(3_000);
    let got = w.read_inbox(b);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].content(), "hello again");
}

// ------------------------------------------------------- trusted plaintext

/// With `trusted_plaintext: [controller]`, plaintext frames from that DID in
/// both dialects land in the inbox with evidence "plaintext" — live, and
/// when stored by the relay while the agent was down.
#[test]
fn trusted_plaintext_from_the_controller_in_both_dialects() {
    let seed = 8;
    let ctrl_seed = [0x42; 32];
    let ctrl_did = Identity::from_seed(&ctrl_seed).did().to_string();
    let mut w = World::new(seed);
    let a = w.add_agent("alice", json!({"trusted_plaintext": [ctrl_did]}));
    w.run_for(3_000);
    let ad = w.did(a);
    let ctrl = w.raw_connect(ctrl_seed);
    let ts = time::format_millis(w.now);
    // TS dialect: ciphertext = btoa(JSON.stringify(payload)), plaintext:true.
    let p1 = json!({"type":"pair_request","content":"pair with me","n":1});
    let f1 = json!({"v":1,"type":"message","from":ctrl_did,"to":ad,"id":"5c8e2a4e-0b7c-4d5e-9f1a-2b3c4d5e6f70","ts":ts,
        "ciphertext": b64::encode_std(p1.to_string().as_bytes()),"plaintext":true});
    w.raw_send(ctrl, &f1.to_string());
    w.run_for(2_000);
    // kars controller dialect while alice is down: stored, pushed on connect.
    w.crash_now(a, 5_000);
    let p2 = json!({"type":"command","content":"déjà vu — ünïcödé ✓","n":2});
    let f2 = json!({"type":"message","to":ad,"from":ctrl_did,"id":"ctrl-0123456789abcdef0123456789abcdef",
        "payload": b64::encode_std(p2.to_string().as_bytes())});
    w.raw_send(ctrl, &f2.to_string());
    w.run_for(1_000);
    assert_eq!(
        w.relay.stored_for(&ad),
        1,
        "the relay stores the frame for the offline agent"
    );
    w.run_for(10_000);
    assert!(w.agents[a].up(), "alice restarted");
    let msgs = w.read_inbox(a);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    for (m, p) in msgs.iter().zip([&p1, &p2]) {
        assert_eq!(m.from, ctrl_did);
        assert_eq!(m.evidence, "plaintext");
        assert_eq!(&m.payload, p);
    }
    assert_eq!(w.relay.stored_for(&ad), 0, "consumed frames are acked");
    // Redelivery of the same frames is not a second message.
    w.raw_send(ctrl, &f1.to_string());
    w.raw_send(ctrl, &f2.to_string());
    w.run_for(2_000);
    assert!(
        w.read_inbox(a).is_empty(),
        "a redelivered plaintext frame was delivered again"
    );
}

// --------------------------------------------------------- registry restart

fn registry_restart(seed: u64, mode: UnknownHeartbeat) {
    let (mut w, ids) = world_with(seed, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let ad = w.did(a);
    w.registry.unknown_heartbeat = mode;
    let r = w.call_sync(
        b,
        "mesh_send",
        json!({"to": ad, "message": "before"}),
        10_000,
    );
    assert!(World::call_text(&r).starts_with("✓ Message sent to "));
    w.run_for(2_000);
    assert_eq!(w.read_inbox(a).len(), 1);
    let hb_before = w.registry.requests.len();
    w.registry.restart();
    assert!(!w.registry.is_registered(&ad));
    // Past the 60 s registry heartbeat (and a second one, for slack).
    w.run_for(125_000);
    let hb: Vec<String> = w.registry.requests[hb_before..]
        .iter()
        .map(|r| {
            format!(
                "{} {} -> {}",
                r.method,
                r.path.replace(&ad, "<alice>"),
                r.status
            )
        })
        .collect();
    assert!(
        w.registry.is_registered(&ad),
        "alice did not register again within 125 s of the registry restart ({mode:?}); registry saw: {hb:?}"
    );
    assert!(
        w.registry.opk_count(&ad).unwrap_or(0) > 0,
        "alice did not re-upload her bundle: {hb:?}"
    );
    // A newcomer can open a session to her.
    let d = w.add_agent("dave", json!({}));
    w.run_for(3_000);
    let r = w.call_sync(
        d,
        "mesh_send",
        json!({"to": ad, "message": "hi from dave"}),
        10_000,
    );
    assert!(
        World::call_text(&r).starts_with("✓ Message sent to "),
        "{r}"
    );
    let knock = w.wire_frames(d, "knock", &ad);
    assert!(
        knock[0]["establishment"].get("otk").is_some(),
        "the re-uploaded bundle has fresh OPKs"
    );
    w.run_for(3_000);
    let got = w.read_inbox(a);
    assert_eq!(
        got.iter().map(|m| m.content()).collect::<Vec<_>>(),
        ["hi from dave"]
    );
    // The old session still works.
    w.call_sync(
        b,
        "mesh_send",
        json!({"to": ad, "message": "after"}),
        10_000,
    );
    w.run_for(2_000);
    assert_eq!(
        w.read_inbox(a)
            .iter()
            .map(|m| m.content())
            .collect::<Vec<_>>(),
        ["after"]
    );
    let mut problems = Vec::new();
    common_checks(&w, &mut problems);
    fail_if(seed, "registry restart", &problems, &w);
}

/// Registry restart with an idealised registry answering the heartbeat of an
/// unknown DID with 404: the agent registers again and re-uploads.
#[test]
fn registry_restart_heartbeat_404_reregisters() {
    registry_restart(13, UnknownHeartbeat::NotFound404);
}

/// The same against the real core-5.0.0 behaviour: its heartbeat endpoint
/// authenticates first, so after a wipe the answer is 401 "Agent not
/// registered", never 404 (registry/app.py `heartbeat` →
/// `verify_ed25519_timestamp_auth`).
#[test]
fn registry_restart_heartbeat_401_as_core_5_reregisters() {
    registry_restart(13, UnknownHeartbeat::Unauthorized401);
}

// ------------------------------------------------- minimal reproductions

/// Two messages delivered in reverse order (no crash, no loss): the second is
/// held until the first arrives, and mesh_inbox must then return them in
/// send order.
#[test]
fn reordered_messages_are_returned_in_send_order() {
    let (mut w, ids) = world_with(17, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let bd = w.did(b);
    w.send(a, b, "m0");
    w.run_for(3_000);
    assert_eq!(
        w.read_inbox(b).len(),
        1,
        "setup: session open, receipts flowing"
    );
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
    let got: Vec<String> = w.read_inbox(b).iter().map(|m| m.content()).collect();
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
    let (mut w, ids) = world_with(19, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    w.send(a, b, "m0");
    w.run_for(3_000);
    assert_eq!(w.read_inbox(b).len(), 1);
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
    let got: Vec<String> = w.read_inbox(b).iter().map(|m| m.content()).collect();
    assert_eq!(got, ["m1"], "m1 must be delivered exactly once");
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
    let snap = w.snapshot_storage(a);
    w.send(a, b, "m1");
    w.run_for(3_000);
    assert!(w.violations.is_empty(), "{:?}", w.violations);
    w.crash_now(a, 1_000);
    w.restore_storage(a, snap);
    w.run_for(3_000);
    w.send(a, b, "m2 (after the rollback)");
    w.run_for(3_000);
    assert!(
        w.violations.iter().any(|v| v.contains("MESSAGE KEY REUSE")),
        "the oracle missed a rolled-back ratchet: {:?}",
        w.violations
    );
}

/// The same identity started twice: the relay replaces the first socket
/// (1000 session_replaced), the displaced engine stops and says why instead
/// of fighting for the DID, and the newer instance gets the traffic.
#[test]
fn second_instance_of_an_identity_is_replaced_without_a_fight() {
    let (mut w, ids) = world_with(31, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    w.send(b, a, "before");
    w.run_for(3_000);
    assert_eq!(w.read_inbox(a).len(), 1);
    let a2 = w.clone_agent(a, "alice-2");
    w.run_for(5 * 60_000);
    assert_eq!(w.relay.stats.replaced, 1, "{:?}", w.relay.stats);
    assert!(
        w.relay.stats.connects <= 3,
        "reconnect fight: {:?}",
        w.relay.stats
    );
    let st = w.status(a);
    assert_eq!(st["connected"], false);
    assert!(
        st["relay_problem"]
            .as_str()
            .unwrap_or("")
            .contains("another process"),
        "{st}"
    );
    assert_eq!(w.status(a2)["connected"], true);
    w.send(b, a, "after");
    w.run_for(3_000);
    let got: Vec<String> = w.read_inbox(a2).iter().map(|m| m.content()).collect();
    assert_eq!(got, ["after"]);
}

// ---------------------------------------------------------- relay semantics

/// The relay emulation itself: connect proof, replacement, store-and-forward
/// with global de-duplication, ack, staleness, restart.
#[test]
fn relay_emulation_semantics() {
    use sim::relay::{Out, Owner, Relay};
    let mut r = Relay::new();
    let now = EPOCH_MS;
    let id_a = Identity::from_seed(&[1; 32]);
    let id_b = Identity::from_seed(&[2; 32]);
    let connect = |id: &Identity, t: u64| frames::connect_frame(id, &time::format_millis(t), None);
    let closes = |o: &[Out]| -> Vec<(u64, u16, String)> {
        o.iter()
            .filter_map(|x| match x {
                Out::Close { conn, code, reason } => Some((*conn, *code, reason.clone())),
                _ => None,
            })
            .collect()
    };
    let sends = |o: &[Out]| o.iter().filter(|x| matches!(x, Out::Send { .. })).count();
    // First frame not connect: 4001; bad proof: 4005; stale timestamp: 4005.
    let c = r.open(Owner::Raw(0), now);
    assert_eq!(
        closes(&r.frame(c, r#"{"type":"heartbeat"}"#, now))[0].1,
        4001
    );
    let c = r.open(Owner::Raw(0), now);
    let mut bad: Value = serde_json::from_str(&connect(&id_a, now)).unwrap();
    bad["from"] = json!(id_b.did());
    assert_eq!(closes(&r.frame(c, &bad.to_string(), now))[0].1, 4005);
    let c = r.open(Owner::Raw(0), now);
    assert_eq!(
        closes(&r.frame(c, &connect(&id_a, now - 400_000), now))[0].1,
        4005
    );
    // Offline store, global de-dup by id, push on connect, ack deletes.
    let ca = r.open(Owner::Raw(0), now);
    assert!(
        r.frame(ca, &connect(&id_a, now), now).is_empty(),
        "nothing sent on success"
    );
    let m = |id: &str| {
        json!({"v":1,"type":"message","from":id_a.did(),"to":id_b.did(),"id":id,"header":{"dh":"x","pn":0,"n":0},"ciphertext":"y"}).to_string()
    };
    r.frame(ca, &m("one"), now);
    r.frame(ca, &m("one"), now);
    r.frame(ca, &m("two"), now + 1);
    assert_eq!(r.stored_for(id_b.did()), 2);
    let cb = r.open(Owner::Raw(1), now);
    assert_eq!(sends(&r.frame(cb, &connect(&id_b, now + 2), now + 2)), 2);
    // Live delivery while fresh; stale after 90 s without heartbeat.
    assert_eq!(sends(&r.frame(ca, &m("three"), now + 3)), 1);
    assert_eq!(r.stored_for(id_b.did()), 2);
    r.frame(ca, &m("four"), now + 100_000);
    assert_eq!(r.stored_for(id_b.did()), 3, "stale recipient: stored");
    r.frame(cb, r#"{"v":1,"type":"ack","id":"one"}"#, now + 100_001);
    assert_eq!(r.stored_for(id_b.did()), 2);
    // Replacement: the old socket is closed with 1000 session_replaced, and
    // the new one gets the pending frames.
    let cb2 = r.open(Owner::Raw(2), now + 100_002);
    let out = r.frame(cb2, &connect(&id_b, now + 100_002), now + 100_002);
    assert_eq!(
        closes(&out),
        vec![(cb, 1000, "session_replaced".to_string())]
    );
    assert_eq!(sends(&out), 2);
    // Unknown type: error frame, socket stays; non-JSON kills it.
    assert_eq!(
        sends(&r.frame(cb2, r#"{"type":"fetch_pending"}"#, now + 100_003)),
        1
    );
    assert!(r.is_open(cb2));
    assert_eq!(closes(&r.frame(cb2, "nope", now + 100_004))[0].1, 1006);
    // Restart: every socket 1006, the store is gone.
    let out = r.restart();
    assert_eq!(closes(&out), vec![(ca, 1006, String::new())]);
    assert_eq!(r.stored_total(), 0);
}

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
    /// Alice handling a registry answer while opening the first session.
    SenderFirstHttp,
    /// Bob handling the first KNOCK.
    ReceiverKnock,
    /// Bob handling the first message of a new session.
    ReceiverFirstMessage,
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
        Target::SenderFirstHttp => Some(CrashOn::Http),
        Target::ReceiverKnock => Some(CrashOn::Frame("knock")),
        Target::ReceiverFirstMessage => Some(CrashOn::Frame("message")),
        _ => None,
    };
    if let Some(on) = early {
        w.plan_crash(who, plan(on));
    }
    // Phase 1: open the session, learn that both are kars peers.
    ab.send_next(&mut w);
    w.run_for(3_000);
    ba.send_next(&mut w);
    w.run_for(3_000);
    for i in [a, b] {
        if w.agents[i].up() {
            w.call(i, "mesh_inbox", json!({"limit": 500, "mark_read": true}));
        }
    }
    w.run_for(2_000);
    // Phase 2: the targeted call.
    let late = match target {
        Target::SenderSend => Some(CrashOn::Tool("mesh_send")),
        Target::ReceiverMessage | Target::SenderReceipt => Some(CrashOn::Frame("message")),
        Target::ReceiverInbox => Some(CrashOn::Tool("mesh_inbox")),
        _ => None,
    };
    if let Some(on) = late {
        w.plan_crash(who, plan(on));
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

fn sweep(target: Target) {
    let seed = 77;
    let mut failures = Vec::new();
    let mut points = 0;
    for k in 0..64 {
        let Some((problems, point)) = sweep_run(seed, target, k) else {
            break;
        };
        points += 1;
        if !problems.is_empty() {
            failures.push(format!("{point}\n      {}", problems.join("\n      ")));
        }
    }
    assert!(points > 1, "{target:?}: the crash point was never reached");
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

/// Diagnosis aid, not a check: `SIM_SWEEP=ReceiverMessage:1 cargo test --test
/// sim debug_sweep -- --ignored --nocapture` prints the journal of one sweep run.
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
        _ => Target::ReceiverFirstMessage,
    };
    JOURNAL.with(|j| j.set(true));
    let r = sweep_run(77, target, k.parse().unwrap());
    eprintln!("{r:?}");
}

thread_local! {
    static JOURNAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

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
    let got: Vec<String> = w.read_inbox(b).iter().map(|m| m.content()).collect();
    assert_eq!(got, ["once", "twice"]);
}

/// A peer that stays away does not make the sender drop anything: past the
/// outbox limit `mesh_send` refuses with a clear error, and every message it
/// accepted arrives once the peer is back.
#[test]
fn a_full_outbox_refuses_new_sends_instead_of_dropping_old_ones() {
    let (mut w, ids) = world_with(29, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let bd = w.did(b);
    w.send(a, b, "m0");
    w.run_for(3_000);
    assert_eq!(w.read_inbox(b).len(), 1, "setup: receipts flowing");
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
        let batch: Vec<String> = w.read_inbox(b).iter().map(|m| m.content()).collect();
        if batch.is_empty() {
            break;
        }
        got.extend(batch);
    }
    let want: Vec<String> = (0..limit).map(|i| format!("q{i}")).collect();
    assert_eq!(got, want, "every accepted message, once, in order");
}

/// Pairing over the mesh: the operator generates a token on the controller,
/// a client pairs with it once; reuse, revocation, a wrong secret and an
/// unroutable (AMID-only) token fail with the original texts; the ledger and
/// the client's pairing survive restarts.
#[test]
fn pairing_through_the_controller_role() {
    let mut w = World::new(31);
    let ctrl = w.add_agent(
        "controller",
        json!({"role": "controller", "cluster_name": "lab"}),
    );
    let alice = w.add_agent("alice", json!({}));
    let bob = w.add_agent("bob", json!({}));
    w.run_for(3_000);
    let gen = w.call_sync(
        ctrl,
        "pair_generate",
        json!({"name": "alice-laptop", "slots": 2, "expires": "1d"}),
        5_000,
    );
    let tok = gen["details"]["mesh"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(tok.starts_with("azcp_1_"), "{gen}");
    assert!(
        !serde_json::to_string(&w.persisted(ctrl, "ledger"))
            .unwrap()
            .contains(&tok[7..20]),
        "the token is not stored"
    );

    let ok = w.call_sync(alice, "mesh_pair", json!({"token": tok}), 60_000);
    let text = ok["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("✅ Paired successfully with kars cluster \"lab\""),
        "{ok}"
    );
    assert_eq!(
        ok["details"]["mesh"]["pairing"]["controller_did"],
        w.did(ctrl)
    );
    assert_eq!(
        w.persisted(alice, "pairing").unwrap()["cluster_name"],
        "lab"
    );

    let again = w.call_sync(bob, "mesh_pair", json!({"token": tok}), 60_000);
    assert_eq!(
        again["content"][0]["text"],
        "❌ Pairing rejected by cluster: Pairing is Active — token already consumed or expired",
        "{again}"
    );
    let list = w.call_sync(ctrl, "pair_list", json!({}), 5_000);
    assert_eq!(
        list["details"]["mesh"]["pairings"][0]["bound_did"],
        w.did(alice)
    );

    let gen2 = w.call_sync(ctrl, "pair_generate", json!({"name": "bob"}), 5_000);
    let tok2 = gen2["details"]["mesh"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    w.call_sync(ctrl, "pair_revoke", json!({"name": "bob"}), 5_000);
    let revoked = w.call_sync(bob, "mesh_pair", json!({"token": tok2}), 60_000);
    assert_eq!(
        revoked["content"][0]["text"],
        "❌ Pairing rejected by cluster: Pairing is Revoked — token already consumed or expired"
    );

    // A token with a secret the controller never issued.
    let mut forged = kars_mesh::wire::token::parse(&tok2).unwrap();
    forged.secret = "not-issued".into();
    let bad = w.call_sync(bob, "mesh_pair", json!({"token": forged.encode()}), 60_000);
    assert_eq!(
        bad["content"][0]["text"],
        "❌ Pairing rejected by cluster: Invalid pairing token"
    );
    // The original CLI's AMID-only token cannot be routed: say so.
    let legacy = w.call_sync(bob, "mesh_pair", json!({"token": "azcp_1_eyJjb250cm9sbGVyX2FtaWQiOiJjdHJsX2FiYzEyMyIsInJlbGF5X3VybCI6IndzOi8vaG9zdC5kb2NrZXIuaW50ZXJuYWw6MTg3NjUiLCJyZWdpc3RyeV91cmwiOiJodHRwOi8vaG9zdC5kb2NrZXIuaW50ZXJuYWw6MTgwODAiLCJzZWNyZXQiOiJ0ZXN0LXNlY3JldC12YWx1ZSJ9"}), 5_000);
    assert!(
        legacy["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("cannot route"),
        "{legacy}"
    );
    let junk = w.call_sync(bob, "mesh_pair", json!({"token": "bad_token"}), 5_000);
    assert!(
        junk["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("❌ Invalid pairing token. Must start with azcp_1_"),
        "{junk}"
    );

    // Restarts keep the ledger and the pairing.
    w.crash_now(ctrl, 1_000);
    w.crash_now(alice, 1_000);
    w.run_for(5_000);
    let list = w.call_sync(ctrl, "pair_list", json!({}), 5_000);
    assert_eq!(
        list["details"]["mesh"]["pairings"][0]["phase"], "Active",
        "{list}"
    );
    assert_eq!(
        w.persisted(alice, "pairing").unwrap()["controller_did"],
        w.did(ctrl)
    );
    // A non-controller has no ledger tools.
    let nope = w.call_sync(alice, "pair_generate", json!({"name": "x"}), 5_000);
    assert!(nope["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("not a controller"));
}

// ------------------------------------------- controller: plaintext dialect

/// Red-team finding 2. The original plugin speaks plaintext to its
/// controller. Ours takes a plaintext `pair_request` from anyone (its token
/// secret authenticates it; the DID binding is still checked), but never a
/// plaintext `offload_request`, not even one that names the paired DID: the
/// relay does not bind `from`, so anyone could claim it and run tasks on
/// the cluster as that user.
#[test]
fn finding_2_controller_takes_no_plaintext_offload_request_even_from_a_paired_did() {
    let mut w = World::new(77);
    let ctrl = w.add_agent(
        "controller",
        json!({"role": "controller", "cluster_name": "lab"}),
    );
    w.run_for(3_000);
    let gen = w.call_sync(
        ctrl,
        "pair_generate",
        json!({"name": "legacy", "capabilities": "offload"}),
        5_000,
    );
    let tok = gen["details"]["mesh"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let secret = kars_mesh::wire::token::parse(&tok).unwrap().secret.clone();
    let cd = w.did(ctrl);
    let legacy_seed = [0x51; 32];
    let legacy = Identity::from_seed(&legacy_seed);
    let ld = legacy.did().to_string();
    let raw = w.raw_connect(legacy_seed);
    let stranger_seed = [0x52; 32];
    let sd = Identity::from_seed(&stranger_seed).did().to_string();
    let raw_stranger = w.raw_connect(stranger_seed);
    let frame = |from: &str, id: &str, p: Value| {
        json!({"v":1,"type":"message","from":from,"to":cd,"id":id,"ts":"2026-11-25T00:00:00.000Z",
            "ciphertext": b64::encode_std(p.to_string().as_bytes()),"plaintext":true})
        .to_string()
    };
    let offload = |rid: &str| {
        json!({"type":"offload_request","task":"t","files":[],"file_count":0,"total_bytes":0,
        "preferences":{"timeout_minutes":5},"request_id":rid})
    };
    // Before pairing, an offload_request in plaintext is dropped.
    w.raw_send(
        raw,
        &frame(
            &ld,
            "5c8e2a4e-0b7c-4d5e-9f1a-000000000001",
            offload("aaaaaaaa-0000-4000-8000-000000000001"),
        ),
    );
    w.run_for(2_000);
    assert_eq!(
        w.call_sync(ctrl, "offload_list", json!({}), 5_000)["details"]["mesh"]["offloads"],
        json!([])
    );
    let pr = json!({"type":"pair_request","secret":secret,"pubkey_ed25519":b64::encode_std(legacy.ed25519_public()),
        "display_name":"old plugin","capabilities_requested":["offload"]});
    w.raw_send(raw, &frame(&ld, "5c8e2a4e-0b7c-4d5e-9f1a-000000000002", pr));
    w.run_for(3_000);
    let list = w.call_sync(ctrl, "pair_list", json!({}), 5_000);
    assert_eq!(
        list["details"]["mesh"]["pairings"][0]["bound_did"],
        json!(ld),
        "{list}"
    );
    // Paired: still no plaintext offload_request is taken, the paired DID's
    // (which anyone can claim) no more than a stranger's.
    w.raw_send(
        raw_stranger,
        &frame(
            &sd,
            "5c8e2a4e-0b7c-4d5e-9f1a-000000000003",
            offload("bbbbbbbb-0000-4000-8000-000000000002"),
        ),
    );
    w.raw_send(
        raw,
        &frame(
            &ld,
            "5c8e2a4e-0b7c-4d5e-9f1a-000000000004",
            offload("cccccccc-0000-4000-8000-000000000003"),
        ),
    );
    w.run_for(3_000);
    let offs = w.call_sync(ctrl, "offload_list", json!({}), 5_000);
    assert_eq!(offs["details"]["mesh"]["offloads"], json!([]), "{offs}");
    let list = w.call_sync(ctrl, "pair_list", json!({}), 5_000);
    assert_eq!(
        list["details"]["mesh"]["pairings"][0]["slots_used"],
        json!(0),
        "no slot taken: {list}"
    );
    assert!(
        w.agents[ctrl].jobs_started.is_empty(),
        "no sandbox was started"
    );
}

/// The relay does not bind `from`: a plaintext `offload_status ready` that
/// claims to come from the paired controller must not tell the client where
/// its sandbox is (it would draw the input files to an attacker). Only an
/// end-to-end message may; stale phases do not move the offload backwards.
#[test]
fn a_spoofed_plaintext_ready_does_not_redirect_an_offload() {
    let (mut w, ctrl, alice, rid) = World::paired_offload(91);
    let st = w.call_sync(alice, "offload_status", json!({}), 5_000);
    assert_eq!(st["details"]["mesh"]["phase"], json!("spawning"), "{st}");
    let ad = w.did(alice);
    let cd = w.did(ctrl);
    let attacker_seed = [0x66; 32];
    let attacker = Identity::from_seed(&attacker_seed).did().to_string();
    let raw = w.raw_connect(attacker_seed);
    let spoof = |id: &str, p: Value| {
        json!({"v":1,"type":"message","from":cd,"to":ad,"id":id,"ts":"2026-11-25T00:00:00.000Z",
            "ciphertext": b64::encode_std(p.to_string().as_bytes()),"plaintext":true})
        .to_string()
    };
    w.raw_send(raw, &spoof("5c8e2a4e-0b7c-4d5e-9f1a-00000000aa01", json!({"type":"offload_status","request_id":rid,
        "phase":"ready","message":"sandbox ready","sandbox_name":"offload-evil","sandbox_did":attacker})));
    w.raw_send(
        raw,
        &spoof(
            "5c8e2a4e-0b7c-4d5e-9f1a-00000000aa02",
            json!({"type":"offload_status","request_id":rid,
        "phase":"validating","message":"again"}),
        ),
    );
    w.run_for(3_000);
    // after_events 0: the whole snapshot at once (a plain call within 15 s
    // of the last one answers "no change").
    let st = w.call_sync(
        alice,
        "offload_status",
        json!({"wait_seconds": 1, "after_events": 0}),
        5_000,
    );
    let m = &st["details"]["mesh"];
    assert_eq!(m["phase"], json!("spawning"), "{st}");
    assert_eq!(m["sandbox_did"], Value::Null, "{st}");
    assert!(
        !m["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["phase"] == "ready"),
        "{st}"
    );
    // Nothing of it reached the inbox either.
    let inbox = w.call_sync(alice, "mesh_inbox", json!({"unread_only": false}), 5_000);
    assert_eq!(inbox["details"]["mesh"]["messages"], json!([]), "{inbox}");
}
