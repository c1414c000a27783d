//! What an agent reads back when it starts: its prekeys (made on first
//! start), its peers with their outboxes, and its inbox (records written
//! before payloads had their own are moved over once).

use super::inbox::{Entry, Inbox};
use super::{store_entry_records, AgentError, Config, Cx};
use crate::crypto::identity::Identity;
use crate::io::LogLevel;
use crate::mesh::prekeys::Prekeys;
use crate::mesh::session::{OutEntry, Peer};
use crate::store::{keys, Vault};
use crate::wire::frames;
use std::collections::{BTreeMap, HashSet};

/// The stored prekeys, or new ones (stored) on a first start.
pub(super) fn prekeys(
    vault: &Vault,
    id: &Identity,
    cx: &mut Cx<'_>,
    now: u64,
) -> Result<Prekeys, AgentError> {
    if let Some(p) = vault.get::<Prekeys>(cx.host, keys::PREKEYS)? {
        return Ok(p);
    }
    let p = Prekeys::generate(id, now, cx.host);
    vault.put(cx.host, &mut cx.out, keys::PREKEYS, &p)?;
    Ok(p)
}

/// The configuration with the name this agent registers under: the
/// host's, remembered for later starts, or else the one remembered. A
/// registry that restarted has forgotten the name; an agent that then
/// registers again must not come back without it because this start was
/// not told it again (`kars-mesh register` without `--name`).
pub(super) fn registered_name(mut cfg: Config, vault: &Vault, cx: &mut Cx<'_>) -> Config {
    cfg.name = cfg.name.take().filter(|n| !n.trim().is_empty());
    let stored = match vault.get::<String>(cx.host, keys::NAME) {
        Ok(n) => n,
        Err(e) => {
            cx.log(LogLevel::Warn, &e.to_string());
            None
        }
    };
    match (&cfg.name, stored) {
        (Some(given), stored) if stored.as_deref() != Some(given.as_str()) => {
            if let Err(e) = vault.put(cx.host, &mut cx.out, keys::NAME, given) {
                cx.log(LogLevel::Error, &e.to_string());
            }
        }
        (None, Some(stored)) => cfg.name = Some(stored),
        _ => {}
    }
    cfg
}

/// What `peers` found besides the peers: the DIDs whose sending chain had
/// to be stepped past an entry written before a lost session record, and
/// those whose first session record was lost after their entries were
/// written (their messages wait for a new session).
#[derive(Default)]
pub(super) struct Repairs {
    pub fast_forwarded: Vec<String>,
    pub without_session: Vec<String>,
}

