//! Every vector in tests/fixtures/vectors.json (the golden data
//! docs/spec/agentmesh-wire.md cites), checked against the native build.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kars_mesh::crypto::identity::{self, Identity};
use kars_mesh::crypto::kdf;
use kars_mesh::crypto::ratchet::Header;
use kars_mesh::entropy::ScriptedEntropy;
use kars_mesh::toolkit::Toolkit;
use kars_mesh::wire::{b64, base58, frames, hex, plaintext, token};
use serde_json::Value;

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vectors.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn h(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn seed(v: &Value) -> [u8; 32] {
    h(v).try_into().unwrap()
}

#[test]
fn x3dh_kdf_kat_tells_spec_from_legacy() {
    let v = vectors();
    let k = &v["x3dh_kdf_kat"];
    assert_eq!(s(&k["info_text"]).as_bytes(), kdf::X3DH_INFO);
    assert_eq!(kdf::x3dh(&h(&k["input"])).to_vec(), h(&k["output_spec"]));
    assert_ne!(h(&k["output_spec"]), h(&k["output_legacy"]));
    // The legacy KDF is only ever accepted from a peer (npm SDK 4.0.0), and
    // must be exactly that SDK's.
    assert_eq!(
        kdf::x3dh_legacy(&h(&k["input"])).to_vec(),
        h(&k["output_legacy"])
    );
}

#[test]
fn identities_and_encodings() {
    let v = vectors();
    for who in ["alice", "bob"] {
        let p = &v["alice_bob"][who];
        let id = Identity::from_seed(&seed(&p["ed25519_seed"]));
        assert_eq!(
            id.ed25519_public().to_vec(),
            h(&p["ed25519_public"]),
            "{who}"
        );
        assert_eq!(
            id.x25519_public().to_vec(),
            h(&p["x25519_identity_public"]),
            "{who}"
        );
        assert_eq!(id.did(), s(&p["did_text"]));
        assert_eq!(id.amid(), s(&p["amid_text"]));
        assert_eq!(
            identity::x25519_from_ed25519(id.ed25519_public())
                .unwrap()
                .to_vec(),
            h(&p["x25519_identity_public"])
        );
        assert_eq!(
            b64::encode_url(id.x25519_public()),
            s(&p["x25519_identity_public_b64url"])
        );
        assert_eq!(
            b64::encode_url(id.ed25519_public()),
            s(&p["ed25519_public_b64url"])
        );
        if let Some(std) = p.get("ed25519_public_b64") {
            assert_eq!(b64::encode_std(id.ed25519_public()), s(std));
            assert_eq!(b64::decode(s(std)).unwrap(), id.ed25519_public().to_vec());
        }
        if let Some(std) = p.get("x25519_identity_public_b64") {
            assert_eq!(b64::encode_std(id.x25519_public()), s(std));
        }
        // x25519 private = clamp(SHA-512(seed)[0..32]): check via a DH with the base point.
        let kp = kars_mesh::crypto::KeyPair::from_secret(
            h(&p["x25519_identity_private"]).try_into().unwrap(),
        );
        assert_eq!(kp.public(), id.x25519_public());
        assert_eq!(
            id.exchange().secret_bytes().to_vec(),
            h(&p["x25519_identity_private"])
        );
        assert!(identity::is_mesh_did(id.did()));
    }
}

#[test]
fn seed_env_identities() {
    let v = vectors();
    let e = &v["identity_seed_env"];
    let k = &e["kars_identity_seed"];
    assert_eq!(h(&k["env_value_text"]), h(&k["ed25519_seed"]));
    let id = Identity::from_seed(&seed(&k["ed25519_seed"]));
    assert_eq!(id.ed25519_public().to_vec(), h(&k["ed25519_public"]));
    assert_eq!(id.did(), s(&k["did_text"]));
    assert_eq!(id.amid(), s(&k["amid_text"]));
    let p = &e["pinned_agent_identity_app_id"];
    let sd = identity::seed_from_app_id(&format!("  {}\n", s(&p["env_value_text"])));
    assert_eq!(sd.to_vec(), h(&p["ed25519_seed"]));
    assert_eq!(
        kdf::sha256(s(&p["seed_input_text"]).as_bytes()).to_vec(),
        h(&p["ed25519_seed"])
    );
    let id = Identity::from_seed(&sd);
    assert_eq!(id.ed25519_public().to_vec(), h(&p["ed25519_public"]));
    assert_eq!(id.did(), s(&p["did_text"]));
    assert_eq!(id.amid(), s(&p["amid_text"]));
}

#[test]
fn legacy_identity_kek() {
    let v = vectors();
    let k = &v["identity_kek"];
    let kek = identity::legacy_identity_kek(s(&k["hostname_text"]), s(&k["homedir_text"]));
    assert_eq!(kek.to_vec(), h(&k["kek"]));
    assert_eq!(
        kdf::sha256(s(&k["kek_input_text"]).as_bytes()).to_vec(),
        h(&k["kek"])
    );
}

#[test]
fn relay_and_registry_auth() {
    let v = vectors();
    let ab = &v["alice_bob"];
    let a = &ab["alice_auth"];
    let ts = s(&ab["timestamp_text"]);
    let mut tk = Toolkit::default();
    let alice = tk
        .identity_import(&seed(&ab["alice"]["ed25519_seed"]))
        .unwrap();
    let id = tk.identity(alice).unwrap();
    assert_eq!(id.sign(ts.as_bytes()).to_vec(), h(&a["connect_signature"]));
    assert_eq!(
        b64::encode_std(&id.sign(ts.as_bytes())),
        s(&a["connect_signature_b64"])
    );
    assert_eq!(
        b64::encode_url(&id.sign(ts.as_bytes())),
        s(&a["authorization_signature_b64url"])
    );
    assert_eq!(
        tk.connect_frame(alice, ts).unwrap(),
        s(&a["connect_frame_text"])
    );
    assert_eq!(
        tk.authorization_header(alice, ts).unwrap(),
        s(&a["authorization_header_text"])
    );
    assert_eq!(
        tk.registration_body(alice, ts, &[]).unwrap(),
        s(&a["register_body_text"])
    );
    assert_eq!(
        id.sign(s(&a["registry_pop_message_text"]).as_bytes())
            .to_vec(),
        h(&a["registry_pop_proof"])
    );
    assert_eq!(
        b64::encode_url(&h(&a["registry_pop_proof"])),
        s(&a["registry_pop_proof_b64url"])
    );
    // A naive timestamp is refused before anything is signed.
    assert!(tk.connect_frame(alice, "2026-01-02T03:04:05.678").is_err());
}

/// Bob's bundle as the registry's GET answer, derived from the PUT body.
fn bob_bundle_answer(put_body: &str) -> String {
    let put: Value = serde_json::from_str(put_body).unwrap();
    serde_json::json!({
        "identity_key": put["identity_key"],
        "identity_key_ed": put["identity_key_ed"],
        "signed_pre_key": put["signed_pre_key"],
        "one_time_pre_key": put["one_time_pre_keys"][0],
    })
    .to_string()
}

#[test]
fn full_alice_bob_session() {
    let v = vectors();
    let ab = &v["alice_bob"];
    let (bp, x, r, m0, m1) = (
        &ab["bob_prekeys"],
        &ab["x3dh"],
        &ab["ratchet"],
        &ab["msg0"],
        &ab["msg1"],
    );
    let mut tk = Toolkit::default();
    let mut rng = ScriptedEntropy::default();
    let alice = tk
        .identity_import(&seed(&ab["alice"]["ed25519_seed"]))
        .unwrap();
    let bob = tk
        .identity_import(&seed(&ab["bob"]["ed25519_seed"]))
        .unwrap();

    rng.push(&h(&bp["spk_private"]));
    rng.push(&h(&bp["opk_private"]));
    let put = tk.prekeys_generate(bob, 1, &mut rng).unwrap();
    assert_eq!(put, s(&bp["prekey_put_body_text"]));
    let spk_pub: [u8; 32] = h(&bp["spk_public"]).try_into().unwrap();
    let spk_sig: [u8; 64] = h(&bp["spk_signature"]).try_into().unwrap();
    assert!(identity::verify(
        tk.identity(bob).unwrap().ed25519_public(),
        &spk_pub,
        &spk_sig
    ));

    rng.push(&h(&x["alice_ek_private"]));
    rng.push(&h(&r["alice_dhs_private"]));
    let bob_did = s(&ab["bob"]["did_text"]);
    let alice_did = s(&ab["alice"]["did_text"]);
    let init = tk
        .session_initiate(alice, bob_did, &bob_bundle_answer(&put), &mut rng)
        .unwrap();
    assert_eq!(init.establishment_json, s(&x["establishment_text"]));

    rng.push(&h(&m0["nonce"]));
    let (hdr0, ct0) = tk
        .session_encrypt(init.session, s(&m0["plaintext_text"]).as_bytes(), &mut rng)
        .unwrap();
    assert_eq!(hdr0.to_bytes().to_vec(), h(&m0["header40"]));
    assert_eq!(ct0, h(&m0["ciphertext"]));
    assert_eq!(b64::encode_std(&ct0), s(&m0["ciphertext_b64"]));
    assert_eq!(b64::encode_std(&hdr0.dh), s(&m0["header_dh_b64"]));
    let hj = serde_json::to_string(&frames::HeaderJson {
        dh: b64::encode_std(&hdr0.dh),
        pn: hdr0.pn,
        n: hdr0.n,
    })
    .unwrap();
    assert_eq!(hj, s(&m0["frame_header_text"]));

    let bs = tk
        .session_respond(bob, alice_did, &init.establishment_json)
        .unwrap();
    // The OPK is consumed: the same establishment cannot be answered twice.
    assert!(tk
        .session_respond(bob, alice_did, &init.establishment_json)
        .is_err());
    rng.push(&h(&r["bob_dhs_private"]));
    let pt0 = tk
        .session_decrypt(bs, &h(&m0["header40"]), &h(&m0["ciphertext"]), &mut rng)
        .unwrap();
    assert_eq!(pt0, s(&m0["plaintext_text"]).as_bytes());

    rng.push(&h(&m1["nonce"]));
    let (hdr1, ct1) = tk
        .session_encrypt(bs, s(&m1["plaintext_text"]).as_bytes(), &mut rng)
        .unwrap();
    assert_eq!(hdr1.to_bytes().to_vec(), h(&m1["header40"]));
    assert_eq!(
        Header::from_bytes(&h(&m1["header40"])).unwrap().dh.to_vec(),
        h(&r["bob_dhs_public"])
    );
    assert_eq!(ct1, h(&m1["ciphertext"]));
    assert_eq!(b64::encode_std(&ct1), s(&m1["ciphertext_b64"]));

    // Bob's new ratchet key: Alice takes the receiving half of the step
    // now (no randomness), the sending half with her next message.
    let pt1 = tk
        .session_decrypt(init.session, &h(&m1["header40"]), &ct1, &mut rng)
        .unwrap();
    assert_eq!(pt1, s(&m1["plaintext_text"]).as_bytes());
    assert_eq!(rng.mismatches, 0);
    rng.push(&[7u8; 32]);
    rng.push(&[9u8; 12]);
    let (hdr2, ct2) = tk.session_encrypt(init.session, b"m2", &mut rng).unwrap();
    let alice_dhs2 = kars_mesh::crypto::KeyPair::from_secret([7u8; 32]);
    assert_eq!(
        hdr2.dh,
        *alice_dhs2.public(),
        "the step's new key is the one drawn"
    );
    assert_eq!((hdr2.pn, hdr2.n), (1, 0));
    assert_eq!(&ct2[..12], &[9u8; 12]);
    // The bytes the ratchet that took the whole step in decrypt gave for the
    // same draws (488aebd, its key drawn before Alice's decrypt of msg1).
    assert_eq!(
        kars_mesh::codec::hex::encode(&hdr2.to_bytes()),
        "13be4feaeaf204c7fd3358fc9c00721881d174278128227ec674f37f7fe97b6d0000000100000000"
    );
    assert_eq!(
        kars_mesh::codec::hex::encode(&ct2),
        "0909090909090909090909095d2251bf568d058e527abefe6c09968ebf8c"
    );
    let pt2 = tk
        .session_decrypt(bs, &hdr2.to_bytes(), &ct2, &mut rng)
        .unwrap();
    assert_eq!(pt2, b"m2");
    assert_eq!(rng.remaining(), 0);
    assert_eq!(rng.mismatches, 0);
}

#[test]
fn ratchet_intermediates() {
    let v = vectors();
    let ab = &v["alice_bob"];
    let (x, r) = (&ab["x3dh"], &ab["ratchet"]);
    let sk: [u8; 32] = h(&x["sk"]).try_into().unwrap();
    let mut ikm = vec![0xffu8; 32];
    for k in ["dh1", "dh2", "dh3", "dh4"] {
        ikm.extend(h(&x[k]));
    }
    assert_eq!(ikm, h(&x["ikm"]));
    assert_eq!(kdf::x3dh(&ikm[32..]).to_vec(), sk.to_vec());
    let dh: [u8; 32] = h(&r["dh_alice_dhs_bob_spk"]).try_into().unwrap();
    let (rk1, cks0) = kdf::root(&sk, &dh);
    assert_eq!(rk1.to_vec(), h(&r["rk1"]));
    assert_eq!(cks0.to_vec(), h(&r["alice_cks0"]));
    assert_eq!(cks0.to_vec(), h(&r["bob_ckr0"]));
    let (mk0, cks1) = kdf::chain(&cks0);
    assert_eq!(mk0.to_vec(), h(&r["alice_mk0"]));
    assert_eq!(mk0.to_vec(), h(&ab["msg0"]["message_key"]));
    assert_eq!(cks1.to_vec(), h(&r["alice_cks1"]));
    let dh2: [u8; 32] = h(&r["dh_bob_dhs_alice_dhs"]).try_into().unwrap();
    let (rk2, bob_cks0) = kdf::root(&rk1, &dh2);
    assert_eq!(rk2.to_vec(), h(&r["rk2"]));
    assert_eq!(bob_cks0.to_vec(), h(&r["bob_cks0"]));
    assert_eq!(kdf::chain(&bob_cks0).0.to_vec(), h(&r["bob_mk0"]));
    // Keys as scalars: the public halves and the DH outputs.
    let alice_dhs =
        kars_mesh::crypto::KeyPair::from_secret(h(&r["alice_dhs_private"]).try_into().unwrap());
    assert_eq!(alice_dhs.public().to_vec(), h(&r["alice_dhs_public"]));
    let spk: [u8; 32] = h(&ab["bob_prekeys"]["spk_public"]).try_into().unwrap();
    assert_eq!(alice_dhs.agree(&spk).unwrap().to_vec(), dh.to_vec());
    let ad = kars_mesh::crypto::ratchet::channel_ad(
        s(&ab["alice"]["did_text"]),
        s(&ab["bob"]["did_text"]),
        &h(&x["x3dh_ad"]).try_into().unwrap(),
    );
    assert_eq!(ad, h(&r["channel_ad"]));
    assert_eq!(ad.len() as u64, r["channel_ad_length"].as_u64().unwrap());
    assert_eq!(
        &ad[..ad.len() - 64],
        s(&r["channel_ad_prefix_text"]).as_bytes()
    );
    let mut aad = ad.clone();
    aad.extend(h(&ab["msg0"]["header40"]));
    assert_eq!(aad, h(&ab["msg0"]["aad"]));
    assert_eq!(s(&r["kdf_rk_info_text"]).as_bytes(), kdf::RATCHET_INFO);
}

#[test]
fn plaintext_peer_body() {
    let v = vectors();
    let p = &v["plaintext_peer"]["pair_request"];
    assert_eq!(
        plaintext::encode_body(s(&p["payload_text"])),
        s(&p["ciphertext_b64"])
    );
    let decoded = plaintext::decode_body(s(&p["ciphertext_b64"])).unwrap();
    assert_eq!(
        decoded,
        serde_json::from_str::<Value>(s(&p["payload_text"])).unwrap()
    );
    let alice = Identity::from_seed(&seed(&v["alice_bob"]["alice"]["ed25519_seed"]));
    assert_eq!(
        decoded["pubkey_ed25519"],
        b64::encode_std(alice.ed25519_public())
    );
    assert_eq!(
        decoded["display_name"],
        format!("external-{}", &alice.amid()[..8])
    );
    // Non-ASCII survives both Latin-1 and UTF-8 readers once escaped.
    let enc = plaintext::encode_body(r#"{"t":"ünï ☃ 😀"}"#);
    assert!(b64::decode(&enc).unwrap().is_ascii());
    assert_eq!(plaintext::decode_body(&enc).unwrap()["t"], "ünï ☃ 😀");
}

#[test]
fn pairing_tokens() {
    let v = vectors();
    let t = &v["pairing_token"];
    let tok = token::parse(s(&t["token_text"])).unwrap();
    assert_eq!(tok.secret, s(&t["secret_text"]));
    assert_eq!(tok.secret_hash(), s(&t["token_hash"]));
    assert_eq!(
        b64::encode_url(s(&t["payload_text"]).as_bytes()),
        &s(&t["token_text"])[7..]
    );
    assert!(!format!("{tok:?}").contains(s(&t["secret_text"])));
    let p = &v["pairing_token_parsing"];
    for case in p["accept"].as_array().unwrap() {
        let tok = token::parse(s(&case["token_text"]))
            .unwrap_or_else(|e| panic!("{}: {e}", s(&case["case_text"])));
        assert_eq!(tok.controller_amid, s(&case["controller_amid_text"]));
        assert_eq!(tok.relay_url.as_deref(), Some(s(&case["relay_url_text"])));
        assert_eq!(
            tok.registry_url.as_deref(),
            Some(s(&case["registry_url_text"]))
        );
        assert_eq!(tok.secret, s(&case["secret_text"]));
        if let Some(pt) = case.get("payload_text") {
            assert_eq!(
                b64::encode_url(s(pt).as_bytes()),
                &s(&case["token_text"])[7..]
            );
        }
    }
    for case in p["reject"].as_array().unwrap() {
        assert!(
            token::parse(s(&case["token_text"])).is_err(),
            "{} was accepted",
            s(&case["case_text"])
        );
        if let Some(pt) = case.get("payload_text") {
            assert_eq!(
                b64::encode_url(s(pt).as_bytes()),
                &s(&case["token_text"])[7..]
            );
        }
    }
}

#[test]
fn base58_leading_zeros() {
    assert_eq!(base58::encode(&[0, 0, 1]), "112");
    assert_eq!(base58::encode(&[]), "");
}
