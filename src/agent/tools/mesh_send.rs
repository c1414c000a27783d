//! `mesh_send`: its arguments (aliases; a DID, a base58 AMID or a
//! registered name), resolving a name through the registry, and its texts.

use crate::agent::address::{classify, short_did, Address};
use crate::agent::{Agent, Cx, HttpAnswer, Purpose, MAX_PAYLOAD_BYTES};
use crate::mesh::registry as reg;
use crate::tools::args::{self, ArgError};
use crate::tools::render::{fail, ok, refuse_text};
use crate::wire::delivery::{ChatMessage, DeliveryMsg};
use crate::wire::payload::Family;
use serde_json::{json, Value};

/// Longest idempotency key.
const MAX_KEY_CHARS: usize = 128;

/// A mesh_send that failed after its arguments were accepted.
pub(in crate::agent) fn send_failed(agent: &mut Agent, cx: &mut Cx<'_>, call_id: &str, msg: &str) {
    agent.send_labels.remove(call_id);
    fail(cx, call_id, &format!("Send failed: {msg}"));
}

/// How the node carried out a mesh_send whose arguments were accepted; the
/// text and `details` the caller sees are made here, from this alone.
pub(in crate::agent) enum Sent<'a> {
    /// Committed under a new or an existing session; `handover`: how far it
    /// got; `receipts`: the peer confirms delivery (a kars agent) rather
    /// than the relay's hand-off being the last word.
    Committed {
        frame_id: &'a str,
        new_session: bool,
        handover: Handover<'a>,
        receipts: bool,
    },
    /// The idempotency key was used before: the first send's frame, not sent
    /// again.
    Repeat { frame_id: &'a str },
}

/// How far a committed message got.
pub(in crate::agent) enum Handover<'a> {
    /// On the open link (to a peer without receipts: the relay confirmed
    /// it).
    Relay,
    /// Waiting in the outbox, for the reason given.
    Queued(&'a str),
    /// Written, but the link closed (or the relay stayed silent) before the
    /// relay confirmed it; not written again.
    Unconfirmed,
}

/// A mesh_send that was committed (or recognised as a repeat).
pub(in crate::agent) fn send_done(
    agent: &mut Agent,
    cx: &mut Cx<'_>,
    call_id: &str,
    to: &str,
    sent: Sent<'_>,
) {
    let target = agent
        .send_labels
        .remove(call_id)
        .unwrap_or_else(|| to.to_string());
    let (text, details) = match sent {
        Sent::Repeat { frame_id } => (
            format!("✓ Message already sent to {target} (E2E encrypted) with this idempotency_key; not sent again"),
            json!({"to": to, "id": frame_id, "session": "existing", "queued": false, "duplicate": true}),
        ),
        Sent::Committed {
            frame_id,
            new_session,
            handover,
            receipts,
        } => {
            let session = if new_session { "new" } else { "existing" };
            let text = match handover {
                Handover::Relay => format!("✓ Message sent to {target} (E2E encrypted)"),
                Handover::Queued(why) => format!("✓ Message queued for {target} (E2E encrypted): {why}; it goes out when the link is back"),
                Handover::Unconfirmed => format!("⚠️ Message to {target} (E2E encrypted) was written to the relay, but the connection closed before the relay confirmed it: it may not have arrived. It is not sent again, because the recipient cannot tell a repeat from a replay; send it again (with a new idempotency_key, or none: a repeated key is not sent again) if it matters"),
            };
            // What confirms delivery: the peer's receipt (kept and sent again
            // until then), or the relay alone (sent once, never repeated).
            let confirmation = if receipts { "receipt" } else { "relay" };
            let queued = matches!(handover, Handover::Queued(_));
            let mut d = json!({"to": to, "id": frame_id, "session": session, "queued": queued, "confirmation": confirmation});
            match handover {
                Handover::Queued(why) => d["queued_because"] = json!(why),
                Handover::Unconfirmed => d["unconfirmed"] = json!(true),
                Handover::Relay => {}
            }
            (text, d)
        }
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
    #[error("❌ mesh_send: `to` is not usable: {0}. Pass an agent name, a did:mesh: DID or a base58 AMID; use `discover` to list known agents.")]
    BadTarget(crate::agent::address::InvalidAddress),
    #[error("❌ mesh_send: `to` is this agent's own DID; pass another agent's DID or name.")]
    SelfTarget,
    /// Over the limit before its envelope is added (the send's own check
    /// counts the envelope too, after a name was looked up).
    #[error("❌ Send failed: Message is {0} bytes; the limit is {MAX_PAYLOAD_BYTES}. Shorten it, or split it over several mesh_send calls.")]
    TooLarge(usize),
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
        Some((_, Value::String(s))) => DeliveryMsg::from(ChatMessage::text(s)).to_value(),
        Some((_, Value::Object(o))) if o.is_empty() => return Err(SendArgError::NoMessage),
        Some((_, Value::Object(o))) => Value::Object(o.clone()),
        Some(_) => return Err(SendArgError::MessageType),
    };
    let bytes = serde_json::to_vec(&payload).map_or(0, |v| v.len());
    if bytes > MAX_PAYLOAD_BYTES {
        return Err(SendArgError::TooLarge(bytes));
    }
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
        Address::Did(d) | Address::Amid { did: d, .. } if d == agent.did() => {
            return Err(SendArgError::SelfTarget)
        }
        _ => {}
    }
    Ok((addr, payload, key))
}

pub(in crate::agent) fn mesh_send(agent: &mut Agent, cx: &mut Cx<'_>, call_id: &str, a: &Value) {
    let (addr, payload, key) = match send_args(agent, a) {
        Ok(p) => p,
        Err(e) => return refuse_text(cx, call_id, &e.to_string()),
    };
    match addr {
        Address::Did(did) => agent.send_payload(cx, &did, payload, Some(call_id.to_string()), key),
        // The relay routes by DID only; an AMID names the same key (both are
        // prefixes of its SHA-256), so it is sent to that DID, and the text
        // shows both.
        Address::Amid { amid, did } => {
            agent
                .send_labels
                .insert(call_id.to_string(), format!("{amid} ({})", short_did(&did)));
            agent.send_payload(cx, &did, payload, Some(call_id.to_string()), key)
        }
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
        Address::Invalid(_) => {}
    }
}

/// The registry answered the name lookup of a mesh_send.
pub(in crate::agent) fn on_send_resolved(
    agent: &mut Agent,
    cx: &mut Cx<'_>,
    call_id: String,
    name: &str,
    payload: Value,
    key: Option<String>,
    answer: &HttpAnswer<'_>,
) {
    let (ok_status, body, problem) = (answer.ok, answer.body, answer.problem);
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
