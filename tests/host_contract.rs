//! The core and the hosts must agree on which commands leave the process.
//!
//! The core holds a message's relay ack back until something of its own
//! leaves in the same engine call (`Command::waits_for_commit`), and a host
//! commits a batch before anything of it leaves (js-host/event-loop.js:
//! `STAYS_HERE` and the commands its loop carries out itself). If the two
//! disagree, an ack rides on a batch that commits lazily, or an arrival
//! commits for nothing. Both lists are read here from their sources, with
//! the WIT's `variant command` as the list of every command.

use kars_mesh::io::Command;
use std::collections::BTreeSet;
use std::path::Path;

fn source(rel: &str) -> Result<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {rel}: {e}"))
}

/// One command of each kind. `Command::wire_name` matches every variant,
/// so a new one gets a name there first; `every_wit_command_is_classified`
/// then fails until it is built here too.
fn one_of_each() -> Vec<Command> {
    vec![
        Command::Store("k".into(), vec![1]),
        Command::Erase("k".into()),
        Command::SocketOpen {
            socket: 1,
            url: "ws://127.0.0.1/".into(),
        },
        Command::SocketSend {
            socket: 1,
            text: "{}".into(),
        },
        Command::SocketClose {
            socket: 1,
            code: 1000,
            reason: String::new(),
        },
        Command::HttpRequest {
            id: 1,
            method: "GET".into(),
            url: "http://127.0.0.1/".into(),
            headers: vec![],
            body: None,
            timeout_ms: 1,
        },
        Command::TimerSet { id: 1, at_ms: 1 },
        Command::TimerCancel(1),
        Command::ToolResult {
            call_id: "c".into(),
            result_json: "{}".into(),
        },
        Command::FileRead {
            id: 1,
            path: "/x".into(),
            max_bytes: 1,
        },
        Command::FileWrite("f".into(), vec![1]),
        Command::FileErase("f".into()),
        Command::JobStart {
            id: 1,
            kind: "k".into(),
            spec_json: "{}".into(),
        },
        Command::JobKill(1),
        Command::IdleWanted,
    ]
}

/// The text between `open` and the first `close` after it.
fn between<'a>(text: &'a str, open: &str, close: &str, what: &str) -> Result<&'a str, String> {
    let start = text
        .find(open)
        .ok_or_else(|| format!("{what}: `{open}` not found"))?
        + open.len();
    let len = text[start..]
        .find(close)
        .ok_or_else(|| format!("{what}: no `{close}` after `{open}`"))?;
    Ok(&text[start..start + len])
}

/// Every 'quoted' string in `text`.
fn quoted(text: &str) -> BTreeSet<String> {
    text.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The case names of the WIT's `variant command`.
fn wit_commands() -> Result<BTreeSet<String>, String> {
    let wit = source("wit/world.wit")?;
    let body = between(&wit, "variant command {", "}", "wit/world.wit")?;
    Ok(body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .map(|l| {
            l.split(['(', ','])
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect())
}

/// What the Node and browser event loop lets stay in the process: its
/// `STAYS_HERE`, and the commands its loop handles itself (`handleOne`'s
/// cases) except `file-write`, before which it commits (its header says so).
fn host_stays() -> Result<BTreeSet<String>, String> {
    let js = source("js-host/event-loop.js")?;
    let mut stays = quoted(between(
        &js,
        "const STAYS_HERE = new Set([",
        "]",
        "event-loop.js STAYS_HERE",
    )?);
    let switch = between(
        &js,
        "switch (cmd?.tag) {",
        "default:",
        "event-loop.js handleOne",
    )?;
    let own: BTreeSet<String> = switch
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("case "))
        .flat_map(quoted)
        .collect();
    assert!(
        own.contains("store") && own.contains("file-write"),
        "event-loop.js handleOne's cases were not found where expected: {own:?}"
    );
    stays.extend(own.into_iter().filter(|t| t != "file-write"));
    Ok(stays)
}

#[test]
fn every_wit_command_is_classified() -> Result<(), String> {
    let built: BTreeSet<String> = one_of_each()
        .iter()
        .map(|c| c.wire_name().to_string())
        .collect();
    assert_eq!(
        built,
        wit_commands()?,
        "one_of_each() must build every command of wit/world.wit"
    );
    Ok(())
}

#[test]
fn core_and_host_agree_on_what_leaves_the_process() -> Result<(), String> {
    let stays = host_stays()?;
    let wit = wit_commands()?;
    for t in &stays {
        assert!(
            wit.contains(t),
            "the host lists {t:?}, which is no WIT command"
        );
    }
    let disagree: Vec<String> = one_of_each()
        .iter()
        .filter(|c| c.waits_for_commit() == stays.contains(c.wire_name()))
        .map(|c| {
            let t = c.wire_name();
            if c.waits_for_commit() {
                format!("{t}: the core says it leaves, the host lets it stay (STAYS_HERE, or a command its loop carries out itself)")
            } else {
                format!("{t}: the core says it stays, the host commits before it")
            }
        })
        .collect();
    assert!(
        disagree.is_empty(),
        "Command::waits_for_commit (src/io.rs) and js-host/event-loop.js disagree:\n{}",
        disagree.join("\n")
    );
    Ok(())
}
