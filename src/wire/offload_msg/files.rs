//! Files both ways: `file_transfer` and its `file_transfer_ack`.

use super::{cut, OffloadMsg};
use crate::wire::b64;
use crate::wire::lenient::{absent, opt};
use crate::wire::limits::{
    ECHOED_NAME_CHARS, FILE_ENVELOPE_CHARS, MAX_CHUNKS, MAX_FILE_BYTES, MAX_FILE_TEXT,
};
use crate::wire::payload::Family;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `file_transfer` (client → sandbox: inputs; sandbox → client: outputs).
/// Built without `file_data`, which is added when its turn to go comes
/// ([`FileTransfer::into_value_with`]): the bytes of ten 30 MiB files must not all
/// be base64 in memory at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileTransfer {
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub request_id: Option<String>,
    /// The peer's name for it; the receiver makes it safe. Absent: no
    /// usable name, which the receiver refuses.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub file_name: Option<String>,
    /// The same basename (never a local path).
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub file_path: Option<String>,
    /// Standard base64. Absent: an empty file.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub file_data: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub size_bytes: Option<u64>,
    /// Checked by the sandbox when present.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub sha256: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub from_agent: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
}

impl FileTransfer {
    fn without_data(
        request_id: &str,
        name: &str,
        size_bytes: u64,
        sha256: &str,
        description: String,
        from_agent: &str,
        timestamp: &str,
    ) -> Self {
        FileTransfer {
            request_id: Some(request_id.into()),
            file_name: Some(name.into()),
            file_path: Some(name.into()),
            file_data: None,
            size_bytes: Some(size_bytes),
            sha256: Some(sha256.into()),
            description: Some(description),
            from_agent: Some(from_agent.into()),
            timestamp: Some(timestamp.into()),
        }
    }

    /// An input file the client sends its sandbox.
    pub fn input(
        request_id: &str,
        name: &str,
        size_bytes: u64,
        sha256: &str,
        from_agent: &str,
        timestamp: &str,
    ) -> Self {
        let description = format!("Offload file for request {request_id}");
        Self::without_data(
            request_id,
            name,
            size_bytes,
            sha256,
            description,
            from_agent,
            timestamp,
        )
    }

    /// An output file the sandbox returns.
    pub fn output(
        request_id: &str,
        name: &str,
        size_bytes: u64,
        sha256: &str,
        from_agent: &str,
        timestamp: &str,
    ) -> Self {
        let description = format!("Output of request {request_id}");
        Self::without_data(
            request_id,
            name,
            size_bytes,
            sha256,
            description,
            from_agent,
            timestamp,
        )
    }

    /// The file's bytes, as standard base64.
    pub fn set_data(&mut self, bytes: &[u8]) {
        self.file_data = Some(b64::encode_std(bytes));
    }

    /// The message as the JSON value that is sent, with `file_data` the
    /// base64 of `bytes`: what `set_data` then `OffloadMsg::from(..)
    /// .to_value()` gives, without a second copy of the encoded data (40 MB
    /// for a 30 MiB file). `bytes` are dropped once encoded.
    pub fn into_value_with(mut self, bytes: Vec<u8>) -> Value {
        self.file_data = None;
        let data = b64::encode_std(&bytes);
        drop(bytes);
        let mut v = OffloadMsg::from(self).to_value();
        if let Some(o) = v.as_object_mut() {
            o.insert("file_data".into(), Value::String(data));
        }
        v
    }

    /// The text `into_value_with` makes, with an empty `file_data`.
    fn bare_text(&self) -> String {
        let mut bare = self.clone();
        bare.file_data = None;
        let mut v = OffloadMsg::from(bare).to_value();
        if let Some(o) = v.as_object_mut() {
            o.insert("file_data".into(), Value::String(String::new()));
        }
        v.to_string()
    }

    /// Characters of the sent message besides the base64 of the file.
    pub fn envelope_chars(&self) -> usize {
        self.bare_text().len()
    }

