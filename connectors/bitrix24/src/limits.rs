//! The client-side limits of one portal: the leaky bucket and the operating-time budget.
//!
//! **Leaky bucket.** Bitrix24 counts requests per portal (and source IP): each adds 1 to a
//! level that drains at `Y`/s; above `X` the portal answers 503 `QUERY_LIMIT_EXCEEDED`. A GCRA
//! quota with rate `Y` and burst `X - margin` is exactly that shape: spend the burst, then hold
//! the drain rate. The margin (2) absorbs network jitter that bunches requests at the server.
//! Because the bucket is the portal's, not the client's, every [`B24Client`](crate::B24Client)
//! of one portal (OAuth and webhook alike, in one process) shares one [`Limiter`] through
//! [`Limiter::for_portal`].
//!
//! **Back-off.** A 503 means someone else (another app on the portal, a restart that forgot
//! the level) filled the bucket. Every request of the portal then waits behind one shared
//! pause that grows with consecutive 503s (0.5 s, 1 s, 2 s ... 30 s) and resets on success,
//! and the quota's remaining burst is spent (the portal's bucket is full, so the client holds
//! the drain rate from then on): concurrent callers never retry in a storm.
//!
//! **Operating time.** Each answer's `time.operating` / `operating_reset_at` (per method, for
//! `batch` per command) is recorded; a method whose reported time reaches the budget (minus a
//! 2 % margin) is paused until its reset time, before the portal has to refuse it with 429
//! `OPERATION_TIME_LIMIT`. A 429 blocks the method until `operating_reset_at`.
use governor::clock::DefaultClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Requests kept in reserve below the portal's bucket capacity.
pub const BURST_MARGIN: u32 = 2;

/// The request limiter of one portal.
pub struct Limiter {
    gcra: RateLimiter<NotKeyed, InMemoryState, DefaultClock, NoOpMiddleware>,
    backoff: Mutex<Backoff>,
    /// The portal's bucket level as this client estimates it, and when (for persistence).
    level: Mutex<(f64, Instant)>,
    capacity: u32,
    drain_per_sec: f64,
}

#[derive(Debug, Default)]
struct Backoff {
    until: Option<Instant>,
    strikes: u32,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("capacity", &self.capacity)
            .field("drain_per_sec", &self.drain_per_sec)
            .finish()
    }
}

fn registry() -> &'static Mutex<HashMap<String, Weak<Limiter>>> {
    static R: OnceLock<Mutex<HashMap<String, Weak<Limiter>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

impl Limiter {
    /// A limiter of a bucket of `capacity` draining `drain_per_sec` per second.
    pub fn new(capacity: u32, drain_per_sec: f64) -> Self {
        let burst = NonZeroU32::new(capacity.saturating_sub(BURST_MARGIN).max(1))
            .unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs_f64(1.0 / drain_per_sec.max(0.001));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            gcra: RateLimiter::direct(quota),
            backoff: Mutex::new(Backoff::default()),
            level: Mutex::new((0.0, Instant::now())),
            capacity,
            drain_per_sec,
        }
    }

    /// The limiter shared by every client of `portal` (the host and port of the portal URL)
    /// in this process; created with these limits on first use.
    pub fn for_portal(portal: &str, capacity: u32, drain_per_sec: f64) -> Arc<Limiter> {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|_, w| w.strong_count() > 0);
        let key = format!("{portal}|{capacity}|{drain_per_sec}");
        if let Some(l) = reg.get(&key).and_then(Weak::upgrade) {
            return l;
        }
        let l = Arc::new(Limiter::new(capacity, drain_per_sec));
        reg.insert(key, Arc::downgrade(&l));
        l
    }

    /// Waits for the shared back-off pause, then for a request slot.
    pub async fn wait(&self) {
        loop {
            let until = self.backoff.lock().unwrap_or_else(|e| e.into_inner()).until;
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        self.gcra.until_ready().await;
        let mut l = self.level.lock().unwrap_or_else(|e| e.into_inner());
        *l = (self.level_at(*l, Instant::now()) + 1.0, Instant::now());
    }

    fn level_at(&self, (level, at): (f64, Instant), now: Instant) -> f64 {
        let drained = now.saturating_duration_since(at).as_secs_f64() * self.drain_per_sec;
        (level - drained).max(0.0)
    }

    /// The estimated bucket level now, to be persisted (see [`Limiter::restore`]).
    pub fn state(&self) -> rebuy_core::LimiterState {
        let l = *self.level.lock().unwrap_or_else(|e| e.into_inner());
        rebuy_core::LimiterState {
            bucket_level: self.level_at(l, Instant::now()),
            at_unix_ms: jiff::Timestamp::now().as_millisecond(),
            ..Default::default()
        }
    }

    /// Starts from a level persisted by an earlier process: what has not drained since is
    /// taken from the burst, so this process does not send a full burst into a bucket the
    /// portal still counts as partly full.
    pub fn restore(&self, state: &rebuy_core::LimiterState) {
        let elapsed_ms = (jiff::Timestamp::now().as_millisecond() - state.at_unix_ms).max(0);
        let left = (state.bucket_level - elapsed_ms as f64 / 1000.0 * self.drain_per_sec)
            .clamp(0.0, f64::from(self.capacity));
        let cells = left.ceil() as u32;
        for _ in 0..cells {
            if self.gcra.check().is_err() {
                break;
            }
        }
        let mut l = self.level.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        *l = (self.level_at(*l, now).max(left), now);
    }

    /// Records a 503 `QUERY_LIMIT_EXCEEDED`: pauses every request of the portal, longer after
    /// each consecutive one. Returns the pause.
    pub fn on_limited(&self) -> Duration {
        // The portal's bucket is full whatever our quota believed: spend the remaining burst so
        // that, after the pause, requests leave at the drain rate instead of bursting again.
        for _ in 0..self.capacity {
            if self.gcra.check().is_err() {
                break;
            }
        }
        let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.strikes = b.strikes.saturating_add(1);
        let pause = Duration::from_millis(500u64.saturating_mul(1 << (b.strikes - 1).min(6)))
            .min(Duration::from_secs(30));
        let until = Instant::now() + pause;
        b.until = Some(b.until.map_or(until, |t| t.max(until)));
        pause
    }

    /// Records an admitted request: the back-off starts over.
    pub fn on_success(&self) {
        let mut b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.strikes = 0;
    }
}

