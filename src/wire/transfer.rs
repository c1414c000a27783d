//! Files over the mesh: the `file_transfer` message, the chunked transfer the
//! kars sandbox runtime wraps large messages in (`mesh:transfer_manifest` and
//! `mesh:transfer_chunk`, kars-mesh-plugin.md §7.2), and the name rules for
//! files that arrive from a peer.

use crate::crypto::kdf::sha256;
use crate::wire::hex;
use serde_json::{json, Value};

/// A message whose JSON text is longer than this travels in chunks.
pub const CHUNK_CHARS: usize = 512 * 1024;
/// Chunks per transfer (the sandbox runtime's limit): 40 MiB of JSON text.
pub const MAX_CHUNKS: usize = 80;
/// Largest file either side sends or accepts.
pub const MAX_FILE_BYTES: usize = 30 * 1024 * 1024;
/// Files per offload, each way.
pub const MAX_FILES: usize = 10;

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
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(&sha256(data))
}

/// The manifest hash: SHA-256 of the chunk hashes joined with `:`.
pub fn manifest_hash(chunk_hashes: &[String]) -> String {
    sha256_hex(chunk_hashes.join(":").as_bytes())
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
    if text.len() <= CHUNK_CHARS {
        return Ok(None);
    }
    let mut pieces: Vec<&str> = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + CHUNK_CHARS).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        pieces.push(&text[start..end]);
        start = end;
    }
    if pieces.len() > MAX_CHUNKS {
        return Err(TransferError::TooLarge(pieces.len()));
    }
    let hashes: Vec<String> = pieces.iter().map(|p| sha256_hex(p.as_bytes())).collect();
    let total = pieces.len();
    let mut out = Vec::with_capacity(total + 1);
    out.push(json!({
        "type": "mesh:transfer_manifest",
        "transfer_id": transfer_id,
        "original_type": original_type,
        "total_chunks": total,
        "total_bytes": text.len(),
        "chunk_hashes": hashes,
        "manifest_hash": manifest_hash(&hashes),
        "from_agent": from_agent,
        "timestamp": timestamp,
    }));
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
    Ok(Some(out))
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub transfer_id: String,
    pub original_type: String,
    pub chunk_hashes: Vec<String>,
}

impl Manifest {
    pub fn parse(v: &Value) -> Result<Self, TransferError> {
        let transfer_id = v["transfer_id"]
            .as_str()
            .filter(|t| !t.is_empty() && t.len() <= 128)
            .ok_or(TransferError::Manifest("transfer_id"))?;
        let original_type = v["original_type"]
            .as_str()
            .filter(|t| t.len() <= 64)
            .ok_or(TransferError::Manifest("original_type"))?;
        let hashes: Vec<String> = v["chunk_hashes"]
            .as_array()
            .ok_or(TransferError::Manifest("chunk_hashes"))?
            .iter()
            .map(|h| {
                h.as_str()
                    .filter(|h| h.len() == 64)
                    .map(str::to_ascii_lowercase)
            })
            .collect::<Option<_>>()
            .ok_or(TransferError::Manifest("chunk_hashes"))?;
        if hashes.is_empty() || hashes.len() > MAX_CHUNKS {
            return Err(TransferError::Manifest("total_chunks"));
        }
        if v["total_chunks"].as_u64() != Some(hashes.len() as u64) {
            return Err(TransferError::Manifest("total_chunks"));
        }
        if v["manifest_hash"].as_str().map(str::to_ascii_lowercase) != Some(manifest_hash(&hashes))
        {
            return Err(TransferError::Manifest("manifest_hash"));
        }
        Ok(Manifest {
            transfer_id: transfer_id.to_string(),
            original_type: original_type.to_string(),
            chunk_hashes: hashes,
        })
    }

    /// Check one chunk against the manifest; returns its index and data.
    pub fn check_chunk<'a>(&self, v: &'a Value) -> Result<(usize, &'a str), TransferError> {
        let index = v["chunk_index"].as_u64().unwrap_or(u64::MAX);
        let expected = usize::try_from(index)
            .ok()
            .and_then(|i| self.chunk_hashes.get(i))
            .ok_or(TransferError::ChunkIndex(index))?;
        let data = v["data"].as_str().unwrap_or_default();
        // A chunk is at most 512 Ki characters of at most 4 bytes each.
        if data.len() > CHUNK_CHARS * 4 || &sha256_hex(data.as_bytes()) != expected {
            return Err(TransferError::ChunkHash {
                transfer: self.transfer_id.clone(),
                index,
            });
        }
        Ok((index as usize, data))
    }

    /// Join the chunks (in index order) into the original message.
    pub fn assemble(&self, chunks: &[String]) -> Result<Value, TransferError> {
        let text: String = chunks.concat();
        let mut v: Value = serde_json::from_str(&text).map_err(|_| TransferError::NotJson)?;
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

/// Longest file name either side creates, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 200;

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
