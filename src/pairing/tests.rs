//! The pairing client and the operator, each driven alone through a fake
//! port: the messages one sends are handed to the other by the test, as the
//! mesh would after decrypting them.

use super::client::{Endpoints, PairingClient, PAIR_TIMEOUT_MS};
use super::ledger::{ControllerAddress, Phase};
use super::operator::Operator;
use crate::io::{Command, Cx};
use crate::port::testing::{result_text as text, tool_results as results, FakeHost, FakePort};
use crate::port::TimerOwner;
use crate::store::keys;
use crate::wire::pairing_msg::PairingMsg;
use crate::wire::payload::Family;
use serde_json::{json, Value};

const RELAY: &str = "http://127.0.0.1:1";
const REGISTRY: &str = "http://127.0.0.1:2";

/// A sent message as the mesh would hand it to its consumer: parsed.
fn pairing_msg(v: &Value) -> PairingMsg {
    PairingMsg::parse(v).expect("a pairing message")
}

fn operator(port: &FakePort, host: &mut FakeHost) -> Operator {
    let address = ControllerAddress {
        did: port.id.did().to_string(),
        amid: port.id.amid(),
        relay_url: RELAY.into(),
        registry_url: REGISTRY.into(),
        cluster: "lab".into(),
    };
    let mut cx = Cx {
        host,
        out: Vec::new(),
    };
    Operator::load(&port.vault, &mut cx, address).expect("an empty ledger loads")
}

fn client(port: &FakePort, host: &mut FakeHost) -> PairingClient {
    let mut cx = Cx {
        host,
        out: Vec::new(),
    };
    let endpoints = Endpoints {
        relay_url: RELAY.into(),
        registry_url: REGISTRY.into(),
        name: Some("laptop".into()),
    };
    PairingClient::load(&port.vault, &mut cx, endpoints)
}

/// The operator makes a token; returns it.
fn token(op: &mut Operator, port: &mut FakePort, host: &mut FakeHost) -> String {
    let mut cx = Cx {
        host,
        out: Vec::new(),
    };
    let args = json!({"name": "alice", "slots": 2, "capabilities": "offload"});
    op.tool(port, &mut cx, "gen", "pair_generate", &args);
    let r = results(&cx.out);
    assert_eq!(r.len(), 1);
    assert!(
        text(&r[0].1).starts_with("✅ Pairing \"alice\" created (slots 2, capabilities offload")
    );
    r[0].1["details"]["mesh"]["token"]
        .as_str()
        .expect("the token is in details")
        .to_string()
}

#[test]
fn a_token_pairs_once_and_the_client_stores_the_pairing() {
    let (mut user_host, mut ctl_host) = (FakeHost::default(), FakeHost::default());
    let (mut user_port, mut ctl_port) = (FakePort::new(1), FakePort::new(2));
    let mut op = operator(&ctl_port, &mut ctl_host);
    let mut pc = client(&user_port, &mut user_host);
    let tok = token(&mut op, &mut ctl_port, &mut ctl_host);

    // The client sends its pair_request to the DID the token names.
    let mut cx = Cx {
        host: &mut user_host,
        out: Vec::new(),
    };
    pc.start(&mut user_port, &mut cx, "pair-1", &json!({"token": tok}));
    assert!(
        results(&cx.out).is_empty(),
        "no answer before the controller's"
    );
    let ctl_did = ctl_port.id.did().to_string();
    assert_eq!(user_port.types_to(&ctl_did), ["pair_request"]);
    assert!(pc.waits_for(&ctl_did));
    let request = user_port.sent[0].1.clone();
    assert_eq!(request["display_name"], "laptop");
    let PairingMsg::Request(request_msg) = pairing_msg(&request) else {
        panic!("not a pair_request");
    };
    assert!(user_port.timer_of(TimerOwner::PairWait).is_some());

    // The operator pairs it and answers.
    let user_did = user_port.id.did().to_string();
    let mut cx = Cx {
        host: &mut ctl_host,
        out: Vec::new(),
    };
    op.answer_pair_request(&mut ctl_port, &mut cx, &user_did, &request_msg);
    assert_eq!(ctl_port.types_to(&user_did), ["pair_response"]);
    let response = ctl_port.sent[0].1.clone();
    assert_eq!(response["success"], true);
    assert_eq!(response["cluster_name"], "lab");
    let p = &op.ledger.pairings[0];
    assert_eq!(p.phase, Phase::Active);
    assert_eq!(p.bound_did.as_deref(), Some(user_did.as_str()));
    assert!(
        cx.out
            .iter()
            .any(|c| matches!(c, Command::Store(k, _) if k == keys::LEDGER)),
        "the ledger is stored before the answer goes"
    );

    // The same secret again (a replay, or another DID) is refused.
    let mut cx = Cx {
        host: &mut ctl_host,
        out: Vec::new(),
    };
    op.answer_pair_request(&mut ctl_port, &mut cx, &user_did, &request_msg);
    assert_eq!(ctl_port.sent[1].1["success"], false);

    // The client takes the answer: stored, the call answered, timer cancelled.
    let mut cx = Cx {
        host: &mut user_host,
        out: Vec::new(),
    };
    let PairingMsg::Response(response_msg) = pairing_msg(&response) else {
        panic!("not a pair_response");
    };
    assert!(pc.take_response(&mut user_port, &mut cx, &ctl_did, &response_msg));
    let r = results(&cx.out);
    assert_eq!(r[0].0, "pair-1");
    assert!(text(&r[0].1).starts_with("✅ Paired successfully with kars cluster \"lab\""));
    assert!(cx
        .out
        .iter()
        .any(|c| matches!(c, Command::Store(k, _) if k == keys::PAIRINGS)));
    let rec = pc.record.as_ref().expect("the pairing is kept");
    assert_eq!(rec.controller_did, ctl_did);
    assert_eq!(rec.capabilities, ["offload"]);
    assert!(!pc.waits_for(&ctl_did));
    assert_eq!(user_port.cancelled.len(), 1);
}

