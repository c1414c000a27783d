//! Session round trips, hostile delivery and the atomic-decrypt guarantee.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kars_mesh::crypto::ratchet::{Header, RatchetError, MAX_SKIP, MAX_SKIPPED_TOTAL};
use kars_mesh::crypto::x3dh::X3dhError;
use kars_mesh::entropy::{Entropy, SeededEntropy};
use kars_mesh::toolkit::{Toolkit, ToolkitError};
use serde_json::Value;

struct Pair {
    tk: Toolkit,
    rng: SeededEntropy,
    a: u32,
    b: u32,
}

fn answer(put: &str, with_opk: bool) -> String {
    let put: Value = serde_json::from_str(put).unwrap();
    serde_json::json!({
        "identity_key": put["identity_key"],
        "identity_key_ed": put["identity_key_ed"],
        "signed_pre_key": put["signed_pre_key"],
        "one_time_pre_key": if with_opk { put["one_time_pre_keys"][0].clone() } else { Value::Null },
    })
    .to_string()
}

fn establish(seed: u64, with_opk: bool) -> Pair {
    let mut tk = Toolkit::default();
    let mut rng = SeededEntropy::new(seed);
    let alice = tk.identity_generate(&mut rng);
    let bob = tk.identity_generate(&mut rng);
    let put = tk.prekeys_generate(bob, 3, &mut rng).unwrap();
    let bob_did = tk.identity(bob).unwrap().did().to_string();
    let alice_did = tk.identity(alice).unwrap().did().to_string();
    let init = tk
        .session_initiate(alice, &bob_did, &answer(&put, with_opk), &mut rng)
        .unwrap();
    let est: Value = serde_json::from_str(&init.establishment_json).unwrap();
    assert_eq!(est.get("otk").is_some(), with_opk);
    let b = tk
        .session_respond(bob, &alice_did, &init.establishment_json)
        .unwrap();
    Pair {
        tk,
        rng,
        a: init.session,
        b,
    }
}

fn send(p: &mut Pair, from: u32, text: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (h, ct) = p.tk.session_encrypt(from, text, &mut p.rng).unwrap();
    (h.to_bytes().to_vec(), ct)
}

fn recv(p: &mut Pair, to: u32, m: &(Vec<u8>, Vec<u8>)) -> Result<Vec<u8>, ToolkitError> {
    p.tk.session_decrypt(to, &m.0, &m.1, &mut p.rng)
}

fn snapshot(p: &mut Pair, s: u32) -> Vec<u8> {
    p.tk.session_export(s).unwrap().to_vec()
}

#[test]
fn four_dh_and_three_dh_round_trips() {
    for with_opk in [true, false] {
        let mut p = establish(1 + with_opk as u64, with_opk);
        let (a, b) = (p.a, p.b);
        // The responder cannot speak first.
        assert!(matches!(
            p.tk.session_encrypt(b, b"x", &mut p.rng),
            Err(ToolkitError::Ratchet(RatchetError::SendChainNotInitialized))
        ));
        for i in 0..5 {
            let m = send(&mut p, a, format!("a{i}").as_bytes());
            assert_eq!(recv(&mut p, b, &m).unwrap(), format!("a{i}").as_bytes());
            let m = send(&mut p, b, format!("b{i}").as_bytes());
            assert_eq!(recv(&mut p, a, &m).unwrap(), format!("b{i}").as_bytes());
        }
    }
}

