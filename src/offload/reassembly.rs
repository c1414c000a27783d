//! Reassembly of chunked transfers (`mesh:transfer_manifest` and
//! `mesh:transfer_chunk`). Chunks are sealed records, so a restart in the
//! middle of a 30 MiB output loses nothing the relay was told to forget.
//! A transfer its sender abandons is erased after `STALE_MS`, at the next
//! start or the next transfer, so its records do not pile up.

use super::progress::Count;
use crate::io::{Command, Cx, LogLevel};
use crate::store::{keys, packed, Vault};
use crate::wire::transfer::{
    valid_transfer_id, ChunkMsg, Manifest, ManifestMsg, TransferError, MAX_CHUNKS,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Transfers in progress at once (per node).
const MAX_OPEN: usize = 8;
/// An unfinished transfer with no manifest for this long is abandoned.
pub const STALE_MS: u64 = 2 * 3600 * 1000;

/// A held chunk as builds before `store::packed` wrote it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Chunk {
    data: String,
}

/// A held chunk's text: packed (`store::packed`), or the JSON [`Chunk`]
/// that builds before it wrote. `None` (logged) when it cannot be read: the
/// sender's copy is sent again until the manifest's hash matches.
fn read_chunk(vault: &Vault, cx: &mut Cx<'_>, key: &str) -> Option<String> {
    let bytes = match vault.get_bytes(cx.host, key) {
        Ok(b) => b?,
        Err(e) => {
            cx.log(LogLevel::Error, &format!("{e}; skipped"));
            return None;
        }
    };
    let text = if packed::is_packed(&bytes) {
        packed::unpack(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|(_, t)| String::from_utf8(t.to_vec()).map_err(|e| e.to_string()))
    } else {
        serde_json::from_slice::<Chunk>(&bytes)
            .map(|c| c.data)
            .map_err(|e| crate::wire::describe_json_error(&e))
    };
    text.map_err(|e| {
        cx.log(
            LogLevel::Error,
            &format!("record {key} unreadable ({e}); skipped"),
        )
    })
    .ok()
}

/// The manifest as stored, with when it came.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredManifest {
    manifest: Manifest,
    at_ms: u64,
}

/// A stored manifest, in either form (bare before `at_ms` was kept; such a
/// transfer counts as started at `now`).
fn read_manifest(vault: &Vault, cx: &mut Cx<'_>, key: &str, now: u64) -> Option<StoredManifest> {
    let v = vault.get::<Value>(cx.host, key).ok().flatten()?;
    serde_json::from_value::<StoredManifest>(v.clone())
        .ok()
        .or_else(|| {
            serde_json::from_value::<Manifest>(v)
                .ok()
                .map(|manifest| StoredManifest {
                    manifest,
                    at_ms: now,
                })
        })
}

/// Erase the records of transfers abandoned by their senders (or left
/// without a manifest): run once at start.
pub fn sweep_stale(vault: &Vault, cx: &mut Cx<'_>) {
    let now = cx.now();
    let keys = cx.host.storage_list(keys::TRANSFER);
    let mut prefixes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for k in keys {
        let Some(slash) = k[keys::TRANSFER.len()..].find('/') else {
            cx.out.push(Command::Erase(k));
            continue;
        };
        let pre = k[..keys::TRANSFER.len() + slash + 1].to_string();
        prefixes.entry(pre).or_default().push(k);
    }
    for (pre, records) in prefixes {
        let fresh = read_manifest(vault, cx, &format!("{pre}m"), now)
            .is_some_and(|m| now.saturating_sub(m.at_ms) < STALE_MS);
        if !fresh {
            cx.log(
                LogLevel::Info,
                &format!("erased an abandoned transfer ({} records)", records.len()),
            );
            for k in records {
                cx.out.push(Command::Erase(k));
            }
        }
    }
}

/// One piece of a chunked transfer, as received.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    Manifest(&'a ManifestMsg),
    Chunk(&'a ChunkMsg),
}

