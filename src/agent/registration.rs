//! This agent's record in the AgentMesh registry: registered under the
//! name and capabilities its host gives, and registered anew when they
//! change.
//!
//! The AGT registry has no update: a second registration of an identity
//! is answered 409 and the record keeps what the identity first registered
//! with. A node started with a new name (`--name`, the plugin's
//! `display_name`) said "Registered" while other agents still reached it
//! only by its old name, until the registry happened to restart. So the
//! registration the registry last accepted is remembered
//! (`keys::REGISTERED`); on a 409 with other settings the node reads its
//! record, and when the record differs it deletes it (a signed request)
//! and registers again. An unchanged node asks the registry nothing more
//! than before.

use super::{address, Agent, Cx, Purpose, KARS_CAPABILITY, T_REREGISTER};
use crate::io::LogLevel;
use crate::mesh::registry as reg;
use crate::store::keys;
use crate::wire::registry;
use serde_json::json;
use std::collections::BTreeMap;

impl Agent {
    /// The capabilities and metadata this agent registers with.
    fn registration(&self) -> (Vec<String>, BTreeMap<String, String>) {
        let mut caps: Vec<String> = Vec::new();
        if let Some(n) = &self.cfg.name {
            caps.push(n.clone());
        }
        caps.extend(self.cfg.capabilities.iter().cloned());
        caps.push(KARS_CAPABILITY.to_string());
        caps.dedup();
        let mut meta = BTreeMap::new();
        meta.insert("agent".to_string(), "kars-mesh".to_string());
        if let Some(n) = &self.cfg.name {
            meta.insert("name".to_string(), n.clone());
        }
        (caps, meta)
    }

    /// This agent's registration as [`mark`] compares it.
    fn registration_mark(&self) -> String {
        let (caps, meta) = self.registration();
        mark(meta.get("name").map(String::as_str), &caps)
    }

    pub(super) fn register(&mut self, cx: &mut Cx<'_>) {
        if self
            .http
            .values()
            .any(|f| matches!(f.purpose, Purpose::Register))
        {
            return;
        }
        let ts = Self::timestamp(cx);
        let (caps, meta) = self.registration();
        let body = registry::registration_body(&self.id, &ts, &caps, &meta);
        self.http(
            cx,
            Purpose::Register,
            "POST",
            "/v1/agents",
            false,
            Some(body.into_bytes()),
        );
    }

    /// The registry's answer to our registration.
    pub(super) fn on_registered(&mut self, cx: &mut Cx<'_>, status: Option<u16>, problem: &str) {
        match status {
            Some(201) => {
                // Registry did not know us: first run, or it restarted
                // and lost everything (or we deleted our record to change
                // it). Publish a fresh bundle.
                self.registered = true;
                self.remember_registration(cx);
                self.prekeys.registry_lost();
                self.upload_prekeys(cx);
            }
            Some(409) => {
                self.registered = true;
                let remembered = self
                    .vault
                    .get::<String>(cx.host, keys::REGISTERED)
                    .ok()
                    .flatten();
                if remembered.as_deref() == Some(self.registration_mark().as_str())
                    || self.registration_renewed
                {
                    self.registered_as_before(cx);
                } else {
                    let path = format!("/v1/agents/{}", self.id.did());
                    self.http(cx, Purpose::OwnRecord, "GET", &path, false, None);
                }
            }
            _ => {
                cx.log(
                    LogLevel::Warn,
                    &format!("registration failed: {problem}; retrying in 30 s"),
                );
                self.finish_register_calls(cx, Some(problem));
                self.arm(cx, T_REREGISTER, 30_000);
            }
        }
    }

    /// Registered already, with these settings (or keeping the record's).
    fn registered_as_before(&mut self, cx: &mut Cx<'_>) {
        if !self.prekeys.uploaded() || self.prekeys.needs_replenish() {
            self.upload_prekeys(cx);
        } else {
            self.finish_register_calls(cx, None);
        }
    }

