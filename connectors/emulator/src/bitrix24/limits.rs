//! The two limits of the Bitrix24 cloud (`docs/bitrix24.md` of this crate, section 2).
//!
//! - [`LeakyBucket`]: every request adds 1; the level drains at `drain_per_sec`; a request that
//!   would take the level above `capacity` is refused with 503 `QUERY_LIMIT_EXCEEDED` (and does
//!   not raise the level). One bucket per portal; `batch` is one request.
//! - [`Operating`]: the execution time of each method is summed over a sliding window
//!   (10 minutes in the cloud); once the sum exceeds the limit the method is refused with 429
//!   `OPERATION_TIME_LIMIT` until the oldest recorded call leaves the window. The call that
//!   crosses the limit still completes. Time is `tokio::time::Instant` so tests may pause it.
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// The request-rate bucket of one portal.
#[derive(Debug)]
pub struct LeakyBucket {
    capacity: f64,
    drain_per_sec: f64,
    level: f64,
    last: Instant,
}

impl LeakyBucket {
    /// An empty bucket (`drain_per_sec <= 0` or `capacity == 0` = unlimited).
    pub fn new(capacity: u32, drain_per_sec: f64) -> Self {
        Self {
            capacity: capacity as f64,
            drain_per_sec,
            level: 0.0,
            last: Instant::now(),
        }
    }

    /// Admits one request (`true`) or refuses it (`false`).
    pub fn admit(&mut self) -> bool {
        if self.capacity <= 0.0 || self.drain_per_sec <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.level = (self.level - elapsed * self.drain_per_sec).max(0.0);
        if self.level + 1.0 > self.capacity + 1e-9 {
            return false;
        }
        self.level += 1.0;
        true
    }

    /// The current level (for inspection).
    pub fn level(&self) -> f64 {
        let elapsed = Instant::now()
            .saturating_duration_since(self.last)
            .as_secs_f64();
        (self.level - elapsed * self.drain_per_sec).max(0.0)
    }
}

/// Per-method operating time in a sliding window.
#[derive(Debug)]
pub struct Operating {
    limit: Duration,
    window: Duration,
    calls: HashMap<String, VecDeque<(Instant, Duration)>>,
}

/// What the operating limit says about one method now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OperatingState {
    /// Seconds of this method in the window.
    pub operating: f64,
    /// When the oldest recorded call leaves the window (unix seconds, wall clock), if any.
    pub reset_at: Option<i64>,
    /// Whether the method is blocked.
    pub blocked: bool,
}

impl Operating {
    /// A limit of `limit` seconds per `window` (`limit <= 0` = unlimited).
    pub fn new(limit_secs: f64, window_secs: f64) -> Self {
        Self {
            limit: Duration::from_secs_f64(limit_secs.max(0.0)),
            window: Duration::from_secs_f64(window_secs.max(0.001)),
            calls: HashMap::new(),
        }
    }

    fn prune(&mut self, method: &str, now: Instant) {
        if let Some(q) = self.calls.get_mut(method) {
            while q
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= self.window)
            {
                q.pop_front();
            }
        }
    }

    /// The state of `method` now.
    pub fn state(&mut self, method: &str) -> OperatingState {
        let now = Instant::now();
        self.prune(method, now);
        let q = self.calls.get(method);
        let sum: Duration = q
            .map(|q| q.iter().map(|(_, d)| *d).sum())
            .unwrap_or_default();
        let reset_at = q.and_then(|q| q.front()).map(|(t, _)| {
            let left = self
                .window
                .saturating_sub(now.saturating_duration_since(*t));
            jiff::Timestamp::now().as_second() + left.as_secs_f64().ceil() as i64
        });
        let blocked = !self.limit.is_zero() && sum > self.limit;
        OperatingState {
            operating: sum.as_secs_f64(),
            reset_at,
            blocked,
        }
    }

    /// Records one call of `method` that took `cost`.
    pub fn record(&mut self, method: &str, cost: Duration) {
        if cost.is_zero() {
            return;
        }
        let now = Instant::now();
        self.prune(method, now);
        self.calls
            .entry(method.to_owned())
            .or_default()
            .push_back((now, cost));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_bursts_then_drains() {
        let mut b = LeakyBucket::new(50, 2.0);
        assert!((0..50).all(|_| b.admit()));
        assert!(!b.admit());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.admit());
        assert!(!b.admit());
    }

    #[tokio::test(start_paused = true)]
    async fn operating_blocks_after_the_limit_and_resets() {
        let mut o = Operating::new(1.0, 60.0);
        for _ in 0..3 {
            assert!(!o.state("crm.deal.list").blocked);
            o.record("crm.deal.list", Duration::from_millis(400));
        }
        assert!(o.state("crm.deal.list").blocked);
        assert!(!o.state("crm.contact.list").blocked);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!o.state("crm.deal.list").blocked);
    }
}
