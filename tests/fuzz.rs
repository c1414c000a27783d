//! Fuzzing of every decoder and of the engine's event handler.
//!
//! `cargo test --release` runs a bounded, seeded pass per target: the
//! committed corpus (fuzz/corpus/<target>/) and then a fixed number of
//! mutated inputs, each checked for panics and the target's invariants.
//! The longer run is `bash scripts/fuzz.sh [seconds] [target]`; see
//! fuzz/README.md. The harness is in fuzz/harness/.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "sim/mod.rs"]
mod sim;

#[path = "../fuzz/harness/mod.rs"]
mod harness;

use harness::{fuzz, show, Report, Target};
use std::time::{Duration, Instant};

/// The bounded run's seed: fixed, so every run tries the same inputs.
const SEED: u64 = 0x5eed_f022;

fn targets() -> Vec<&'static Target> {
    harness::targets::TARGETS
        .iter()
        .chain(std::iter::once(&harness::engine::TARGET))
        .collect()
}

fn target(name: &str) -> &'static Target {
    targets().into_iter().find(|t| t.name == name).unwrap()
}

fn fail_on_crashes(reports: &[Report]) {
    let crashes: Vec<String> = reports
        .iter()
        .flat_map(|r| &r.crashes)
        .map(|c| {
            format!(
                "[{}] {}\n    input ({} bytes): {}{}",
                c.target,
                c.message,
                c.input.len(),
                show(&c.input),
                c.saved
                    .as_ref()
                    .map(|p| format!("\n    saved as {}", p.display()))
                    .unwrap_or_default()
            )
        })
        .collect();
    assert!(
        crashes.is_empty(),
        "{} input(s) broke an invariant:\n{}",
        crashes.len(),
        crashes.join("\n")
    );
}

fn bounded(name: &str) {
    let t = target(name);
    let r = fuzz(t, SEED, t.bounded, None, false);
    eprintln!(
        "fuzz {}: {} corpus + {} mutated inputs, {} outcomes, slowest {:?}, {:?}",
        r.target, r.corpus, r.mutated, r.outcomes, r.slowest, r.elapsed
    );
    assert!(r.corpus > 0, "fuzz/corpus/{name}/ is empty");
    fail_on_crashes(&[r]);
}

