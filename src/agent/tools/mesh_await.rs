//! `mesh_await`: wait, inside one tool call, until every named peer has
//! delivered at least one unread message. The result shape is the
//! original's; the matching is not: a name is bound to a sender only through
//! authenticated identity (the registry's answer for that name, or a
//! `from_agent` inside an E2E-encrypted message from that sender), never
//! through a plaintext claim (spec §12, defects 16 and 17).

use super::mesh_inbox;
use crate::agent::address::{classify, Address};
use crate::agent::inbox::{Entry, Evidence};
use crate::agent::{Agent, Cx, HttpAnswer, Purpose};
use crate::mesh::registry as reg;
use crate::tools::args::{self, ArgError};
use crate::tools::render;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

pub(in crate::agent) const DEFAULT_TIMEOUT_S: f64 = 180.0;
pub(in crate::agent) const MAX_TIMEOUT_S: f64 = 600.0;
const MAX_SENDERS: usize = 50;
const MAX_SENDER_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(in crate::agent) enum AwaitArgError {
    #[error("❌ mesh_await: `senders` must be a non-empty array of agent names.")]
    NoSenders,
    #[error("❌ mesh_await: `senders` must contain at least one non-empty agent name.")]
    AllEmpty,
    #[error(
        "❌ mesh_await: {0} Pass `senders` as an array of agent names or DIDs, e.g. [\"analyst\"]."
    )]
    Arg(#[from] ArgError),
    #[error("❌ mesh_await: sender {0} is not usable: {1}. Pass agent names or did:mesh: DIDs.")]
    BadSender(usize, crate::agent::address::InvalidAddress),
}

/// What a name is bound to by the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::agent) enum Binding {
    /// The registry has not answered yet.
    Pending,
    Did(String),
    /// Several agents registered the name: none of them is trusted with it.
    Ambiguous(usize),
    NotRegistered,
    LookupFailed(String),
}

#[derive(Debug, Clone)]
pub(in crate::agent) struct Sender {
    /// Lower-cased, trimmed: the key of `matched`, and what a name inside a
    /// message is compared with.
    pub(in crate::agent) key: String,
    /// Trimmed, as the caller wrote it: what the notes name.
    pub(in crate::agent) name: String,
    /// The registry matches a name exactly, case included, while a sender
    /// matches case-insensitively (spec): it is asked for the name as
    /// written and, when that differs, lower-cased. What the answers found
    /// so far, and how many are still out.
    pub(in crate::agent) lookups_out: usize,
    pub(in crate::agent) found: BTreeSet<String>,
    pub(in crate::agent) lookup_failed: Option<String>,
    /// A DID given directly (or through an AMID); `None` for a name.
    pub(in crate::agent) did: Option<String>,
    pub(in crate::agent) binding: Binding,
}

#[derive(Debug, Clone)]
pub(in crate::agent) struct AwaitWait {
    pub(in crate::agent) call_id: String,
    pub(in crate::agent) timer: u64,
    pub(in crate::agent) started_ms: u64,
    pub(in crate::agent) timeout_s: u64,
    pub(in crate::agent) mark_read: bool,
    pub(in crate::agent) requested: Vec<String>,
    pub(in crate::agent) senders: Vec<Sender>,
}

/// Validate the arguments; `timer` and `started_ms` are filled by the caller.
pub(in crate::agent) fn parse(a: &Value, call_id: &str) -> Result<AwaitWait, AwaitArgError> {
    let raw = match args::first(a, &["senders"]) {
        None => return Err(AwaitArgError::NoSenders),
        Some((_, Value::Array(v))) if v.is_empty() => return Err(AwaitArgError::NoSenders),
        Some((_, Value::Array(_))) => {
            args::strings(a, "senders", MAX_SENDERS, MAX_SENDER_CHARS)?.unwrap_or_default()
        }
        Some(_) => return Err(AwaitArgError::NoSenders),
    };
    let requested: Vec<String> = raw
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if requested.is_empty() {
        return Err(AwaitArgError::AllEmpty);
    }
    let mut senders: Vec<Sender> = Vec::new();
    for (i, s) in requested.iter().enumerate() {
        let key = s.to_lowercase();
        if senders.iter().any(|x| x.key == key) {
            continue;
        }
        let did = match classify(s) {
            Address::Did(d) => Some(d),
            Address::Amid { did, .. } => Some(did),
            Address::Name(_) => None,
            Address::Invalid(e) => return Err(AwaitArgError::BadSender(i + 1, e)),
        };
        let binding = if did.is_some() {
            Binding::NotRegistered
        } else {
            Binding::Pending
        };
        senders.push(Sender {
            key,
            name: s.clone(),
            did,
            binding,
            lookups_out: 0,
            found: BTreeSet::new(),
            lookup_failed: None,
        });
    }
    let timeout_s = match args::number(a, "timeout_seconds")? {
        // A fraction of a second waits the whole second it starts (0.5 used
        // to wait the 180 s default); past the most, the most.
        Some(t) if t > 0.0 => t.ceil().min(MAX_TIMEOUT_S) as u64,
        _ => DEFAULT_TIMEOUT_S as u64,
    };
    let mark_read = args::boolean(a, "mark_read")?.unwrap_or(false);
    Ok(AwaitWait {
        call_id: call_id.to_string(),
        timer: 0,
        started_ms: 0,
        timeout_s,
        mark_read,
        requested,
        senders,
    })
}

