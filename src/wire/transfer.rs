//! Files over the mesh: the `file_transfer` message, the chunked transfer the
//! kars sandbox runtime wraps large messages in (`mesh:transfer_manifest` and
//! `mesh:transfer_chunk`, kars-mesh-plugin.md §7.2), and the name rules for
//! files that arrive from a peer.

use crate::crypto::kdf::sha256;
use crate::wire::hex;
use crate::wire::lenient::{absent, opt};
use crate::wire::payload::PayloadType;
use serde::{Deserialize, Serialize};
use serde_json::Value;

// The limits live in `wire::limits`; named here too, where the transfer code
// and its callers have always found them.
pub use crate::wire::limits::{CHUNK_CHARS, MAX_CHUNKS, MAX_FILES, MAX_FILE_BYTES, MAX_NAME_BYTES};
use crate::wire::limits::{
    CHUNK_HASH_CHARS, ECHOED_NAME_CHARS, MAX_CHUNK_BYTES, MAX_ORIGINAL_TYPE_CHARS,
    MAX_TRANSFER_ID_CHARS,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("transfer manifest is malformed: {0}")]
    Manifest(&'static str),
    #[error("chunk {index} of transfer {transfer} does not match its hash")]
    ChunkHash { transfer: String, index: u64 },
    #[error("chunk index {0} is outside the transfer")]
    ChunkIndex(u64),
    #[error("reassembled transfer is not a JSON object")]
    NotJson,
    #[error("message too large to send: {0} chunks needed, at most {MAX_CHUNKS}")]
    TooLarge(usize),
    #[error(
        "chunked transfer given up: its chunks would hold more than {0} MiB of text in memory"
    )]
    HeldTooMuch(usize),
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(&sha256(data))
}

/// The manifest hash: SHA-256 of the chunk hashes joined with `:`.
pub fn manifest_hash(chunk_hashes: &[String]) -> String {
    sha256_hex(chunk_hashes.join(":").as_bytes())
}

/// `mesh:transfer_manifest`: what a chunked transfer will carry. Every
/// field reads leniently (as `Manifest::parse` always read them) and is
/// checked by [`Manifest::from_msg`], whose errors name the field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMsg {
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub transfer_id: Option<String>,
    /// The `type` of the message the chunks make up.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub original_type: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub total_chunks: Option<u64>,
    /// UTF-8 bytes of the message's JSON text.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub total_bytes: Option<u64>,
    /// SHA-256 hex of each chunk's `data` (as UTF-8).
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub chunk_hashes: Option<Vec<String>>,
    /// SHA-256 hex of the chunk hashes joined with `:`.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub manifest_hash: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from_agent: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
    /// Never sent by us; read because the client drops sandbox news that
    /// names another request, whatever its type.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub request_id: Option<String>,
    /// Ours, for progress only: the name of the file a chunked
    /// `file_transfer` carries (its message names it for good).
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub file_name: Option<String>,
    /// Ours, for progress only: that file's size in bytes.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub file_size: Option<u64>,
}

/// `mesh:transfer_chunk`: one piece of a message's JSON text. Lenient like
/// the manifest; [`Manifest::check_chunk_msg`] checks it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMsg {
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub transfer_id: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub chunk_index: Option<u64>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub total_chunks: Option<u64>,
    /// A substring of the message's JSON text, cut on a character boundary.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub data: Option<String>,
    /// The sender's hash of `data` (the manifest's is the one checked).
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub hash: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from_agent: Option<String>,
    /// Never sent by us; read because the client drops sandbox news that
    /// names another request, whatever its type.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub request_id: Option<String>,
}

/// The `transfer_id` both a manifest and a chunk must carry: 1 to 128
/// characters (it names the transfer's storage records).
pub fn valid_transfer_id(id: Option<&str>) -> Result<&str, TransferError> {
    id.filter(|t| !t.is_empty() && t.len() <= MAX_TRANSFER_ID_CHARS)
        .ok_or(TransferError::Manifest("transfer_id"))
}

/// Split `text` (a message's JSON) into a manifest and its chunks, or `None`
/// when it is small enough to travel whole. Chunks are cut on character
/// boundaries; each chunk's hash is over its UTF-8 bytes.
pub fn split(
    text: &str,
    transfer_id: &str,
    original_type: &str,
    from_agent: &str,
    timestamp: &str,
) -> Result<Option<Vec<Value>>, TransferError> {
    let Some((manifest, chunks)) =
        split_typed(text, transfer_id, original_type, from_agent, timestamp)?
    else {
        return Ok(None);
    };
    Ok(Some(as_values(&manifest, &chunks)))
}

