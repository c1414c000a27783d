//! The agent and the services around it: a registry restart (the agent
//! registers again and re-uploads a fresh bundle, against an idealised 404
//! and core-5.0.0's 401 for an unknown DID's heartbeat), a second process of
//! one identity replaced by the relay without a reconnect fight, and the
//! relay emulation's own semantics.
//! Virtual clock, seeded; the harness is in tests/sim/.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "sim/mod.rs"]
mod sim;

use kars_mesh::crypto::identity::Identity;
use kars_mesh::wire::{frames, time};
use serde_json::{json, Value};
use sim::registry::UnknownHeartbeat;
use sim::scenario::{common_checks, fail_if, world_with};
use sim::world::{World, EPOCH_MS};

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

// ---------------------------------------------- one identity, two processes

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
    let got = w.read_texts(a2);
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