#[test]
fn bad_bundles_are_refused() {
    let mut tk = Toolkit::default();
    let mut rng = SeededEntropy::new(9);
    let alice = tk.identity_generate(&mut rng);
    let bob = tk.identity_generate(&mut rng);
    let carol = tk.identity_generate(&mut rng);
    let put = tk.prekeys_generate(bob, 1, &mut rng).unwrap();
    let bob_did = tk.identity(bob).unwrap().did().to_string();
    let carol_did = tk.identity(carol).unwrap().did().to_string();
    let good: Value = serde_json::from_str(&answer(&put, true)).unwrap();

    let mut bad_sig = good.clone();
    let mut sig =
        kars_mesh::wire::b64::decode(bad_sig["signed_pre_key"]["signature"].as_str().unwrap())
            .unwrap();
    sig[10] ^= 1;
    let flipped = kars_mesh::wire::b64::encode_url(&sig);
    bad_sig["signed_pre_key"]["signature"] = Value::String(flipped);
    let e = tk
        .session_initiate(alice, &bob_did, &bad_sig.to_string(), &mut rng)
        .err()
        .unwrap();
    assert_eq!(e, ToolkitError::X3dh(X3dhError::BadSignedPrekeySignature));

    // Bob's genuine bundle served for Carol's DID: a substitution.
    let e = tk
        .session_initiate(alice, &carol_did, &good.to_string(), &mut rng)
        .err()
        .unwrap();
    assert!(
        matches!(e, ToolkitError::X3dh(X3dhError::IdentityMismatch { .. })),
        "{e}"
    );

    let mut no_ed = good.clone();
    no_ed.as_object_mut().unwrap().remove("identity_key_ed");
    let e = tk
        .session_initiate(alice, &bob_did, &no_ed.to_string(), &mut rng)
        .err()
        .unwrap();
    assert!(e.to_string().contains("identity_key_ed"), "{e}");

    let mut other_ik = good.clone();
    other_ik["identity_key"] = good["signed_pre_key"]["public_key"].clone();
    let e = tk
        .session_initiate(alice, &bob_did, &other_ik.to_string(), &mut rng)
        .err()
        .unwrap();
    assert_eq!(e, ToolkitError::X3dh(X3dhError::ExchangeKeyMismatch));

    let mut bad_b64 = good.clone();
    bad_b64["signed_pre_key"]["public_key"] = Value::String("***".into());
    let e = tk
        .session_initiate(alice, &bob_did, &bad_b64.to_string(), &mut rng)
        .err()
        .unwrap();
    assert!(e.to_string().contains("signed_pre_key.public_key"), "{e}");

    let e = tk
        .session_initiate(alice, "did:mesh:XYZ", &good.to_string(), &mut rng)
        .err()
        .unwrap();
    assert!(matches!(e, ToolkitError::BadDid(_)));

    // Unknown one-time prekey id in a KNOCK.
    let alice_did = tk.identity(alice).unwrap().did().to_string();
    let init = tk
        .session_initiate(alice, &bob_did, &good.to_string(), &mut rng)
        .unwrap();
    let mut est: Value = serde_json::from_str(&init.establishment_json).unwrap();
    est["otk"] = Value::from(77);
    let e = tk
        .session_respond(bob, &alice_did, &est.to_string())
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "One-time pre-key 77 not found or already consumed."
    );
    // Legacy long key names are understood.
    let legacy = serde_json::json!({
        "initiator_identity_key": est["ik"], "ephemeral_public_key": est["ek"], "used_one_time_key_id": 0
    });
    let bob_legacy = tk
        .session_respond(bob, &alice_did, &legacy.to_string())
        .unwrap();
    // The session built from the long names is Alice's peer: it reads her
    // first message, and she reads its answer.
    let (h, ct) = tk
        .session_encrypt(init.session, b"hello, legacy", &mut rng)
        .unwrap();
    assert_eq!(
        tk.session_decrypt(bob_legacy, &h.to_bytes(), &ct, &mut rng)
            .unwrap(),
        b"hello, legacy"
    );
    let (h, ct) = tk.session_encrypt(bob_legacy, b"answer", &mut rng).unwrap();
    assert_eq!(
        tk.session_decrypt(init.session, &h.to_bytes(), &ct, &mut rng)
            .unwrap(),
        b"answer"
    );
}

