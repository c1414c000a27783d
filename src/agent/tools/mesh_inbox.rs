//! `mesh_inbox`: the original plugin's schema and texts over the persisted
//! inbox. Reading is peek-only unless `mark_read` is passed, and then
//! exactly the returned entries are marked (by id), so a reader that dies
//! before acting on an answer sees the same entries again.

use crate::agent::address::did_from_amid;
use crate::agent::inbox::{Entry, Evidence};
use crate::agent::{Agent, Cx};
use crate::crypto::identity::is_mesh_did;
use crate::io::Command;
use crate::tools::args::{self, ArgError};
use crate::tools::render;
use crate::wire::delivery::DeliveryMsg;
use crate::wire::payload::Family;
use crate::wire::time;
use serde_json::{json, Value};

pub(in crate::agent) const DEFAULT_LIMIT: usize = 10;
/// Most entries one answer returns.
pub(in crate::agent) const MAX_LIMIT: usize = 500;
pub(in crate::agent) const DEFAULT_TIMEOUT_S: f64 = 120.0;
pub(in crate::agent) const MAX_TIMEOUT_S: f64 = 300.0;
/// Characters of content shown per line (the full payload is in details).
const LINE_CHARS: usize = 200;
/// Most ids one call may name.
const MAX_IDS: usize = 1000;
const BUILD_HASH: &str = concat!("kars-mesh-", env!("CARGO_PKG_VERSION"));

/// A validated `mesh_inbox` call.
#[derive(Debug, Clone)]
pub(in crate::agent) struct InboxQuery {
    pub(in crate::agent) limit: usize,
    pub(in crate::agent) mark_read: bool,
    pub(in crate::agent) unread_only: bool,
    pub(in crate::agent) block: bool,
    pub(in crate::agent) timeout_ms: u64,
    /// Only entries from this DID.
    pub(in crate::agent) from: Option<String>,
    /// Only these entry ids (to mark exactly what an earlier peek showed).
    pub(in crate::agent) ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(in crate::agent) enum InboxArgError {
    #[error("❌ mesh_inbox: {0} Call mesh_inbox with no arguments to see unread messages.")]
    Arg(#[from] ArgError),
    #[error("❌ mesh_inbox: `from` must be a did:mesh: DID (did:mesh: + 32 lowercase hex) or a base58 AMID; use `discover` to find an agent's DID.")]
    FromNotDid,
}

pub(in crate::agent) fn parse(a: &Value) -> Result<InboxQuery, InboxArgError> {
    let ids = args::strings(a, "ids", MAX_IDS, 256)?;
    let limit = match args::number(a, "limit")? {
        Some(n) if n >= 1.0 => (n.floor() as usize).min(MAX_LIMIT),
        // Entries named by id: all of them (the CLI marks what it printed
        // this way; the default of 10 left the rest unread).
        _ if ids.is_some() => ids
            .as_ref()
            .map_or(0, Vec::len)
            .clamp(DEFAULT_LIMIT, MAX_LIMIT),
        // The original: anything not positive means the default.
        _ => DEFAULT_LIMIT,
    };
    // `peek` and `wait_seconds` are this engine's earlier names, kept for
    // existing callers: peek=false meant "mark what you return".
    let peek = args::boolean(a, "peek")?;
    let mark = args::boolean(a, "mark_read")?;
    let mark_read = match (mark, peek) {
        (Some(m), Some(p)) if m == p => {
            return Err(ArgError::Conflict {
                a: "mark_read",
                b: "peek",
            }
            .into())
        }
        (Some(m), _) => m,
        (None, Some(p)) => !p,
        (None, None) => false,
    };
    let unread_only = args::boolean(a, "unread_only")?.unwrap_or(true);
    let wait = args::number(a, "wait_seconds")?;
    let block =
        args::boolean(a, "block_until_message")?.unwrap_or(false) || wait.is_some_and(|w| w > 0.0);
    let timeout_s = match args::number(a, "timeout_seconds")?.or(wait) {
        Some(t) if t > 0.0 => t.min(MAX_TIMEOUT_S),
        _ => DEFAULT_TIMEOUT_S,
    };
    // An AMID names the same agent as its DID (entries record the DID).
    let from = match args::string(a, &["from"], 128)? {
        None => None,
        // DIDs are compared lower-cased, as users may not type them.
        Some(f) if is_mesh_did(&f.to_ascii_lowercase()) => Some(f.to_ascii_lowercase()),
        Some(f) => Some(did_from_amid(f).ok_or(InboxArgError::FromNotDid)?),
    };
    Ok(InboxQuery {
        limit,
        mark_read,
        unread_only,
        block,
        timeout_ms: (timeout_s * 1000.0) as u64,
        from,
        ids,
    })
}

impl InboxQuery {
    fn admits(&self, e: &Entry) -> bool {
        (!self.unread_only || !e.read)
            && self.from.as_deref().is_none_or(|f| e.from == f)
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&e.id))
    }

