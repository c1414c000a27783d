//! Fuzz targets for the decoders: each takes raw bytes, asserts the
//! decoder's invariants (no panic, `Err` for bad input, decode(encode(x))
//! == x) and returns a short outcome label.

use super::{text, Target};
use kars_mesh::crypto::identity::{did_from_ed25519, x25519_from_ed25519, Identity};
use kars_mesh::crypto::seal;
use kars_mesh::mesh::registry as mreg;
use kars_mesh::pairing::ledger;
use kars_mesh::store::legacy;
use kars_mesh::wire::transfer::{self, Manifest};
use kars_mesh::wire::{b64, base58, frames, hex, plaintext, registry, time, token, WireError};
use serde_json::Value;

pub const TARGETS: &[Target] = &[
    Target {
        name: "frames_message",
        run: frames_message,
        max_len: 16 << 10,
        bounded: 150_000,
    },
    Target {
        name: "frames_establishment",
        run: frames_establishment,
        max_len: 4 << 10,
        bounded: 150_000,
    },
    Target {
        name: "registry_bundle",
        run: registry_bundle,
        max_len: 8 << 10,
        bounded: 40_000,
    },
    Target {
        name: "registry_answers",
        run: registry_answers,
        max_len: 8 << 10,
        bounded: 100_000,
    },
    Target {
        name: "plaintext_body",
        run: plaintext_body,
        max_len: 16 << 10,
        bounded: 150_000,
    },
    Target {
        name: "b64",
        run: b64_codec,
        max_len: 8 << 10,
        bounded: 200_000,
    },
    Target {
        name: "base58",
        run: base58_codec,
        max_len: 256,
        bounded: 100_000,
    },
    Target {
        name: "hex",
        run: hex_codec,
        max_len: 4 << 10,
        bounded: 200_000,
    },
    Target {
        name: "time",
        run: iso_time,
        max_len: 256,
        bounded: 200_000,
    },
    Target {
        name: "token",
        run: pairing_token,
        max_len: 4 << 10,
        bounded: 150_000,
    },
    Target {
        name: "transfer",
        run: transfer_reassembly,
        max_len: 32 << 10,
        bounded: 50_000,
    },
    Target {
        name: "file_names",
        run: file_names,
        max_len: 1 << 10,
        bounded: 150_000,
    },
    Target {
        name: "seal",
        run: sealed_record,
        max_len: 4 << 10,
        bounded: 60_000,
    },
    Target {
        name: "legacy_identity",
        run: legacy_identity,
        max_len: 4 << 10,
        bounded: 50_000,
    },
];

/// A label for a wire error: its kind and field, not its positions.
fn wire_label(e: &WireError) -> String {
    match e {
        WireError::Json { what, detail } => {
            format!("json:{what}:{}", detail.split(" at ").next().unwrap_or(""))
        }
        WireError::MissingField(f) => format!("missing:{f}"),
        WireError::Field { field, source } => {
            let k = match source {
                b64::B64Error::BadChar(_) => "char",
                b64::B64Error::BadLength(_) => "length",
                b64::B64Error::WrongSize { .. } => "size",
            };
            format!("field:{field}:{k}")
        }
        WireError::UnexpectedType { .. } => "type".into(),
    }
}

const TS: &str = "2026-01-02T03:04:05.678Z";

fn frames_message(input: &[u8]) -> String {
    let s = text(input);
    match frames::parse_message_frame(&s) {
        Ok(m) => {
            let again = frames::message_frame(&m.from, &m.to, &m.id, TS, &m.header, &m.ciphertext);
            let back = frames::parse_message_frame(&again).unwrap();
            assert_eq!(back, m, "message frame does not survive encode/parse");
            format!("ok:{}", m.ciphertext.len().min(64) / 16)
        }
        Err(e) => wire_label(&e),
    }
}

fn frames_establishment(input: &[u8]) -> String {
    let s = text(input);
    match frames::parse_establishment(&s) {
        Ok(e) => {
            let back = frames::parse_establishment(&frames::establishment_json(&e)).unwrap();
            assert_eq!(back, e, "establishment does not survive encode/parse");
            format!("ok:{}", e.one_time_prekey_id.is_some())
        }
        Err(e) => wire_label(&e),
    }
}

