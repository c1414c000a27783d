//! Who owns each timer. The agent's five periodic timers have fixed ids
//! (`T_*` in the agent); every other timer is set here, with its owner, so a
//! fired timer goes straight to the one that set it instead of being offered
//! to each feature in turn. Timer ids are their own sequence, apart from the
//! ids of HTTP requests and jobs.

use super::Cx;
use crate::io::Command;
use std::collections::HashMap;

/// First id of the timers set here (the fixed ones are below it).
const FIRST_ID: u64 = 1000;

/// The owners are named where sub-machines can name them too.
pub(crate) use crate::port::TimerOwner as Owner;

pub(super) struct Timers {
    next: u64,
    owners: HashMap<u64, Owner>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            next: FIRST_ID,
            owners: HashMap::new(),
        }
    }
}

impl Timers {
    /// A new timer for `owner` at `at_ms`; its id.
    pub(super) fn set(&mut self, cx: &mut Cx<'_>, owner: Owner, at_ms: u64) -> u64 {
        let id = self.next;
        self.next += 1;
        self.owners.insert(id, owner);
        cx.out.push(Command::TimerSet { id, at_ms });
        id
    }

    pub(super) fn cancel(&mut self, cx: &mut Cx<'_>, id: u64) {
        if self.owners.remove(&id).is_some() {
            cx.out.push(Command::TimerCancel(id));
        }
    }

    /// The owner of a timer that fired (it is forgotten: a timer fires once).
    pub(super) fn fired(&mut self, id: u64) -> Option<Owner> {
        self.owners.remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Host, LogLevel};

    struct NoHost;
    impl crate::entropy::Entropy for NoHost {
        fn fill(&mut self, dest: &mut [u8]) {
            dest.fill(0);
        }
    }
    impl Host for NoHost {
        fn now_ms(&mut self) -> u64 {
            0
        }
        fn storage_get(&mut self, _: &str) -> Option<Vec<u8>> {
            None
        }
        fn storage_list(&mut self, _: &str) -> Vec<String> {
            Vec::new()
        }
        fn log(&mut self, _: LogLevel, _: &str) {}
    }

    #[test]
    fn a_timer_goes_to_its_owner_once_and_a_cancelled_one_to_nobody() {
        let mut host = NoHost;
        let mut cx = Cx {
            host: &mut host,
            out: Vec::new(),
        };
        let mut t = Timers::default();
        let a = t.set(&mut cx, Owner::PairWait, 10);
        let b = t.set(&mut cx, Owner::Waiter, 20);
        assert_ne!(a, b);
        assert!(a >= FIRST_ID && b >= FIRST_ID);
        assert_eq!(t.fired(a), Some(Owner::PairWait));
        assert_eq!(t.fired(a), None);
        t.cancel(&mut cx, b);
        assert_eq!(t.fired(b), None);
        assert_eq!(
            cx.out,
            vec![
                Command::TimerSet { id: a, at_ms: 10 },
                Command::TimerSet { id: b, at_ms: 20 },
                Command::TimerCancel(b),
            ]
        );
    }
}