/// What the portal reported of one method.
#[derive(Debug, Clone, Copy, Default)]
struct MethodUse {
    operating: f64,
    reset_at: Option<i64>,
    blocked_until: Option<i64>,
}

/// The per-method operating-time budget.
#[derive(Debug)]
pub struct OperatingBudget {
    limit_secs: f64,
    methods: Mutex<HashMap<String, MethodUse>>,
}

impl OperatingBudget {
    /// A budget of `limit_secs` per method (`<= 0`: never pause proactively).
    pub fn new(limit_secs: f64) -> Self {
        Self {
            limit_secs,
            methods: Mutex::new(HashMap::new()),
        }
    }

    /// Records the `time` block of a call of `method`.
    pub fn observe(&self, method: &str, operating: Option<f64>, reset_at: Option<i64>) {
        let Some(operating) = operating else { return };
        let mut m = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(method.to_owned()).or_default();
        e.operating = operating;
        if reset_at.is_some() {
            e.reset_at = reset_at;
        }
    }

    /// Records a 429 `OPERATION_TIME_LIMIT` of `method`; returns how long to wait.
    pub fn on_blocked(&self, method: &str, reset_at: Option<i64>) -> Duration {
        let now = jiff::Timestamp::now().as_second();
        let mut m = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(method.to_owned()).or_default();
        // Without a reset time, wait a minute: the portal's baskets are one minute wide.
        let until = reset_at
            .or(e.reset_at)
            .filter(|t| *t > now)
            .unwrap_or(now + 60);
        e.blocked_until = Some(until);
        Duration::from_secs((until - now).max(1) as u64)
    }

    /// How long `methods` must wait before the next call (zero when none is near its budget).
    pub fn pause_for(&self, methods: &[&str]) -> Duration {
        let now = jiff::Timestamp::now().as_second();
        let m = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        let margin = self.limit_secs * 0.02;
        let mut wait = 0i64;
        for name in methods {
            let Some(u) = m.get(*name) else { continue };
            if let Some(b) = u.blocked_until {
                wait = wait.max(b - now);
            }
            if self.limit_secs > 0.0
                && u.operating >= self.limit_secs - margin
                && let Some(r) = u.reset_at
            {
                wait = wait.max(r - now);
            }
        }
        Duration::from_secs(wait.max(0) as u64)
    }

    /// Forgets a method's state once its pause is over.
    pub fn clear_expired(&self) {
        let now = jiff::Timestamp::now().as_second();
        let mut m = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        for u in m.values_mut() {
            if u.blocked_until.is_some_and(|t| t <= now) {
                u.blocked_until = None;
            }
            if u.reset_at.is_some_and(|t| t <= now) {
                u.reset_at = None;
                u.operating = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn burst_then_drain_rate() {
        let l = Limiter::new(12, 20.0);
        let start = std::time::Instant::now();
        for _ in 0..10 {
            l.wait().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(40),
            "the burst is free"
        );
        for _ in 0..4 {
            l.wait().await;
        }
        // 4 more at 20/s = 200 ms.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(180), "{took:?}");
    }

    #[tokio::test]
    async fn back_off_grows_and_resets() {
        let l = Limiter::new(50, 2.0);
        let a = l.on_limited();
        let b = l.on_limited();
        assert!(b > a);
        l.on_success();
        assert_eq!(l.on_limited(), a);
    }

    #[test]
    fn budget_pauses_near_the_limit() {
        let b = OperatingBudget::new(10.0);
        let reset = jiff::Timestamp::now().as_second() + 5;
        b.observe("crm.deal.list", Some(3.0), Some(reset));
        assert_eq!(b.pause_for(&["crm.deal.list"]), Duration::ZERO);
        b.observe("crm.deal.list", Some(9.9), Some(reset));
        assert!(b.pause_for(&["crm.deal.list"]) >= Duration::from_secs(4));
        assert_eq!(b.pause_for(&["crm.contact.list"]), Duration::ZERO);
    }

    #[test]
    fn one_limiter_per_portal() {
        let a = Limiter::for_portal("127.0.0.1:1", 50, 2.0);
        let b = Limiter::for_portal("127.0.0.1:1", 50, 2.0);
        assert!(Arc::ptr_eq(&a, &b));
    }
}
