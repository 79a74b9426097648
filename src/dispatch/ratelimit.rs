//! A destination's delivery rate (`max_per_minute`): a token bucket holding at
//! most one second's worth, refilled continuously. The worker starts a delivery
//! only with a token; without one the alert simply waits in the outbox (never
//! dropped), and the worker wakes when the next token is due.

use std::time::{Duration, Instant};

pub struct RateLimit {
    /// `None`: unlimited.
    per_second: Option<f64>,
    tokens: f64,
    capacity: f64,
    at: Instant,
}

impl RateLimit {
    pub fn per_minute(limit: Option<u32>) -> RateLimit {
        let per_second = limit.map(|n| f64::from(n) / 60.0);
        let capacity = per_second.map_or(f64::MAX, |r| r.max(1.0));
        RateLimit {
            per_second,
            tokens: if per_second.is_some() {
                capacity
            } else {
                f64::MAX
            },
            capacity,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        if let Some(r) = self.per_second {
            let now = Instant::now();
            self.tokens =
                (self.tokens + r * now.duration_since(self.at).as_secs_f64()).min(self.capacity);
            self.at = now;
        }
    }

    /// Deliveries that may start now.
    pub fn available(&mut self) -> usize {
        self.refill();
        if self.per_second.is_none() {
            return usize::MAX;
        }
        self.tokens.floor() as usize
    }

    /// Starts one delivery.
    pub fn take(&mut self) {
        if self.per_second.is_some() {
            self.refill();
            self.tokens -= 1.0;
        }
    }

    /// When the next delivery may start, if not now.
    pub fn next_in(&mut self) -> Option<Duration> {
        let r = self.per_second?;
        self.refill();
        (self.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - self.tokens) / r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_rate_with_one_second_of_burst() {
        let mut r = RateLimit::per_minute(Some(120)); // 2 per second
        assert_eq!(r.available(), 2);
        r.take();
        r.take();
        assert_eq!(r.available(), 0);
        let wait = r.next_in().unwrap();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        std::thread::sleep(wait);
        assert_eq!(r.available(), 1);
        let mut free = RateLimit::per_minute(None);
        assert_eq!(free.available(), usize::MAX);
        assert!(free.next_in().is_none());
    }
}
