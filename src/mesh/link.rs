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

/// What kind of problem the link has, for a host that phrases it in its own
/// terms or decides whether waiting can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A forward proxy refused or could not reach the relay.
    Proxy,
    /// The relay refused our connect frame (4001/4002): a bug of ours.
    ConnectFrame,
    /// The relay refused our token, or wants one and we have none (4003).
    Token,
    /// The relay refused our identity proof (4005).
    Identity,
    /// The relay closed an idle connection (4004).
    Idle,
    /// Another connection took over this identity.
    Replaced,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Proxy => "proxy",
            ProblemKind::ConnectFrame => "connect_frame",
            ProblemKind::Token => "token",
            ProblemKind::Identity => "identity",
            ProblemKind::Idle => "idle",
            ProblemKind::Replaced => "replaced",
        }
    }

    /// The relay refused us: trying again changes nothing until the
    /// configuration (token, clock, the other instance) does.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            ProblemKind::ConnectFrame
                | ProblemKind::Token
                | ProblemKind::Identity
                | ProblemKind::Replaced
        )
    }
}

/// What the engine says to do about a refused relay token when the host
/// gives no hint of its own (`relay_token_hint` in the start configuration).
pub const DEFAULT_TOKEN_HINT: &str =
    "give this agent the relay's AGENTMESH_RELAY_TOKEN as its relay token";