/// The values that are sent: the manifest first, then the chunks.
fn as_values(manifest: &ManifestMsg, chunks: &[ChunkMsg]) -> Vec<Value> {
    let mut out = Vec::with_capacity(chunks.len() + 1);
    out.push(tagged(PayloadType::TransferManifest, manifest));
    out.extend(chunks.iter().map(|c| tagged(PayloadType::TransferChunk, c)));
    out
}

/// A transfer message as a JSON value with its `type`.
fn tagged(kind: PayloadType, msg: &impl Serialize) -> Value {
    // Cannot fail: both messages are structs of strings and integers.
    let mut v = serde_json::to_value(msg).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), Value::String(kind.as_str().into()));
    }
    v
}

/// [`split`], typed: the manifest and the chunks, or `None` when `text`
/// travels whole.
pub fn split_typed(
    text: &str,
    transfer_id: &str,
    original_type: &str,
    from_agent: &str,
    timestamp: &str,
) -> Result<Option<(ManifestMsg, Vec<ChunkMsg>)>, TransferError> {
    let Some(bounds) = cut(text)? else {
        return Ok(None);
    };
    let hashes: Vec<String> = bounds
        .iter()
        .map(|&(a, b)| sha256_hex(&text.as_bytes()[a..b]))
        .collect();
    Ok(Some(assemble(
        text,
        &bounds,
        hashes,
        transfer_id,
        original_type,
        from_agent,
        timestamp,
    )))
}

/// Where `text` is cut into chunks (byte ranges on character boundaries),
/// or `None` when it travels whole. Cheap: it reads no bytes but the few
/// at each cut, so a sender can hash the pieces a slice at a time.
pub fn cut(text: &str) -> Result<Option<Vec<(usize, usize)>>, TransferError> {
    if text.len() <= CHUNK_CHARS {
        return Ok(None);
    }
    let mut bounds = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + CHUNK_CHARS).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        bounds.push((start, end));
        start = end;
    }
    if bounds.len() > MAX_CHUNKS {
        return Err(TransferError::TooLarge(bounds.len()));
    }
    Ok(Some(bounds))
}

/// The manifest and chunks of `text` cut at `bounds` (from [`cut`]), with
/// `hashes[i]` the SHA-256 hex of piece `i`.
pub fn assemble(
    text: &str,
    bounds: &[(usize, usize)],
    hashes: Vec<String>,
    transfer_id: &str,
    original_type: &str,
    from_agent: &str,
    timestamp: &str,
) -> (ManifestMsg, Vec<ChunkMsg>) {
    let total = bounds.len() as u64;
    let manifest = ManifestMsg {
        transfer_id: Some(transfer_id.into()),
        original_type: Some(original_type.into()),
        total_chunks: Some(total),
        total_bytes: Some(text.len() as u64),
        manifest_hash: Some(manifest_hash(&hashes)),
        chunk_hashes: Some(hashes.clone()),
        from_agent: Some(from_agent.into()),
        timestamp: Some(timestamp.into()),
        request_id: None,
        file_name: None,
        file_size: None,
    };
    let chunks = bounds
        .iter()
        .zip(hashes)
        .enumerate()
        .map(|(i, (&(a, b), h))| ChunkMsg {
            transfer_id: Some(transfer_id.into()),
            chunk_index: Some(i as u64),
            total_chunks: Some(total),
            data: Some(text[a..b].into()),
            hash: Some(h),
            from_agent: Some(from_agent.into()),
            request_id: None,
        })
        .collect();
    (manifest, chunks)
}

/// [`assemble`], as the JSON values that are sent: the manifest first.
pub fn assemble_values(
    text: &str,
    bounds: &[(usize, usize)],
    hashes: Vec<String>,
    transfer_id: &str,
    original_type: &str,
    from_agent: &str,
    timestamp: &str,
) -> Vec<Value> {
    let (manifest, chunks) = assemble(
        text,
        bounds,
        hashes,
        transfer_id,
        original_type,
        from_agent,
        timestamp,
    );
    as_values(&manifest, &chunks)
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub transfer_id: String,
    pub original_type: String,
    pub chunk_hashes: Vec<String>,
    /// What the sender says for progress reports only (never checked
    /// against the data; absent when it said nothing usable): the text's
    /// length, and the file's name and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
}