#[test]
fn forged_and_replayed_frames_leave_state_unchanged() {
    let mut p = establish(3, true);
    let (a, b) = (p.a, p.b);
    let m0 = send(&mut p, a, b"zero");
    let m1 = send(&mut p, a, b"one");
    assert_eq!(recv(&mut p, b, &m1).unwrap(), b"one"); // m0's key is now skipped

    for forged in [
        {
            let mut f = m0.clone();
            let last = f.1.len() - 1;
            f.1[last] ^= 1; // tag
            f
        },
        {
            let mut f = m0.clone();
            f.1[20] ^= 0x80; // body
            f
        },
        {
            let mut f = m0.clone();
            f.0[35] ^= 1; // header pn: AAD covers the header
            f
        },
        {
            let mut f = m0.clone();
            f.0[39] = 7; // header n: a chain position that was never sent
            f
        },
        {
            let mut f = m0.clone();
            f.0[0] ^= 1; // a different ratchet key: would start a DH step
            f
        },
        (m0.0.clone(), m0.1[..20].to_vec()), // truncated
    ] {
        let before = snapshot(&mut p, b);
        assert!(recv(&mut p, b, &forged).is_err());
        assert_eq!(
            before,
            snapshot(&mut p, b),
            "state changed after a forged frame"
        );
    }
    // The genuine late frame still decrypts after all that.
    assert_eq!(recv(&mut p, b, &m0).unwrap(), b"zero");
    // Replays: of a skipped-then-used key, and of an in-order message.
    for replay in [&m0, &m1] {
        let before = snapshot(&mut p, b);
        let e = recv(&mut p, b, replay).unwrap_err();
        assert!(
            matches!(e, ToolkitError::Ratchet(RatchetError::Duplicate { .. })),
            "replay gave {e}"
        );
        assert_eq!(before, snapshot(&mut p, b));
    }
    // The session goes on in both directions.
    let r = send(&mut p, b, b"reply");
    assert_eq!(recv(&mut p, a, &r).unwrap(), b"reply");
    let before = snapshot(&mut p, a);
    assert!(recv(&mut p, a, &r).is_err());
    assert_eq!(before, snapshot(&mut p, a));
}

#[test]
fn skip_limits_are_enforced_with_a_clear_error() {
    let mut p = establish(4, true);
    let (a, b) = (p.a, p.b);
    let mut msgs: Vec<_> = (0..=MAX_SKIP + 1)
        .map(|i| send(&mut p, a, &i.to_be_bytes()))
        .collect();
    // Exactly MAX_SKIP skipped is allowed...
    let m = msgs[MAX_SKIP as usize].clone();
    // ...but one more than that is not, and changes nothing.
    let too_far = msgs.pop().unwrap();
    let before = snapshot(&mut p, b);
    let e = recv(&mut p, b, &too_far).unwrap_err();
    assert_eq!(
        e,
        ToolkitError::Ratchet(RatchetError::TooManySkipped {
            n: MAX_SKIP + 1,
            skip: MAX_SKIP as u64 + 1
        })
    );
    assert!(e.to_string().contains("limit is 100"), "{e}");
    assert_eq!(before, snapshot(&mut p, b));
    assert_eq!(recv(&mut p, b, &m).unwrap(), MAX_SKIP.to_be_bytes());
    // Every skipped message is still readable, once.
    for (i, m) in msgs[..MAX_SKIP as usize].iter().enumerate() {
        assert_eq!(recv(&mut p, b, m).unwrap(), (i as u32).to_be_bytes());
    }
    assert_eq!(
        recv(&mut p, b, &too_far).unwrap(),
        (MAX_SKIP + 1).to_be_bytes()
    );
}