fn registry_bundle(input: &[u8]) -> String {
    let s = text(input);
    match registry::parse_bundle(&s) {
        Ok(b) => {
            // Every check verify_for makes runs on attacker-chosen points.
            let owner = did_from_ed25519(&b.identity_key_ed);
            let r = b.verify_for(&owner);
            let other = b.verify_for("did:mesh:00000000000000000000000000000000");
            assert!(other.is_err() || owner == "did:mesh:00000000000000000000000000000000");
            let mont = x25519_from_ed25519(&b.identity_key_ed);
            if r.is_ok() {
                assert_eq!(mont, Some(b.identity_key));
            }
            format!("ok:{:?}", r.map_err(|e| std::mem::discriminant(&e)))
        }
        Err(e) => wire_label(&e),
    }
}

fn registry_answers(input: &[u8]) -> String {
    let s = text(input);
    let disc = match mreg::parse_discover(input) {
        Ok(list) => {
            for d in &list {
                let _ = d.reputation_score.map(f64::is_finite);
            }
            format!("disc:{}", list.len().min(3))
        }
        Err(_) => "disc:err".into(),
    };
    let agent = mreg::parse_agent(input).map(|a| a.capabilities.len().min(3));
    let detail = mreg::detail(input);
    assert!(detail.chars().count() <= 200 || detail.len() <= 200 * 4);
    let q = mreg::query_escape(&s);
    assert!(q
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'%')));
    let exp = s.lines().next().map(ledger::parse_expiry);
    if let Some(Some(ms)) = exp {
        assert_eq!(ms % 60_000, 0, "expiry {ms} is not whole minutes");
    }
    format!("{disc}:{:?}:{}", agent, matches!(exp, Some(Some(_))))
}

fn plaintext_body(input: &[u8]) -> String {
    let s = text(input);
    let ascii = plaintext::ascii_json(&s);
    assert!(ascii.is_ascii());
    match plaintext::decode_body(&s) {
        Ok(v) => {
            let enc = plaintext::encode_body(&v.to_string());
            let back = plaintext::decode_body(&enc).unwrap();
            assert_eq!(back, v, "plaintext body does not survive encode/decode");
            format!("ok:{}", json_kind(&v))
        }
        Err(e) => wire_label(&e),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn b64_codec(input: &[u8]) -> String {
    // As bytes to encode.
    for enc in [b64::encode_std(input), b64::encode_url(input)] {
        assert_eq!(b64::decode(&enc).unwrap(), input);
        assert_eq!(b64::decode_lenient(&enc), input);
    }
    assert_eq!(b64::encode_std(input).len(), input.len().div_ceil(3) * 4);
    // As text to decode.
    let s = text(input);
    let lenient = b64::decode_lenient(&s);
    assert_eq!(b64::decode(&b64::encode_url(&lenient)).unwrap(), lenient);
    let arr = b64::decode_array::<32>(&s);
    match b64::decode(&s) {
        Ok(v) => {
            assert_eq!(b64::decode(&b64::encode_std(&v)).unwrap(), v);
            assert_eq!(lenient, v, "strict and lenient decoders disagree");
            assert_eq!(arr.is_ok(), v.len() == 32);
            format!("ok:{}", v.len() % 3)
        }
        Err(e) => {
            assert!(arr.is_err());
            format!("{:?}", std::mem::discriminant(&e))
        }
    }
}

fn base58_codec(input: &[u8]) -> String {
    let raw = &input[..input.len().min(64)];
    assert_eq!(base58::decode(&base58::encode(raw)).unwrap(), raw);
    let s = text(input);
    match base58::decode(&s) {
        Some(v) => {
            assert_eq!(base58::encode(&v), s, "base58 is not canonical");
            format!("ok:{}", v.iter().take_while(|&&b| b == 0).count().min(3))
        }
        None => "none".into(),
    }
}

fn hex_codec(input: &[u8]) -> String {
    assert_eq!(hex::decode(&hex::encode(input)).unwrap(), input);
    let s = text(input);
    match hex::decode(&s) {
        Some(v) => {
            assert_eq!(hex::encode(&v), s.to_ascii_lowercase());
            "ok".into()
        }
        None => format!("none:{}", s.len() % 2),
    }
}

/// Unix milliseconds of 10000-01-01: where `format_millis` stops being ISO.
const YEAR_10000_MS: i64 = 253_402_300_800_000;

fn iso_time(input: &[u8]) -> String {
    if input.len() >= 8 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&input[..8]);
        let ms = u64::from_le_bytes(b) % YEAR_10000_MS as u64;
        let f = time::format_millis(ms);
        assert_eq!(time::parse_millis(&f), Ok(ms as i64), "{f}");
    }
    let s = text(input);
    match time::parse_millis(&s) {
        Ok(ms) => {
            if (0..YEAR_10000_MS).contains(&ms) {
                let f = time::format_millis(ms as u64);
                assert_eq!(time::parse_millis(&f), Ok(ms), "{s:?} -> {f}");
            }
            format!("ok:{}", ms.signum())
        }
        Err(time::TimeError::Malformed(_)) => "malformed".into(),
        Err(time::TimeError::NoOffset(_)) => "no-offset".into(),
    }
}

