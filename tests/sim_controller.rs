//! The controller role: pairing through its ledger tools (`pair_generate`,
//! `pair_list`, `pair_revoke`) and the client's `mesh_pair`, with the
//! original texts for every refusal and the ledger and pairing kept across
//! restarts; and an offload whose phase only an end-to-end message from the
//! controller may move, never a plaintext one in its name.
//! Virtual clock, seeded; the harness is in tests/sim/.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "sim/mod.rs"]
mod sim;

use kars_mesh::crypto::identity::Identity;
use kars_mesh::wire::b64;
use serde_json::{json, Value};
use sim::world::World;

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
    // Kept among the pairings (one per cluster; the newest is the default).
    assert_eq!(
        w.persisted(alice, "pairings").unwrap()["pairings"][0]["cluster_name"],
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
    // The cluster's refusal, not this agent's check of the arguments.
    assert!(bad["details"]["mesh"].get("bad_input").is_none(), "{bad}");
    // A kars CLI token made while the controller had no identity names it
    // by the `ctrl_…` placeholder: say what happened and what to do.
    let legacy = w.call_sync(bob, "mesh_pair", json!({"token": "azcp_1_eyJjb250cm9sbGVyX2FtaWQiOiJjdHJsX2FiYzEyMyIsInJlbGF5X3VybCI6IndzOi8vaG9zdC5kb2NrZXIuaW50ZXJuYWw6MTg3NjUiLCJyZWdpc3RyeV91cmwiOiJodHRwOi8vaG9zdC5kb2NrZXIuaW50ZXJuYWw6MTgwODAiLCJzZWNyZXQiOiJ0ZXN0LXNlY3JldC12YWx1ZSJ9"}), 5_000);
    assert!(
        legacy["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("controller_amid is the kars CLI's placeholder (ctrl_…)")
            && legacy["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("make a new token with `kars pair generate`"),
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
        w.persisted(alice, "pairings").unwrap()["pairings"][0]["controller_did"],
        w.did(ctrl)
    );
    // A non-controller has no ledger tools.
    let nope = w.call_sync(alice, "pair_generate", json!({"name": "x"}), 5_000);
    assert!(nope["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("not a controller"));
}

// ------------------------------------------ offload: phases end to end only

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

/// The core's own view of a relay that cannot be reached (`relay_trouble`):
/// an offload asked for while the relay is down is said to wait ("Not sent
/// yet", `queued_because`), not "working on it"; once the relay is back the
/// request goes out and the controller answers it. (A review: the CLI's test
/// and a fake port left the node's own answer unchecked.)
#[test]
fn an_offload_asked_while_the_relay_is_down_waits_and_then_goes() {
    let (mut w, _ctrl, alice) = World::paired(57);

    let now = w.now;
    w.schedule_relay_restart(now + 100, 60_000);
    w.run_for(10_000);
    let sub = w.call_sync(alice, "cloud_offload", json!({"task": "while down"}), 5_000);
    let text = World::call_text(&sub);
    assert!(text.starts_with("☁️ Offload submitted"), "{sub}");
    assert!(text.contains("⚠️ Not sent yet: the relay"), "{text}");
    assert!(!text.contains("is working on it"), "{text}");
    assert!(
        sub["details"]["mesh"]["queued_because"].is_string(),
        "{sub}"
    );

    // The relay comes back: the request leaves and the controller takes it.
    w.run_for(90_000);
    let st = w.call_sync(alice, "offload_status", json!({}), 5_000);
    let phase = st["details"]["mesh"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ["validating", "spawning", "scheduled", "ready"].contains(&phase.as_str()),
        "the request never reached the controller: {st}"
    );

    // With the relay up, a new offload is sent at once (no "Not sent yet").
    let cancel = w.call_sync(alice, "offload_cancel", json!({}), 5_000);
    assert!(World::call_text(&cancel).contains("cancelled"), "{cancel}");
    w.run_for(3_000);
    let again = w.call_sync(alice, "cloud_offload", json!({"task": "while up"}), 5_000);
    let text = World::call_text(&again);
    assert!(text.contains("is working on it"), "{text}");
    assert!(
        again["details"]["mesh"]["queued_because"].is_null(),
        "{again}"
    );
}
