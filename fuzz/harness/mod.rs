//! The in-repo fuzzing harness (no extra dependencies): a seeded mutator over
//! a committed corpus, a runner that catches panics per input, and outcome
//! labels as a light feedback signal (an input whose outcome was not seen
//! before joins the working pool, so mutations build on it).
//!
//! Used by `tests/fuzz.rs` for the bounded, deterministic run inside
//! `cargo test --release`, and by `scripts/fuzz.sh` for the longer run.

#![allow(dead_code, unreachable_pub)]

pub mod engine;
pub mod seeds;
pub mod targets;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One fuzz target: takes raw bytes, panics on a violated invariant, and
/// returns a short label of what happened (the feedback signal).
pub type TargetFn = fn(&[u8]) -> String;

pub struct Target {
    pub name: &'static str,
    pub run: TargetFn,
    /// Mutated inputs are cut to this many bytes.
    pub max_len: usize,
    /// Mutated inputs in the bounded run of `cargo test --release`.
    pub bounded: usize,
}

/// SplitMix64 (the same generator as the simulation's).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`; 0 when `n == 0`.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// FNV-1a of bytes (crash file names, seeds per target).
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Tokens the mutator inserts: JSON syntax, edge numbers, base64 and hex
/// edges, protocol words.
const DICT: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\udc00",
    "\\uffff",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "-0",
    "1e999",
    "-1e999",
    "0.1",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "9007199254740993",
    "=",
    "==",
    "===",
    "+",
    "/",
    "-",
    "_",
    "AAAA",
    "////",
    "____",
    "1111",
    "zz",
    "ff",
    "\u{0}",
    "\u{7f}",
    "é",
    "ü",
    "✓",
    "😀",
    "\u{feff}",
    "\r\n",
    "\n",
    " ",
    "\t",
    "Z",
    "+00:00",
    "-23:59",
    "T",
    ".",
    "9999-12-31",
    "0000-00-00",
    "60",
    "azcp_1_",
    "did:mesh:",
    "did:mesh:00000000000000000000000000000000",
    "$SELF",
    "$CTRL",
    "\"type\"",
    "\"message\"",
    "\"knock\"",
    "\"header\"",
    "\"dh\"",
    "\"pn\"",
    "\"n\"",
    "\"ciphertext\"",
    "\"payload\"",
    "\"plaintext\":true",
    "\"id\"",
    "\"from\"",
    "\"to\"",
    "mesh:transfer_manifest",
    "mesh:transfer_chunk",
    "file_transfer",
    "offload_request",
    "offload_done",
    "pair_request",
    "pair_response",
    "\"chunk_index\"",
    "\"chunk_hashes\"",
    "\"total_chunks\"",
    "\"transfer_id\"",
    "\"file_data\"",
    "\"file_name\"",
    "../",
    "..\\",
    "CON",
];

/// Inputs that differ a little from `base`: stacked byte, token, splice and
/// line mutations, cut to `max_len`.
pub fn mutate(rng: &mut Rng, base: &[u8], pool: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut v = base.to_vec();
    let rounds = 1 + rng.below(6);
    for _ in 0..rounds {
        let len = v.len();
        match rng.below(14) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next_u64() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(4);
                for _ in 0..n {
                    v.insert(i, rng.next_u64() as u8);
                }
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                v.drain(i..i + n);
            }
            4..=6 => {
                let t = DICT[rng.below(DICT.len())].as_bytes();
                let i = rng.below(len + 1);
                if rng.chance(2) && i < len {
                    // Replace a run of the same length class.
                    let n = rng.below((len - i).min(t.len() + 2) + 1);
                    v.splice(i..i + n, t.iter().copied());
                } else {
                    v.splice(i..i, t.iter().copied());
                }
            }
            7 if !pool.is_empty() => {
                // Crossover: a piece of another input.
                let other = &pool[rng.below(pool.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = a + rng.below(other.len() - a) + 1;
                    let i = rng.below(len + 1);
                    v.splice(i..i, other[a..b].iter().copied());
                }
            }
            8 if len > 1 => {
                // Duplicate a range.
                let a = rng.below(len);
                let b = a + 1 + rng.below((len - a).min(64));
                let piece: Vec<u8> = v[a..b].to_vec();
                let i = rng.below(len + 1);
                v.splice(i..i, piece);
            }
            9 if len > 0 => v.truncate(rng.below(len)),
            10 => mutate_number(rng, &mut v),
            11 => mutate_lines(rng, &mut v, pool),
            12 if len > 0 => {
                // Flip a character class in place: letters <-> digits etc.
                let i = rng.below(len);
                v[i] = match v[i] {
                    b'a'..=b'z' => v[i].to_ascii_uppercase(),
                    b'A'..=b'Z' => b'0' + (v[i] % 10),
                    b'0'..=b'9' => b'a' + (v[i] - b'0'),
                    _ => b'=',
                };
            }
            _ => {
                // Repeat the whole input's tail (length stress).
                if len > 0 && len < max_len / 2 {
                    let a = rng.below(len);
                    let piece: Vec<u8> = v[a..].to_vec();
                    v.extend_from_slice(&piece);
                }
            }
        }
    }
    v.truncate(max_len);
    v
}