fn pairing_token(input: &[u8]) -> String {
    let s = text(input);
    match token::parse(&s) {
        Ok(t) => {
            assert!(!t.controller_amid.is_empty() && !t.secret.is_empty());
            assert_eq!(t.secret_hash().len(), 64);
            let back = token::parse(&t.encode()).unwrap();
            assert!(back == t, "token does not survive encode/parse: {t:?}");
            let others = [
                Some(t.controller_amid.as_str()),
                t.relay_url.as_deref(),
                t.registry_url.as_deref(),
                t.controller_did.as_deref(),
                t.cluster.as_deref(),
            ];
            let quoted = format!("{:?}", t.secret);
            if !others
                .iter()
                .flatten()
                .any(|o| format!("{o:?}").contains(&quoted))
                && !"PairingToken<redacted>".contains(t.secret.as_str())
            {
                assert!(
                    !format!("{t:?}").contains(&quoted),
                    "Debug shows the secret"
                );
            }
            "ok".into()
        }
        Err(e) => format!("{e:?}"),
    }
}

/// Line 1: a manifest (JSON); each further line: a chunk (JSON). Replays
/// `Manifest::check_chunk` and `assemble` as the engine's reassembly does.
fn transfer_reassembly(input: &[u8]) -> String {
    let s = text(input);
    let mut lines = s.lines();
    let first = lines.next().unwrap_or("");
    let mv: Value = serde_json::from_str(first).unwrap_or(Value::String(first.into()));
    let m = match Manifest::parse(&mv) {
        Ok(m) => m,
        Err(e) => return format!("manifest:{e}"),
    };
    assert!(!m.chunk_hashes.is_empty() && m.chunk_hashes.len() <= transfer::MAX_CHUNKS);
    assert!(m.chunk_hashes.iter().all(|h| h.len() == 64));
    let mut held: std::collections::BTreeMap<usize, String> = Default::default();
    let mut label = String::from("m");
    for line in lines {
        let cv: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        match m.check_chunk(&cv) {
            Ok((i, data)) => {
                assert!(i < m.chunk_hashes.len());
                assert_eq!(transfer::sha256_hex(data.as_bytes()), m.chunk_hashes[i]);
                held.entry(i).or_insert_with(|| data.to_string());
                label.push('c');
            }
            Err(transfer::TransferError::ChunkIndex(_)) => label.push('i'),
            Err(_) => label.push('h'),
        }
        if label.len() > 12 {
            label.truncate(12);
        }
    }
    if held.len() == m.chunk_hashes.len() {
        let parts: Vec<String> = held.into_values().collect();
        match m.assemble(&parts) {
            Ok(v) => {
                assert!(v.is_object() && v.get("type").is_some());
                label.push_str(":whole");
            }
            Err(_) => label.push_str(":notjson"),
        }
    }
    label.push_str(&reassembly(&s));
    label
}

