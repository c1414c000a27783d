//! Tool calls the engine answers, and the texts and `details` they return.
//! Every result is `{content:[{type:"text",text}], details:{mesh:{...}}}`:
//! the original plugin's text in `content[0].text`, structured data under
//! `details.mesh` (the host reserves `status`, `ok`, `error`, … at the top of
//! `details`). Every tool validates its arguments before changing anything.

use super::address::{classify, short_did, Address};
use super::args::{self, ArgError};
use super::{await_tool, discover, inbox_tool, Agent, Cx, Purpose};
use crate::engine::Command;
use crate::mesh::registry as reg;
use serde_json::{json, Value};

/// Longest idempotency key.
const MAX_KEY_CHARS: usize = 128;

pub(super) fn result(text: &str, details: Value) -> String {
    json!({"content": [{"type": "text", "text": text}], "details": {"mesh": details}}).to_string()
}

pub(super) fn ok(cx: &mut Cx<'_>, call_id: &str, text: &str, details: Value) {
    cx.out.push(Command::ToolResult {
        call_id: call_id.to_string(),
        result_json: result(text, details),
    });
}

/// An error whose text is `❌ ` + `msg`.
pub(super) fn fail(cx: &mut Cx<'_>, call_id: &str, msg: &str) {
    fail_text(cx, call_id, &format!("❌ {msg}"));
}

/// An error with a complete text (it starts with ❌).
pub(super) fn fail_text(cx: &mut Cx<'_>, call_id: &str, text: &str) {
    let msg = text.trim_start_matches("❌").trim_start();
    cx.out.push(Command::ToolResult {
        call_id: call_id.to_string(),
        result_json: result(text, json!({"error": msg})),
    });
}

/// A mesh_send that failed after its arguments were accepted.
pub(super) fn send_failed(agent: &mut Agent, cx: &mut Cx<'_>, call_id: &str, msg: &str) {
    agent.send_labels.remove(call_id);
    fail(cx, call_id, &format!("Send failed: {msg}"));
}

/// A mesh_send that was committed (or recognised as a repeat).
pub(super) fn send_done(
    agent: &mut Agent,
    cx: &mut Cx<'_>,
    call_id: &str,
    to: &str,
    details: Value,
) {
    let target = agent
        .send_labels
        .remove(call_id)
        .unwrap_or_else(|| to.to_string());
    let text = if details["duplicate"] == json!(true) {
        format!("✓ Message already sent to {target} (E2E encrypted) with this idempotency_key; not sent again")
    } else if details["queued"] == json!(true) {
        format!("✓ Message queued for {target} (E2E encrypted); the relay is not reachable right now, it goes out when the link is back")
    } else {
        format!("✓ Message sent to {target} (E2E encrypted)")
    };
    ok(cx, call_id, &text, details);
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SendArgError {
    #[error(
        "❌ mesh_send requires `to` (AMID or agent name). Use `discover` to list known agents."
    )]
    NoTarget,
    #[error("❌ mesh_send requires `message` content.")]
    NoMessage,
    #[error("❌ mesh_send: {0} Pass `to` (an agent name or did:mesh: DID) and `message` (text).")]
    Arg(#[from] ArgError),
    #[error("❌ mesh_send: `message` must be text or a JSON object.")]
    MessageType,
    #[error("❌ mesh_send: `idempotency_key` must be a non-empty string of at most {MAX_KEY_CHARS} characters.")]
    Key,
    #[error("❌ mesh_send: `to` is not usable: {0}. Pass an agent name or a did:mesh: DID; use `discover` to list known agents.")]
    BadTarget(super::address::InvalidAddress),
    #[error("❌ mesh_send: `to` is a base58 AMID, which the relay cannot route. Send to the agent's DID ({0}) or its registered name instead.")]
    Amid(String),
    #[error("❌ mesh_send: `to` is this agent's own DID; pass another agent's DID or name.")]
    SelfTarget,
}

fn send_args(agent: &Agent, a: &Value) -> Result<(Address, Value, Option<String>), SendArgError> {
    let to = args::string(
        a,
        &["to", "to_amid", "to_agent", "target", "amid", "recipient"],
        256,
    )?
    .filter(|s| !s.is_empty())
    .ok_or(SendArgError::NoTarget)?;
    let payload = match args::first(a, &["message", "content", "body", "text"]) {
        None => return Err(SendArgError::NoMessage),
        Some((_, Value::String(s))) if s.trim().is_empty() => return Err(SendArgError::NoMessage),
        Some((_, Value::String(s))) => json!({"type": "message", "content": s}),
        Some((_, Value::Object(o))) if o.is_empty() => return Err(SendArgError::NoMessage),
        Some((_, Value::Object(o))) => Value::Object(o.clone()),
        Some(_) => return Err(SendArgError::MessageType),
    };
    let key = match a.get("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if !k.is_empty() && k.chars().count() <= MAX_KEY_CHARS => {
            Some(k.clone())
        }
        Some(_) => return Err(SendArgError::Key),
    };
    let addr = classify(to);
    match &addr {
        Address::Invalid(e) => return Err(SendArgError::BadTarget(*e)),
        Address::Amid { did } => return Err(SendArgError::Amid(did.clone())),
        Address::Did(d) if d == agent.did() => return Err(SendArgError::SelfTarget),
        _ => {}
    }
    Ok((addr, payload, key))
}

