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