macro_rules! bounded_tests {
    ($($f:ident => $name:literal),* $(,)?) => {
        $(#[test] fn $f() { bounded($name); })*

        /// Every target has a bounded test above.
        #[test]
        fn every_target_is_run() {
            let listed = [$($name),*];
            for t in targets() {
                assert!(listed.contains(&t.name), "no bounded test for {}", t.name);
            }
        }
    };
}

bounded_tests! {
    fuzz_frames_message => "frames_message",
    fuzz_frames_establishment => "frames_establishment",
    fuzz_registry_bundle => "registry_bundle",
    fuzz_registry_answers => "registry_answers",
    fuzz_plaintext_body => "plaintext_body",
    fuzz_b64 => "b64",
    fuzz_base58 => "base58",
    fuzz_hex => "hex",
    fuzz_time => "time",
    fuzz_token => "token",
    fuzz_transfer => "transfer",
    fuzz_file_names => "file_names",
    fuzz_seal => "seal",
    fuzz_legacy_identity => "legacy_identity",
    fuzz_engine => "engine",
}

/// The longer run (scripts/fuzz.sh): FUZZ_SECONDS in all (default 300),
/// shared by the targets whose name contains FUZZ_TARGET (default all),
/// from FUZZ_SEED (default: the clock). Crashing inputs are saved under
/// fuzz/crashes/<target>/.
#[test]
#[ignore = "long: run by scripts/fuzz.sh"]
fn on_demand() {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let seconds: u64 = env("FUZZ_SECONDS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let filter = env("FUZZ_TARGET").unwrap_or_default();
    let seed: u64 = env("FUZZ_SEED")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let chosen: Vec<&Target> = targets()
        .into_iter()
        .filter(|t| t.name.contains(filter.as_str()))
        .collect();
    assert!(!chosen.is_empty(), "no target matches {filter:?}");
    eprintln!(
        "fuzzing {} target(s) for {seconds} s from seed {seed} (FUZZ_SEED={seed} repeats it)",
        chosen.len()
    );
    // The engine is ~1000 times slower per input: it gets half the time
    // when it runs with the others.
    let weight = |t: &Target| {
        if t.name == "engine" {
            chosen.len().max(2) as u32 - 1
        } else {
            1
        }
    };
    let total: u32 = chosen.iter().map(|t| weight(t)).sum();
    let mut reports = Vec::new();
    for t in &chosen {
        let share = Duration::from_secs(seconds) * weight(t) / total;
        let r = fuzz(t, seed, usize::MAX, Some(Instant::now() + share), true);
        eprintln!(
            "fuzz {}: {} corpus + {} mutated inputs, {} outcomes, slowest {:?}, {} crash(es)",
            r.target,
            r.corpus,
            r.mutated,
            r.outcomes,
            r.slowest,
            r.crashes.len()
        );
        reports.push(r);
    }
    fail_on_crashes(&reports);
}

/// Rewrites the seed files of fuzz/corpus/ (FUZZ_WRITE_CORPUS=1 to confirm).
#[test]
#[ignore = "writes fuzz/corpus/: run when the wire formats change"]
fn make_corpus() {
    if std::env::var("FUZZ_WRITE_CORPUS").as_deref() != Ok("1") {
        eprintln!("set FUZZ_WRITE_CORPUS=1 to rewrite fuzz/corpus/");
        return;
    }
    harness::seeds::write();
}

/// The engine rig really reaches the protocol: started, registered and
/// connected; a trusted plaintext message lands in the inbox; a plaintext
/// chunked transfer is refused by a sandbox and leaves no record.
#[test]
fn engine_rig_reaches_the_protocol() {
    use harness::engine::Rig;
    let mut r = Rig::new("agent");
    assert!(r.connected(), "not connected after start");
    assert!(r.self_did.starts_with("did:mesh:"));
    r.op("plain {\"type\":\"message\",\"content\":\"hello from the rig\"}");
    r.op("tool mesh_inbox {}");
    let (_, res) = r.results.last().expect("no tool result");
    assert!(res.contains("hello from the rig"), "{res}");

    // A sandbox takes nothing in plaintext, not even from the DID it works
    // for (red-team finding 2): the transfer never reaches its reassembly.
    // (Reassembly itself is fuzzed directly by the `transfer` target.)
    let mut s = Rig::new("sandbox");
    assert!(s.connected());
    let file = serde_json::json!({"type":"file_transfer","request_id":"req-1","file_name":"a.txt",
        "file_data":kars_mesh::wire::b64::encode_std(b"one two three")});
    s.op(&format!("xferr 3 {file}"));
    let logs: Vec<String> = s.host.logs.iter().map(|(_, _, m)| m.clone()).collect();
    assert!(
        logs.iter()
            .any(|m| m.contains("ignored a plaintext mesh:transfer_")),
        "a plaintext transfer reached the sandbox: {logs:#?}"
    );
    let transfer_keys = |r: &Rig| {
        r.host
            .storage
            .keys()
            .filter(|k| k.starts_with(kars_mesh::store::keys::TRANSFER))
            .count()
    };
    assert_eq!(
        transfer_keys(&s),
        0,
        "a completed transfer left records behind"
    );
    // A chunk without its manifest is not kept.
    s.op("plain {\"type\":\"mesh:transfer_chunk\",\"transfer_id\":\"nope\",\"chunk_index\":0}");
    assert_eq!(
        transfer_keys(&s),
        0,
        "a chunk without its manifest was stored"
    );
}

/// A panicking input is caught, reported and the run goes on (release test
/// builds unwind), so one bad input does not hide the others.
#[test]
fn harness_catches_panics() {
    fn boom(input: &[u8]) -> String {
        assert!(!input.contains(&b'!'), "found a bang");
        "fine".into()
    }
    let t = Target {
        name: "self_test",
        run: boom,
        max_len: 64,
        bounded: 0,
    };
    assert_eq!(harness::run_one(&t, b"abc").as_deref(), Ok("fine"));
    let err = harness::run_one(&t, b"a!c").unwrap_err();
    assert!(err.contains("found a bang"), "{err}");
}
