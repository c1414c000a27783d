//! Which consumer an inbound message belongs to. Every message goes to
//! exactly one consumer (spec §12, defect 9): the inbox gets what no other
//! consumer claims. Offload protocol messages (offload_status, offload_error,
//! offload_hello, offload_progress, offload_done, file_transfer,
//! mesh:transfer_manifest, mesh:transfer_chunk, file_transfer_ack, and the
//! pair_response of an offload) will be claimed here by the offload machinery.

use super::Agent;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Consumer {
    Inbox,
    /// Pairing, offload (client or controller side) or the sandbox role:
    /// handed to `Agent::intercept`.
    Pairing,
}

impl Agent {
    /// The predicate "is this message for the inbox", generalised: who takes it.
    pub(super) fn consumer_for(&self, from: &str, payload: &Value) -> Consumer {
        if self.for_a_role(from, payload) {
            Consumer::Pairing
        } else {
            Consumer::Inbox
        }
    }
}
