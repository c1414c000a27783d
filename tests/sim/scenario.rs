//! What the scenario tests share: one direction of traffic ([`Flow`]) and
//! its end-to-end check ([`check_flow`]: exactly once, in send order, and
//! nothing phantom, in both `mesh_inbox` answers and the persisted inbox),
//! the checks every run ends with, the failure report that carries the seed
//! and each agent's crashes and last warnings, and a started world.

use super::world::{Outcome, World, EPOCH_MS};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// One direction of traffic: the mesh_send calls made, in order.
pub struct Flow {
    pub from: usize,
    pub to: usize,
    /// Prefix of every message content in this flow; the suffix is the index.
    pub prefix: String,
    pub sent: Vec<(usize, String)>,
}

impl Flow {
    pub fn new(w: &World, from: usize, to: usize) -> Self {
        Flow {
            from,
            to,
            prefix: format!("{}->{} #", w.agents[from].name, w.agents[to].name),
            sent: Vec::new(),
        }
    }

    pub fn content(&self, idx: usize) -> String {
        format!("{}{idx:04}", self.prefix)
    }

    /// Issue the next mesh_send; `false` if the sender is down.
    pub fn send_next(&mut self, w: &mut World) -> bool {
        let idx = self.sent.len();
        match w.send(self.from, self.to, &self.content(idx)) {
            Some(call) => {
                self.sent.push((idx, call));
                true
            }
            None => false,
        }
    }

    pub fn idx(&self, content: &str) -> Option<usize> {
        content.strip_prefix(&self.prefix)?.parse().ok()
    }
}

#[derive(Default, Debug)]
pub struct FlowSummary {
    pub confirmed: usize,
    pub lost_committed: usize,
    pub lost_uncommitted: usize,
    pub failed: usize,
    pub read: usize,
}

/// Check one flow end to end; appends human-readable problems.
///
/// * must arrive: every call answered ✅, and every call lost in a crash
///   whose message was already durable in the sender's outbox;
/// * may arrive: calls lost in a crash before the message was committed;
/// * `mesh_inbox` results: each message at most once, in send order;
/// * the receiver's persisted inbox: each message exactly once, and exactly
///   the set `mesh_inbox` returned.
pub fn check_flow(w: &World, f: &Flow, problems: &mut Vec<String>) -> FlowSummary {
    let mut s = FlowSummary::default();
    let label = f.prefix.trim_end_matches(" #").to_string();
    let mut must = BTreeSet::new();
    let mut may = BTreeSet::new();
    for (idx, call) in &f.sent {
        let c = &w.agents[f.from].calls[call];
        match &c.outcome {
            Outcome::Done(_) if c.ok() => {
                s.confirmed += 1;
                must.insert(*idx);
            }
            Outcome::Done(_) => {
                s.failed += 1;
                problems.push(format!("{label}: mesh_send #{idx} failed: {}", c.text()));
            }
            Outcome::Lost { committed: true } => {
                s.lost_committed += 1;
                must.insert(*idx);
            }
            Outcome::Lost { committed: false } => {
                s.lost_uncommitted += 1;
                may.insert(*idx);
            }
            Outcome::Pending => problems.push(format!(
                "{label}: mesh_send #{idx} (issued at {} ms) never answered",
                c.issued_at - EPOCH_MS
            )),
        }
    }
    let from_did = w.did(f.from);
    let reads: Vec<(usize, &str)> = w.agents[f.to]
        .reads
        .iter()
        .filter(|r| r.from == from_did)
        .filter_map(|r| {
            let i = f.idx(&r.content());
            if i.is_none() {
                problems.push(format!("{label}: unexpected message {:?}", r.content()));
            }
            if r.evidence != "encrypted" {
                problems.push(format!(
                    "{label}: evidence {:?} for {:?}",
                    r.evidence,
                    r.content()
                ));
            }
            i.map(|i| (i, r.call_id.as_str()))
        })
        .collect();
    s.read = reads.len();
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, _) in &reads {
        *counts.entry(*i).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    if !dups.is_empty() {
        problems.push(format!(
            "{label}: mesh_inbox returned messages more than once (#idx: times): {dups:?}"
        ));
    }
    // An inversion inside one mesh_inbox answer means the inbox listed a
    // later message before an earlier one it already had; across answers,
    // that the later one was released before the earlier one arrived.
    let (mut within, mut across) = (Vec::new(), Vec::new());
    for pair in reads.windows(2) {
        if pair[1].0 <= pair[0].0 {
            if pair[0].1 == pair[1].1 {
                within.push((pair[0].0, pair[1].0));
            } else {
                across.push((pair[0].0, pair[1].0));
            }
        }
    }
    for (v, how) in [
        (&within, "within one mesh_inbox answer"),
        (&across, "across mesh_inbox answers"),
    ] {
        if !v.is_empty() {
            problems.push(format!(
                "{label}: {} message(s) returned out of send order {how} (previous #, next #): {:?}",
                v.len(),
                &v[..v.len().min(12)]
            ));
        }
    }
    let got: BTreeSet<usize> = counts.keys().copied().collect();
    let missing: Vec<_> = must.difference(&got).collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{label}: {} confirmed/committed message(s) never delivered: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        ));
    }
    let phantom: Vec<_> = got
        .iter()
        .filter(|i| !must.contains(i) && !may.contains(i))
        .collect();
    if !phantom.is_empty() {
        problems.push(format!(
            "{label}: delivered but never sent/committed: {phantom:?}"
        ));
    }
    // The durable inbox: one record per message.
    let mut stored: BTreeMap<usize, usize> = BTreeMap::new();
    for e in w.persisted_inbox(f.to) {
        if e["from"] == from_did.as_str() {
            if let Some(i) = e["payload"]["content"].as_str().and_then(|c| f.idx(c)) {
                *stored.entry(i).or_default() += 1;
            }
        }
    }
    let multi: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    if !multi.is_empty() {
        problems.push(format!(
            "{label}: persisted inbox holds messages more than once: {multi:?}"
        ));
    }
    let unreturned: Vec<_> = stored.keys().filter(|i| !got.contains(i)).collect();
    if !unreturned.is_empty() {
        problems.push(format!(
            "{label}: in the persisted inbox but never returned by mesh_inbox: {unreturned:?}"
        ));
    }
    s
}

