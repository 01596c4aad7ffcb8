//! Request rate limits the way CRM gateways enforce them.
//!
//! [`Limiter`] counts the requests it accepted in the last second, a sliding window as amoCRM's
//! gateway counts them: a request is refused with 429 when `rate` were already accepted in the
//! second before it, wherever that second starts (stricter than a token bucket, which lets a
//! client that sends slightly faster than the rate through for a while), plus the escalation
//! amoCRM applies to clients that keep hitting the limit: more than `block_after` rejected
//! requests within [`VIOLATION_WINDOW`] block the integration. The block is sticky: it is lifted
//! only by [`Limiter::reset_block`] (in real life, by the CRM's support).
//!
//! Time is `tokio::time::Instant`, so tests may pause the clock.
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// How far back rejected requests count towards a block.
pub const VIOLATION_WINDOW: Duration = Duration::from_secs(60);

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go on.
    Allowed,
    /// Over the rate: answer 429.
    RateLimited,
    /// The integration is blocked: answer 403.
    Blocked,
}

/// The span of the sliding window.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// A sliding one-second window with violation escalation.
#[derive(Debug)]
pub struct Limiter {
    rate: u32,
    accepted: VecDeque<Instant>,
    block_after: u32,
    violations: VecDeque<Instant>,
    blocked: bool,
}

impl Limiter {
    /// A limiter of `per_sec` requests per second (`0` = unlimited) that blocks after more than
    /// `block_after` rejections within a minute (`0` = never blocks).
    pub fn new(per_sec: u32, block_after: u32) -> Self {
        Self {
            rate: per_sec,
            accepted: VecDeque::new(),
            block_after,
            violations: VecDeque::new(),
            blocked: false,
        }
    }

    /// Changes the rate; the window starts empty.
    pub fn set_rate(&mut self, per_sec: u32) {
        self.rate = per_sec;
        self.accepted.clear();
    }

    /// The current rate (`0` = unlimited).
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Whether the integration is blocked.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Checks the block only (for endpoints outside the rate limit, like the token endpoint).
    pub fn check_block(&self) -> Admission {
        if self.blocked {
            Admission::Blocked
        } else {
            Admission::Allowed
        }
    }

    /// Admits or rejects one request, recording violations.
    pub fn admit(&mut self) -> Admission {
        if self.blocked {
            return Admission::Blocked;
        }
        if self.rate == 0 {
            return Admission::Allowed;
        }
        let now = Instant::now();
        while self
            .accepted
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= RATE_WINDOW)
        {
            self.accepted.pop_front();
        }
        if self.accepted.len() < self.rate as usize {
            self.accepted.push_back(now);
            return Admission::Allowed;
        }
        self.violations.push_back(now);
        while self
            .violations
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > VIOLATION_WINDOW)
        {
            self.violations.pop_front();
        }
        if self.block_after > 0 && self.violations.len() > self.block_after as usize {
            self.blocked = true;
        }
        Admission::RateLimited
    }

    /// Lifts a block and forgets past violations.
    pub fn reset_block(&mut self) {
        self.blocked = false;
        self.violations.clear();
        self.accepted.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn any_one_second_window_holds_at_most_the_rate() {
        let mut l = Limiter::new(7, 0);
        assert!((0..7).all(|_| l.admit() == Admission::Allowed));
        assert_eq!(l.admit(), Admission::RateLimited);
        // 300 ms later the first seven are still inside the window: a token bucket would have
        // refilled two slots here.
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(l.admit(), Admission::RateLimited);
        tokio::time::advance(Duration::from_millis(700)).await;
        assert!((0..7).all(|_| l.admit() == Admission::Allowed));
        assert_eq!(l.admit(), Admission::RateLimited);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_rate_just_above_the_limit_is_refused() {
        // 7.5 requests/s, evenly spaced: every window of one second holds 8 at some point.
        let mut l = Limiter::new(7, 0);
        let mut refused = 0;
        for _ in 0..75 {
            if l.admit() == Admission::RateLimited {
                refused += 1;
            }
            tokio::time::advance(Duration::from_micros(133_334)).await;
        }
        assert!(refused >= 4, "refused {refused}");
    }

    #[tokio::test(start_paused = true)]
    async fn escalates_to_sticky_block() {
        let mut l = Limiter::new(1, 3);
        assert_eq!(l.admit(), Admission::Allowed);
        for _ in 0..3 {
            assert_eq!(l.admit(), Admission::RateLimited);
        }
        assert_eq!(l.admit(), Admission::RateLimited); // the 4th violation blocks
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(l.admit(), Admission::Blocked);
        l.reset_block();
        assert_eq!(l.admit(), Admission::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn old_violations_expire() {
        let mut l = Limiter::new(1, 2);
        l.admit();
        l.admit();
        l.admit();
        tokio::time::advance(Duration::from_secs(61)).await;
        l.admit(); // refilled: allowed
        l.admit();
        assert!(!l.is_blocked());
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut l = Limiter::new(0, 1);
        assert!((0..10_000).all(|_| l.admit() == Admission::Allowed));
    }
}