/// The same lines through the engine's own `Reassembly`, with its records
/// kept in a simulated store between lines: it never panics, stores only
/// sealed records bound to their keys, and a completed transfer leaves no
/// record behind once flushed.
fn reassembly(s: &str) -> String {
    use crate::sim::host::SimHost;
    use kars_mesh::agent::Cx;
    use kars_mesh::engine::Command;
    use kars_mesh::offload::reassembly::{Part, Reassembly};
    use kars_mesh::store::{keys, Vault};
    use kars_mesh::wire::offload_msg::OffloadMsg;
    use kars_mesh::wire::payload::Family;
    const KEY: [u8; 32] = [7; 32];
    let vault = Vault::new(zeroize::Zeroizing::new(KEY.to_vec()));
    let mut host = SimHost::new(3, 1_800_000_000_000);
    let mut r = Reassembly::default();
    let mut label = String::from("|");
    // Accepted chunks' texts by transfer and index: a file read as its
    // chunks came must be the one the whole text holds.
    let mut texts: std::collections::BTreeMap<(String, u64), String> = Default::default();
    for line in s.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let mut cx = Cx {
            host: &mut host,
            out: Vec::new(),
        };
        // The engine hands the reassembly only what parses as a manifest
        // or a chunk; anything else never reaches it.
        let parsed = OffloadMsg::from_value(v);
        let part = match &parsed {
            Ok(OffloadMsg::TransferManifest(m)) => Some(Part::Manifest(m)),
            Ok(OffloadMsg::TransferChunk(c)) => Some(Part::Chunk(c)),
            _ => None,
        };
        let accepted = match part {
            Some(part) => r.accept(
                &vault,
                &mut cx,
                "did:mesh:00000000000000000000000000000001",
                part,
            ),
            None => Err(transfer::TransferError::Manifest("not a transfer message")),
        };
        match (&accepted, &parsed) {
            (Ok(_), Ok(OffloadMsg::TransferChunk(c))) => {
                if let (Some(t), Some(i), Some(d)) = (&c.transfer_id, c.chunk_index, &c.data) {
                    texts.entry((t.clone(), i)).or_insert_with(|| d.clone());
                }
            }
            // A new manifest keeps only the held chunks it names, as the
            // reassembly does (which reads the hashes in either case).
            (Ok(_), Ok(OffloadMsg::TransferManifest(m))) => {
                let tid = m.transfer_id.clone().unwrap_or_default();
                let hashes = m.chunk_hashes.clone().unwrap_or_default();
                texts.retain(|(t, i), d| {
                    *t != tid
                        || hashes.get(*i as usize).map(|h| h.to_ascii_lowercase())
                            == Some(transfer::sha256_hex(d.as_bytes()))
                });
            }
            _ => {}
        }
        let done = match accepted {
            Ok(Some(whole)) => {
                assert!(whole.value.is_object(), "reassembled a non-object");
                if let Some(file) = whole.file {
                    let tid = match &parsed {
                        Ok(OffloadMsg::TransferChunk(c)) => c.transfer_id.clone(),
                        Ok(OffloadMsg::TransferManifest(m)) => m.transfer_id.clone(),
                        _ => None,
                    }
                    .unwrap_or_default();
                    let text: String = texts
                        .range((tid.clone(), 0)..=(tid.clone(), u64::MAX))
                        .map(|(_, d)| d.as_str())
                        .collect();
                    texts.retain(|(t, _), _| *t != tid);
                    let mut want: Value =
                        serde_json::from_str(&text).expect("a streamed file's text is JSON");
                    if want.get("type").is_none() {
                        want["type"] = Value::String("file_transfer".into());
                    }
                    // The file's bytes, not its base64 as written: the
                    // sender may use either alphabet, padded or not.
                    let data = want
                        .as_object_mut()
                        .and_then(|o| o.remove("file_data"))
                        .expect("a streamed file's text has file_data");
                    let want_bytes = b64::decode(data.as_str().expect("file_data is a string"))
                        .expect("a streamed file's text holds base64");
                    let mut got = whole.value;
                    got.as_object_mut().map(|o| o.remove("file_data"));
                    assert_eq!(
                        file.bytes, want_bytes,
                        "a streamed file differs from its text"
                    );
                    assert_eq!(
                        file.sha256,
                        kars_mesh::crypto::kdf::sha256(&want_bytes),
                        "a streamed file's hash is not its bytes'"
                    );
                    assert_eq!(got, want, "a streamed message differs from its text");
                }
                r.flush(&mut cx);
                label.push('W');
                true
            }
            Ok(None) => {
                label.push('.');
                false
            }
            Err(_) => {
                label.push('e');
                false
            }
        };
        let out = std::mem::take(&mut cx.out);
        for c in out {
            match c {
                Command::Store(k, b) => {
                    assert!(k.starts_with(keys::TRANSFER), "stored {k:?}");
                    let kind = k.split('/').next().unwrap_or(&k);
                    assert!(
                        seal::unseal_bound(&KEY, &format!("{kind}.v1"), &k, &b, false).is_ok(),
                        "{k:?} is not a sealed record bound to its key"
                    );
                    host.storage.insert(k, b);
                }
                Command::Erase(k) => {
                    host.storage.remove(&k);
                }
                other => panic!("reassembly emitted {other:?}"),
            }
        }
        if done {
            host.now += 1;
        }
        if label.len() > 12 {
            label.truncate(12);
        }
    }
    label
}

