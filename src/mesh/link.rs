//! Relay link policy: one socket at a time, capped exponential backoff with
//! jitter, and what each close code means (agentmesh-wire.md §4.3, §4.6).

use crate::entropy::Entropy;

pub const BACKOFF_BASE_MS: u64 = 1000;
pub const BACKOFF_CAP_MS: u64 = 60_000;
/// A socket that stayed open this long resets the backoff.
pub const STABLE_MS: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Down,
    Connecting(u32),
    Open {
        socket: u32,
        since_ms: u64,
    },
    /// Another connection took over this identity; we do not fight it.
    Replaced,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseAction {
    /// Not our current socket: nothing to do.
    Ignore,
    Reconnect {
        delay_ms: u64,
        problem: Option<String>,
    },
    GiveUp(String),
}

#[derive(Debug)]
pub struct Link {
    pub url: String,
    pub state: LinkState,
    next_socket: u32,
    attempt: u32,
    pub last_problem: Option<String>,
}

/// `http(s)://host[:port][/base]` → `ws(s)://host[:port][/base]/ws`; a `ws(s)://`
/// URL is taken as the base too, and a trailing `/ws` is not doubled.
pub fn ws_url(relay_url: &str) -> Result<String, String> {
    let u = relay_url.trim().trim_end_matches('/');
    let rest = if let Some(r) = u.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = u.strip_prefix("http://") {
        format!("ws://{r}")
    } else if u.starts_with("ws://") || u.starts_with("wss://") {
        u.to_string()
    } else {
        return Err(format!(
            "relay URL {u:?} must start with http://, https://, ws:// or wss:// (for example http://127.0.0.1:8083)"
        ));
    };
    Ok(if rest.ends_with("/ws") {
        rest
    } else {
        format!("{rest}/ws")
    })
}

impl Link {
    pub fn new(url: String) -> Self {
        Link {
            url,
            state: LinkState::Down,
            next_socket: 0,
            attempt: 0,
            last_problem: None,
        }
    }

    /// Start a connection if none is open or opening.
    pub fn open(&mut self) -> Option<(u32, String)> {
        if self.state != LinkState::Down {
            return None;
        }
        self.next_socket = self.next_socket.wrapping_add(1);
        self.state = LinkState::Connecting(self.next_socket);
        Some((self.next_socket, self.url.clone()))
    }

    pub fn opened(&mut self, socket: u32, now_ms: u64) -> bool {
        if self.state == LinkState::Connecting(socket) {
            self.state = LinkState::Open {
                socket,
                since_ms: now_ms,
            };
            true
        } else {
            false
        }
    }

    pub fn open_socket(&self) -> Option<u32> {
        match self.state {
            LinkState::Open { socket, .. } => Some(socket),
            _ => None,
        }
    }

    pub fn current_socket(&self) -> Option<u32> {
        match self.state {
            LinkState::Open { socket, .. } | LinkState::Connecting(socket) => Some(socket),
            _ => None,
        }
    }

    /// Called periodically while open: a link that has been stable resets
    /// the backoff so the next outage starts again from one second.
    pub fn tick(&mut self, now_ms: u64) {
        if let LinkState::Open { since_ms, .. } = self.state {
            if now_ms.saturating_sub(since_ms) >= STABLE_MS {
                self.attempt = 0;
                self.last_problem = None;
            }
        }
    }

    pub fn closed(
        &mut self,
        socket: u32,
        code: u16,
        reason: &str,
        rng: &mut dyn Entropy,
    ) -> CloseAction {
        if self.current_socket() != Some(socket) {
            return CloseAction::Ignore;
        }
        let replaced = code == 4006 || (code == 1000 && reason.contains("session_replaced"));
        if replaced {
            self.state = LinkState::Replaced;
            let msg = "another process connected to the relay with this identity and replaced this connection; \
                       stop the other instance (one process per identity), then restart"
                .to_string();
            self.last_problem = Some(msg.clone());
            return CloseAction::GiveUp(msg);
        }
        let was_connecting = matches!(self.state, LinkState::Connecting(_));
        self.state = LinkState::Down;
        let problem = match code {
            // A connect through a forward proxy that never opened: the host's
            // reason names the proxy and what it said (refused the
            // destination, unreachable); the user must see it where the
            // relay's state is shown (js-host/ENGINE.md, `socket-closed`).
            1006 if was_connecting && reason.starts_with("proxy ") => Some(reason.to_string()),
            4001 | 4002 => Some(format!("relay refused the connect frame (close {code}: {reason}); this is a kars-mesh bug, please report it")),
            4003 => Some(format!("relay refused our token (close 4003: {reason}); set relay_token to the relay's AGENTMESH_RELAY_TOKEN")),
            4005 => Some(format!(
                "relay rejected the identity proof (close 4005: {reason}); check that this machine's clock is correct"
            )),
            4004 => Some("relay closed an idle connection (4004)".to_string()),
            _ => None,
        };
        if problem.is_some() {
            self.last_problem.clone_from(&problem);
        }
        let delay_ms = self.backoff(rng);
        CloseAction::Reconnect { delay_ms, problem }
    }

