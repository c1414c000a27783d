//! Plaintext to a kars controller, the one peer that runs no X3DH
//! (kars-mesh-plugin.md §6.5): it uploads no prekeys, so an end-to-end send
//! would wait for a bundle that never comes. Only the pairing and offload
//! clients send this way, and only to a controller a kars CLI token named.

use super::{Agent, Cx};
use crate::io::LogLevel;
use crate::wire::plaintext::PlainFrame;
use serde_json::Value;

/// Frames held while the relay link is down (a controller gets a handful
/// at most: a pair request, an offload request, a cleanup).
const PLAIN_OUT_MAX: usize = 16;

impl Agent {
    /// Send `payload` to `to` as a plaintext frame in both dialects; held
    /// until the link is up when it is down.
    pub(super) fn send_plaintext(&mut self, cx: &mut Cx<'_>, to: &str, payload: &Value) {
        let ts = Self::timestamp(cx);
        let id = crate::wire::frames::uuid_v4(cx.host);
        let text = PlainFrame::new(self.id.did(), to, &id, &ts, &payload.to_string()).to_text();
        self.stats.sent += 1;
        if self.send_frame(cx, text.clone()) {
            return;
        }
        if self.plain_out.len() >= PLAIN_OUT_MAX {
            cx.log(
                LogLevel::Warn,
                &format!("plaintext to {to} dropped: the relay link is down and {PLAIN_OUT_MAX} frames already wait"),
            );
            return;
        }
        self.plain_out.push(text);
    }

    /// The link is up: what waited goes now.
    pub(super) fn flush_plaintext(&mut self, cx: &mut Cx<'_>) {
        let held = std::mem::take(&mut self.plain_out);
        for (i, text) in held.iter().enumerate() {
            if !self.send_frame(cx, text.clone()) {
                self.plain_out.extend(held.into_iter().skip(i));
                return;
            }
        }
    }
}