impl Manifest {
    pub fn parse(v: &Value) -> Result<Self, TransferError> {
        // Not an object: every field is missing, and `transfer_id` is the
        // first one checked, as before. (An array must not be read as the
        // struct's fields in order, which serde would do.)
        let m = match v {
            Value::Object(_) => ManifestMsg::deserialize(v).unwrap_or_default(),
            _ => ManifestMsg::default(),
        };
        Self::from_msg(&m)
    }

    /// Check a received manifest: its id, type, chunk count (1 to 80, and
    /// `total_chunks` agreeing) and manifest hash. Hashes are compared in
    /// lower case.
    pub fn from_msg(m: &ManifestMsg) -> Result<Self, TransferError> {
        let transfer_id = valid_transfer_id(m.transfer_id.as_deref())?;
        let original_type = m
            .original_type
            .as_deref()
            .filter(|t| t.len() <= MAX_ORIGINAL_TYPE_CHARS)
            .ok_or(TransferError::Manifest("original_type"))?;
        let hashes: Vec<String> = m
            .chunk_hashes
            .as_ref()
            .ok_or(TransferError::Manifest("chunk_hashes"))?
            .iter()
            .map(|h| (h.len() == CHUNK_HASH_CHARS).then(|| h.to_ascii_lowercase()))
            .collect::<Option<_>>()
            .ok_or(TransferError::Manifest("chunk_hashes"))?;
        if hashes.is_empty() || hashes.len() > MAX_CHUNKS {
            return Err(TransferError::Manifest("total_chunks"));
        }
        if m.total_chunks != Some(hashes.len() as u64) {
            return Err(TransferError::Manifest("total_chunks"));
        }
        if m.manifest_hash.as_deref().map(str::to_ascii_lowercase) != Some(manifest_hash(&hashes)) {
            return Err(TransferError::Manifest("manifest_hash"));
        }
        let max_text = (hashes.len() * MAX_CHUNK_BYTES) as u64;
        Ok(Manifest {
            transfer_id: transfer_id.to_string(),
            original_type: original_type.to_string(),
            total_bytes: m.total_bytes.filter(|n| *n > 0 && *n <= max_text),
            file_name: m
                .file_name
                .as_deref()
                .and_then(safe_file_name)
                .map(|n| n.chars().take(ECHOED_NAME_CHARS).collect()),
            file_size: m
                .file_size
                .filter(|n| *n <= crate::wire::limits::MAX_RECEIVED_FILE_BYTES as u64),
            chunk_hashes: hashes,
        })
    }

    /// Check one chunk against the manifest; returns its index and data.
    pub fn check_chunk<'a>(&self, v: &'a Value) -> Result<(usize, &'a str), TransferError> {
        // Borrowed straight from the value: a chunk is up to 2 MB of text.
        let index = v["chunk_index"].as_u64();
        let data = v["data"].as_str();
        self.check_piece(index, data)
    }

    /// [`Manifest::check_chunk`] for a typed chunk.
    pub fn check_chunk_msg<'a>(&self, c: &'a ChunkMsg) -> Result<(usize, &'a str), TransferError> {
        self.check_piece(c.chunk_index, c.data.as_deref())
    }

    /// A chunk without a usable index is outside the transfer; one without
    /// data is empty (and so fails its hash).
    fn check_piece<'a>(
        &self,
        index: Option<u64>,
        data: Option<&'a str>,
    ) -> Result<(usize, &'a str), TransferError> {
        let index = index.unwrap_or(u64::MAX);
        let expected = usize::try_from(index)
            .ok()
            .and_then(|i| self.chunk_hashes.get(i))
            .ok_or(TransferError::ChunkIndex(index))?;
        let data = data.unwrap_or_default();
        if data.len() > MAX_CHUNK_BYTES || &sha256_hex(data.as_bytes()) != expected {
            return Err(TransferError::ChunkHash {
                transfer: self.transfer_id.clone(),
                index,
            });
        }
        Ok((index as usize, data))
    }

    /// Join the chunks (in index order) into the original message.
    pub fn assemble(&self, chunks: &[String]) -> Result<Value, TransferError> {
        self.message(&chunks.concat())
    }

    /// The message a transfer's text holds: a JSON object, its `type` the
    /// manifest's `original_type` when it names none.
    pub fn message(&self, text: &str) -> Result<Value, TransferError> {
        let mut v: Value = serde_json::from_str(text).map_err(|_| TransferError::NotJson)?;
        if !v.is_object() {
            return Err(TransferError::NotJson);
        }
        if v.get("type").is_none() {
            v["type"] = Value::String(self.original_type.clone());
        }
        Ok(v)
    }
}