    /// Entries this call may return, in arrival order.
    pub(in crate::agent) fn visible<'a>(&self, agent: &'a Agent) -> Vec<&'a Entry> {
        // Unread only (the default, and every waiting call): walk the unread
        // index, not the whole inbox. A waiting call is checked again on
        // every message that arrives.
        if self.unread_only {
            return agent
                .inbox
                .unread_entries()
                .filter(|e| self.admits(e))
                .collect();
        }
        agent
            .inbox
            .deliverable()
            .filter(|e| self.admits(e))
            .collect()
    }
}

/// The text shown for one entry's content: a `{"type":"message"}` payload's
/// text, a bare string as is, anything else as JSON.
fn content_text(payload: &Value) -> String {
    match payload {
        Value::String(s) => s.clone(),
        other => match DeliveryMsg::parse(other) {
            Ok(DeliveryMsg::Message(m)) => m.shown().unwrap_or_else(|| payload.to_string()),
            _ => other.to_string(),
        },
    }
}

pub(in crate::agent) fn entry_json(e: &Entry) -> Value {
    json!({
        "id": e.id, "from": e.from, "ts": e.ts, "received_at": e.received_at,
        "evidence": e.evidence, "read": e.read, "payload": e.payload,
    })
}

/// The diagnostics block: counters since this engine started.
pub(in crate::agent) fn diagnostics(agent: &Agent) -> Value {
    let c = &agent.inbox.counters;
    json!({
        "build_hash": BUILD_HASH,
        "received_total": c.received_total,
        "consumed_by_waiter": c.consumed_by_waiter,
        "consumed_by_predicate": c.consumed_by_predicate,
        "fifo_dropped": c.fifo_dropped,
        "read_total": c.read_total,
        "last_received_at": c.last_received_at,
        "last_read_at": c.last_read_at,
        "refused_over_quota": c.refused_over_quota,
        "counters_since": agent.started_at,
    })
}

/// Mark entries read in memory and count them; the caller persists them
/// (after its answer, so a crash in between shows them again rather than
/// never).
pub(in crate::agent) fn mark(agent: &mut Agent, cx: &mut Cx<'_>, ns: &[u64]) -> Vec<Entry> {
    let mut marked = Vec::new();
    for &n in ns {
        if let Some(e) = agent.inbox.mark_read(n) {
            if !marked.iter().any(|m: &Entry| m.n == n) {
                marked.push(e.clone());
            }
        }
    }
    if !marked.is_empty() {
        let now = cx.now();
        let c = &mut agent.inbox.counters;
        c.read_total += marked.len() as u64;
        c.last_read_at = Some(time::format_millis(now));
    }
    marked
}

/// Persist read marks, then erase entries beyond the retention limit.
pub(in crate::agent) fn persist_marks(agent: &mut Agent, cx: &mut Cx<'_>, marked: &[Entry]) {
    for e in marked {
        agent.save_entry(cx, e);
    }
    for key in agent.inbox.prune() {
        cx.out.push(Command::Erase(key));
    }
}