impl Part<'_> {
    fn transfer_id(&self) -> Option<&str> {
        match self {
            Part::Manifest(m) => m.transfer_id.as_deref(),
            Part::Chunk(c) => c.transfer_id.as_deref(),
        }
    }
}

/// An open transfer as [`Reassembly::held`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub count: Count,
    pub file_name: Option<String>,
    pub file_size: Option<u64>,
}

#[derive(Default)]
pub struct Reassembly {
    /// Storage prefix → manifest and the chunks held. Chunks are also kept
    /// in memory: a record stored in this call is not readable until the
    /// host has carried out the call's commands.
    open: BTreeMap<String, (Option<StoredManifest>, BTreeMap<usize, String>)>,
    /// Records of a completed transfer, erased once its message is handled.
    done: Vec<String>,
}

fn prefix(from: &str, transfer_id: &str) -> String {
    let mut input = from.as_bytes().to_vec();
    input.push(0);
    input.extend_from_slice(transfer_id.as_bytes());
    let h = crate::crypto::kdf::sha256(&input);
    format!("{}{}/", keys::TRANSFER, crate::wire::hex::encode(&h[..12]))
}

impl Reassembly {
    /// Take a manifest or chunk from `from`; the whole message once complete.
    pub fn accept(
        &mut self,
        vault: &Vault,
        cx: &mut Cx<'_>,
        from: &str,
        part: Part<'_>,
    ) -> Result<Option<Value>, TransferError> {
        let tid = valid_transfer_id(part.transfer_id())?;
        let pre = prefix(from, tid);
        // Validate before taking any room.
        let manifest = match part {
            Part::Manifest(m) => Ok(Manifest::from_msg(m)?),
            Part::Chunk(c) => Err(c),
        };
        let now = cx.now();
        self.drop_stale(cx, now);
        if !self.open.contains_key(&pre) {
            self.reopen(vault, cx, &pre, manifest.is_ok(), now)?;
        }
        let Some(entry) = self.open.get_mut(&pre) else {
            return Ok(None);
        };
        // A checked manifest, or (`Err`) a chunk to check against the held one.
        match manifest {
            Ok(m) => {
                let m = StoredManifest {
                    manifest: m,
                    at_ms: now,
                };
                if let Err(e) = vault.put(cx.host, &mut cx.out, &format!("{pre}m"), &m) {
                    cx.host.log(LogLevel::Error, &e.to_string());
                }
                // Chunks held from an earlier manifest of the same id count only
                // if they match this one.
                entry.1.retain(|i, d| {
                    m.manifest.chunk_hashes.get(*i).map(String::as_str)
                        == Some(crate::wire::transfer::sha256_hex(d.as_bytes()).as_str())
                });
                entry.0 = Some(m);
            }
            Err(c) => {
                let Some(m) = entry.0.as_ref() else {
                    // Our senders keep order per peer; a chunk before its
                    // manifest cannot be checked, so it is not kept.
                    return Err(TransferError::Manifest("chunk before its manifest"));
                };
                let (i, data) = m.manifest.check_chunk_msg(c)?;
                if i >= MAX_CHUNKS {
                    return Err(TransferError::ChunkIndex(i as u64));
                }
                if let std::collections::btree_map::Entry::Vacant(slot) = entry.1.entry(i) {
                    // Packed: a quarter less to seal and write (`store::packed`).
                    let rec = packed::pack(b"", data.as_bytes());
                    if let Err(e) =
                        vault.put_bytes(cx.host, &mut cx.out, &format!("{pre}c{i}"), &rec)
                    {
                        cx.host.log(LogLevel::Error, &e.to_string());
                    }
                    slot.insert(data.to_string());
                }
            }
        }
        let Some(m) = entry.0.as_ref().map(|m| m.manifest.clone()) else {
            return Ok(None);
        };
        if entry.1.len() < m.chunk_hashes.len() {
            return Ok(None);
        }
        let parts: Vec<String> = std::mem::take(&mut entry.1).into_values().collect();
        let whole = m.assemble(&parts);
        for i in 0..m.chunk_hashes.len() {
            self.done.push(format!("{pre}c{i}"));
        }
        self.done.push(format!("{pre}m"));
        self.open.remove(&pre);
        whole.map(Some)
    }