impl Sender {
    /// Whether `e` is a message from this sender, by authenticated identity.
    fn matches(&self, e: &Entry) -> bool {
        if let Some(d) = &self.did {
            return e.from == *d;
        }
        if let Binding::Did(d) = &self.binding {
            if e.from == *d {
                return true;
            }
        }
        // A name the sender gives itself counts only inside a message that
        // E2E encryption proves came from `e.from`; the answer shows that DID.
        e.evidence == Evidence::Encrypted
            && e.from_agent
                .as_deref()
                .is_some_and(|n| n.trim().to_lowercase() == self.key)
    }
}

/// Unread matches per sender key: (inbox arrival number, entry).
fn matches<'a>(agent: &'a Agent, w: &AwaitWait) -> BTreeMap<String, Vec<&'a Entry>> {
    let mut out: BTreeMap<String, Vec<&Entry>> = BTreeMap::new();
    for s in &w.senders {
        let found: Vec<&Entry> = agent
            .inbox
            .unread_entries()
            .filter(|e| s.matches(e))
            .collect();
        out.insert(s.key.clone(), found);
    }
    out
}

pub(in crate::agent) fn complete(agent: &Agent, w: &AwaitWait) -> bool {
    matches(agent, w).values().all(|m| !m.is_empty())
}

/// Start a `mesh_await` call: look names up, then answer at once or wait.
pub(in crate::agent) fn start(agent: &mut Agent, cx: &mut Cx<'_>, call_id: &str, a: &Value) {
    let mut w = match parse(a, call_id) {
        Ok(w) => w,
        Err(e) => return render::refuse_text(cx, call_id, &e.to_string()),
    };
    w.started_ms = cx.now();
    for s in &mut w.senders {
        if s.did.is_some() {
            continue;
        }
        let mut forms = vec![s.name.as_str()];
        if s.key != s.name {
            forms.push(s.key.as_str());
        }
        s.lookups_out = forms.len();
        for form in forms {
            let path = format!(
                "/v1/discover?capability={}&limit=5",
                reg::query_escape(form)
            );
            agent.http(
                cx,
                Purpose::AwaitResolve {
                    call_id: call_id.to_string(),
                    key: s.key.clone(),
                },
                "GET",
                &path,
                false,
                None,
            );
        }
    }
    if complete(agent, &w) {
        return answer(agent, cx, &w);
    }
    let at_ms = w.started_ms + w.timeout_s * 1000;
    w.timer = agent
        .timers
        .set(cx, crate::agent::timers::Owner::Waiter, at_ms);
    agent.waiters.push(crate::agent::Waiter::Await(w));
}

/// The registry answered a name lookup for a waiting `mesh_await`.
pub(in crate::agent) fn on_resolved(
    agent: &mut Agent,
    cx: &mut Cx<'_>,
    call_id: &str,
    key: &str,
    answer: &HttpAnswer<'_>,
) {
    let (ok, body, problem) = (answer.ok, answer.body, answer.problem);
    let heard = if ok {
        reg::parse_discover(body).map(|found| found.into_iter().map(|d| d.did))
    } else {
        Err(problem.to_string())
    };
    let Some(w) = agent.waiters.iter_mut().find_map(|w| match w {
        crate::agent::Waiter::Await(a) if a.call_id == call_id => Some(a),
        _ => None,
    }) else {
        return;
    };
    let Some(s) = w.senders.iter_mut().find(|s| s.key == key) else {
        return;
    };
    match heard {
        Ok(dids) => s.found.extend(dids),
        Err(e) => s.lookup_failed = Some(e),
    }
    s.lookups_out = s.lookups_out.saturating_sub(1);
    if s.lookups_out > 0 {
        return;
    }
    // Exact capability membership is what the registry searched on; several
    // holders (of the name in either form) means the name proves nothing.
    s.binding = match (s.found.len(), &s.lookup_failed) {
        (1, _) => s
            .found
            .first()
            .map_or(Binding::NotRegistered, |d| Binding::Did(d.clone())),
        (0, Some(e)) => Binding::LookupFailed(e.clone()),
        (0, None) => Binding::NotRegistered,
        (n, _) => Binding::Ambiguous(n),
    };
    agent.wake_waiters(cx);
}

