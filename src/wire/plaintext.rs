//! Plaintext-peer bodies (agentmesh-wire.md §7), used only with the paired
//! controller. We send JSON with every non-ASCII character escaped, so the
//! base64 decodes the same under Latin-1 (`atob`) and UTF-8 readers.

use crate::wire::b64;

/// Escape every non-ASCII character of JSON text as `\uXXXX` (surrogate
/// pairs above U+FFFF). Valid because such characters only occur in strings.
pub fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        }
    }
    out
}

/// Standard base64 of the ASCII-escaped JSON text.
pub fn encode_body(json: &str) -> String {
    b64::encode_std(ascii_json(json).as_bytes())
}

/// Decode a body: base64 (either alphabet), then UTF-8, falling back to
/// Latin-1 for `btoa` output of non-ASCII text, then JSON.
pub fn decode_body(body: &str) -> Result<serde_json::Value, crate::wire::WireError> {
    let bytes = b64::decode(body).map_err(|source| crate::wire::WireError::Field {
        field: "payload",
        source,
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
    };
    serde_json::from_str(&text).map_err(|e| crate::wire::WireError::json("plaintext payload", &e))
}

/// A plaintext `message` frame to a plaintext peer (the kars controller), in
/// both dialects at once (agentmesh-wire.md §7): `payload` for the kars
/// controller, `ciphertext` with `plaintext: true` for TS-SDK readers, the
/// same base64 text in both. No `Debug`: a `pair_request` body carries
/// the token's secret.
#[derive(serde::Serialize)]
pub struct PlainFrame<'a> {
    v: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    from: &'a str,
    to: &'a str,
    id: &'a str,
    ts: &'a str,
    ciphertext: String,
    payload: String,
    plaintext: bool,
}

impl<'a> PlainFrame<'a> {
    pub fn new(from: &'a str, to: &'a str, id: &'a str, ts: &'a str, json: &str) -> Self {
        let body = encode_body(json);
        PlainFrame {
            v: 1,
            kind: "message",
            from,
            to,
            id,
            ts,
            ciphertext: body.clone(),
            payload: body,
            plaintext: true,
        }
    }

    pub fn to_text(&self) -> String {
        // Only strings, a number and a bool: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::payload::Family;
    use crate::wire::relay_frame::RelayFrame;

    #[test]
    fn a_plain_frame_reads_back_in_both_dialects() {
        let json = r#"{"type":"offload_request","task":"résumé — 1"}"#;
        let text = PlainFrame::new(
            "did:mesh:aa",
            "did:mesh:bb",
            "f-1",
            "2026-01-02T03:04:05.678Z",
            json,
        )
        .to_text();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["payload"], v["ciphertext"]);
        assert_eq!(v["plaintext"], true);
        assert!(v["payload"].as_str().unwrap().is_ascii());
        let Ok(RelayFrame::Message(m)) = RelayFrame::from_text(&text) else {
            panic!("not a message frame");
        };
        assert!(m.is_plaintext());
        let back = decode_body(m.plaintext_body()).unwrap();
        assert_eq!(back["task"], "résumé — 1");
    }
}
