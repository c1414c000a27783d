//! Tool calls the engine answers: which tool family takes which call. Every
//! tool validates its arguments before changing anything; results have the
//! one shape of `render`.

pub(super) mod discover;
pub(super) mod mesh_await;
pub(in crate::agent) mod mesh_inbox;
pub(super) mod mesh_send;

use crate::agent::{Agent, Cx};
use crate::tools::args;
use crate::tools::render::{fail, ok, refuse, refuse_text};
use serde_json::Value;

/// A `mesh_inbox` read whose arguments were checked: answered now, or
/// pending until a message lands or its wait is over.
pub(in crate::agent) fn mesh_inbox_query(
    agent: &mut Agent,
    cx: &mut Cx<'_>,
    call_id: &str,
    q: mesh_inbox::InboxQuery,
) {
    if q.block && q.visible(agent).is_empty() {
        // Pending until a message lands (wake_waiters) or the timer fires.
        let since_ms = cx.now();
        let timer = agent.timers.set(
            cx,
            crate::agent::timers::Owner::Waiter,
            since_ms + q.timeout_ms,
        );
        agent.waiters.push(crate::agent::Waiter::Inbox {
            call_id: call_id.to_string(),
            timer,
            since_ms,
            query: q,
        });
    } else {
        mesh_inbox::answer(agent, cx, call_id, &q, None);
    }
}

/// The `Relay:` line of `mesh_identity`: connected once the relay accepted
/// the connection; else its problem, or why the last attempt failed.
fn relay_line(agent: &Agent) -> String {
    let link = &agent.link;
    if link.is_confirmed() {
        return "connected".to_string();
    }
    if let Some(p) = &link.last_problem {
        return p.clone();
    }
    match &link.last_error {
        Some(e) => format!("connecting (the last attempt failed: {e})"),
        None => "connecting".to_string(),
    }
}

pub(in crate::agent) fn handle(
    agent: &mut Agent,
    cx: &mut Cx<'_>,
    call_id: &str,
    tool: &str,
    args: &Value,
) {
    if !args.is_object() {
        return refuse(
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
                relay_line(agent)
            );
            ok(cx, call_id, &text, s);
        }
        "mesh_register" => {
            agent.register_calls.push(call_id.to_string());
            agent.registered = false;
            agent.prekeys.set_uploaded(false);
            agent.register(cx);
        }
        "mesh_send" => mesh_send::mesh_send(agent, cx, call_id, args),
        // Bad arguments are refused at once, not after the wait below.
        "mesh_inbox" => match mesh_inbox::parse(args) {
            Err(e) => refuse_text(cx, call_id, &e.to_string()),
            // What the relay stored for us is on its way: a process that
            // has just started must not show an inbox without it.
            Ok(q) if agent.inbox_still_arriving() => agent.defer_inbox_read(cx, call_id, q),
            Ok(q) => mesh_inbox_query(agent, cx, call_id, q),
        },
        "mesh_await" => mesh_await::start(agent, cx, call_id, args),
        "discover" => discover::start(agent, cx, call_id, args),
        "mesh_pair" | "cloud_offload" | "offload_status" | "offload_cancel"
        | "offload_notifications" | "offload_list" | "pair_generate" | "pair_list"
        | "pair_revoke" => agent.role_tool(cx, call_id, tool, args),
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