/// Why a name could not be bound, for the note.
fn binding_note(s: &Sender) -> Option<String> {
    if s.did.is_some() {
        return None;
    }
    match &s.binding {
        Binding::Did(_) => None,
        Binding::Pending => Some(format!("the registry had not answered for {:?}", s.name)),
        Binding::Ambiguous(n) => Some(format!(
            "{n} agents registered the name {:?}, so the registry does not identify it",
            s.name
        )),
        Binding::NotRegistered => Some(format!("no agent is registered as {:?}", s.name)),
        Binding::LookupFailed(p) => Some(format!(
            "looking up {:?} failed ({})",
            s.name,
            args::clip(p, 120)
        )),
    }
}

/// Answer the call (all received, or at its timeout) and apply mark_read.
pub(in crate::agent) fn answer(agent: &mut Agent, cx: &mut Cx<'_>, w: &AwaitWait) {
    let found = matches(agent, w);
    let mut matched = Map::new();
    let mut answered_by = Map::new();
    let mut missing = Vec::new();
    let mut ns = Vec::new();
    for s in &w.senders {
        let list = found.get(&s.key).cloned().unwrap_or_default();
        if list.is_empty() {
            missing.push(s.key.clone());
        }
        let mut dids: Vec<&str> = list.iter().map(|e| e.from.as_str()).collect();
        dids.dedup();
        answered_by.insert(s.key.clone(), json!(dids));
        matched.insert(
            s.key.clone(),
            json!(list.iter().map(|e| e.id.as_str()).collect::<Vec<_>>()),
        );
        ns.extend(list.iter().map(|e| e.n));
    }
    let all = missing.is_empty();
    let marked = if w.mark_read {
        mesh_inbox::mark(agent, cx, &ns)
    } else {
        Vec::new()
    };
    let now = cx.now();
    let waited = (now.saturating_sub(w.started_ms) as f64 / 1000.0).round() as u64;
    let mut note = if all {
        "Every requested sender has delivered at least one message.".to_string()
    } else {
        format!("Timed out still waiting for: {}.", missing.join(", "))
    };
    note.push_str(if w.mark_read {
        " Matched entries are now marked read: call mesh_inbox with unread_only=false to read their content."
    } else {
        " Call mesh_inbox to read the content."
    });
    let unbound: Vec<String> = w.senders.iter().filter_map(binding_note).collect();
    if !unbound.is_empty() {
        note.push_str(&format!(
            " Names are matched by their registry entry or by from_agent inside E2E-encrypted messages only; {}.",
            unbound.join("; ")
        ));
    }
    let result = json!({
        "status": if all { "all_received" } else { "partial_timeout" },
        "requested_senders": w.requested,
        "matched": matched,
        "missing": missing,
        "mark_read": w.mark_read,
        "marked_read_count": marked.len(),
        "waited_seconds": waited,
        "timeout_seconds": w.timeout_s,
        "note": note,
        "answered_by": answered_by,
    });
    render::ok(cx, &w.call_id, &result.to_string(), result.clone());
    mesh_inbox::persist_marks(agent, cx, &marked);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_timeout_is_whole_seconds_up_to_the_most_and_only_nothing_means_the_default() {
        let t = |v: Value| {
            parse(&json!({"senders": ["writer"], "timeout_seconds": v}), "c1")
                .map(|w| w.timeout_s)
                .ok()
        };
        assert_eq!(t(json!(0.5)), Some(1));
        assert_eq!(t(json!(2.2)), Some(3));
        assert_eq!(t(json!(30)), Some(30));
        assert_eq!(t(json!(1e12)), Some(MAX_TIMEOUT_S as u64));
        assert_eq!(t(json!(0)), Some(DEFAULT_TIMEOUT_S as u64));
        assert_eq!(t(Value::Null), Some(DEFAULT_TIMEOUT_S as u64));
        assert_eq!(t(json!(-1)), None);
    }
}
