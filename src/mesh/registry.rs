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

/// An answer that is not the registry's: a body that is there and is not
/// JSON (every registry answer is JSON, errors too).
pub fn is_foreign(body: &[u8]) -> bool {
    let text = body.trim_ascii();
    !text.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(text).is_err()
}

/// FastAPI's answer for a path it has no route for (`{"detail":"Not
/// Found"}`, 404). The registry serves every path kars-mesh asks of it, and
/// its own 404s say what was missing ("Agent not found", "Pre-key bundle
/// not found"): this is another server, most often the relay given as the
/// registry (the two ports side by side are easy to swap).
pub fn is_route_miss(status: u16, body: &[u8]) -> bool {
    status == 404
        && serde_json::from_slice::<serde_json::Value>(body.trim_ascii())
            .is_ok_and(|v| v == serde_json::json!({"detail": "Not Found"}))
}

/// Characters of a foreign answer's title or start that are shown.
const EXCERPT_CHARS: usize = 60;

/// What a foreign answer is, in a few words: `an HTML page titled "…"`,
/// or its size and first characters; printable characters only, clipped.
pub fn describe_foreign(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim_start_matches('\u{feff}').trim();
    let lower = text
        .chars()
        .take(2048)
        .collect::<String>()
        .to_ascii_lowercase();
    if lower.starts_with('<') && (lower.contains("<html") || lower.starts_with("<!doctype")) {
        let title = lower.find("<title").and_then(|start| {
            let open_end = start + lower[start..].find('>')? + 1;
            let close = open_end + lower[open_end..].find("</title")?;
            // `lower` is the ASCII-lowercased prefix of `text`: same byte offsets.
            Some(excerpt(&text[open_end..close]))
        });
        return match title.filter(|t| !t.is_empty()) {
            Some(t) => format!("an HTML page titled \"{t}\""),
            None => "an HTML page".to_string(),
        };
    }
    let start = excerpt(text);
    if start.is_empty() {
        format!("{} bytes that are not JSON", body.len())
    } else {
        format!(
            "{} bytes that are not JSON, starting \"{start}\"",
            body.len()
        )
    }
}

/// Printable characters only, runs of white space as one space, clipped.
fn excerpt(s: &str) -> String {
    let mut out = String::new();
    let mut space = false;
    let mut count = 0;
    for c in s.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if c.is_control()
            || c == '"'
            || c == '\u{fffd}'
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            continue;
        }
        if count >= EXCERPT_CHARS {
            out.push('…');
            break;
        }
        if space {
            out.push(' ');
            count += 1;
            space = false;
        }
        out.push(c);
        count += 1;
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_that_is_not_the_registry_is_named_briefly_never_shown() {
        let page = format!(
            "<!DOCTYPE html>\n<html><head><title>\n  Welcome to\tnginx!\u{1b}[31m </title></head><body>{}</body></html>",
            "x".repeat(5000)
        );
        assert!(is_foreign(page.as_bytes()));
        assert_eq!(
            describe_foreign(page.as_bytes()),
            "an HTML page titled \"Welcome to nginx![31m\""
        );
        assert_eq!(
            describe_foreign(b"<html><body>hi</body></html>"),
            "an HTML page"
        );
        let long = format!("Service Unavailable {}", "y".repeat(500));
        let d = describe_foreign(long.as_bytes());
        assert!(
            d.starts_with("520 bytes that are not JSON, starting \"Service Unavailable yyy"),
            "{d}"
        );
        assert!(d.chars().count() < 120, "{d}");
        assert_eq!(
            describe_foreign(&[0xff, 0xfe, 0x00]),
            "3 bytes that are not JSON"
        );
        // Every registry answer is JSON, errors too; nothing at all is not foreign.
        assert!(!is_foreign(br#"{"detail":"Agent not found"}"#));
        assert!(!is_foreign(b"  \n"));
        assert!(!is_foreign(b""));
    }

    #[test]
    fn a_server_with_no_such_path_is_told_from_the_registrys_own_404s() {
        // FastAPI's route miss, as the relay answers a registry path.
        assert!(is_route_miss(404, br#"{"detail":"Not Found"}"#));
        assert!(is_route_miss(404, b" {\"detail\": \"Not Found\"}\n"));
        // The registry's own answers: what it did not find.
        assert!(!is_route_miss(404, br#"{"detail":"Agent not found"}"#));
        assert!(!is_route_miss(
            404,
            br#"{"detail":"Pre-key bundle not found"}"#
        ));
        assert!(!is_route_miss(404, br#"{"detail":"Not Found","did":"x"}"#));
        assert!(!is_route_miss(200, br#"{"detail":"Not Found"}"#));
        assert!(!is_route_miss(404, b""));
    }
}
