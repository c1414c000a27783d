//! What an agent accepts from the wire and the registry: forged and
//! malformed frames are refused without losing anything already in the
//! inbox, a KNOCK in someone else's name with the attacker's own identity key
//! opens no session, a bundle with a bad signed-prekey signature is refused,
//! and plaintext is taken only from a DID listed in `trusted_plaintext`.
//! Virtual clock, seeded; the harness is in tests/sim/.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "sim/mod.rs"]
mod sim;

use kars_mesh::crypto::identity::Identity;
use kars_mesh::crypto::ratchet::{channel_ad, Ratchet};
use kars_mesh::crypto::x3dh;
use kars_mesh::entropy::SeededEntropy;
use kars_mesh::wire::{b64, frames, registry as wreg, time};
use serde_json::{json, Value};
use sim::scenario::{check_flow, common_checks, drain, fail_if, world_with, Flow};
use sim::world::World;
use sim::Rng;

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