    fn backoff(&mut self, rng: &mut dyn Entropy) -> u64 {
        let exp = BACKOFF_BASE_MS
            .saturating_mul(1u64 << self.attempt.min(16))
            .min(BACKOFF_CAP_MS);
        self.attempt = self.attempt.saturating_add(1);
        let mut b = [0u8; 2];
        rng.fill(&mut b);
        // Jitter factor uniform in [0.8, 1.2).
        let j = u16::from_le_bytes(b) as u64; // 0..65535
        exp * (52_429 + j * 26_214 / 65_535) / 65_536
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SeededEntropy;

    #[test]
    fn urls() {
        assert_eq!(
            ws_url("http://127.0.0.1:8083").unwrap(),
            "ws://127.0.0.1:8083/ws"
        );
        assert_eq!(
            ws_url("https://relay.example/").unwrap(),
            "wss://relay.example/ws"
        );
        assert_eq!(
            ws_url("wss://relay.example/ws").unwrap(),
            "wss://relay.example/ws"
        );
        assert!(ws_url("relay.example").unwrap_err().contains("http://"));
    }

    #[test]
    fn backoff_caps_and_replacement_stops() {
        let mut rng = SeededEntropy::new(1);
        let mut l = Link::new("ws://x/ws".into());
        let mut last = 0;
        for _ in 0..12 {
            let (s, _) = l.open().unwrap();
            assert!(l.open().is_none(), "never two sockets");
            match l.closed(s, 1006, "", &mut rng) {
                CloseAction::Reconnect { delay_ms, .. } => {
                    assert!((800..=72_000).contains(&delay_ms), "{delay_ms}");
                    last = delay_ms;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!((48_000..72_000).contains(&last));
        let (s, _) = l.open().unwrap();
        assert!(l.opened(s, 0));
        l.tick(STABLE_MS);
        assert_eq!(l.attempt(), 0);
        assert!(matches!(
            l.closed(s, 1000, "session_replaced", &mut rng),
            CloseAction::GiveUp(_)
        ));
        assert!(l.open().is_none());
        assert_eq!(l.closed(99, 1006, "", &mut rng), CloseAction::Ignore);
    }

    #[test]
    fn a_proxy_refusal_is_the_links_problem_other_connect_failures_are_not() {
        let mut rng = SeededEntropy::new(2);
        let mut l = Link::new("ws://x/ws".into());
        // Without a proxy, a failed connect says nothing more than before.
        let (s, _) = l.open().unwrap();
        assert!(matches!(
            l.closed(s, 1006, "connect ECONNREFUSED 127.0.0.1:8083", &mut rng),
            CloseAction::Reconnect { problem: None, .. }
        ));
        assert_eq!(l.last_problem, None);
        // Through a proxy that refuses, the host's reason is shown.
        let why = "proxy http://127.0.0.1:3128 (HTTPS_PROXY) refused the destination relay.example:443 (CONNECT answered 403 Filtered)";
        let (s, _) = l.open().unwrap();
        match l.closed(s, 1006, why, &mut rng) {
            CloseAction::Reconnect { problem, .. } => assert_eq!(problem.as_deref(), Some(why)),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.last_problem.as_deref(), Some(why));
        // Only for a connect that never opened: an open link's close reason is the relay's.
        let (s, _) = l.open().unwrap();
        assert!(l.opened(s, 0));
        l.tick(STABLE_MS);
        assert_eq!(l.last_problem, None);
        assert!(matches!(
            l.closed(s, 1006, "proxy says hello", &mut rng),
            CloseAction::Reconnect { problem: None, .. }
        ));
        assert_eq!(l.last_problem, None);
    }
}
