//! Writes the seed corpus under fuzz/corpus/: test vectors from
//! tests/fixtures/vectors.json, real frames and registry answers from a
//! simulated exchange, and hand-written engine scripts. Run on demand:
//! `FUZZ_WRITE_CORPUS=1 cargo test --release --test fuzz -- --ignored make_corpus`.

use super::corpus_dir;
use crate::sim::world::World;
use kars_mesh::crypto::seal;
use kars_mesh::entropy::SeededEntropy;
use kars_mesh::wire::{b64, base58, frames, hex, plaintext, time, token, transfer};
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn vectors() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vectors.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Every seed, by target.
pub fn all() -> BTreeMap<&'static str, Vec<Vec<u8>>> {
    let v = vectors();
    let ab = &v["alice_bob"];
    let mut c: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();
    let mut add = |t: &'static str, x: &[u8]| c.entry(t).or_default().push(x.to_vec());

    // A real exchange: alice and bob, a few messages each way.
    let mut w = World::new(5);
    let a = w.add_agent("alice", json!({}));
    let b = w.add_agent("bob", json!({}));
    w.run_for(3_000);
    let (ad, bd) = (w.did(a), w.did(b));
    for i in 0..2 {
        w.send(a, b, &format!("hello bob #{i} — ünïcödé ✓"));
        w.run_for(2_000);
        w.send(b, a, &format!("hi alice #{i}"));
        w.run_for(2_000);
    }
    let mut kinds_seen: BTreeMap<String, usize> = BTreeMap::new();
    for (_, f) in w.agents[a].wire.iter().chain(w.agents[b].wire.iter()) {
        let fv: Value = serde_json::from_str(f).unwrap_or(Value::Null);
        let k = fv["type"].as_str().unwrap_or("?").to_string();
        let n = kinds_seen.entry(k.clone()).or_default();
        *n += 1;
        if *n > 3 {
            continue;
        }
        add("frames_message", f.as_bytes());
        if k == "knock" {
            add(
                "frames_establishment",
                fv["establishment"].to_string().as_bytes(),
            );
        }
        if k == "message" || k == "knock" {
            // As the peer receives it, for the engine scripts.
            add("engine_frames", f.as_bytes());
        }
    }
    // Registry answers from the simulated registry.
    let now = w.now;
    for path in [
        format!("/v1/agents/{bd}/prekeys"),
        format!("/v1/agents/{ad}"),
        "/v1/discover?capability=kars-mesh".to_string(),
        "/v1/discover".to_string(),
        "/v1/agents/did:mesh:nobody".to_string(),
    ] {
        let (_, body) = w.registry.handle("GET", &path, &[], None, now);
        if path.ends_with("/prekeys") {
            add("registry_bundle", &body);
        }
        add("registry_answers", &body);
    }
    add(
        "registry_bundle",
        s(&ab["bob_prekeys"]["prekey_put_body_text"]).as_bytes(),
    );
    add(
        "registry_answers",
        br#"{"detail":[{"loc":["body"],"msg":"field required"}]}"#,
    );
    add("registry_answers", b"90d");
    add(
        "registry_answers",
        b"12h\n{\"results\":[{\"did\":\"x\",\"reputation_score\":1e308}]}",
    );

    // Frames from the vectors.
    let m0 = &ab["msg0"];
    let h = kars_mesh::crypto::ratchet::Header {
        dh: b64::decode_array(&s(&m0["header_dh_b64"])).unwrap(),
        pn: 0,
        n: 0,
    };
    let ct = b64::decode(&s(&m0["ciphertext_b64"])).unwrap();
    let did_a = s(&ab["alice"]["did_text"]);
    let did_b = s(&ab["bob"]["did_text"]);
    let ts = s(&ab["timestamp_text"]);
    let f = frames::message_frame(
        &did_a,
        &did_b,
        "5c8e2a4e-0b7c-4d5e-9f1a-2b3c4d5e6f70",
        &ts,
        &h,
        &ct,
    );
    add("frames_message", f.as_bytes());
    add(
        "frames_message",
        s(&ab["alice_auth"]["connect_frame_text"]).as_bytes(),
    );
    add("frames_message", br#"{"type":"message","header":{"dh":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","pn":4294967295,"n":0},"ciphertext":""}"#);
    let est = s(&ab["x3dh"]["establishment_text"]);
    add("frames_establishment", est.as_bytes());
    let ev: Value = serde_json::from_str(&est).unwrap();
    add(
        "frames_establishment",
        json!({"initiator_identity_key": ev["ik"], "ephemeral_public_key": ev["ek"], "used_one_time_key_id": 7})
            .to_string()
            .as_bytes(),
    );

    // Plaintext bodies.
    add(
        "plaintext_body",
        s(&v["plaintext_peer"]["pair_request"]["ciphertext_b64"]).as_bytes(),
    );
    add(
        "plaintext_body",
        plaintext::encode_body(r#"{"type":"command","content":"déjà vu — ✓ 😀"}"#).as_bytes(),
    );
    // btoa of Latin-1 text (what a browser sends for non-ASCII).
    add(
        "plaintext_body",
        b64::encode_std(b"{\"t\":\"caf\xe9\"}").as_bytes(),
    );
    add(
        "plaintext_body",
        b64::encode_url(b"[1,2.5,null,true]").as_bytes(),
    );

    // Codecs.
    for k in [
        "ed25519_public_b64",
        "ed25519_public_b64url",
        "x25519_identity_public_b64",
    ] {
        add("b64", s(&ab["alice"][k]).as_bytes());
    }
    add("b64", s(&m0["ciphertext_b64"]).as_bytes());
    add("b64", b"QQ==");
    add("b64", b"QUI");
    add("b64", b"");
    for who in ["alice", "bob"] {
        add("base58", s(&ab[who]["amid_text"]).as_bytes());
        add("hex", s(&ab[who]["ed25519_public"]).as_bytes());
    }
    add("base58", base58::encode(&[0, 0, 1, 2, 255]).as_bytes());
    add(
        "hex",
        hex::encode(&[0, 0xff, 0x10])
            .to_ascii_uppercase()
            .as_bytes(),
    );
    add("hex", b"abc");

    // Timestamps.
    for t in [
        ts.as_str(),
        "2026-01-02T03:04:05.678901+00:00",
        "2026-01-02T04:04:05.678+01:00",
        "2000-02-29T00:00:00Z",
        "1969-12-31T23:59:59.999-00:30",
        "2026-01-02 03:04:05z",
        "2026-01-02T03:04:60.1+0530",
        "2026-01-02T03:04:05.678",
        &time::format_millis(0),
    ] {
        add("time", t.as_bytes());
    }

    // Pairing tokens.
    for case in v["pairing_token_parsing"]["accept"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["pairing_token_parsing"]["reject"].as_array().unwrap())
    {
        add("token", s(&case["token_text"]).as_bytes());
    }
    let t = token::PairingToken {
        controller_amid: "ctrl".into(),
        relay_url: Some("ws://relay".into()),
        registry_url: None,
        secret: "s3cr3t".into(),
        controller_did: Some(did_a.clone()),
        cluster: Some("c1".into()),
    };
    add("token", t.encode().as_bytes());

    // Transfers: a manifest, then chunk lines (in order, reversed, broken).
    let whole = json!({"type":"file_transfer","file_name":"a.txt","file_data":b64::encode_std("é".repeat(40).as_bytes())}).to_string();
    for (pieces, variant) in [(1, 0), (3, 0), (4, 1), (2, 2)] {
        let mut lines = Vec::new();
        let parts: Vec<String> = {
            let chars: Vec<char> = whole.chars().collect();
            chars
                .chunks(chars.len().div_ceil(pieces))
                .map(|c| c.iter().collect())
                .collect()
        };
        let hashes: Vec<String> = parts
            .iter()
            .map(|p| transfer::sha256_hex(p.as_bytes()))
            .collect();
        lines.push(json!({"type":"mesh:transfer_manifest","transfer_id":"t1","original_type":"file_transfer","total_chunks":parts.len(),"chunk_hashes":hashes,"manifest_hash":transfer::manifest_hash(&hashes)}).to_string());
        let mut order: Vec<usize> = (0..parts.len()).collect();
        if variant == 1 {
            order.reverse();
            order.push(0);
        }
        for i in order {
            let data = if variant == 2 && i == 0 {
                "tampered".to_string()
            } else {
                parts[i].clone()
            };
            lines.push(json!({"type":"mesh:transfer_chunk","transfer_id":"t1","chunk_index":i,"data":data,"hash":hashes[i]}).to_string());
        }
        add("transfer", lines.join("\n").as_bytes());
    }
    for n in [
        "../../etc/passwd",
        "C:\\x\\report.txt",
        ".bashrc",
        "..",
        "CON.txt",
        "a\u{0}b",
        ". ..",
        "report (2).txt",
        &"ü".repeat(150),
    ] {
        add("file_names", n.as_bytes());
    }

    // Sealed records: mode byte 2 (seal and open), 0 (open junk), 1 (key length).
    let mut rng = SeededEntropy::new(1);
    let sealed = seal::seal(&[1; 32], "identity.v1", &[9; 32], &mut rng).unwrap();
    add("seal", &[&[0u8][..], &sealed].concat());
    add("seal", &[&[1u8, 32][..], &[1; 32], &sealed].concat());
    add("seal", b"\x02{\"inbox\":[1,2,3]}");
    add("seal", b"\x02");

    // The original plugin's identity file (schema 2), and broken ones.
    add("legacy_identity", legacy_envelope().as_bytes());
    add(
        "legacy_identity",
        br#"{"schema":1,"iv":"","authTag":"","ciphertext":""}"#,
    );

    // Engine scripts.
    let frames_seen = c.remove("engine_frames").unwrap_or_default();
    let mut scripts = engine_scripts(&v);
    for f in frames_seen.iter().take(4) {
        let mut fv: Value = serde_json::from_slice(f).unwrap();
        fv["to"] = json!("$SELF");
        scripts.push(format!("frame {fv}\ntool mesh_inbox {{}}\ntimer"));
    }
    for sc in scripts {
        c.entry("engine").or_default().push(sc.into_bytes());
    }
    c
}

/// A schema 2 envelope of the original plugin for hostname "laptop" and
/// home "/home/user" (what the legacy_identity target passes).
fn legacy_envelope() -> String {
    use aes_gcm::aead::{AeadInOut, KeyInit};
    use aes_gcm::Aes256Gcm;
    let kek = kars_mesh::crypto::identity::legacy_identity_kek("laptop", "/home/user");
    let cipher = Aes256Gcm::new_from_slice(kek.as_ref()).unwrap();
    let seed = [0x33u8; 32];
    let plain = json!({"signing_private_key": b64::encode_std(&seed)}).to_string();
    let mut buf = plain.into_bytes();
    let nonce = [4u8; 12];
    let tag = cipher
        .encrypt_inout_detached(&nonce.into(), &[], buf.as_mut_slice().into())
        .unwrap();
    json!({"schema":2,"iv":b64::encode_std(&nonce),"authTag":b64::encode_std(&tag),"ciphertext":b64::encode_std(&buf)}).to_string()
}

fn engine_scripts(v: &Value) -> Vec<String> {
    let pair_req = s(&v["plaintext_peer"]["pair_request"]["payload_text"]);
    let tok = s(&v["pairing_token"]["token_text"]);
    let file_a = json!({"type":"file_transfer","request_id":"req-1","file_name":"a.txt","file_data":b64::encode_std(b"one two three"),"sha256":transfer::sha256_hex(b"one two three")}).to_string();
    let file_b = json!({"type":"file_transfer","request_id":"req-1","file_name":"../b.bin","file_data":b64::encode_std(&[0u8, 1, 2, 255])}).to_string();
    vec![
        "plain {\"type\":\"message\",\"content\":\"hello\"}\nplain2 {\"type\":\"command\",\"content\":\"déjà vu ✓\"}\ntool mesh_inbox {\"limit\": 2}\ntool mesh_inbox {\"mark_read\": true}\ntool mesh_inbox {\"unread_only\": false}".into(),
        "tool mesh_await {\"senders\": [\"$CTRL\"], \"timeout_seconds\": 5}\nplain {\"type\":\"message\",\"content\":\"for the waiter\"}\ntimer\ntool mesh_inbox {\"block_until_message\": true}\nabort".into(),
        "tool mesh_identity {}\ntool discover {\"capability\": \"kars-mesh\"}\nauto\ntool discover {\"limit\": \"nope\"}\ntool mesh_register {}\nhttp 500 {\"detail\":\"boom\"}\nhttpfail timeout\nauto".into(),
        "tool mesh_send {\"to\": \"$CTRL\", \"message\": \"hi\"}\nhttp 200 {\"identity_key\":\"x\"}\ntool mesh_send {\"to\": \"nobody\", \"message\": 3}\nauto\ntimer\ntimer".into(),
        "close 1006 gone\ntimer\nopen\nframe {\"type\":\"error\",\"detail\":\"fetch_pending\"}\nframe {\"type\":\"knock\",\"from\":\"$CTRL\",\"to\":\"$SELF\",\"id\":\"k1\",\"establishment\":{\"ik\":\"AA\",\"ek\":\"BB\"}}\nframe {\"type\":\"knock_accept\",\"from\":\"$CTRL\"}\nrestart\ntool mesh_inbox {}".into(),
        format!("mode sandbox\nxfer 3 {file_a}\nplain {file_b}\ntimer\njobready ok\njobexit 0 out.txt=done\ntimer\ntick 600000\ntimer"),
        format!("mode sandbox\nxferr 4 {file_a}\nxfer 1 {{\"type\":\"offload_cancel\",\"request_id\":\"req-1\"}}\nstop"),
        format!("mode controller\nplain {pair_req}\ntool pair_generate {{\"name\": \"bob\", \"slots\": 2, \"expires\": \"90d\"}}\ntool pair_list {{}}\ntool pair_revoke {{\"name\": \"bob\"}}\ntool offload_list {{}}\nauto"),
        format!("tool mesh_pair {{\"token\": \"{tok}\"}}\nauto\ntimer\ntool mesh_pair {{\"token\": \"bad_token\"}}\ntool cloud_offload {{\"task\": \"t\"}}\ntool offload_status {{}}\ntool offload_cancel {{}}\ntool offload_notifications {{}}"),
        "plain {\"type\":\"offload_status\",\"request_id\":\"r\",\"phase\":\"ready\"}\nplain {\"type\":\"offload_done\",\"request_id\":\"r\"}\nxfer 2 {\"type\":\"offload_done\",\"request_id\":\"r\",\"summary\":\"ok\"}\ntick 3600000\ntimer\nstop\ntool mesh_inbox {}".into(),
    ]
}

/// Write the seeds (replacing each target's seed-* files).
pub fn write() {
    for (target, inputs) in all() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        for (i, input) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), input).unwrap();
        }
    }
}