    /// How far the open transfer `transfer_id` from `from` is (chunks held
    /// and their text), and what its manifest says of the file it carries:
    /// for progress reports only. `None` when no such transfer is open.
    pub fn held(&self, from: &str, transfer_id: &str) -> Option<Held> {
        let (m, chunks) = self.open.get(&prefix(from, transfer_id))?;
        let m = &m.as_ref()?.manifest;
        let text_done: usize = chunks.values().map(String::len).sum();
        Some(Held {
            count: Count {
                parts_done: chunks.len() as u64,
                parts_total: m.chunk_hashes.len() as u64,
                text_done: text_done as u64,
                text_total: m.total_bytes.unwrap_or(0),
            },
            file_name: m.file_name.clone(),
            file_size: m.file_size,
        })
    }

    /// Transfers whose sender went quiet long ago make room.
    fn drop_stale(&mut self, cx: &mut Cx<'_>, now: u64) {
        let stale: Vec<String> = self
            .open
            .iter()
            .filter(|(_, (m, _))| {
                m.as_ref()
                    .is_some_and(|m| now.saturating_sub(m.at_ms) >= STALE_MS)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for old in stale {
            self.drop_transfer(cx, &old);
        }
    }

    /// Start (or, after a restart, pick up from storage) the transfer under
    /// `pre`; the oldest unfinished one makes room past `MAX_OPEN`.
    fn reopen(
        &mut self,
        vault: &Vault,
        cx: &mut Cx<'_>,
        pre: &str,
        has_manifest: bool,
        now: u64,
    ) -> Result<(), TransferError> {
        let stored = read_manifest(vault, cx, &format!("{pre}m"), now);
        if stored.is_none() && !has_manifest {
            // Our senders keep order per peer; a chunk before its
            // manifest cannot be checked, so it is not kept.
            return Err(TransferError::Manifest("chunk before its manifest"));
        }
        if self.open.len() >= MAX_OPEN {
            // The oldest unfinished transfer makes room (its sender gave up).
            if let Some(old) = self.open.keys().next().cloned() {
                self.drop_transfer(cx, &old);
            }
        }
        let mut held = BTreeMap::new();
        for k in cx.host.storage_list(&format!("{pre}c")) {
            let idx = k.rsplit('c').next().and_then(|i| i.parse::<usize>().ok());
            if let (Some(i), Some(data)) = (idx, read_chunk(vault, cx, &k)) {
                held.insert(i, data);
            }
        }
        self.open.insert(pre.to_string(), (stored, held));
        Ok(())
    }

    /// Forget an unfinished transfer and its stored records (all of them:
    /// chunks stored before a restart are not all in memory).
    fn drop_transfer(&mut self, cx: &mut Cx<'_>, pre: &str) {
        if self.open.remove(pre).is_some() {
            for k in cx.host.storage_list(pre) {
                cx.out.push(Command::Erase(k));
            }
        }
    }

    /// Erase the records of completed transfers: called after the
    /// reassembled message's own effects were emitted.
    pub fn flush(&mut self, cx: &mut Cx<'_>) {
        for k in self.done.drain(..) {
            cx.out.push(Command::Erase(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::testing::FakeHost;
    use crate::wire::transfer::split_typed;
    use zeroize::Zeroizing;

    /// A file's JSON message as chunks: (manifest, chunks).
    fn file_message() -> (String, ManifestMsg, Vec<ChunkMsg>) {
        let bytes: Vec<u8> = (0..900_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let text = serde_json::json!({
            "type": "file_transfer",
            "name": "out.bin",
            "content": crate::wire::b64::encode_std(&bytes),
        })
        .to_string();
        let (m, c) = split_typed(
            &text,
            "t-1",
            "file_transfer",
            "sandbox",
            "2026-12-04T00:00:00Z",
        )
        .expect("splits")
        .expect("needs chunks");
        assert!(c.len() >= 3, "{} chunks", c.len());
        (text, m, c)
    }

    fn step(
        r: &mut Reassembly,
        vault: &Vault,
        host: &mut FakeHost,
        part: Part<'_>,
    ) -> Option<Value> {
        let mut cx = Cx {
            host,
            out: Vec::new(),
        };
        let whole = r
            .accept(vault, &mut cx, "did:mesh:sb", part)
            .expect("accepted");
        r.flush(&mut cx);
        let out = std::mem::take(&mut cx.out);
        host.apply(out);
        whole
    }

    #[test]
    fn chunks_held_across_a_restart_are_read_back_packed_or_as_older_builds_wrote_them() {
        let (text, m, chunks) = file_message();
        let vault = Vault::new(Zeroizing::new(vec![3u8; 32]));
        let mut host = FakeHost {
            now: 1_800_000_000_000,
            ..Default::default()
        };
        let mut r = Reassembly::default();
        assert!(step(&mut r, &vault, &mut host, Part::Manifest(&m)).is_none());
        assert!(step(&mut r, &vault, &mut host, Part::Chunk(&chunks[0])).is_none());
        assert!(step(&mut r, &vault, &mut host, Part::Chunk(&chunks[1])).is_none());
        // Stored packed: a quarter smaller than the chunk's text.
        let c0 = host
            .records
            .iter()
            .find(|(k, _)| k.ends_with("/c0"))
            .map(|(k, v)| (k.clone(), v.len()))
            .expect("chunk 0 stored");
        let text_len = chunks[0].data.as_deref().unwrap_or("").len();
        assert!(c0.1 < text_len * 3 / 4 + 200, "{} of {text_len}", c0.1);
        // Chunk 1 as a build before packing wrote it (JSON).
        let c1_key = c0.0.replace("/c0", "/c1");
        let old = serde_json::to_vec(&Chunk {
            data: chunks[1].data.clone().unwrap_or_default(),
        })
        .expect("json");
        let mut cx = Cx {
            host: &mut host,
            out: Vec::new(),
        };
        vault
            .put_bytes(cx.host, &mut cx.out, &c1_key, &old)
            .expect("sealed");
        let out = std::mem::take(&mut cx.out);
        host.apply(out);
        // A restart: nothing in memory; the rest arrives and the whole
        // message is exactly what was sent.
        let mut r = Reassembly::default();
        let mut whole = None;
        for c in &chunks[2..] {
            whole = step(&mut r, &vault, &mut host, Part::Chunk(c));
        }
        let whole = whole.expect("complete after the restart");
        let sent: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(whole, sent);
        assert!(
            !host.records.keys().any(|k| k.starts_with(keys::TRANSFER)),
            "the transfer's records are erased once it is whole"
        );
        // A damaged held chunk is skipped with a log, not misread.
        let mut r = Reassembly::default();
        assert!(step(&mut r, &vault, &mut host, Part::Manifest(&m)).is_none());
        assert!(step(&mut r, &vault, &mut host, Part::Chunk(&chunks[0])).is_none());
        let key = host
            .records
            .keys()
            .find(|k| k.ends_with("/c0"))
            .cloned()
            .expect("stored");
        let mut cx = Cx {
            host: &mut host,
            out: Vec::new(),
        };
        vault
            .put_bytes(cx.host, &mut cx.out, &key, &[0, 1, 9, 9])
            .expect("sealed");
        let out = std::mem::take(&mut cx.out);
        host.apply(out);
        let mut r = Reassembly::default();
        assert!(step(&mut r, &vault, &mut host, Part::Chunk(&chunks[1])).is_none());
        assert!(
            host.logs
                .iter()
                .any(|(_, l)| l.contains("unreadable") && l.contains("truncated")),
            "{:?}",
            host.logs
        );
        assert_eq!(
            r.held("did:mesh:sb", "t-1").map(|h| h.count.parts_done),
            Some(1)
        );
    }
}
