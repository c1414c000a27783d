//! `discover`: agents in the registry by capability. The AGT registry can
//! only search by capability (there is no "list all"), so without one we ask
//! for the capability every kars-mesh agent registers and add the peers this
//! agent already has sessions with, instead of the original's bare
//! "No agents found" (spec §12, defect 12).

use crate::agent::{Agent, Cx, HttpAnswer, Purpose, KARS_CAPABILITY};
use crate::mesh::registry::{self as reg, Discovered};
use crate::tools::args::{self, ArgError};
use crate::tools::render;
use serde_json::{json, Value};

pub(in crate::agent) const DEFAULT_LIMIT: u64 = 20;
/// The registry refuses a larger `limit`.
pub(in crate::agent) const MAX_LIMIT: u64 = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(in crate::agent) enum DiscoverArgError {
    #[error("❌ discover: {0} Pass `capability` as a string such as \"analysis\" (or nothing to list kars-mesh agents).")]
    Arg(#[from] ArgError),
}

pub(in crate::agent) fn start(agent: &mut Agent, cx: &mut Cx<'_>, call_id: &str, a: &Value) {
    let parsed = (|| -> Result<(Option<String>, u64), DiscoverArgError> {
        let cap = args::string(a, &["capability", "name", "query"], 256)?
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let limit = match args::number(a, "limit")? {
            Some(n) if n >= 1.0 => (n.floor() as u64).min(MAX_LIMIT),
            _ => DEFAULT_LIMIT,
        };
        Ok((cap, limit))
    })();
    let (capability, limit) = match parsed {
        Ok(p) => p,
        Err(e) => return render::refuse_text(cx, call_id, &e.to_string()),
    };
    let query = capability.as_deref().unwrap_or(KARS_CAPABILITY);
    let path = format!(
        "/v1/discover?capability={}&limit={limit}",
        reg::query_escape(query)
    );
    agent.http(
        cx,
        Purpose::Discover {
            call_id: call_id.to_string(),
            capability,
            limit,
        },
        "GET",
        &path,
        false,
        None,
    );
}

/// The name an agent shows: its first capability that is neither a DID nor
/// the kars-mesh marker (agents register their name first).
fn display_name(d: &Discovered) -> Option<&str> {
    d.capabilities
        .iter()
        .map(String::as_str)
        .find(|c| !c.starts_with("did:") && *c != KARS_CAPABILITY)
}

pub(in crate::agent) fn answer(
    agent: &mut Agent,
    cx: &mut Cx<'_>,
    call_id: &str,
    capability: Option<&str>,
    limit: u64,
    reply: &HttpAnswer<'_>,
) {
    let (ok_status, body, problem) = (reply.ok, reply.body, reply.problem);
    if !ok_status {
        return render::fail_text(cx, call_id, &format!("❌ Discovery failed: {problem}"));
    }
    let found = match reg::parse_discover(body) {
        Ok(f) => f,
        Err(e) => return render::fail_text(cx, call_id, &format!("❌ Discovery failed: {e}")),
    };
    let me = agent.did().to_string();
    let mut agents: Vec<Discovered> = found.into_iter().filter(|d| d.did != me).collect();
    let local = if capability.is_none() {
        add_known_peers(agent, &mut agents, limit)
    } else {
        0
    };
    let text = discover_text(&agents, capability, local);
    let listed: Vec<Value> = agents
        .iter()
        .map(|d| {
            json!({
                "did": d.did, "name": display_name(d), "capabilities": d.capabilities,
                "reputation_score": d.reputation_score, "last_seen": d.last_seen,
            })
        })
        .collect();
    render::ok(
        cx,
        call_id,
        &text,
        json!({"capability": capability, "searched": capability.unwrap_or(KARS_CAPABILITY), "agents": listed}),
    );
}

/// Without a capability, peers this agent has sessions with are listed
/// too (the registry cannot list all agents); how many were added.
fn add_known_peers(agent: &Agent, agents: &mut Vec<Discovered>, limit: u64) -> usize {
    let me = agent.did();
    let mut local = 0;
    for (did, p) in &agent.peers {
        if agents.len() as u64 >= limit {
            break;
        }
        if did != me && !agents.iter().any(|d| d.did == *did) {
            local += 1;
            agents.push(Discovered {
                did: did.clone(),
                capabilities: if p.kars {
                    vec![KARS_CAPABILITY.to_string()]
                } else {
                    Vec::new()
                },
                reputation_score: None,
                last_seen: None,
            });
        }
    }
    local
}

/// The original's lines (short DIDs), then the full DIDs to send to.
fn discover_text(agents: &[Discovered], capability: Option<&str>, local: usize) -> String {
    let mut text = if agents.is_empty() {
        match capability {
            Some(c) => format!(
                "🌐 0 agent(s) with capability {:?}. Agents register their name as their first capability: check the spelling, or call discover without a capability to list kars-mesh agents.",
                args::clip(c, 80)
            ),
            None => "🌐 0 agent(s). No other kars-mesh agent is registered and this agent has no sessions yet. The registry only searches by capability: pass `capability` (an agent's name, or a skill such as \"analysis\").".to_string(),
        }
    } else {
        let mut lines = vec![format!("🌐 {} agent(s):", agents.len())];
        for d in agents {
            lines.push(format!(
                "  {}...  {}  [{}]",
                d.did.chars().take(16).collect::<String>(),
                display_name(d).unwrap_or("—"),
                d.capabilities.join(", ")
            ));
        }
        // The lines above show the original's short DIDs, which cannot be
        // sent to; the full ones follow.
        lines.push(String::new());
        lines.push("Send to an agent by its name or its full DID:".to_string());
        for d in agents {
            lines.push(format!("  {}  {}", display_name(d).unwrap_or("—"), d.did));
        }
        lines.join("\n")
    };
    if capability.is_none() && !agents.is_empty() {
        text.push_str(&format!(
            "\n\n(No capability given: these are the agents registered with {KARS_CAPABILITY:?}{}. The registry only searches by capability; pass `capability` to find others.)",
            if local > 0 {
                " and peers this agent has sessions with"
            } else {
                ""
            }
        ));
    }
    text
}