#[test]
fn skipped_keys_total_is_capped_oldest_first() {
    let mut p = establish(5, true);
    let (a, b) = (p.a, p.b);
    // 25 chains of MAX_SKIP skipped messages each; B answers between chains
    // so that A's next chain uses a new ratchet key.
    const CHAINS: usize = 25;
    let mut skipped = Vec::new();
    for _ in 0..CHAINS {
        skipped.extend((0..MAX_SKIP).map(|_| send(&mut p, a, b"s")));
        let last = send(&mut p, a, b"last");
        assert_eq!(recv(&mut p, b, &last).unwrap(), b"last");
        let r = send(&mut p, b, b"r");
        assert_eq!(recv(&mut p, a, &r).unwrap(), b"r");
    }
    let total = skipped.len();
    assert!(
        total > MAX_SKIPPED_TOTAL,
        "the test must skip more than the cap"
    );
    let dropped = total - MAX_SKIPPED_TOTAL;
    let snap = snapshot(&mut p, b);
    let restored = p.tk.session_import(&snap).unwrap();
    // Exactly the newest MAX_SKIPPED_TOTAL keys survive the export: the
    // oldest kept and the newest read, the newest dropped and the oldest
    // do not.
    for i in [dropped, total - 1] {
        let got = recv(&mut p, restored, &skipped[i]);
        assert_eq!(
            got.as_deref().ok(),
            Some(&b"s"[..]),
            "skipped message {i} of {total} should still be readable: {got:?}"
        );
    }
    for i in [dropped - 1, 0] {
        let e = recv(&mut p, restored, &skipped[i]).unwrap_err();
        assert!(
            e.to_string().contains("authentication") || e.to_string().contains("already"),
            "skipped message {i} of {total} should be gone: {e}"
        );
    }
}

/// A tiny PRNG for delivery decisions (separate from key material).
struct Dice(SeededEntropy);
impl Dice {
    fn below(&mut self, n: usize) -> usize {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        (u64::from_le_bytes(b) % n as u64) as usize
    }
}