/// Answer a `mesh_inbox` call. `waited_ms`: set when a blocking wait ended
/// without a matching message.
pub(in crate::agent) fn answer(
    agent: &mut Agent,
    cx: &mut Cx<'_>,
    call_id: &str,
    q: &InboxQuery,
    waited_ms: Option<u64>,
) {
    let visible = q.visible(agent);
    let total = visible.len();
    // Unread entries are returned oldest first, so reading with mark_read
    // walks the inbox in order and never skips one; re-reading
    // (unread_only=false) shows the newest `limit`, as the original does.
    let mut page: Vec<Entry> = if q.unread_only {
        visible.iter().take(q.limit).map(|e| (*e).clone()).collect()
    } else {
        visible[total.saturating_sub(q.limit)..]
            .iter()
            .map(|e| (*e).clone())
            .collect()
    };
    // Payloads live in storage; only the page shown is read back.
    for e in page.iter_mut() {
        e.payload = agent.load_payload(cx, e);
    }
    let unread = agent.inbox.unread_count();
    let already_read = match q.from.as_deref() {
        None => agent.inbox.read_count(),
        Some(f) => agent.inbox.read_entries().filter(|e| e.from == f).count(),
    };
    let ns: Vec<u64> = page.iter().map(|e| e.n).collect();
    let marked = if q.mark_read {
        mark(agent, cx, &ns)
    } else {
        Vec::new()
    };
    let diag = diagnostics(agent);
    let timed_out = waited_ms.is_some() && page.is_empty();
    let counts = Counts {
        total,
        unread,
        already_read,
    };
    let text = inbox_text(&page, q, counts, waited_ms, &diag);
    let messages: Vec<Value> = page.iter().map(entry_json).collect();
    let marked_ids: Vec<&str> = marked.iter().map(|e| e.id.as_str()).collect();
    render::ok(
        cx,
        call_id,
        &text,
        json!({
            "messages": messages,
            "returned": page.len(),
            "total": total,
            "unread": agent.inbox.unread_count(),
            "marked_read": marked_ids,
            "timed_out": timed_out,
            "diagnostics": diag,
        }),
    );
    persist_marks(agent, cx, &marked);
}

/// How many entries there are, for the head line.
#[derive(Clone, Copy)]
struct Counts {
    total: usize,
    unread: usize,
    already_read: usize,
}

/// The original's text: a head line and one line per entry (plaintext
/// marked unverified), or why there is nothing, then the diagnostics.
fn inbox_text(
    page: &[Entry],
    q: &InboxQuery,
    counts: Counts,
    waited_ms: Option<u64>,
    diag: &Value,
) -> String {
    let Counts {
        total,
        unread,
        already_read,
    } = counts;
    if page.is_empty() {
        let head = if let Some(ms) = waited_ms.filter(|_| q.block) {
            format!(
                "📭 Inbox empty (waited {}s blocking, no message arrived).",
                (ms as f64 / 1000.0).round()
            )
        } else if q.unread_only && already_read > 0 {
            format!("📭 No unread messages ({already_read} already read; pass unread_only=false to re-read).")
        } else {
            "📭 Inbox empty.".to_string()
        };
        format!("{head}\n\nDiagnostics: {diag}")
    } else {
        let mut lines = vec![format!(
            "📬 {} of {} message(s) ({} unread{}):",
            page.len(),
            total,
            unread,
            if q.mark_read {
                format!(", {} now marked read", page.len())
            } else {
                String::new()
            }
        )];
        for (i, e) in page.iter().enumerate() {
            lines.push(format!(
                "  {}. [{}] ({}{}) {}",
                i + 1,
                e.from,
                if e.read { "·read" } else { "·new" },
                // The relay does not bind `from`: say so where it matters.
                if e.evidence == Evidence::Plaintext {
                    ", ⚠ plaintext: the sender is not verified"
                } else {
                    ""
                },
                args::clip(&content_text(&e.payload), LINE_CHARS)
            ));
        }
        format!("{}\n\nDiagnostics: {diag}", lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn from_takes_a_did_in_any_case() {
        let did = "did:mesh:0123456789abcdef0123456789abcdef";
        let q = parse(&json!({ "from": did.to_uppercase() })).expect("a DID");
        assert_eq!(q.from.as_deref(), Some(did));
        assert!(matches!(
            parse(&json!({ "from": "did:mesh:xyz" })),
            Err(InboxArgError::FromNotDid)
        ));
    }

    #[test]
    fn entries_named_by_id_are_all_taken_unless_a_limit_says_otherwise() {
        let ids: Vec<String> = (0..30).map(|i| format!("m-{i}")).collect();
        let q = parse(&json!({ "ids": ids, "mark_read": true })).expect("ids");
        assert_eq!(q.limit, 30);
        let q = parse(&json!({ "ids": ids, "limit": 5 })).expect("ids and a limit");
        assert_eq!(q.limit, 5);
        let q = parse(&json!({ "ids": ["m-1"] })).expect("one id");
        assert_eq!(q.limit, DEFAULT_LIMIT);
        let many: Vec<String> = (0..MAX_IDS).map(|i| format!("m-{i}")).collect();
        assert_eq!(
            parse(&json!({ "ids": many })).expect("ids").limit,
            MAX_LIMIT
        );
        assert_eq!(parse(&json!({})).expect("none").limit, DEFAULT_LIMIT);
    }
}