    /// The sent message's text on either side of the file's base64:
    /// `into_value_with(bytes).to_string()` is `before + base64 + after`.
    /// Base64 needs no JSON escaping, so a sender can write the text a
    /// slice of the file at a time instead of in one 40 MB serialisation.
    /// The key is found by its unescaped quotes, which no string value in
    /// the text can hold; `None` only if it were missing.
    pub fn envelope(&self) -> Option<(String, String)> {
        const KEY: &str = "\"file_data\":\"";
        let text = self.bare_text();
        let at = text.find(&format!("{KEY}\""))? + KEY.len();
        Some((text[..at].to_string(), text[at..].to_string()))
    }

    /// Can this message carry a file of `size` bytes in at most 80 chunks?
    /// Checked before a file is queued, so a file is refused with a reason
    /// instead of failing to split later (where nobody would hear of it).
    pub fn check_fits(&self, size: u64) -> Result<(), FileTooLarge> {
        if size > MAX_FILE_BYTES as u64 {
            return Err(FileTooLarge::Size { size });
        }
        // A chunk is cut on a character boundary, so it may be up to 3 bytes
        // short of 512 KiB: that slack comes out of the envelope's room.
        let max = FILE_ENVELOPE_CHARS - 3 * MAX_CHUNKS;
        let len = self.envelope_chars();
        if len > max {
            return Err(FileTooLarge::Envelope { len, max });
        }
        Ok(())
    }

    /// The file's bytes (either base64 alphabet); no `file_data` is an
    /// empty file, as it always was.
    pub fn data(&self) -> Result<Vec<u8>, b64::B64Error> {
        b64::decode(self.file_data.as_deref().unwrap_or_default())
    }
}

/// Why a file cannot travel in one `file_transfer` (at most 80 chunks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileTooLarge {
    #[error("{size} bytes; a file can be at most {MAX_FILE_TEXT}, what fits in {MAX_CHUNKS} chunks of 512 KiB once base64-encoded")]
    Size { size: u64 },
    #[error("its name and sender take {len} characters of its message, and at most {max} fit beside the data")]
    Envelope { len: usize, max: usize },
}

/// `file_transfer_ack`: a file was saved, or refused and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileTransferAck {
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub file_name: Option<String>,
    /// Only a JSON `true` is success ([`FileTransferAck::succeeded`]).
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub success: Option<bool>,
    /// Where the receiver keeps it (relative to its private directory).
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub saved_to: Option<String>,
    /// Absent on a refusal: the client says "refused".
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub error: Option<String>,
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub timestamp: Option<String>,
    /// Never sent by us; read because the client drops sandbox news that
    /// names another request, whatever its type.
    #[serde(default, deserialize_with = "opt", skip_serializing_if = "absent")]
    pub request_id: Option<String>,
}

impl FileTransferAck {
    pub fn saved(file_name: &str, saved_to: &str, timestamp: &str) -> Self {
        FileTransferAck {
            file_name: Some(file_name.into()),
            success: Some(true),
            saved_to: Some(saved_to.into()),
            error: None,
            timestamp: Some(timestamp.into()),
            request_id: None,
        }
    }

    /// `raw_name` is the peer's, echoed back cut to `ECHOED_NAME_CHARS`.
    pub fn refused(raw_name: &str, error: &str, timestamp: &str) -> Self {
        FileTransferAck {
            file_name: Some(cut(raw_name, ECHOED_NAME_CHARS)),
            success: Some(false),
            saved_to: None,
            error: Some(error.into()),
            timestamp: Some(timestamp.into()),
            request_id: None,
        }
    }