#[test]
fn ten_thousand_messages_hostile_network() {
    let mut p = establish(6, true);
    let (a, b) = (p.a, p.b);
    let mut dice = Dice(SeededEntropy::new(0xD1CE));
    // In flight per direction: (seq, header, ct). Delivered: for duplicates.
    let mut to_b: Vec<(u32, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut to_a: Vec<(u32, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut delivered: Vec<(bool, u32, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut seen_b = std::collections::HashSet::new();
    let mut seen_a = std::collections::HashSet::new();
    let (mut sent, mut dropped, mut dupes, mut ok) = (0u32, 0u32, 0u32, 0u32);
    let mut b_can_send = false;
    let mut seq = 0u32;
    while sent < 10_000 || !to_a.is_empty() || !to_b.is_empty() {
        let roll = dice.below(100);
        if sent < 10_000 && roll < 45 {
            // Send from A, or from B once B has heard from A.
            let from_b = b_can_send && dice.below(2) == 0;
            seq += 1;
            let text = seq.to_be_bytes();
            let (h, ct) = send(&mut p, if from_b { b } else { a }, &text);
            if from_b {
                to_a.push((seq, h, ct))
            } else {
                to_b.push((seq, h, ct))
            }
            sent += 1;
        } else if roll < 47 {
            // Drop one in-flight message (bounded so no chain skips > MAX_SKIP).
            let q = if dice.below(2) == 0 {
                &mut to_a
            } else {
                &mut to_b
            };
            if !q.is_empty() {
                let i = dice.below(q.len().min(4));
                q.remove(i);
                dropped += 1;
            }
        } else if roll < 52 && !delivered.is_empty() {
            // Redeliver something already delivered: must fail, state intact.
            let (to_b_side, _, h, ct) = delivered[dice.below(delivered.len())].clone();
            let target = if to_b_side { b } else { a };
            let before = snapshot(&mut p, target);
            assert!(p.tk.session_decrypt(target, &h, &ct, &mut p.rng).is_err());
            assert_eq!(before, snapshot(&mut p, target));
            dupes += 1;
        } else {
            // Deliver one of the first 8 in flight: bounded reordering.
            let pick_b = if to_a.is_empty() {
                true
            } else if to_b.is_empty() {
                false
            } else {
                dice.below(2) == 0
            };
            let q = if pick_b { &mut to_b } else { &mut to_a };
            if q.is_empty() {
                continue;
            }
            let i = dice.below(q.len().min(8));
            let (s, h, ct) = q.remove(i);
            let target = if pick_b { b } else { a };
            let pt =
                p.tk.session_decrypt(target, &h, &ct, &mut p.rng)
                    .unwrap_or_else(|e| panic!("message {s} failed: {e}"));
            assert_eq!(pt, s.to_be_bytes());
            assert!(
                if pick_b {
                    seen_b.insert(s)
                } else {
                    seen_a.insert(s)
                },
                "message {s} decrypted twice"
            );
            if pick_b {
                b_can_send = true;
            }
            delivered.push((pick_b, s, h, ct));
            ok += 1;
        }
    }
    assert_eq!(sent, 10_000);
    assert_eq!(
        ok + dropped,
        sent,
        "every message not dropped arrived exactly once"
    );
    assert!(
        dropped > 50 && dupes > 200,
        "the test exercised drops ({dropped}) and duplicates ({dupes})"
    );
    let _ = Header::from_bytes(&[0; 40]).unwrap();
}

#[test]
fn snapshot_round_trip_mid_session() {
    let mut p = establish(7, false);
    let (a, b) = (p.a, p.b);
    let m0 = send(&mut p, a, b"0");
    let m1 = send(&mut p, a, b"1");
    assert_eq!(recv(&mut p, b, &m1).unwrap(), b"1");
    let snap = snapshot(&mut p, b);
    p.tk.session_drop(b);
    let b2 = p.tk.session_import(&snap).unwrap();
    assert_eq!(snapshot(&mut p, b2), snap);
    assert_eq!(recv(&mut p, b2, &m0).unwrap(), b"0");
    let r = send(&mut p, b2, b"r");
    assert_eq!(recv(&mut p, a, &r).unwrap(), b"r");
    // Corrupt snapshots are refused, not misread.
    assert!(p.tk.session_import(&snap[..snap.len() - 1]).is_err());
    let mut v = snap.clone();
    let at = 2 + 41 + 2 + 41;
    v[at] = 9; // version byte after the two DIDs
    assert!(p.tk.session_import(&v).is_err());
    // Debug output carries no secrets.
    let dbg = format!("{:?}", p.tk.session(a).unwrap().ratchet);
    assert!(dbg.starts_with("Ratchet {") && !dbg.contains("rk"), "{dbg}");
}

fn pick(c: &mut SeededEntropy) -> u32 {
    let mut b = [0u8; 4];
    c.fill(&mut b);
    u32::from_le_bytes(b)
}

/// Who sends next and how many, the delivery order within a turn, and
/// whether each party takes an owed step ahead of its send (idle time) or
/// is snapshotted and restored, all from `plan`'s seed.
fn converse(plan: u64, policy: &dyn Fn(&mut SeededEntropy) -> bool) -> Vec<Vec<u8>> {
    use kars_mesh::crypto::ratchet::Ratchet;
    use kars_mesh::crypto::KeyPair;
    let mut rng = [SeededEntropy::new(101), SeededEntropy::new(202)];
    let mut choice = SeededEntropy::new(plan);
    // The policy's own draws, so the plan is the same whatever it decides.
    let mut whim = SeededEntropy::new(plan + 1000);
    let spk = KeyPair::from_secret([3u8; 32]);
    let spk_pub = *spk.public();
    let ad = b"did:mesh:a|did:mesh:b".to_vec();
    let shared = [5u8; 32];
    let a = Ratchet::new_initiator(&shared, &spk_pub, ad.clone(), &mut rng[0]).unwrap();
    let b = Ratchet::new_responder(&shared, spk, ad);
    let mut party = [a, b];
    let mut wire = Vec::new();
    let mut sender = 0usize;
    for turn in 0..60u32 {
        let n = 1 + (pick(&mut choice) % 3) as usize;
        let mut msgs = Vec::new();
        for i in 0..n {
            let text = format!("turn {turn} msg {i}");
            let (h, ct) = party[sender]
                .encrypt(text.as_bytes(), &mut rng[sender])
                .unwrap();
            wire.push([h.to_bytes().to_vec(), ct.clone()].concat());
            msgs.push((h, ct, text));
        }
        if pick(&mut choice) % 2 == 0 {
            msgs.reverse(); // skipped keys, then the ones skipped
        }
        let rx = 1 - sender;
        for (h, ct, text) in msgs {
            let pt = party[rx].decrypt(&h, &ct, &mut rng[rx]).unwrap();
            assert_eq!(pt, text.as_bytes());
            if policy(&mut whim) {
                party[rx].prepare_send(&mut rng[rx]).unwrap();
            }
            if policy(&mut whim) {
                let snap = party[rx].to_snapshot();
                party[rx] = Ratchet::from_snapshot(&snap).unwrap();
            }
        }
        if pick(&mut choice) % 3 != 0 {
            sender = rx;
        }
    }
    wire
}

/// A message under a new peer key takes only the receiving half of the DH
/// ratchet step; the sending half (new key pair, DH) comes with the next
/// send, or earlier in idle time (`prepare_send`). Either way every byte on
/// the wire is what taking the whole step at once gives (the old ratchet:
/// `prepare_send` right after each decrypt), through skipped keys and
/// snapshots taken while a step is owed.
#[test]
fn a_step_taken_later_or_in_idle_time_sends_the_same_bytes() {
    for plan in [1u64, 2, 3, 4] {
        let whole = converse(plan, &|_| true);
        let when_sending = converse(plan, &|_| false);
        let at_random = converse(plan, &|c| pick(c) % 2 == 0);
        assert_eq!(whole.len(), when_sending.len());
        assert!(
            whole == when_sending,
            "plan {plan}: a step taken when sending changed the wire"
        );
        assert!(
            whole == at_random,
            "plan {plan}: idle-time steps and snapshots changed the wire"
        );
    }
}

#[test]
fn an_owed_step_is_kept_in_the_snapshot_and_checked() {
    use kars_mesh::crypto::ratchet::Ratchet;
    use kars_mesh::crypto::KeyPair;
    let mut rng = SeededEntropy::new(9);
    let spk = KeyPair::from_secret([4u8; 32]);
    let spk_pub = *spk.public();
    let mut a = Ratchet::new_initiator(&[6u8; 32], &spk_pub, b"ad".to_vec(), &mut rng).unwrap();
    let mut b = Ratchet::new_responder(&[6u8; 32], spk, b"ad".to_vec());
    assert!(!b.can_send());
    let (h, ct) = a.encrypt(b"hello", &mut rng).unwrap();
    b.decrypt(&h, &ct, &mut rng).unwrap();
    assert!(b.send_step_pending() && b.can_send());
    let snap = b.to_snapshot();
    let mut restored = Ratchet::from_snapshot(&snap).unwrap();
    assert!(restored.send_step_pending());
    assert!(restored.prepare_send(&mut rng).unwrap());
    assert!(!restored.prepare_send(&mut rng).unwrap(), "taken once");
    let (h2, ct2) = restored.encrypt(b"back", &mut rng).unwrap();
    assert_eq!(a.decrypt(&h2, &ct2, &mut rng).unwrap(), b"back");
    // Flags after version, root key and key pair: owing a step means a peer
    // key and no sending chain; anything else is refused, not misread.
    let at = 1 + 32 + 32 + 32;
    assert_eq!(snap[at], 0b1101, "peer key, receiving chain, step owed");
    for bad in [0b1111u8, 0b1100, 0b1_0101] {
        let mut v = snap.to_vec();
        v[at] = bad;
        assert!(
            matches!(Ratchet::from_snapshot(&v), Err(RatchetError::Snapshot(_))),
            "flags {bad:#b} accepted"
        );
    }
}
