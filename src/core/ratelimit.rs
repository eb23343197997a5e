//! A token bucket per connection, so a client flooding frames is closed before it can slow its user's
//! hub (and so its other connections). Pure: time is passed in.

/// Allows `rate` events per second on average, in bursts of up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last_ms: f64,
    rate_per_ms: f64,
    burst: f64,
}

impl TokenBucket {
    pub fn new(rate_per_second: u32, now_ms: f64) -> Self {
        let burst = f64::from(rate_per_second.saturating_mul(2).max(10));
        TokenBucket { tokens: burst, last_ms: now_ms, rate_per_ms: f64::from(rate_per_second) / 1000.0, burst }
    }

    /// `per_minute` events per minute, in bursts of up to `per_minute` (a minute's worth).
    pub fn per_minute(per_minute: u32, now_ms: f64) -> Self {
        let burst = f64::from(per_minute.max(1));
        TokenBucket { tokens: burst, last_ms: now_ms, rate_per_ms: f64::from(per_minute) / 60_000.0, burst }
    }

    /// Takes one token; `false` when the bucket is empty (the caller is flooding).
    pub fn take(&mut self, now_ms: f64) -> bool {
        let elapsed = (now_ms - self.last_ms).max(0.0);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate_per_ms).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut b = TokenBucket::new(100, 0.0);
        assert_eq!((0..200).filter(|_| b.take(0.0)).count(), 200);
        assert!(!b.take(0.0));
        assert!(b.take(10.0), "one token per 10 ms at 100/s");
        assert!(!b.take(10.0));
        // Steady at the rate: every event passes (within float rounding of the refill).
        assert!((0..1000).filter(|i| b.take(20.0 + f64::from(*i) * 10.0)).count() >= 999);
    }

    #[test]
    fn per_minute_bursts_a_minutes_worth() {
        let mut b = TokenBucket::per_minute(5, 0.0);
        assert_eq!((0..10).filter(|_| b.take(0.0)).count(), 5);
        assert!(b.take(12_000.0), "one token per 12 s at 5/min");
        assert!(!b.take(12_000.0));
    }

    #[test]
    fn clock_going_backwards_grants_nothing() {
        let mut b = TokenBucket::new(1, 1000.0);
        while b.take(1000.0) {}
        assert!(!b.take(0.0));
    }
}
