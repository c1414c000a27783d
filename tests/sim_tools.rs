//! The user-facing tools against the simulated relay and registry:
//! `mesh_await` (DID and registry-name matching, no trust in plaintext name
//! claims, timeout, abort), `mesh_inbox` (blocking wake-up on arrival,
//! timeout, peek by default and explicit read marks that survive a restart),
//! `mesh_send` and `discover` texts, and argument validation that changes
//! nothing. Virtual clock, seeded; the harness is in tests/sim/.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "sim/mod.rs"]
mod sim;

use kars_mesh::crypto::identity::Identity;
use kars_mesh::wire::{b64, time};
use serde_json::{json, Value};
use sim::world::{Outcome, World};

fn world(seed: u64, names: &[&str]) -> (World, Vec<usize>) {
    let mut w = World::new(seed);
    let ids = names.iter().map(|n| w.add_agent(n, json!({}))).collect();
    w.run_for(3_000);
    (w, ids)
}

fn text(v: &Value) -> String {
    World::call_text(v)
}

fn mesh(v: &Value) -> &Value {
    &v["details"]["mesh"]
}

/// `details` holds only the `mesh` wrapper: the host reserves status, ok,
/// success, error, timedOut and exitCode at its top level.
fn assert_wrapped(v: &Value) {
    let keys: Vec<&String> = v["details"].as_object().expect("details").keys().collect();
    assert_eq!(keys, ["mesh"], "{v}");
}

fn pending(w: &World, i: usize, id: &str) -> bool {
    matches!(w.agents[i].calls[id].outcome, Outcome::Pending)
}

fn result(w: &World, i: usize, id: &str) -> Value {
    match &w.agents[i].calls[id].outcome {
        Outcome::Done(v) => v.clone(),
        other => panic!("call {id} not answered: {other:?}"),
    }
}

fn send(w: &mut World, from: usize, to: &str, message: Value) -> Value {
    let r = w.call_sync(
        from,
        "mesh_send",
        json!({"to": to, "message": message}),
        10_000,
    );
    assert!(text(&r).starts_with("✓ Message sent to "), "{r}");
    r
}

/// The JSON an await answered with, checked to be its text as well.
fn await_json(v: &Value) -> Value {
    assert_wrapped(v);
    let parsed: Value = serde_json::from_str(&text(v)).unwrap_or_else(|_| panic!("{v}"));
    assert_eq!(&parsed, mesh(v));
    parsed
}

// ------------------------------------------------------------- mesh_await

#[test]
fn mesh_await_matches_a_did_and_a_registry_name_and_wakes_on_arrival() {
    let (mut w, ids) = world(41, &["alice", "bob", "carol"]);
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let (ad, bd, cd) = (w.did(a), w.did(b), w.did(c));
    let call = w
        .call(
            a,
            "mesh_await",
            json!({"senders": [bd, " Carol "], "timeout_seconds": 60, "mark_read": true}),
        )
        .unwrap();
    w.run_for(2_000);
    assert!(pending(&w, a, &call), "answered before anyone wrote");
    send(&mut w, b, &ad, json!("from bob"));
    w.run_for(2_000);
    assert!(pending(&w, a, &call), "answered with carol missing");
    let t0 = w.now;
    send(&mut w, c, &ad, json!("from carol"));
    let r = w
        .wait_result(a, &call, 3_000)
        .expect("woken by the arrival");
    let j = await_json(&r);
    assert!(
        w.now - t0 <= 3_000,
        "answered {} ms after the send",
        w.now - t0
    );
    assert_eq!(j["status"], "all_received", "{j}");
    assert_eq!(j["requested_senders"], json!([bd, "Carol"]));
    assert_eq!(j["missing"], json!([]));
    assert_eq!(j["matched"][&bd].as_array().unwrap().len(), 1);
    assert_eq!(j["matched"]["carol"].as_array().unwrap().len(), 1);
    assert_eq!(j["answered_by"]["carol"], json!([cd]));
    assert_eq!(j["mark_read"], true);
    assert_eq!(j["marked_read_count"], 2);
    assert_eq!(j["timeout_seconds"], 60);
    assert!(j["waited_seconds"].as_u64().unwrap() <= 10);
    // Marked read: nothing unread remains.
    let r = w.call_sync(a, "mesh_inbox", json!({}), 5_000);
    assert!(
        text(&r).starts_with(
            "📭 No unread messages (2 already read; pass unread_only=false to re-read)."
        ),
        "{r}"
    );
}