fn file_names(input: &[u8]) -> String {
    let s = text(input);
    match transfer::safe_file_name(&s) {
        Some(n) => {
            assert!(
                !n.is_empty() && n.len() <= transfer::MAX_NAME_BYTES,
                "{n:?}"
            );
            assert!(!n.contains('/') && !n.contains('\\'), "{n:?}");
            assert!(!n.chars().any(char::is_control), "{n:?}");
            assert!(!n.starts_with('.') && !n.starts_with(' '), "{n:?}");
            assert!(n != "." && n != "..");
            assert_eq!(
                transfer::safe_file_name(&n).as_deref(),
                Some(n.as_str()),
                "not idempotent"
            );
            let taken = vec![n.clone(), format!("{n} (2)")];
            let u = transfer::unique_name(&n, &taken);
            assert!(!taken.contains(&u), "{u:?}");
            "some".into()
        }
        None => "none".into(),
    }
}

const KEY: [u8; 32] = [7; 32];

/// Byte 0 picks the mode: open arbitrary bytes under a good key; open under
/// a key of arbitrary length; seal then open, tamper, retype, truncate.
fn sealed_record(input: &[u8]) -> String {
    let (mode, rest) = match input.split_first() {
        Some((m, r)) => (m % 3, r),
        None => (0, input),
    };
    match mode {
        0 => match seal::unseal(&KEY, "identity.v1", rest) {
            Ok(_) => panic!("random bytes authenticated as a sealed record"),
            Err(e) => format!("{:?}", std::mem::discriminant(&e)),
        },
        1 => {
            let klen = rest
                .first()
                .map_or(0, |k| *k as usize % 40)
                .min(rest.len().saturating_sub(1));
            let key = rest.get(1..1 + klen).unwrap_or(&[]);
            let body = rest.get(1 + klen..).unwrap_or(&[]);
            let r = seal::unseal(key, "session.v1", body);
            assert!(r.is_err());
            format!(
                "k{}:{:?}",
                klen == 32,
                r.err().map(|e| std::mem::discriminant(&e))
            )
        }
        _ => {
            let mut rng = kars_mesh::entropy::SeededEntropy::new(super::fnv(rest));
            let sealed = seal::seal(&KEY, "inbox.v1", rest, &mut rng).unwrap();
            assert_eq!(sealed[0], seal::VERSION);
            assert_eq!(sealed.len(), rest.len() + 29);
            assert_eq!(
                seal::unseal(&KEY, "inbox.v1", &sealed).unwrap().as_slice(),
                rest
            );
            assert!(seal::unseal(&KEY, "peer.v1", &sealed).is_err());
            assert!(seal::unseal(&[8; 32], "inbox.v1", &sealed).is_err());
            let i = super::fnv(&sealed) as usize % sealed.len();
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                seal::unseal(&KEY, "inbox.v1", &bad).is_err(),
                "flip at {i} accepted"
            );
            assert!(seal::unseal(&KEY, "inbox.v1", &sealed[..sealed.len() - 1]).is_err());
            "sealed".into()
        }
    }
}

fn legacy_identity(input: &[u8]) -> String {
    let s = text(input);
    match legacy::import_identity(&s, "laptop", "/home/user") {
        Ok(seed) => {
            let id = Identity::from_seed(&seed);
            format!("ok:{}", id.did().len())
        }
        Err(e) => format!("{e:?}"),
    }
}