    /// `success` is JSON `true` (`p["success"] == true`).
    pub fn succeeded(&self) -> bool {
        self.success == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::offload_msg::test_util::*;
    use crate::wire::offload_msg::OffloadMsg;
    use crate::wire::payload::Family;
    use serde_json::{json, Value};

    #[test]
    fn file_transfer() {
        let bytes = b"hello".to_vec();
        let sha = crate::wire::transfer::sha256_hex(&bytes);
        let (rid, name, from_agent) = (RID, "in.txt", "alice");
        // src/offload/client.rs (then src/agent/offload.rs), Agent::send_inputs; the pacer
        // (src/agent/pacer.rs, pump_to) adds `file_data` when it goes.
        let mut literal = json!({
            "type": "file_transfer", "request_id": rid, "file_name": name, "file_path": name,
            "size_bytes": bytes.len(), "sha256": sha,
            "description": format!("Offload file for request {rid}"), "from_agent": from_agent,
            "timestamp": TS,
        });
        let mut msg = FileTransfer::input(rid, name, bytes.len() as u64, &sha, from_agent, TS);
        same(msg.clone(), literal.clone());
        literal["file_data"] = Value::String(b64::encode_std(&bytes));
        msg.set_data(&bytes);
        same(msg.clone(), literal.clone());
        assert_eq!(msg.data(), Ok(bytes.clone()));
        let bare = FileTransfer::input(rid, name, bytes.len() as u64, &sha, from_agent, TS);
        assert_eq!(bare.into_value_with(bytes.clone()), literal);
        misspelt(&literal, "file-transfer");

        // src/offload/sandbox.rs (then src/agent/sandbox.rs), Agent::finish_task.
        let spec_name = "offload-1";
        let literal = json!({
            "type": "file_transfer", "request_id": rid, "file_name": name, "file_path": name,
            "size_bytes": bytes.len(), "sha256": sha,
            "description": format!("Output of request {}", rid), "from_agent": spec_name,
            "timestamp": TS,
        });
        same(
            FileTransfer::output(rid, name, bytes.len() as u64, &sha, spec_name, TS),
            literal,
        );
        // Without `file_data` it is an empty file, as before.
        let Ok(OffloadMsg::FileTransfer(f)) =
            OffloadMsg::parse(&json!({"type": "file_transfer", "file_name": "x"}))
        else {
            panic!("not a file transfer");
        };
        assert_eq!(f.data(), Ok(Vec::new()));
    }

    #[test]
    fn the_envelope_around_the_base64_is_the_sent_text() {
        // Names with quotes, escapes and the key itself: the key is still
        // found where it is, not inside a value.
        for name in ["in.txt", "\"file_data\":\"\"", "a\\\"b\u{1}é"] {
            for len in [0usize, 1, 2, 3, 4, 5, 1000] {
                let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let msg = FileTransfer::input(RID, name, len as u64, &"0".repeat(64), "alice", TS);
                let Some((before, after)) = msg.envelope() else {
                    panic!("no envelope for {name:?}");
                };
                assert_eq!(before.len() + after.len(), msg.envelope_chars());
                let whole = msg.clone().into_value_with(bytes.clone()).to_string();
                assert_eq!(format!("{before}{}{after}", b64::encode_std(&bytes)), whole);
            }
        }
    }

    /// Chunks the sent message of `msg` with `bytes` splits into.
    fn chunks(
        msg: &FileTransfer,
        bytes: Vec<u8>,
    ) -> Result<usize, crate::wire::transfer::TransferError> {
        let text = msg.clone().into_value_with(bytes).to_string();
        let parts = crate::wire::transfer::split(&text, "t", "file_transfer", "a", TS)?;
        Ok(parts.map_or(1, |p| p.len() - 1))
    }

    #[test]
    fn the_largest_file_we_send_fits_in_80_chunks_and_one_byte_more_is_refused() {
        use crate::wire::limits::{MAX_CHUNKS, MAX_FILE_BYTES, MAX_RECEIVED_FILE_BYTES};
        assert_eq!(MAX_FILE_BYTES, 31_454_208);
        assert!(MAX_FILE_TEXT.starts_with("31,454,208 bytes"));
        // The longest name there is, of 2-byte characters (cuts may land
        // inside them), and the longest envelope `check_fits` allows.
        let name = "é".repeat(100);
        let sha = "0".repeat(64);
        let size = MAX_FILE_BYTES as u64;
        let mut msg = FileTransfer::output(RID, &name, size, &sha, "offload-0123456789abcdef", TS);
        let room = FILE_ENVELOPE_CHARS - 3 * MAX_CHUNKS;
        let pad = room - msg.envelope_chars();
        msg.description = Some(format!(
            "{}{}",
            msg.description.clone().unwrap_or_default(),
            "é".repeat(pad / 2)
        ));
        assert!(
            room - msg.envelope_chars() < 2,
            "the envelope fills its room"
        );
        assert_eq!(msg.check_fits(MAX_FILE_BYTES as u64), Ok(()));
        assert!(chunks(&msg, vec![7u8; MAX_FILE_BYTES]).is_ok_and(|n| n <= MAX_CHUNKS));
        assert_eq!(
            msg.check_fits(MAX_FILE_BYTES as u64 + 1),
            Err(FileTooLarge::Size {
                size: MAX_FILE_BYTES as u64 + 1
            })
        );
        // One character more of envelope is refused too.
        msg.from_agent = Some("offload-0123456789abcdefgh".into());
        assert!(matches!(
            msg.check_fits(1),
            Err(FileTooLarge::Envelope { .. })
        ));
        // What the original promised: a 30 MiB file needs 81 chunks.
        let plain = FileTransfer::input(
            RID,
            "in.bin",
            0,
            &sha,
            "did:mesh:0123456789abcdef0123456789abcdef",
            TS,
        );
        assert_eq!(
            chunks(&plain, vec![7u8; MAX_RECEIVED_FILE_BYTES]),
            Err(crate::wire::transfer::TransferError::TooLarge(81))
        );
        assert!(matches!(
            plain.check_fits(MAX_RECEIVED_FILE_BYTES as u64),
            Err(FileTooLarge::Size { .. })
        ));
    }

    #[test]
    fn file_transfer_ack() {
        let (n, ts) = ("in.txt", TS);
        // src/offload/sandbox.rs (then src/agent/sandbox.rs), Agent::sandbox_input.
        let literal = json!({"type": "file_transfer_ack", "file_name": n, "success": true, "saved_to": format!("in/{n}"), "timestamp": ts});
        same(
            FileTransferAck::saved(n, &format!("in/{n}"), ts),
            literal.clone(),
        );
        misspelt(&literal, "file_transfer_acknowledged");
        let path = "incoming/5f0c2a4e/in.txt";
        let name = n;
        // src/offload/client.rs (then src/agent/offload.rs), Agent::receive_output.
        let literal = json!({"type": "file_transfer_ack", "file_name": name, "success": true, "saved_to": path, "timestamp": ts});
        same(FileTransferAck::saved(name, path, ts), literal);

        let raw = "r".repeat(200);
        let why = "unusable file name";
        // src/offload/client.rs (then src/agent/offload.rs), Agent::receive_output (`refuse`).
        let literal = json!({"type": "file_transfer_ack", "file_name": raw.chars().take(120).collect::<String>(), "success": false, "error": why, "timestamp": ts});
        same(FileTransferAck::refused(&raw, why, ts), literal.clone());
        let shown: String = raw.chars().take(120).collect();
        // src/offload/sandbox.rs (then src/agent/sandbox.rs), Agent::sandbox_input (refusal).
        let literal = json!({"type": "file_transfer_ack", "file_name": shown, "success": false, "error": why, "timestamp": ts});
        same(FileTransferAck::refused(&raw, why, ts), literal);

        // Only JSON `true` is success (`p["success"] != true` is a refusal).
        for (v, ok) in [
            (json!(true), true),
            (json!("true"), false),
            (json!(1), false),
        ] {
            let m = OffloadMsg::parse(&json!({"type": "file_transfer_ack", "success": v}));
            assert!(matches!(m, Ok(OffloadMsg::FileTransferAck(a)) if a.succeeded() == ok));
        }
    }
}