#[derive(Debug)]
pub struct Link {
    pub url: String,
    pub state: LinkState,
    next_socket: u32,
    attempt: u32,
    pub last_problem: Option<String>,
    /// The kind of `last_problem`.
    pub problem_kind: Option<ProblemKind>,
    /// Why the last connection failed or ended, when it did not end
    /// cleanly: `last_problem`, or the host's reason for a connect that
    /// never opened (`connect ECONNREFUSED …`), or the close code. Cleared
    /// once the relay has accepted a connection.
    pub last_error: Option<String>,
    /// The relay accepted the open connection: our own marker came back
    /// through it, or it stayed open for the grace period. A socket that
    /// opened is only provisional until then: the relay refuses a token or
    /// an identity proof by closing it (agentmesh-wire.md §4.2).
    confirmed: bool,
    /// Whether this agent sends a relay token, and what the host says to
    /// do about a refused one (the 4003 text).
    has_token: bool,
    token_hint: String,
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
            problem_kind: None,
            last_error: None,
            confirmed: false,
            has_token: false,
            token_hint: DEFAULT_TOKEN_HINT.to_string(),
        }
    }

    /// Whether a token is sent with the connect frame, and the host's words
    /// for what to do when the relay refuses it (`None`: the engine's own).
    pub fn with_token(mut self, has_token: bool, hint: Option<&str>) -> Self {
        self.has_token = has_token;
        if let Some(h) = hint.map(str::trim).filter(|h| !h.is_empty()) {
            self.token_hint = h.chars().take(300).collect();
        }
        self
    }

    /// The relay accepted the open connection (see `confirmed`).
    pub fn confirm(&mut self) {
        if self.open_socket().is_some() {
            self.confirmed = true;
            self.last_error = None;
        }
    }

    /// Open, and accepted by the relay.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed && self.open_socket().is_some()
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
            self.confirmed = false;
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
                self.problem_kind = None;
            }
        }
    }

    /// The 4003 text: the relay refused the token we sent, or wants one and
    /// we sent none; then what to do, in the host's words.
    fn token_problem(&self, reason: &str) -> String {
        let close = close_text(4003, reason);
        if self.has_token {
            format!(
                "the relay refused this agent's relay token ({close}); {}",
                self.token_hint
            )
        } else {
            format!(
                "the relay requires a token and this agent has none ({close}); {}",
                self.token_hint
            )
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
        self.confirmed = false;
        if replaced {
            self.state = LinkState::Replaced;
            let msg = "another process connected to the relay with this identity and replaced this connection; \
                       stop the other instance (one process per identity), then restart"
                .to_string();
            self.last_problem = Some(msg.clone());
            self.problem_kind = Some(ProblemKind::Replaced);
            self.last_error = Some(msg.clone());
            return CloseAction::GiveUp(msg);
        }
        let was_connecting = matches!(self.state, LinkState::Connecting(_));
        self.state = LinkState::Down;
        let problem = match code {
            // A connect through a forward proxy that never opened: the host's
            // reason names the proxy and what it said (refused the
            // destination, unreachable); the user must see it where the
            // relay's state is shown (js-host/ENGINE.md, `socket-closed`).
            1006 if was_connecting && reason.starts_with("proxy ") => {
                Some((ProblemKind::Proxy, reason.to_string()))
            }
            4001 | 4002 => Some((
                ProblemKind::ConnectFrame,
                format!("the relay refused the connect frame ({}); this is a kars-mesh bug, please report it", close_text(code, reason)),
            )),
            4003 => Some((ProblemKind::Token, self.token_problem(reason))),
            4005 => Some((
                ProblemKind::Identity,
                format!(
                    "the relay rejected the identity proof ({}); check that this machine's clock is correct",
                    close_text(code, reason)
                ),
            )),
            4004 => Some((
                ProblemKind::Idle,
                "the relay closed an idle connection (4004)".to_string(),
            )),
            _ => None,
        };
        let problem = match problem {
            Some((kind, text)) => {
                self.problem_kind = Some(kind);
                self.last_problem = Some(text.clone());
                self.last_error = Some(text.clone());
                Some(text)
            }
            None => {
                // Not shown as the link's problem (a plain connect error is
                // part of reconnecting), but kept for whoever asks why the
                // relay cannot be reached.
                let why = reason.trim();
                self.last_error = Some(if was_connecting && !why.is_empty() {
                    why.chars().take(200).collect()
                } else if was_connecting {
                    "the connection could not be opened".to_string()
                } else if why.is_empty() {
                    format!("the connection closed (code {code})")
                } else {
                    format!("the connection closed ({})", close_text(code, why))
                });
                None
            }
        };
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

/// `close 4003` or `close 4003: reason` (the relay often gives none).
fn close_text(code: u16, reason: &str) -> String {
    let reason: String = reason.trim().chars().take(120).collect();
    if reason.is_empty() {
        format!("close {code}")
    } else {
        format!("close {code}: {reason}")
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

    #[test]
    fn a_refused_token_names_what_to_set_in_the_hosts_words() {
        let mut rng = SeededEntropy::new(3);
        let hint = "set KARS_MESH_RELAY_TOKEN to the relay's AGENTMESH_RELAY_TOKEN";
        let mut l = Link::new("ws://x/ws".into()).with_token(true, Some(hint));
        let (s, _) = l.open().unwrap();
        assert!(l.opened(s, 0));
        assert!(!l.is_confirmed(), "an open socket is provisional");
        match l.closed(s, 4003, "", &mut rng) {
            CloseAction::Reconnect { problem, .. } => assert_eq!(
                problem.as_deref(),
                Some("the relay refused this agent's relay token (close 4003); set KARS_MESH_RELAY_TOKEN to the relay's AGENTMESH_RELAY_TOKEN")
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(l.problem_kind, Some(ProblemKind::Token));
        assert!(ProblemKind::Token.is_refusal() && !ProblemKind::Proxy.is_refusal());
        assert_eq!(l.last_error, l.last_problem);
        // No token and no host words: the engine's own, neutral ones.
        let mut l = Link::new("ws://x/ws".into()).with_token(false, Some("  "));
        let (s, _) = l.open().unwrap();
        assert!(l.opened(s, 0));
        l.closed(s, 4003, "Authentication failed", &mut rng);
        assert_eq!(
            l.last_problem.as_deref(),
            Some("the relay requires a token and this agent has none (close 4003: Authentication failed); give this agent the relay's AGENTMESH_RELAY_TOKEN as its relay token")
        );
    }

    #[test]
    fn the_relay_accepts_a_connection_only_when_confirmed_and_a_failed_connect_says_why() {
        let mut rng = SeededEntropy::new(4);
        let mut l = Link::new("ws://x/ws".into());
        let (s, _) = l.open().unwrap();
        l.confirm();
        assert!(!l.is_confirmed(), "not before the socket opened");
        l.closed(s, 1006, "connect ECONNREFUSED 127.0.0.1:8083", &mut rng);
        assert_eq!(
            l.last_problem, None,
            "a plain connect error is no problem to show"
        );
        assert_eq!(
            l.last_error.as_deref(),
            Some("connect ECONNREFUSED 127.0.0.1:8083")
        );
        let (s, _) = l.open().unwrap();
        assert!(l.opened(s, 0));
        l.confirm();
        assert!(l.is_confirmed());
        assert_eq!(l.last_error, None);
        l.closed(s, 1006, "", &mut rng);
        assert!(!l.is_confirmed());
        assert_eq!(
            l.last_error.as_deref(),
            Some("the connection closed (code 1006)")
        );
    }
}
