//! Tool calls the engine answers, and the texts and `details` they return.
//! Every result is `{content:[{type:"text",text}], details:{mesh:{...}}}`.

use super::{Agent, Cx, Purpose, Waiter};
use crate::crypto::identity::is_mesh_did;
use crate::engine::Command;
use crate::mesh::registry as reg;
use serde_json::{json, Value};

/// Longest `mesh_inbox` wait.
pub(super) const MAX_WAIT_SECONDS: f64 = 3600.0;

pub(super) fn result(text: &str, details: Value) -> String {
    json!({"content": [{"type": "text", "text": text}], "details": {"mesh": details}}).to_string()
}

pub(super) fn ok(cx: &mut Cx<'_>, call_id: &str, text: &str, details: Value) {
    cx.out.push(Command::ToolResult {
        call_id: call_id.to_string(),
        result_json: result(text, details),
    });
}

pub(super) fn fail(cx: &mut Cx<'_>, call_id: &str, msg: &str) {
    cx.out.push(Command::ToolResult {
        call_id: call_id.to_string(),
        result_json: result(&format!("❌ {msg}"), json!({"error": msg})),
    });
}

fn arg_str<'a>(args: &'a Value, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| args.get(*n).and_then(|v| v.as_str()))
}

pub(super) fn handle(agent: &mut Agent, cx: &mut Cx<'_>, call_id: &str, tool: &str, args: &Value) {
    match tool {
        "mesh_identity" => {
            let s = agent.status();
            let text = format!(
                "DID: {}\nAMID: {}\nRegistered: {}\nRelay: {}",
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
        "mesh_send" => {
            let Some(to) = arg_str(args, &["to", "peer", "did", "recipient"]).map(str::trim) else {
                return fail(cx, call_id, "mesh_send needs `to`: the recipient's did:mesh: DID or registered name.");
            };
            let payload = match args.get("message").or_else(|| args.get("content")).or_else(|| args.get("payload")) {
                Some(Value::String(s)) if !s.is_empty() => json!({"type": "message", "content": s}),
                Some(Value::Object(o)) if !o.is_empty() => Value::Object(o.clone()),
                Some(_) | None => {
                    return fail(cx, call_id, "mesh_send needs `message`: a non-empty string or JSON object.");
                }
            };
            let key = match args.get("idempotency_key") {
                None | Some(Value::Null) => None,
                Some(Value::String(k)) if !k.is_empty() && k.len() <= 128 => Some(k.clone()),
                Some(_) => return fail(cx, call_id, "idempotency_key must be a non-empty string of at most 128 characters."),
            };
            if to == agent.did() {
                return fail(cx, call_id, "That is this agent's own DID; pass another agent's DID or name.");
            }
            if is_mesh_did(to) {
                agent.send_payload(cx, to, payload, Some(call_id.to_string()), key);
            } else if to.starts_with("did:") || to.is_empty() || to.len() > 128 || to.contains(char::is_whitespace) {
                fail(cx, call_id, &format!("{:?} is not a did:mesh: DID (did:mesh: + 32 lowercase hex) or a registered name.", to.chars().take(80).collect::<String>()));
            } else {
                let path = format!("/v1/discover?capability={}&limit=5", reg::query_escape(to));
                agent.http(cx, Purpose::Resolve { call_id: call_id.to_string(), name: to.to_string(), payload, key }, "GET", &path, false, None);
            }
        }
        "mesh_inbox" => {
            let wait = args.get("wait_seconds").or_else(|| args.get("timeout_seconds")).and_then(|v| v.as_f64()).unwrap_or(0.0);
            if !(0.0..=MAX_WAIT_SECONDS).contains(&wait) || wait.is_nan() {
                return fail(cx, call_id, &format!("wait_seconds must be between 0 and {MAX_WAIT_SECONDS}."));
            }
            let from = arg_str(args, &["from"]).map(str::to_string);
            if let Some(f) = &from {
                if !is_mesh_did(f) {
                    return fail(cx, call_id, "`from` must be a did:mesh: DID.");
                }
            }
            let limit = args.get("limit").and_then(|v| v.as_u64()).unwrap_or(50).clamp(1, 500) as usize;
            let peek = args.get("peek").and_then(|v| v.as_bool()).unwrap_or(false);
            if wait > 0.0 && agent.inbox.unread(from.as_deref()).is_empty() {
                let timer = agent.fresh_id();
                let at_ms = cx.now() + (wait * 1000.0) as u64;
                cx.out.push(Command::TimerSet { id: timer, at_ms });
                agent.waiters.push(Waiter { call_id: call_id.to_string(), timer, from, limit, peek });
            } else {
                inbox_answer(agent, cx, call_id, from.as_deref(), limit, peek, false);
            }
        }
        "discover" => {
            let cap = arg_str(args, &["capability", "name", "query"]).map(str::trim).filter(|s| !s.is_empty());
            let limit = args.get("limit").and_then(|v| v.as_u64()).unwrap_or(20).clamp(1, 200);
            let capability = cap.unwrap_or(super::KARS_CAPABILITY).to_string();
            if capability.len() > 256 {
                return fail(cx, call_id, "capability is too long (256 characters at most).");
            }
            let path = format!("/v1/discover?capability={}&limit={limit}", reg::query_escape(&capability));
            agent.http(cx, Purpose::Discover { call_id: call_id.to_string(), capability }, "GET", &path, false, None);
        }
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
                "unknown tool {:?}; this engine answers mesh_identity, mesh_register, mesh_send, mesh_inbox, discover, mesh_pair (and on a controller pair_generate, pair_list, pair_revoke)",
                other.chars().take(64).collect::<String>()
            ),
        ),
    }
}