#[test]
fn mesh_await_finds_a_registered_name_written_with_capitals() {
    // The registry matches a name exactly, case included, while senders
    // match case-insensitively: the tool asks for the name as written and
    // lower-cased.
    let (mut w, ids) = world(47, &["alice", "Analyst", "Dup", "dup"]);
    let (a, an) = (ids[0], ids[1]);
    let (ad, and) = (w.did(a), w.did(an));
    let call = w
        .call(
            a,
            "mesh_await",
            json!({"senders": ["Analyst"], "timeout_seconds": 60}),
        )
        .unwrap();
    w.run_for(2_000);
    assert!(pending(&w, a, &call), "answered before anyone wrote");
    send(&mut w, an, &ad, json!("from the analyst"));
    let r = w
        .wait_result(a, &call, 3_000)
        .expect("woken by the arrival");
    let j = await_json(&r);
    assert_eq!(j["status"], "all_received", "{j}");
    assert_eq!(j["answered_by"]["analyst"], json!([and]));
    // Two agents hold the name in its two forms: matched case-insensitively,
    // the name identifies neither.
    let r = w.call_sync(
        a,
        "mesh_await",
        json!({"senders": ["Dup"], "timeout_seconds": 2}),
        10_000,
    );
    let j = await_json(&r);
    assert_eq!(j["status"], "partial_timeout", "{j}");
    assert!(
        j["note"]
            .as_str()
            .unwrap()
            .contains("2 agents registered the name \"Dup\""),
        "{j}"
    );
}

#[test]
fn mesh_await_never_trusts_a_plaintext_name_claim() {
    let ctrl_seed = [0x42; 32];
    let ctrl_did = Identity::from_seed(&ctrl_seed).did().to_string();
    let mut w = World::new(43);
    let a = w.add_agent("alice", json!({"trusted_plaintext": [ctrl_did]}));
    let b = w.add_agent("bob", json!({}));
    w.run_for(3_000);
    let ad = w.did(a);
    let bd = w.did(b);
    let ctrl = w.raw_connect(ctrl_seed);
    // A plaintext frame (from a DID trusted for plaintext) claiming a name.
    let claim = json!({"type": "message", "from_agent": "analyst", "content": "I am the analyst"});
    let f = json!({"v":1,"type":"message","from":ctrl_did,"to":ad,"id":"5c8e2a4e-0b7c-4d5e-9f1a-2b3c4d5e6f71",
        "ts": time::format_millis(w.now), "ciphertext": b64::encode_std(claim.to_string().as_bytes()), "plaintext": true});
    w.raw_send(ctrl, &f.to_string());
    w.run_for(2_000);
    let r = w.call_sync(a, "mesh_inbox", json!({}), 5_000);
    assert!(text(&r).starts_with("📬 1 of 1 message(s)"), "{r}");
    let r = w.call_sync(
        a,
        "mesh_await",
        json!({"senders": ["analyst"], "timeout_seconds": 5}),
        10_000,
    );
    let j = await_json(&r);
    assert_eq!(j["status"], "partial_timeout", "{j}");
    assert_eq!(j["missing"], json!(["analyst"]));
    assert_eq!(j["matched"]["analyst"], json!([]));
    assert!(
        j["note"]
            .as_str()
            .unwrap()
            .contains("no agent is registered as \"analyst\""),
        "{j}"
    );
    // The same claim inside an E2E-encrypted message binds the name to
    // the sender's DID, and the answer says which DID that was.
    send(&mut w, b, &ad, claim);
    w.run_for(2_000);
    let r = w.call_sync(
        a,
        "mesh_await",
        json!({"senders": ["ANALYST"], "timeout_seconds": 5}),
        10_000,
    );
    let j = await_json(&r);
    assert_eq!(j["status"], "all_received", "{j}");
    assert_eq!(j["answered_by"]["analyst"], json!([bd]));
    assert_eq!(j["marked_read_count"], 0);
}