pub fn common_checks(w: &World, problems: &mut Vec<String>) {
    problems.extend(w.violations.iter().cloned());
    for a in &w.agents {
        for (id, v) in &a.unexpected_results {
            problems.push(format!("{}: result for unknown call {id}: {v}", a.name));
        }
        if !a.up() {
            problems.push(format!("{} is down at the end", a.name));
        }
    }
}

pub fn fail_if(seed: u64, scenario: &str, problems: &[String], w: &World) {
    if problems.is_empty() {
        return;
    }
    let mut msg = format!(
        "{scenario} (seed {seed}): {} problem(s):\n  - {}\n",
        problems.len(),
        problems.join("\n  - ")
    );
    for a in &w.agents {
        msg.push_str(&format!("\n{} ({}) crashes:", a.name, a.did));
        for c in &a.crashes {
            msg.push_str(&format!(
                "\n    at {} ms on {} after {}/{} commands{}; lost: {:?}",
                c.at - EPOCH_MS,
                c.on,
                c.applied,
                c.total,
                if c.skipped { " (skipped)" } else { "" },
                c.lost
            ));
        }
        let warns = w.warnings(w.agents.iter().position(|x| x.did == a.did).unwrap_or(0));
        msg.push_str(&format!("\n  last warnings ({} total):", warns.len()));
        for l in warns.iter().rev().take(8).rev() {
            msg.push_str(&format!("\n    {l}"));
        }
    }
    panic!("{msg}");
}

/// Start `names` and let them register and connect.
pub fn world_with(seed: u64, names: &[&str]) -> (World, Vec<usize>) {
    let mut w = World::new(seed);
    if JOURNAL.with(|j| j.get()) {
        w.journal = Some(Vec::new());
    }
    let ids = names.iter().map(|n| w.add_agent(n, json!({}))).collect();
    w.run_for(3_000);
    (w, ids)
}

/// Drain an inbox after the network settled (the agent must be up).
pub fn drain(w: &mut World, i: usize) {
    for _ in 0..3 {
        if w.read_inbox(i).is_empty() {
            break;
        }
    }
}

thread_local! {
    /// Set by a diagnosis run: [`world_with`] then journals every handle()
    /// call.
    pub static JOURNAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
