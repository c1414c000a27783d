//! The one shape every tool result has: `{content:[{type:"text",text}],
//! details:{mesh:{...}}}`, the original plugin's text in `content[0].text`,
//! structured data under `details.mesh` (the host reserves `status`, `ok`,
//! `error`, … at the top of `details`). Errors are texts starting with ❌.

use crate::io::Command;
use crate::io::Cx;
use serde_json::{json, Value};

pub fn result(text: &str, details: Value) -> String {
    json!({"content": [{"type": "text", "text": text}], "details": {"mesh": details}}).to_string()
}

pub fn ok(cx: &mut Cx<'_>, call_id: &str, text: &str, details: Value) {
    cx.out.push(Command::ToolResult {
        call_id: call_id.to_string(),
        result_json: result(text, details),
    });
}

/// An error whose text is `❌ ` + `msg`.
pub fn fail(cx: &mut Cx<'_>, call_id: &str, msg: &str) {
    fail_text(cx, call_id, &format!("❌ {msg}"));
}

/// An error with a complete text (it starts with ❌).
pub fn fail_text(cx: &mut Cx<'_>, call_id: &str, text: &str) {
    error(cx, call_id, text, false);
}

/// The call's arguments are refused before anything was asked of the
/// network (`msg` as for `fail`). `details.mesh.bad_input` says so, so that
/// a host does not blame a failure of the network it saw meanwhile (a
/// background registration retry) for it: the CLI's exit code tells "you
/// called it wrong" from "unreachable".
pub fn refuse(cx: &mut Cx<'_>, call_id: &str, msg: &str) {
    refuse_text(cx, call_id, &format!("❌ {msg}"));
}

/// `refuse` with a complete text (it starts with ❌).
pub fn refuse_text(cx: &mut Cx<'_>, call_id: &str, text: &str) {
    error(cx, call_id, text, true);
}

/// The failure shape: `details.mesh` is `{error}` (the text without its
/// ❌), with `bad_input: true` for refused arguments; nothing else, which is
/// how a host tells a failed call from an answer (js-host/ENGINE.md).
fn error(cx: &mut Cx<'_>, call_id: &str, text: &str, bad_input: bool) {
    let msg = text.trim_start_matches("❌").trim_start();
    let details = if bad_input {
        json!({"error": msg, "bad_input": true})
    } else {
        json!({"error": msg})
    };
    cx.out.push(Command::ToolResult {
        call_id: call_id.to_string(),
        result_json: result(text, details),
    });
}