    fn remember_registration(&self, cx: &mut Cx<'_>) {
        let mark = self.registration_mark();
        if let Err(e) = self
            .vault
            .put(cx.host, &mut cx.out, keys::REGISTERED, &mark)
        {
            cx.log(LogLevel::Error, &e.to_string());
        }
    }

    /// Our own record, read after a 409 with settings the registry may not
    /// have: kept when it matches them, else deleted and registered anew.
    pub(super) fn on_own_record(
        &mut self,
        cx: &mut Cx<'_>,
        status: Option<u16>,
        body: &[u8],
        problem: &str,
    ) {
        let record = status
            .filter(|s| (200..300).contains(s))
            .and_then(|_| reg::parse_agent(body));
        match (status, record) {
            (_, Some(r)) => {
                if !self.adopt_registered_name(cx, &r) {
                    self.registered_as_before(cx);
                    return;
                }
                let old_name = r.metadata.get("name").and_then(|v| v.as_str());
                if mark(old_name, &r.capabilities) == self.registration_mark() {
                    self.remember_registration(cx);
                    self.registered_as_before(cx);
                    return;
                }
                let what = match (old_name, self.cfg.name.as_deref()) {
                    (Some(o), Some(n)) if o != n => format!("the name {o:?} to {n:?}"),
                    (None, Some(n)) => format!("no name to {n:?}"),
                    _ => "its capabilities".to_string(),
                };
                cx.log(
                    LogLevel::Info,
                    &format!("the registry holds this agent with older settings; changing {what} (its record is deleted and registered again)"),
                );
                self.registration_renewed = true;
                let path = format!("/v1/agents/{}", self.id.did());
                self.http(cx, Purpose::Unregister, "DELETE", &path, true, None);
            }
            (Some(404), None) => {
                // Forgotten in between (a registry restart): register anew.
                self.registered = false;
                self.register(cx);
            }
            _ => {
                cx.log(
                    LogLevel::Warn,
                    &format!("could not read this agent's registry record ({problem}); the registry may still hold an older name or capabilities"),
                );
                self.registered_as_before(cx);
            }
        }
    }

    /// A node that was never given a name (an identity the original
    /// plugin registered, imported with its record) keeps the record's:
    /// registering again without it would take the agent's name away.
    /// False: the record holds a name this node cannot register under
    /// (one with a space), so the record stays as it is.
    fn adopt_registered_name(&mut self, cx: &mut Cx<'_>, r: &reg::AgentRecord) -> bool {
        if self.cfg.name.is_some() {
            return true;
        }
        let Some(name) = r.metadata.get("name").and_then(|v| v.as_str()) else {
            return true;
        };
        if !matches!(address::classify(name), address::Address::Name(_)) {
            return false;
        }
        self.cfg.name = Some(name.to_string());
        if let Err(e) = self
            .vault
            .put(cx.host, &mut cx.out, keys::NAME, &name.to_string())
        {
            cx.log(LogLevel::Error, &e.to_string());
        }
        true
    }

    /// Our record deleted (to register it with new settings).
    pub(super) fn on_unregistered(&mut self, cx: &mut Cx<'_>, status: Option<u16>, problem: &str) {
        if matches!(status, Some(200..=299) | Some(404)) {
            self.registered = false;
            self.register(cx);
        } else {
            cx.log(
                LogLevel::Warn,
                &format!("could not change this agent's registry record ({problem}); the registry keeps its older name or capabilities until it forgets the agent"),
            );
            self.registered_as_before(cx);
        }
    }
}

/// What a registration is compared by: its name and its capabilities as a
/// set (the registry may keep them in another order). What is remembered
/// and what a record read back holds are compared the same way.
fn mark(name: Option<&str>, caps: &[String]) -> String {
    let mut caps = caps.to_vec();
    caps.sort();
    caps.dedup();
    json!({"name": name, "capabilities": caps}).to_string()
}
