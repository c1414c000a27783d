//! Registry answers we read (agentmesh-wire.md §3).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct Discovered {
    pub did: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub reputation_score: Option<f64>,
    #[serde(default)]
    pub last_seen: Option<String>,
}

#[derive(Deserialize)]
struct DiscoverAnswer {
    #[serde(default)]
    results: Vec<Discovered>,
}

pub fn parse_discover(body: &[u8]) -> Result<Vec<Discovered>, String> {
    serde_json::from_slice::<DiscoverAnswer>(body)
        .map(|a| a.results)
        .map_err(|e| format!("registry discovery answer is not the expected JSON: {e}"))
}

#[derive(Deserialize)]
pub struct AgentRecord {
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, serde_json::Value>,
}

pub fn parse_agent(body: &[u8]) -> Option<AgentRecord> {
    serde_json::from_slice(body).ok()
}

/// `{"detail": "..."}` or FastAPI's list form, for error texts.
pub fn detail(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match &v["detail"] {
        serde_json::Value::String(s) => s.chars().take(200).collect(),
        serde_json::Value::Null => {
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
        }
        other => other.to_string().chars().take(200).collect(),
    }
}

/// Percent-encode a query value.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
