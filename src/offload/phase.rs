//! Where a client's offload stands. Phases move only forward (`advances`);
//! `done` and `error` end it. Stored and shown as the lower-case names the
//! original plugin used, so records and texts are unchanged.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Submitted,
    Validating,
    Spawning,
    Scheduled,
    Ready,
    Connecting,
    Acknowledged,
    /// The kars in-cluster sandbox's legacy path (ping, upload, task).
    Verifying,
    Uploading,
    Dispatching,
    Running,
    Returning,
    Done,
    Error,
}

impl Phase {
    /// A phase named on the wire (a controller's `offload_status`).
    pub fn parse(s: &str) -> Option<Phase> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Submitted => "submitted",
            Phase::Validating => "validating",
            Phase::Spawning => "spawning",
            Phase::Scheduled => "scheduled",
            Phase::Ready => "ready",
            Phase::Connecting => "connecting",
            Phase::Acknowledged => "acknowledged",
            Phase::Verifying => "verifying",
            Phase::Uploading => "uploading",
            Phase::Dispatching => "dispatching",
            Phase::Running => "running",
            Phase::Returning => "returning",
            Phase::Done => "done",
            Phase::Error => "error",
        }
    }

    pub fn icon(self) -> &'static str {
        match self {
            Phase::Submitted => "📤",
            Phase::Validating => "🔎",
            Phase::Spawning => "🚀",
            Phase::Scheduled => "📅",
            Phase::Ready => "🟢",
            Phase::Connecting => "🔗",
            Phase::Acknowledged => "👋",
            Phase::Verifying => "🏓",
            Phase::Uploading => "📦",
            Phase::Dispatching => "📬",
            Phase::Running => "⚙️",
            Phase::Returning => "📥",
            Phase::Done => "✅",
            Phase::Error => "❌",
        }
    }

    /// How far along the way to the end it is.
    fn rank(self) -> u8 {
        match self {
            Phase::Submitted => 0,
            Phase::Validating => 1,
            Phase::Spawning => 2,
            Phase::Scheduled => 3,
            Phase::Ready => 4,
            Phase::Connecting => 5,
            Phase::Acknowledged | Phase::Verifying | Phase::Uploading | Phase::Dispatching => 6,
            Phase::Running => 7,
            Phase::Returning => 8,
            Phase::Done | Phase::Error => 9,
        }
    }

    /// Would news of `self` move an offload that stands at `current`
    /// forward? A repeated or stale phase changes nothing.
    pub fn advances(self, current: Phase) -> bool {
        self.rank() > current.rank()
    }

    /// At `other` or past it.
    pub fn reached(self, other: Phase) -> bool {
        self.rank() >= other.rank()
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::Error)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Phase;

    #[test]
    fn names_round_trip_and_phases_only_move_forward() {
        for p in [
            Phase::Submitted,
            Phase::Ready,
            Phase::Verifying,
            Phase::Done,
        ] {
            assert_eq!(Phase::parse(p.name()), Some(p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
        }
        assert_eq!(Phase::parse("finished"), None);
        assert!(Phase::Ready.advances(Phase::Spawning));
        assert!(!Phase::Validating.advances(Phase::Ready));
        assert!(!Phase::Ready.advances(Phase::Ready));
        assert!(Phase::Running.reached(Phase::Acknowledged));
        assert!(Phase::Error.is_terminal() && !Phase::Returning.is_terminal());
    }
}