#[test]
fn bad_tokens_are_refused_before_anything_is_sent() {
    let mut host = FakeHost::default();
    let mut port = FakePort::new(1);
    let mut pc = client(&port, &mut host);
    let mut cx = Cx {
        host: &mut host,
        out: Vec::new(),
    };
    pc.start(&mut port, &mut cx, "a", &json!({"token": 7}));
    pc.start(&mut port, &mut cx, "b", &json!({"other": "x"}));
    pc.start(&mut port, &mut cx, "c", &json!({"token": "azcp_1_!!!"}));
    let r = results(&cx.out);
    assert!(text(&r[0].1).starts_with("❌ `token` must be a string"));
    assert_eq!(
        text(&r[1].1),
        "❌ No token provided. Pass a pairing token starting with azcp_1_. (received argument keys: other)"
    );
    assert!(text(&r[2].1).starts_with("❌ Invalid pairing token."));
    for (_, answer) in &r {
        assert_eq!(answer["details"]["mesh"]["bad_input"], true, "{answer}");
    }
    assert!(port.sent.is_empty());
    assert!(port.timers.is_empty());
}

#[test]
fn a_token_for_another_relay_is_refused_and_no_answer_times_out() {
    let (mut user_host, mut ctl_host) = (FakeHost::default(), FakeHost::default());
    let (mut user_port, mut ctl_port) = (FakePort::new(1), FakePort::new(2));
    let mut op = operator(&ctl_port, &mut ctl_host);
    let tok = token(&mut op, &mut ctl_port, &mut ctl_host);
    let mut cx = Cx {
        host: &mut user_host,
        out: Vec::new(),
    };
    let mut elsewhere = PairingClient::load(
        &user_port.vault,
        &mut cx,
        Endpoints {
            relay_url: "http://127.0.0.1:9".into(),
            registry_url: REGISTRY.into(),
            name: None,
        },
    );
    elsewhere.start(&mut user_port, &mut cx, "x", &json!({"token": tok}));
    let r = results(&cx.out);
    assert!(text(&r[0].1).starts_with(&format!(
        "❌ The token's relay_url is {RELAY}, but this agent is connected to http://127.0.0.1:9."
    )));
    assert!(user_port.sent.is_empty());

    // Sent, never answered: the timer ends the call with the controller named.
    let mut pc = client(&user_port, &mut user_host);
    let mut cx = Cx {
        host: &mut user_host,
        out: Vec::new(),
    };
    pc.start(&mut user_port, &mut cx, "y", &json!({"token": tok}));
    let (timer, _, at) = user_port.timers[0];
    assert_eq!(at, PAIR_TIMEOUT_MS);
    pc.timed_out(&mut cx, timer);
    let r = results(&cx.out);
    assert!(text(&r[0].1).starts_with("❌ Pairing timed out after 30s: the controller did:mesh:"));
    assert!(!pc.waits_for(ctl_port.id.did()));
}

/// The original's `~/.kars/pairings.json` (§4.4): imported once, the AMID
/// turned into the routable DID, the `ctrl_…` placeholder left out, and
/// the newest pairing the default; a second import changes nothing.
#[test]
fn the_originals_pairings_file_is_imported_once_and_the_newest_is_the_default() {
    let port = FakePort::new(5);
    let mut host = FakeHost::default();
    let prod = crate::crypto::identity::Identity::from_seed(&[21; 32]);
    let lab = crate::crypto::identity::Identity::from_seed(&[22; 32]);
    let entry = |amid: &str, name: &str, at: &str| {
        json!({"controllerAmid": amid, "relayUrl": "ws://host.docker.internal:18765",
               "registryUrl": "http://host.docker.internal:18080", "clusterName": name,
               "capabilities": ["offload", "handoff"], "slots": 2, "tokenBudget": 500000,
               "expiresAt": "", "pairedAt": at})
    };
    let file = json!({
        "prod": entry(&prod.amid(), "prod", "2026-05-01T10:00:00.000Z"),
        "lab": entry(&lab.amid(), "lab", "2026-06-01T10:00:00.000Z"),
        "old": entry("ctrl_00112233445566778899", "old", "2026-07-01T10:00:00.000Z"),
    })
    .to_string();
    let mut pc = client(&port, &mut host);
    let mut cx = Cx {
        host: &mut host,
        out: Vec::new(),
    };
    pc.import_legacy(&port.vault, &mut cx, &file);
    let out = cx.out;
    host.apply(out);
    let names: Vec<&str> = pc
        .book
        .pairings
        .iter()
        .map(|p| p.cluster_name.as_str())
        .collect();
    assert_eq!(names, ["lab", "prod"]);
    let default = pc.record.clone().expect("a default pairing");
    assert_eq!(
        (
            default.cluster_name.as_str(),
            default.controller_did.as_str()
        ),
        ("lab", lab.did())
    );
    assert_eq!(default.dialect, crate::wire::token::Dialect::KarsPlaintext);
    assert!(host
        .logs
        .iter()
        .any(|(_, l)| l.contains("old") && l.contains("placeholder")));
    // Loaded again from storage: the same book; a second import is a no-op.
    let mut again = client(&port, &mut host);
    assert_eq!(again.book, pc.book);
    let mut cx = Cx {
        host: &mut host,
        out: Vec::new(),
    };
    again.import_legacy(
        &port.vault,
        &mut cx,
        &json!({"x": entry(&prod.amid(), "x", "2027-01-01T00:00:00Z")}).to_string(),
    );
    assert_eq!(again.book, pc.book);
}