/// Replace a decimal number in `v` by an edge value.
fn mutate_number(rng: &mut Rng, v: &mut Vec<u8>) {
    let starts: Vec<usize> = (0..v.len())
        .filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let a = starts[rng.below(starts.len())];
    let mut b = a;
    while b < v.len() && v[b].is_ascii_digit() {
        b += 1;
    }
    const EDGES: &[&str] = &[
        "0",
        "1",
        "2",
        "7",
        "79",
        "80",
        "81",
        "255",
        "256",
        "65535",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "99999999999999999999999",
        "1e3",
        "-5",
    ];
    let e = EDGES[rng.below(EDGES.len())].as_bytes();
    v.splice(a..b, e.iter().copied());
}

/// Line-level edits (the engine's scripts are one operation per line).
fn mutate_lines(rng: &mut Rng, v: &mut Vec<u8>, pool: &[Vec<u8>]) {
    let mut lines: Vec<Vec<u8>> = v.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let n = lines.len();
    match rng.below(4) {
        0 if n > 1 => {
            lines.remove(rng.below(n));
        }
        1 => {
            let l = lines[rng.below(n)].clone();
            lines.insert(rng.below(n + 1), l);
        }
        2 if n > 1 => {
            let (a, b) = (rng.below(n), rng.below(n));
            lines.swap(a, b);
        }
        _ => {
            if let Some(other) = pool.get(rng.below(pool.len().max(1))) {
                let ol: Vec<&[u8]> = other.split(|&b| b == b'\n').collect();
                let l = ol[rng.below(ol.len())].to_vec();
                lines.insert(rng.below(n + 1), l);
            }
        }
    }
    *v = lines.join(&b'\n');
}

/// Where the committed corpus lives.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

/// The committed corpus of a target, in file-name order.
pub fn load_corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(corpus_dir(target)) {
        for e in rd.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                out.push((e.file_name().to_string_lossy().into_owned(), b));
            }
        }
    }
    out.sort();
    out
}

/// One input that panicked.
pub struct Crash {
    pub target: &'static str,
    pub input: Vec<u8>,
    pub message: String,
    pub saved: Option<PathBuf>,
}

pub struct Report {
    pub target: &'static str,
    pub corpus: usize,
    pub mutated: usize,
    pub outcomes: usize,
    pub slowest: Duration,
    pub crashes: Vec<Crash>,
    pub elapsed: Duration,
}

/// Run one input, catching a panic.
pub fn run_one(t: &Target, input: &[u8]) -> Result<String, String> {
    catch_unwind(AssertUnwindSafe(|| (t.run)(input))).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

/// Replay the corpus, then run mutated inputs until `count` were run or
/// `deadline` passed. `save`: write crashing inputs under fuzz/crashes/.
pub fn fuzz(t: &Target, seed: u64, count: usize, deadline: Option<Instant>, save: bool) -> Report {
    let start = Instant::now();
    let mut rng = Rng::new(seed ^ fnv(t.name.as_bytes()));
    let corpus = load_corpus(t.name);
    let mut pool: Vec<Vec<u8>> = corpus.iter().map(|(_, b)| b.clone()).collect();
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut crashes = Vec::new();
    let mut slowest = Duration::ZERO;
    let record = |input: &[u8], res: Result<String, String>, crashes: &mut Vec<Crash>| match res {
        Ok(label) => Some(label),
        Err(message) => {
            let saved = save.then(|| save_crash(t.name, input)).flatten();
            crashes.push(Crash {
                target: t.name,
                input: input.to_vec(),
                message,
                saved,
            });
            None
        }
    };
    for (_, input) in &corpus {
        let t0 = Instant::now();
        let res = run_one(t, input);
        slowest = slowest.max(t0.elapsed());
        if let Some(l) = record(input, res, &mut crashes) {
            seen.insert(l);
        }
    }
    let mut mutated = 0;
    while mutated < count && deadline.is_none_or(|d| Instant::now() < d) {
        let base = pool[rng.below(pool.len())].clone();
        let input = mutate(&mut rng, &base, &pool, t.max_len);
        let t0 = Instant::now();
        let res = run_one(t, &input);
        slowest = slowest.max(t0.elapsed());
        mutated += 1;
        if let Some(l) = record(&input, res, &mut crashes) {
            // A new outcome: keep the input to mutate further (bounded pool).
            if seen.insert(l) && pool.len() < 4096 {
                pool.push(input);
            }
        }
    }
    Report {
        target: t.name,
        corpus: corpus.len(),
        mutated,
        outcomes: seen.len(),
        slowest,
        crashes,
        elapsed: start.elapsed(),
    }
}

fn save_crash(target: &str, input: &[u8]) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("crashes")
        .join(target);
    std::fs::create_dir_all(&dir).ok()?;
    let p = dir.join(format!("crash-{:016x}", fnv(input)));
    std::fs::write(&p, input).ok()?;
    Some(p)
}

/// Printable form of an input (for failure messages).
pub fn show(input: &[u8]) -> String {
    let s = String::from_utf8_lossy(&input[..input.len().min(600)]);
    format!("{:?}{}", s, if input.len() > 600 { " ..." } else { "" })
}

/// Bytes as text: UTF-8 when valid, else lossily.
pub fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}