/// Every stored peer with its outbox entries, and what an interrupted
/// write left to repair.
pub(super) fn peers(vault: &Vault, cx: &mut Cx<'_>) -> (BTreeMap<String, Peer>, Repairs) {
    let mut peers = BTreeMap::new();
    // Every DID with a session record, readable or not: an unreadable one
    // (a newer kars-mesh's, a damaged one) is left alone, with its outbox.
    let mut recorded: HashSet<String> = HashSet::new();
    for key in cx.host.storage_list(keys::SESSION) {
        if let Some(did) = key.strip_prefix(keys::SESSION) {
            recorded.insert(did.to_string());
        }
        match vault.get_bytes(cx.host, &key) {
            Ok(Some(bytes)) => match Peer::from_bytes(&bytes) {
                Ok(p) => {
                    peers.insert(p.did.clone(), p);
                }
                Err(e) => cx.log(
                    LogLevel::Error,
                    &format!("session record {key} unreadable: {e}; skipped"),
                ),
            },
            Ok(None) => {}
            Err(e) => cx.log(LogLevel::Error, &format!("{e}; skipped")),
        }
    }
    // Every outbox entry's key, by peer (one listing; keys are
    // `outbox/<did>/<frame id>`).
    let mut outbox_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in cx.host.storage_list(keys::OUTBOX) {
        if let Some((did, _)) = key
            .strip_prefix(keys::OUTBOX)
            .and_then(|rest| rest.split_once('/'))
        {
            outbox_keys.entry(did.to_string()).or_default().push(key);
        }
    }
    // Entries to a peer with no session record: the first session's record
    // was lost after they were written (a host without one transaction per
    // batch; no session record is ever erased). Their frames never left
    // (frames leave after both records) and no session can open them: they
    // are sealed again under a new session, with their numbers. A peer
    // saved since with no session yet (its new session did not open before
    // another restart) is repaired the same way: a session, once made, is
    // never dropped, so entries under a record without one are these.
    let mut repairs = Repairs::default();
    for did in outbox_keys.keys() {
        if !recorded.contains(did) {
            peers.insert(did.clone(), Peer::new(did));
        }
    }
    for p in peers.values() {
        if p.active.is_none() && outbox_keys.contains_key(&p.did) {
            cx.log(
                LogLevel::Warn,
                &format!("messages to {} have no session to go under (its record was lost after they were written); they go under a new session", p.did),
            );
            repairs.without_session.push(p.did.clone());
        }
    }
    for p in peers.values_mut() {
        let orphaned = repairs.without_session.contains(&p.did);
        let mut loaded: Vec<OutEntry> = Vec::new();
        for key in outbox_keys.remove(&p.did).unwrap_or_default() {
            match vault.get_with_trailer(cx.host, &key) {
                Ok(Some((head, frame))) => match OutEntry::from_record(&head, &frame, &p.did) {
                    Ok(o) => loaded.push(o),
                    Err(e) => cx.log(
                        LogLevel::Error,
                        &format!("outbox record {key} unreadable ({e}); skipped"),
                    ),
                },
                Ok(None) => {}
                Err(e) => cx.log(LogLevel::Error, &format!("{e}; skipped")),
            }
        }
        loaded.sort_by_key(|o| (o.created_ms, o.seq));
        // Entries a record of the 0.1.0 shape held itself, then each id
        // once (a set: an outbox to a peer away for long holds thousands).
        let mut held: HashSet<String> = p.outbox.iter().map(|x| x.frame_id.clone()).collect();
        let record_out_seq = p.out_seq;
        for mut o in loaded {
            // Sealed under a ratchet step the session record does not know:
            // the step was taken for this send (in memory, `State::send_step`)
            // and the record that held it was lost after the entry was
            // written (a host without one transaction per batch). Its frame
            // never left (frames leave after both records), and no chain the
            // record can reach makes its key: sealed again from its
            // plaintext under the session, with its number, as after a
            // session change. An older entry under an earlier key that did
            // leave keeps its frame (its number is below the record's).
            // The frame's place in our sending chain, read once.
            if orphaned {
                o.frame.clear();
                o.sent_under = None;
            }
            let mut framed = frames::parse_message_frame(&o.frame)
                .ok()
                .map(|m| (m.header.dh, m.header.n));
            if let (Some(r), Some((dh, _))) = (p.active.as_ref(), framed) {
                let lost_step = r.send_step_pending()
                    && dh != *r.sending_key()
                    && (!o.needs_receipt || o.seq >= record_out_seq);
                if lost_step {
                    cx.log(
                        LogLevel::Info,
                        &format!("a message to {} was written before a session record that was lost; it is sealed again", p.did),
                    );
                    o.frame.clear();
                    o.sent_under = None;
                    framed = None;
                }
            }
            // The entry was written before the session record: if that
            // write was lost, never reuse the message number it used.
            // A large entry's frame is not stored: its place is.
            let sent_under = framed.or_else(|| {
                o.sent_under
                    .as_ref()
                    .and_then(|s| Some((<[u8; 32]>::try_from(s.dh.as_slice()).ok()?, s.n)))
            });
            if let (Some((dh, n)), Some(r)) = (sent_under, p.active.as_mut()) {
                if r.fast_forward_send(&dh, n) {
                    repairs.fast_forwarded.push(p.did.clone());
                }
            }
            if o.needs_receipt && o.seq >= p.out_seq {
                p.out_seq = o.seq.saturating_add(1);
            }
            p.persisted_out.insert(o.frame_id.clone());
            if let Some(k) = &o.key {
                p.remember_key(k, &o.frame_id);
            }
            if held.insert(o.frame_id.clone()) {
                let mut o = o;
                o.stored = true;
                p.outbox.push(o);
            }
        }
    }
    (peers, repairs)
}

/// The inbox entries (their payloads stay in storage).
pub(super) fn inbox(vault: &Vault, cx: &mut Cx<'_>) -> Inbox {
    let mut entries = Vec::new();
    for key in cx.host.storage_list(keys::INBOX) {
        match vault.get::<Entry>(cx.host, &key) {
            Ok(Some(mut e)) => {
                if !e.split {
                    // Written before payloads had their own record:
                    // move the payload out, so it leaves memory.
                    e.measure();
                    store_entry_records(vault, cx, &mut e);
                }
                entries.push(e)
            }
            Ok(None) => {}
            Err(e) => cx.log(LogLevel::Error, &format!("{e}; skipped")),
        }
    }
    Inbox::load(entries)
}