pub(super) fn inbox_answer(
    agent: &mut Agent,
    cx: &mut Cx<'_>,
    call_id: &str,
    from: Option<&str>,
    limit: usize,
    peek: bool,
    timed_out: bool,
) {
    let mut marked = Vec::new();
    let picked: Vec<u64> = agent
        .inbox
        .unread(from)
        .iter()
        .take(limit)
        .map(|e| e.n)
        .collect();
    let mut messages = Vec::new();
    let mut lines = Vec::new();
    for n in picked {
        let entry = if peek {
            agent
                .inbox
                .unread(from)
                .into_iter()
                .find(|e| e.n == n)
                .cloned()
        } else {
            agent.inbox.mark_read(n).cloned()
        };
        let Some(e) = entry else { continue };
        if !peek {
            marked.push(e.clone());
        }
        let content = match &e.payload {
            Value::Object(o) => o.get("content").map(|c| match c {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            Value::String(s) => Some(s.clone()),
            _ => None,
        }
        .unwrap_or_else(|| e.payload.to_string());
        let lock = if e.evidence == super::inbox::Evidence::Encrypted {
            "🔒"
        } else {
            "⚠️ plaintext"
        };
        lines.push(format!(
            "{lock} from {}: {}",
            e.from,
            content.chars().take(2000).collect::<String>()
        ));
        messages.push(json!({
            "id": e.id, "from": e.from, "ts": e.ts, "received_at": e.received_at,
            "evidence": e.evidence, "payload": e.payload,
        }));
    }
    let unread = agent.inbox.unread_count();
    let text = if messages.is_empty() {
        if timed_out {
            "📭 No new messages (waited until the timeout).".to_string()
        } else {
            "📭 No new messages.".to_string()
        }
    } else {
        format!("📬 {} message(s):\n{}", messages.len(), lines.join("\n"))
    };
    ok(
        cx,
        call_id,
        &text,
        json!({"messages": messages, "unread": unread, "timed_out": timed_out && messages.is_empty()}),
    );
    // Read marks land after the answer: a crash in between shows a message
    // twice rather than never.
    for e in marked {
        agent.save_entry(cx, &e);
    }
    for key in agent.inbox.prune() {
        cx.out.push(Command::Erase(key));
    }
}

pub(super) fn discover_answer(
    agent: &mut Agent,
    cx: &mut Cx<'_>,
    call_id: &str,
    capability: &str,
    ok_status: bool,
    body: &[u8],
    problem: &str,
) {
    if !ok_status {
        return fail(cx, call_id, &format!("Discovery failed: {problem}"));
    }
    let found = match reg::parse_discover(body) {
        Ok(f) => f,
        Err(e) => return fail(cx, call_id, &e),
    };
    let others: Vec<_> = found.into_iter().filter(|d| d.did != agent.did()).collect();
    let text = if others.is_empty() {
        format!("No other agents found with capability {capability:?}.")
    } else {
        let lines: Vec<String> = others
            .iter()
            .map(|d| {
                format!(
                    "• {} — {}",
                    d.did,
                    d.capabilities
                        .iter()
                        .filter(|c| c.as_str() != super::KARS_CAPABILITY)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        format!(
            "Found {} agent(s) with capability {capability:?}:\n{}",
            others.len(),
            lines.join("\n")
        )
    };
    ok(
        cx,
        call_id,
        &text,
        json!({"capability": capability, "agents": others}),
    );
}
