//! Native half of `npm run bench`: the same Rust code as the component, timed
//! the same way (median of batches), printed as one JSON line.
//! Run: cargo run --release --example bench_native

#![allow(clippy::expect_used, clippy::unwrap_used)]

use kars_mesh::entropy::SeededEntropy;
use kars_mesh::toolkit::Toolkit;
use serde_json::{json, Value};
use std::time::Instant;

/// Median over `batches` of the mean µs per call of `f` over `iters` calls.
fn measure(batches: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters.min(50) {
        f();
    }
    let mut per: Vec<f64> = (0..batches)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / iters as f64
        })
        .collect();
    per.sort_by(|a, b| a.total_cmp(b));
    per[per.len() / 2]
}

fn answer(put: &str, i: usize) -> String {
    let put: Value = serde_json::from_str(put).expect("put body");
    json!({
        "identity_key": put["identity_key"],
        "identity_key_ed": put["identity_key_ed"],
        "signed_pre_key": put["signed_pre_key"],
        "one_time_pre_key": put["one_time_pre_keys"][i],
    })
    .to_string()
}

fn main() {
    let mut tk = Toolkit::default();
    let mut rng = SeededEntropy::new(42);
    let alice = tk.identity_generate(&mut rng);
    let bob = tk.identity_generate(&mut rng);
    let alice_did = tk.identity(alice).expect("alice").did().to_string();
    let bob_did = tk.identity(bob).expect("bob").did().to_string();

    // (1) X3DH establishment (warm-up 50 + 7 batches of 200 < POOL, so
    // every establishment consumes a distinct OPK), 4-DH with a fresh OPK each time: initiator
    // (bundle verify + X3DH + first ratchet key) and responder.
    const POOL: usize = 4000;
    let put = tk
        .prekeys_generate(bob, POOL as u32, &mut rng)
        .expect("prekeys");
    let answers: Vec<String> = (0..POOL).map(|i| answer(&put, i)).collect();
    let mut next = 0usize;
    let establish_us = measure(7, 200, || {
        let init = tk
            .session_initiate(alice, &bob_did, &answers[next], &mut rng)
            .expect("initiate");
        let b = tk.session_respond(bob, &alice_did, &init.establishment_json);
        if let Ok(b) = b {
            tk.session_drop(b);
        }
        tk.session_drop(init.session);
        next += 1;
    });

    // A long-lived session for the chain benchmarks.
    let put = tk.prekeys_generate(bob, 1, &mut rng).expect("prekeys");
    let init = tk
        .session_initiate(alice, &bob_did, &answer(&put, 0), &mut rng)
        .expect("initiate");
    let (a, b) = (
        init.session,
        tk.session_respond(bob, &alice_did, &init.establishment_json)
            .expect("respond"),
    );

    let one_k = vec![0x5au8; 1024];
    let chain1k_us = measure(7, 5000, || {
        let (h, ct) = tk.session_encrypt(a, &one_k, &mut rng).expect("encrypt");
        tk.session_decrypt(b, &h.to_bytes(), &ct, &mut rng)
            .expect("decrypt");
    });

    let pingpong1k_us = measure(7, 200, || {
        let (h, ct) = tk.session_encrypt(b, &one_k, &mut rng).expect("encrypt");
        tk.session_decrypt(a, &h.to_bytes(), &ct, &mut rng)
            .expect("decrypt");
        let (h, ct) = tk.session_encrypt(a, &one_k, &mut rng).expect("encrypt");
        tk.session_decrypt(b, &h.to_bytes(), &ct, &mut rng)
            .expect("decrypt");
    });

    let big = vec![0xa5u8; 64 * 1024];
    let chain64k_us = measure(7, 200, || {
        let (h, ct) = tk.session_encrypt(a, &big, &mut rng).expect("encrypt");
        tk.session_decrypt(b, &h.to_bytes(), &ct, &mut rng)
            .expect("decrypt");
    });

    // The message AEAD alone (natively the chacha20poly1305 crate): the
    // native column of the component's simd128-vs-crate A/B.
    let (key, nonce, aad) = ([7u8; 32], [9u8; 12], [3u8; 147]);
    let mut buf = big.clone();
    let aead64k_us = measure(7, 200, || {
        let tag = kars_mesh::crypto::aead::seal(&key, &nonce, &aad, &mut buf);
        kars_mesh::crypto::aead::open(&key, &nonce, &aad, &mut buf, &tag).expect("open");
    });

    let frame1k_us = measure(7, 3000, || {
        let f = tk
            .session_encrypt_frame(a, &one_k, 1_767_323_045_678, &mut rng)
            .expect("frame");
        tk.session_decrypt_frame(b, &f, &mut rng)
            .expect("decrypt frame");
    });

    println!(
        "{}",
        json!({
            "establish_us": establish_us,
            "chain1k_us": chain1k_us,
            "pingpong1k_us": pingpong1k_us,
            "chain64k_us": chain64k_us,
            "frame1k_us": frame1k_us,
            "aead64k_us": aead64k_us,
        })
    );
}
