//! A token bucket: how many new things (sessions opened by peers we have
//! never seen) may start now. Identities cost nothing to make, so a cap on
//! half-open sessions alone lets a flood of fresh identities each open one
//! and talk once (red-team finding 7); the bucket bounds how fast strangers
//! can add records, the peer cap bounds how many there can be.

#[derive(Debug, Clone)]
pub struct Budget {
    tokens: u64,
    burst: u64,
    refill_ms: u64,
    last_ms: u64,
}

impl Budget {
    /// Full at first: `burst` at once, then one every `refill_ms`.
    pub fn new(burst: u64, refill_ms: u64, now_ms: u64) -> Self {
        Budget {
            tokens: burst,
            burst,
            refill_ms: refill_ms.max(1),
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let due = now_ms.saturating_sub(self.last_ms) / self.refill_ms;
        if due > 0 {
            self.tokens = self.tokens.saturating_add(due).min(self.burst);
            self.last_ms = self.last_ms.saturating_add(due * self.refill_ms);
        }
        if self.tokens == self.burst {
            self.last_ms = now_ms;
        }
    }

    /// Is a token there (without taking it)?
    pub fn available(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens > 0
    }

    /// Take a token if there is one.
    pub fn take(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Budget;

    #[test]
    fn burst_then_refill() {
        let mut b = Budget::new(3, 1000, 0);
        assert!(b.take(0) && b.take(0) && b.take(0));
        assert!(!b.take(10));
        assert!(!b.available(999));
        assert!(b.take(1000));
        assert!(!b.take(1500));
        // A long quiet time refills up to the burst, no more.
        assert!(b.available(1_000_000));
        assert!(b.take(1_000_000) && b.take(1_000_000) && b.take(1_000_000));
        assert!(!b.take(1_000_000));
    }
}