#[test]
fn mesh_await_times_out_partially_and_honours_abort() {
    let (mut w, ids) = world(47, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let (ad, bd) = (w.did(a), w.did(b));
    send(&mut w, b, &ad, json!("here"));
    w.run_for(2_000);
    let t0 = w.now;
    let r = w.call_sync(
        a,
        "mesh_await",
        json!({"senders": ["bob", "nobody"], "timeout_seconds": 7}),
        20_000,
    );
    let j = await_json(&r);
    assert_eq!(j["status"], "partial_timeout");
    assert_eq!(j["missing"], json!(["nobody"]));
    assert_eq!(j["matched"]["bob"].as_array().unwrap().len(), 1);
    assert_eq!(j["waited_seconds"], 7);
    assert!(w.now - t0 >= 7_000 && w.now - t0 < 8_000);
    // Oversized timeouts are capped at 600 s; an abort ends the wait at once.
    let call = w
        .call(
            a,
            "mesh_await",
            json!({"senders": ["nobody"], "timeout_seconds": 5000}),
        )
        .unwrap();
    w.run_for(1_000);
    assert!(pending(&w, a, &call));
    w.abort(a, &call);
    w.run_for(10);
    let r = result(&w, a, &call);
    assert!(text(&r).starts_with("❌ Cancelled"), "{r}");
    assert_wrapped(&r);
    // The aborted wait's timer does not answer a second time (the harness
    // records a violation for a second result).
    w.run_for(700_000);
    assert!(w.violations.is_empty(), "{:?}", w.violations);
    // Nothing was marked read by either call.
    let r = w.call_sync(a, "mesh_inbox", json!({}), 5_000);
    assert!(
        text(&r).starts_with("📬 1 of 1 message(s) (1 unread):"),
        "{r}"
    );
    let _ = bd;
}

#[test]
fn mesh_await_argument_errors() {
    let (mut w, ids) = world(53, &["alice"]);
    let a = ids[0];
    for (args, want) in [
        (
            json!({}),
            "❌ mesh_await: `senders` must be a non-empty array of agent names.",
        ),
        (
            json!({"senders": []}),
            "❌ mesh_await: `senders` must be a non-empty array of agent names.",
        ),
        (
            json!({"senders": "bob"}),
            "❌ mesh_await: `senders` must be a non-empty array of agent names.",
        ),
        (
            json!({"senders": ["", "  "]}),
            "❌ mesh_await: `senders` must contain at least one non-empty agent name.",
        ),
    ] {
        let r = w.call_sync(a, "mesh_await", args.clone(), 1_000);
        assert_eq!(text(&r), want, "{args}");
        assert_wrapped(&r);
    }
    let r = w.call_sync(a, "mesh_await", json!({"senders": [7]}), 1_000);
    assert!(
        text(&r).starts_with("❌ mesh_await: `senders` must be an array of strings."),
        "{r}"
    );
}

// -------------------------------------------------------------- mesh_inbox

#[test]
fn mesh_inbox_blocks_until_a_message_lands_or_the_timeout() {
    let (mut w, ids) = world(59, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let ad = w.did(a);
    let t0 = w.now;
    let r = w.call_sync(
        a,
        "mesh_inbox",
        json!({"block_until_message": true, "timeout_seconds": 4}),
        10_000,
    );
    assert!(w.now - t0 >= 4_000 && w.now - t0 < 4_500);
    let t = text(&r);
    assert!(
        t.starts_with("📭 Inbox empty (waited 4s blocking, no message arrived).\n\nDiagnostics: {"),
        "{t}"
    );
    assert_eq!(mesh(&r)["timed_out"], true);
    assert_wrapped(&r);
    // Woken by the arrival, long before its timeout.
    let call = w
        .call(a, "mesh_inbox", json!({"block_until_message": true}))
        .unwrap();
    w.run_for(5_000);
    assert!(pending(&w, a, &call));
    let sent_at = w.now;
    send(&mut w, b, &ad, json!("wake up"));
    let r = w
        .wait_result(a, &call, 3_000)
        .expect("woken by the arrival");
    let answered_at = w.now;
    assert!(answered_at - sent_at <= 3_000);
    let t = text(&r);
    let bd = w.did(b);
    assert!(
        t.starts_with(&format!(
            "📬 1 of 1 message(s) (1 unread):\n  1. [{bd}] (·new) wake up\n\nDiagnostics: "
        )),
        "{t}"
    );
    let diag: Value = serde_json::from_str(t.split("Diagnostics: ").nth(1).unwrap()).unwrap();
    for k in [
        "build_hash",
        "received_total",
        "consumed_by_waiter",
        "consumed_by_predicate",
        "fifo_dropped",
        "read_total",
        "last_received_at",
        "last_read_at",
    ] {
        assert!(diag.get(k).is_some(), "diagnostics lack {k}: {diag}");
    }
    assert_eq!(diag["received_total"], 1);
    assert_eq!(diag["read_total"], 0);
    assert_eq!(mesh(&r)["messages"][0]["evidence"], "encrypted");
    // The legacy wait_seconds still blocks.
    let r = w.call_sync(
        a,
        "mesh_inbox",
        json!({"wait_seconds": 1.5, "from": bd, "mark_read": true, "limit": 1}),
        5_000,
    );
    assert!(
        text(&r).starts_with("📬 1 of 1 message(s) (1 unread, 1 now marked read):"),
        "{r}"
    );
    let t0 = w.now;
    let r = w.call_sync(a, "mesh_inbox", json!({"wait_seconds": 1.5}), 5_000);
    assert!(w.now - t0 >= 1_500, "{r}");
    assert!(
        text(&r).starts_with("📭 Inbox empty (waited 2s blocking"),
        "{r}"
    );
}

#[test]
fn read_marks_are_explicit_exact_and_survive_a_restart() {
    let (mut w, ids) = world(61, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let (ad, bd) = (w.did(a), w.did(b));
    for m in ["one", "two", "three"] {
        send(&mut w, b, &ad, json!(m));
    }
    w.run_for(3_000);
    // Peek by default: shown, not marked, also after a crash.
    let r = w.call_sync(a, "mesh_inbox", json!({}), 5_000);
    assert!(
        text(&r).starts_with("📬 3 of 3 message(s) (3 unread):"),
        "{r}"
    );
    w.crash_now(a, 1_000);
    w.run_for(5_000);
    let r = w.call_sync(a, "mesh_inbox", json!({"limit": 2}), 5_000);
    let t = text(&r);
    assert!(
        t.starts_with(&format!(
            "📬 2 of 3 message(s) (3 unread):\n  1. [{bd}] (·new) one\n  2. [{bd}] (·new) two\n"
        )),
        "{t}"
    );
    let shown: Vec<String> = mesh(&r)["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    // Marking by id marks exactly those, even with more unread.
    let r = w.call_sync(
        a,
        "mesh_inbox",
        json!({"ids": shown, "mark_read": true}),
        5_000,
    );
    assert!(
        text(&r).starts_with("📬 2 of 2 message(s) (3 unread, 2 now marked read):"),
        "{r}"
    );
    assert_eq!(mesh(&r)["marked_read"], json!(shown));
    w.crash_now(a, 1_000);
    w.run_for(5_000);
    let r = w.call_sync(a, "mesh_inbox", json!({}), 5_000);
    assert!(
        text(&r).starts_with(&format!(
            "📬 1 of 1 message(s) (1 unread):\n  1. [{bd}] (·new) three"
        )),
        "{r}"
    );
    let r = w.call_sync(a, "mesh_inbox", json!({"unread_only": false}), 5_000);
    let t = text(&r);
    assert!(
        t.contains("  1. [")
            && t.contains("(·read) one")
            && t.contains("(·read) two")
            && t.contains("(·new) three"),
        "{t}"
    );
    // Conflicting or wrong arguments change nothing.
    let before = w.snapshot_storage(a);
    for (args, want) in [
        (
            json!({"mark_read": true, "peek": true}),
            "`mark_read` and `peek` contradict",
        ),
        (
            json!({"mark_read": "yes"}),
            "`mark_read` must be true or false.",
        ),
        (json!({"limit": "ten"}), "`limit` must be a number."),
        (
            json!({"timeout_seconds": -1}),
            "`timeout_seconds` must not be negative.",
        ),
        (json!({"from": "bob"}), "`from` must be a did:mesh: DID"),
        (json!({"ids": "x"}), "`ids` must be an array of strings."),
    ] {
        let r = w.call_sync(a, "mesh_inbox", args.clone(), 1_000);
        let t = text(&r);
        assert!(
            t.starts_with("❌ mesh_inbox: ") && t.contains(want),
            "{args}: {t}"
        );
        assert_wrapped(&r);
    }
    assert_eq!(before, w.snapshot_storage(a), "a refused call wrote state");
    let r = w.call_sync(a, "mesh_inbox", json!({"mark_read": true}), 5_000);
    assert!(text(&r).contains("1 now marked read"), "{r}");
    let r = w.call_sync(a, "mesh_inbox", json!({}), 5_000);
    assert!(text(&r).starts_with("📭 No unread messages (3 already read; pass unread_only=false to re-read).\n\nDiagnostics: "), "{r}");
}

// ------------------------------------------------------ mesh_send, discover

/// A first send asks the registry for the peer's registration (does it
/// speak receipts?) and its bundle at once: with every registry round trip
/// taking 200 ms, the send is answered after one, not two.
#[test]
fn a_first_send_asks_for_the_registration_and_the_bundle_at_once() {
    let (mut w, ids) = world(41, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let bob = w.did(b);
    w.faults.latency_min_ms = 100;
    w.faults.latency_max_ms = 100;
    let id = w
        .call(a, "mesh_send", json!({"to": bob, "message": "first"}))
        .unwrap();
    w.run_for(250);
    assert!(
        !pending(&w, a, &id),
        "answered after one registry round trip"
    );
    let r = result(&w, a, &id);
    assert_eq!(mesh(&r)["session"], "new", "{r}");
    assert_eq!(mesh(&r)["confirmation"], "receipt", "{r}");
}

/// When the bundle comes back before the registration, the session waits
/// for the registration: nothing leaves before both are in, and the first
/// message to a kars peer still carries its delivery envelope (a receipt
/// is asked for, and the peer stores the message with its number).
#[test]
fn a_first_send_waits_for_the_registration_when_the_bundle_comes_first() {
    let (mut w, ids) = world(42, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let bob = w.did(b);
    // `GET /v1/agents/<bob>` ends with bob's DID; `…/prekeys` does not.
    w.faults.registry_slow = Some((bob.clone(), 400));
    let id = w
        .call(a, "mesh_send", json!({"to": bob, "message": "first"}))
        .unwrap();
    w.run_for(300);
    assert!(pending(&w, a, &id), "the send waits for the registration");
    assert!(w.persisted_inbox(b).is_empty(), "nothing left before it");
    w.run_for(1_000);
    let r = result(&w, a, &id);
    assert_eq!(mesh(&r)["confirmation"], "receipt", "{r}");
    let got = w.persisted_inbox(b);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["payload"]["content"], "first", "{got:?}");
    assert!(
        got[0]["seq"].is_u64(),
        "the message carries its number: {got:?}"
    );
}

/// Agent `i`'s base58 AMID, as `mesh_identity` shows it.
fn amid_of(w: &mut World, i: usize) -> String {
    let r = w.call_sync(i, "mesh_identity", json!({}), 1_000);
    let t = text(&r);
    t.lines()
        .find_map(|l| l.strip_prefix("AMID: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn mesh_send_aliases_texts_and_refusals() {
    let (mut w, ids) = world(67, &["alice", "bob"]);
    let (a, b) = (ids[0], ids[1]);
    let bd = w.did(b);
    let short = format!("{}...", &bd[..16]);
    let r = w.call_sync(
        a,
        "mesh_send",
        json!({"recipient": "bob", "body": "by name"}),
        10_000,
    );
    assert_eq!(
        text(&r),
        format!("✓ Message sent to bob ({short}) (E2E encrypted)")
    );
    assert_wrapped(&r);
    let r = w.call_sync(
        a,
        "mesh_send",
        json!({"to_agent": bd, "text": "by did"}),
        10_000,
    );
    assert_eq!(text(&r), format!("✓ Message sent to {bd} (E2E encrypted)"));
    // An AMID (what the original showed as an agent's id) reaches the same
    // agent: it is sent to the DID it names.
    let b_amid = amid_of(&mut w, b);
    let r = w.call_sync(
        a,
        "mesh_send",
        json!({"to_amid": b_amid, "message": "by amid"}),
        10_000,
    );
    assert_eq!(
        text(&r),
        format!("✓ Message sent to {b_amid} ({short}) (E2E encrypted)")
    );
    assert_eq!(r["details"]["mesh"]["to"], bd.as_str());
    w.run_for(2_000);
    let got = w.read_texts(b);
    assert_eq!(got, ["by name", "by did", "by amid"]);
    // mesh_inbox `from` takes the AMID too.
    let ad = w.did(a);
    let a_amid = amid_of(&mut w, a);
    let r = w.call_sync(
        b,
        "mesh_inbox",
        json!({"from": a_amid, "unread_only": false}),
        5_000,
    );
    assert!(text(&r).starts_with("📬 3 of 3 message(s)"), "{r}");
    assert_eq!(r["details"]["mesh"]["messages"][0]["from"], ad.as_str());
    let before = w.snapshot_storage(a);
    let requests = w.registry.requests.len();
    let own_amid = amid_of(&mut w, a);
    for (args, want) in [
        (
            json!({"message": "x"}),
            "❌ mesh_send requires `to` (AMID or agent name). Use `discover` to list known agents."
                .to_string(),
        ),
        (
            json!({"to": bd}),
            "❌ mesh_send requires `message` content.".to_string(),
        ),
        (
            json!({"to": bd, "content": "  "}),
            "❌ mesh_send requires `message` content.".to_string(),
        ),
        (
            json!({"to": 5, "message": "x"}),
            "❌ mesh_send: `to` must be a string.".to_string(),
        ),
        (
            json!({"to": bd, "message": [1]}),
            "❌ mesh_send: `message` must be text or a JSON object.".to_string(),
        ),
        (
            json!({"amid": own_amid, "message": "x"}),
            "❌ mesh_send: `to` is this agent's own DID".to_string(),
        ),
        (
            json!({"to": "did:mesh:nothex", "message": "x"}),
            "❌ mesh_send: `to` is not usable".to_string(),
        ),
        (
            json!({"to": w.did(a), "message": "x"}),
            "❌ mesh_send: `to` is this agent's own DID".to_string(),
        ),
        (
            json!({"to": "bob", "message": "x".repeat(1_100_000)}),
            "❌ Send failed: Message is 11000".to_string(),
        ),
    ] {
        let r = w.call_sync(a, "mesh_send", args.clone(), 1_000);
        assert!(text(&r).starts_with(&want), "{args}: {}", text(&r));
        assert_wrapped(&r);
        // Refused before anything was asked of the network: a host must
        // not blame a network failure it saw meanwhile (the CLI's exit code).
        assert_eq!(mesh(&r)["bad_input"], true, "{args}: {r}");
    }
    assert_eq!(before, w.snapshot_storage(a), "a refused send wrote state");
    assert_eq!(
        requests,
        w.registry.requests.len(),
        "a refused send asked the registry"
    );
    let r = w.call_sync(
        a,
        "mesh_send",
        json!({"to": "nobody", "message": "x"}),
        10_000,
    );
    assert!(
        text(&r).starts_with("❌ Send failed: no agent is registered under the name \"nobody\"."),
        "{r}"
    );
    // The registry's answer, not the arguments, made this one fail.
    assert!(mesh(&r).get("bad_input").is_none(), "{r}");
}

#[test]
fn discover_lists_agents_with_and_without_a_capability() {
    let (mut w, ids) = world(71, &["alice", "bob", "carol"]);
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let r = w.call_sync(a, "discover", json!({}), 10_000);
    let t = text(&r);
    assert!(t.starts_with("🌐 2 agent(s):\n"), "{t}");
    for i in [b, c] {
        let d = w.did(i);
        let name = &w.agents[i].name;
        assert!(
            t.contains(&format!("  {}...  {name}  [{name}, kars-mesh]", &d[..16])),
            "{t}"
        );
        assert!(t.contains(&d), "full DID missing: {t}");
    }
    assert!(t.contains("No capability given"), "{t}");
    assert_wrapped(&r);
    let r = w.call_sync(
        a,
        "discover",
        json!({"capability": "carol", "limit": 5}),
        10_000,
    );
    assert!(text(&r).starts_with("🌐 1 agent(s):\n"), "{r}");
    assert_eq!(mesh(&r)["agents"][0]["did"], w.did(c));
    let r = w.call_sync(a, "discover", json!({"capability": "nothing-here"}), 10_000);
    assert!(text(&r).starts_with("🌐 0 agent(s) with capability"), "{r}");
    let r = w.call_sync(a, "discover", json!({"capability": 3}), 1_000);
    assert!(
        text(&r).starts_with("❌ discover: `capability` must be a string."),
        "{r}"
    );
    let r = w.call_sync(a, "discover", json!({"limit": "nope"}), 1_000);
    assert!(
        text(&r).starts_with("❌ discover: `limit` must be a number."),
        "{r}"
    );
    assert_eq!(mesh(&r)["bad_input"], true, "{r}");
}