fn mesh_send(agent: &mut Agent, cx: &mut Cx<'_>, call_id: &str, a: &Value) {
    let (addr, payload, key) = match send_args(agent, a) {
        Ok(p) => p,
        Err(e) => return fail_text(cx, call_id, &e.to_string()),
    };
    match addr {
        Address::Did(did) => agent.send_payload(cx, &did, payload, Some(call_id.to_string()), key),
        Address::Name(name) => {
            let path = format!(
                "/v1/discover?capability={}&limit=5",
                reg::query_escape(&name)
            );
            agent.http(
                cx,
                Purpose::Resolve {
                    call_id: call_id.to_string(),
                    name,
                    payload,
                    key,
                },
                "GET",
                &path,
                false,
                None,
            );
        }
        // Refused by send_args.
        Address::Amid { .. } | Address::Invalid(_) => {}
    }
}

/// The registry answered the name lookup of a mesh_send.
#[allow(clippy::too_many_arguments)]
pub(super) fn on_send_resolved(
    agent: &mut Agent,
    cx: &mut Cx<'_>,
    call_id: String,
    name: &str,
    payload: Value,
    key: Option<String>,
    ok_status: bool,
    body: &[u8],
    problem: &str,
) {
    let shown = args::clip(name, 80);
    let found = match (ok_status, reg::parse_discover(body)) {
        (true, Ok(f)) => f,
        (true, Err(e)) => return send_failed(agent, cx, &call_id, &e),
        (false, _) => {
            return send_failed(
                agent,
                cx,
                &call_id,
                &format!("could not look up {shown:?} in the registry: {problem}"),
            )
        }
    };
    match found.as_slice() {
        [one] if one.did == agent.did() => send_failed(
            agent,
            cx,
            &call_id,
            &format!("{shown:?} is this agent's own name; pass another agent's name or DID."),
        ),
        [one] => {
            let did = one.did.clone();
            agent
                .send_labels
                .insert(call_id.clone(), format!("{name} ({})", short_did(&did)));
            agent.send_payload(cx, &did, payload, Some(call_id), key);
        }
        [] => send_failed(
            agent,
            cx,
            &call_id,
            &format!("no agent is registered under the name {shown:?}. Use `discover` to list known agents, or pass a did:mesh: DID."),
        ),
        many => send_failed(
            agent,
            cx,
            &call_id,
            &format!(
                "{} agents are registered under the name {shown:?} ({}); names are not unique, pass the DID of the one you mean.",
                many.len(),
                many.iter().map(|d| d.did.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ),
    }
}

fn mesh_inbox(agent: &mut Agent, cx: &mut Cx<'_>, call_id: &str, a: &Value) {
    let q = match inbox_tool::parse(a) {
        Ok(q) => q,
        Err(e) => return fail_text(cx, call_id, &e.to_string()),
    };
    if q.block && q.visible(agent).is_empty() {
        // Pending until a message lands (wake_waiters) or the timer fires.
        let timer = agent.fresh_id();
        let since_ms = cx.now();
        cx.out.push(Command::TimerSet {
            id: timer,
            at_ms: since_ms + q.timeout_ms,
        });
        agent.waiters.push(super::Waiter::Inbox {
            call_id: call_id.to_string(),
            timer,
            since_ms,
            query: q,
        });
    } else {
        inbox_tool::answer(agent, cx, call_id, &q, None);
    }
}

pub(super) fn handle(agent: &mut Agent, cx: &mut Cx<'_>, call_id: &str, tool: &str, args: &Value) {
    if !args.is_object() {
        return fail(
            cx,
            call_id,
            &format!("{tool}: arguments must be a JSON object of named parameters."),
        );
    }
    match tool {
        "mesh_identity" => {
            let s = agent.status();
            let text = format!(
                "DID: {}\nAMID: {} (display only; address agents by DID or name)\nRegistered: {}\nRelay: {}",
                agent.did(),
                agent.identity().amid(),
                if agent.registered { "yes" } else { "not yet" },
                if agent.link.open_socket().is_some() { "connected".to_string() } else { agent.link.last_problem.clone().unwrap_or_else(|| "connecting".into()) }
            );
            ok(cx, call_id, &text, s);
        }
        "mesh_register" => {
            agent.register_calls.push(call_id.to_string());
            agent.registered = false;
            agent.prekeys.set_uploaded(false);
            agent.register(cx);
        }
        "mesh_send" => mesh_send(agent, cx, call_id, args),
        "mesh_inbox" => mesh_inbox(agent, cx, call_id, args),
        "mesh_await" => await_tool::start(agent, cx, call_id, args),
        "discover" => discover::start(agent, cx, call_id, args),
        "mesh_pair" => agent.start_pairing(cx, call_id, args),
        "cloud_offload" => agent.cloud_offload(cx, call_id, args),
        "offload_status" => agent.offload_status_tool(cx, call_id, args),
        "offload_cancel" => agent.offload_cancel(cx, call_id),
        "offload_notifications" => agent.offload_notifications(cx, call_id),
        "offload_list" => {
            let list = agent.controller_offloads();
            let n = list.as_array().map(Vec::len).unwrap_or(0);
            ok(cx, call_id, &format!("{n} offload(s) running"), json!({"offloads": list}));
        }
        "pair_generate" | "pair_list" | "pair_revoke" => agent.ledger_tool(cx, call_id, tool, args),
        other => fail(
            cx,
            call_id,
            &format!(
                "unknown tool {:?}; this engine answers mesh_identity, mesh_register, mesh_send, mesh_inbox, mesh_await, discover, mesh_pair (and on a controller pair_generate, pair_list, pair_revoke)",
                args::clip(other, 64)
            ),
        ),
    }
}