/// A file name from a peer, made safe to create in a private directory:
/// the last path component only, no control characters, no leading dots,
/// no reserved names, at most 120 characters. `None` when nothing is left.
pub fn safe_file_name(raw: &str) -> Option<String> {
    // Cleaning can expose a new leading dot or space (". .." → ".."), so it
    // repeats until nothing changes.
    let mut name = raw.to_string();
    loop {
        let next = clean_once(&name);
        if next == name {
            break;
        }
        name = next;
    }
    let stem = name
        .split('.')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_uppercase();
    const RESERVED: [&str; 22] = [
        "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
        "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    ];
    if name.is_empty()
        || name.chars().all(|c| c == '.' || c == ' ')
        || RESERVED.contains(&stem.as_str())
    {
        return None;
    }
    Some(name)
}

/// One pass: last path component, no control or reserved characters, no
/// leading dots or spaces, at most 200 bytes (a file system takes 255, and
/// the host adds a temporary suffix while writing).
fn clean_once(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c => c,
        })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    let mut out = String::new();
    for c in cleaned.chars() {
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

/// `name`, or `name (2).ext`, `name (3).ext`, ... whichever is not taken.
pub fn unique_name(name: &str, taken: &[String]) -> String {
    if !taken.iter().any(|t| t == name) {
        return name.to_string();
    }
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    (2..)
        .map(|n| format!("{stem} ({n}){ext}"))
        .find(|c| !taken.iter().any(|t| t == c))
        .unwrap_or_else(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn split_emits_exactly_what_the_literals_did() {
        let text = json!({"d": "é".repeat(CHUNK_CHARS)}).to_string();
        let (transfer_id, original_type, from_agent, timestamp) =
            ("t1", "file_transfer", "sb", "2026-01-02T03:04:05.678Z");
        let parts = split(&text, transfer_id, original_type, from_agent, timestamp)
            .unwrap()
            .unwrap();
        // The literals `split` built before it was typed (this file).
        let (pieces, hashes): (Vec<String>, Vec<String>) = parts[1..]
            .iter()
            .map(|c| {
                let d = c["data"].as_str().unwrap().to_string();
                let h = sha256_hex(d.as_bytes());
                (d, h)
            })
            .unzip();
        assert_eq!(pieces.concat(), text);
        let total = pieces.len();
        let mut out = vec![json!({
            "type": "mesh:transfer_manifest",
            "transfer_id": transfer_id,
            "original_type": original_type,
            "total_chunks": total,
            "total_bytes": text.len(),
            "chunk_hashes": hashes,
            "manifest_hash": manifest_hash(&hashes),
            "from_agent": from_agent,
            "timestamp": timestamp,
        })];
        for (i, p) in pieces.iter().enumerate() {
            out.push(json!({
                "type": "mesh:transfer_chunk",
                "transfer_id": transfer_id,
                "chunk_index": i,
                "total_chunks": total,
                "data": p,
                "hash": hashes[i],
                "from_agent": from_agent,
            }));
        }
        assert_eq!(parts, out);
        // Typed, the same messages.
        let (m, chunks) = split_typed(&text, transfer_id, original_type, from_agent, timestamp)
            .unwrap()
            .unwrap();
        assert_eq!(ManifestMsg::deserialize(&out[0]).unwrap(), m);
        for (c, v) in chunks.iter().zip(&out[1..]) {
            assert_eq!(&ChunkMsg::deserialize(v).unwrap(), c);
        }
        let checked = Manifest::from_msg(&m).unwrap();
        assert_eq!(checked, Manifest::parse(&out[0]).unwrap());
        assert_eq!(checked.check_chunk_msg(&chunks[1]).unwrap().0, 1);
    }

    #[test]
    fn manifests_are_checked_field_by_field_as_before() {
        let text = json!({"d": "x".repeat(CHUNK_CHARS + 10)}).to_string();
        let parts = split(&text, "t", "x", "a", "b").unwrap().unwrap();
        for (field, bad, why) in [
            ("transfer_id", json!(""), "transfer_id"),
            ("transfer_id", json!("t".repeat(129)), "transfer_id"),
            ("original_type", json!(5), "original_type"),
            ("original_type", json!("o".repeat(65)), "original_type"),
            ("chunk_hashes", json!(["ab", 1]), "chunk_hashes"),
            ("chunk_hashes", json!([]), "total_chunks"),
            ("total_chunks", json!(3), "total_chunks"),
            ("manifest_hash", json!(null), "manifest_hash"),
        ] {
            let mut v = parts[0].clone();
            v[field] = bad;
            assert_eq!(
                Manifest::parse(&v),
                Err(TransferError::Manifest(why)),
                "{field}"
            );
        }
        // Upper-case hashes are taken, as before.
        let mut upper = parts[0].clone();
        upper["manifest_hash"] = json!(parts[0]["manifest_hash"].as_str().unwrap().to_uppercase());
        assert!(Manifest::parse(&upper).is_ok());
        // Not an object: the first field checked is missing.
        assert_eq!(
            Manifest::parse(&json!(["t", "x"])),
            Err(TransferError::Manifest("transfer_id"))
        );
        let m = Manifest::parse(&parts[0]).unwrap();
        let mut no_index = parts[1].clone();
        no_index.as_object_mut().unwrap().remove("chunk_index");
        assert_eq!(
            m.check_chunk(&no_index),
            Err(TransferError::ChunkIndex(u64::MAX))
        );
    }

    #[test]
    fn split_and_assemble_round_trip() {
        let data = "é".repeat(CHUNK_CHARS); // 2 bytes each: cuts land mid-character
        let msg = json!({"type": "file_transfer", "file_name": "a.bin", "file_data": data});
        let text = msg.to_string();
        let parts = split(&text, "t1", "file_transfer", "sb", "ts")
            .unwrap()
            .unwrap();
        let m = Manifest::parse(&parts[0]).unwrap();
        assert_eq!(m.chunk_hashes.len(), parts.len() - 1);
        let mut chunks = vec![String::new(); m.chunk_hashes.len()];
        for p in &parts[1..] {
            let (i, d) = m.check_chunk(p).unwrap();
            chunks[i] = d.to_string();
        }
        assert_eq!(m.assemble(&chunks).unwrap(), msg);
    }

    #[test]
    fn small_messages_are_not_split_and_tampering_is_caught() {
        assert!(split("{}", "t", "x", "a", "b").unwrap().is_none());
        let text = json!({"d": "x".repeat(CHUNK_CHARS + 10)}).to_string();
        let parts = split(&text, "t", "x", "a", "b").unwrap().unwrap();
        let m = Manifest::parse(&parts[0]).unwrap();
        let mut bad = parts[1].clone();
        bad["data"] = json!("y");
        assert!(matches!(
            m.check_chunk(&bad),
            Err(TransferError::ChunkHash { .. })
        ));
        let mut bad_manifest = parts[0].clone();
        bad_manifest["manifest_hash"] = json!("0".repeat(64));
        assert!(Manifest::parse(&bad_manifest).is_err());
    }

    #[test]
    fn peer_file_names_are_made_safe() {
        assert_eq!(
            safe_file_name("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            safe_file_name("C:\\x\\report.txt").as_deref(),
            Some("report.txt")
        );
        assert_eq!(safe_file_name(".bashrc").as_deref(), Some("bashrc"));
        assert_eq!(safe_file_name(".."), None);
        assert_eq!(safe_file_name("CON.txt"), None);
        assert_eq!(safe_file_name("a\u{0}b").as_deref(), Some("ab"));
        // Cleaning repeats until stable: these all end as dots, or nothing.
        for bad in [". .", ". ..", "a/. ..", ". . ..", " . ", "...", "  "] {
            assert_eq!(safe_file_name(bad), None, "{bad:?}");
        }
        let long = "ü".repeat(150);
        let n = safe_file_name(&long).unwrap();
        assert!(
            n.len() <= MAX_NAME_BYTES && n.chars().all(|c| c == 'ü'),
            "{}",
            n.len()
        );
        let taken = vec!["r.txt".to_string(), "r (2).txt".to_string()];
        assert_eq!(unique_name("r.txt", &taken), "r (3).txt");
    }
}
