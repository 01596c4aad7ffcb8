//! The request limiter of one portal.
//!
//! amoCRM allows 7 requests per second per integration and counts them in any one-second
//! window (a sliding window, not whole clock seconds); an eighth request inside a window gets
//! 429, and repeated 429s escalate to a 403 block of the customer's whole account that only
//! support lifts. So the client never relies on 429s: every HTTP attempt (retries included)
//! first takes a slot here, and the slots keep headroom twice over:
//! - **a guarded window**: at most `per_sec` requests leave in any [`GUARD_WINDOW`]
//!   (1.15 s), so network jitter of up to 150 ms that bunches requests together at the
//!   server still leaves at most `per_sec` in any one-second window there;
//! - **even spacing**: slots are `GUARD_WINDOW / per_sec` apart (no burst), so a window never
//!   fills in a clump.
//!
//! After a 429 (another integration of the account, a gateway that counts differently) the
//! rate is halved at once (multiplicative decrease, down to one request per window) and
//! recovers by small steps with each answered request (additive increase), like TCP's
//! congestion control. The send times and the rate share can be saved with
//! [`Limiter::state`] and restored in the next process with [`Limiter::restore`], so a
//! command started right after another one does not overrun the window they share.
//!
//! The window is the account's, not the client's: every [`crate::AmoClient`] of one account
//! in a process (a command's connector still finishing a prefetch while the next one starts,
//! the server's connectors) shares one limiter through [`Limiter::for_portal`].
use rebuy_core::LimiterState;
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The window the client keeps `per_sec` requests within: 15 % longer than the server's
/// second.
pub const GUARD_WINDOW: Duration = Duration::from_millis(1150);

/// Rate share regained per answered request after a 429 (about 50 requests from half rate
/// back to full).
const RECOVERY_STEP: f64 = 0.01;

/// Paced request slots under a sliding window, with multiplicative back-off on 429s.
#[derive(Debug)]
pub struct Limiter {
    per_sec: NonZeroU32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Slots handed out (the latest `per_sec`), oldest first; may lie in the future.
    slots: VecDeque<Instant>,
    /// Share of the paced rate in use, in `[1/per_sec, 1]`.
    factor: f64,
}

fn registry() -> &'static Mutex<HashMap<String, Weak<Limiter>>> {
    static R: OnceLock<Mutex<HashMap<String, Weak<Limiter>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

impl Limiter {
    /// The limiter shared by every client of `portal` (the account's host and port) at this
    /// rate in this process; created on first use.
    pub fn for_portal(portal: &str, per_sec: NonZeroU32) -> Arc<Limiter> {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|_, w| w.strong_count() > 0);
        let key = format!("{portal}|{per_sec}");
        if let Some(l) = reg.get(&key).and_then(Weak::upgrade) {
            return l;
        }
        let l = Arc::new(Limiter::new(per_sec));
        reg.insert(key, Arc::downgrade(&l));
        l
    }

    /// A limiter of at most `per_sec` requests per second (see the module docs).
    pub fn new(per_sec: NonZeroU32) -> Self {
        Self {
            per_sec,
            state: Mutex::new(State {
                slots: VecDeque::with_capacity(per_sec.get() as usize + 1),
                factor: 1.0,
            }),
        }
    }

    /// The configured rate.
    pub fn per_sec(&self) -> u32 {
        self.per_sec.get()
    }

    /// The share of the rate in use (1.0 unless 429s slowed it down).
    pub fn rate_factor(&self) -> f64 {
        self.lock().factor
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves the next slot and waits for it.
    pub async fn wait(&self) {
        let at = self.reserve(Instant::now());
        tokio::time::sleep_until(at).await;
    }

    /// The next free slot at or after `now`, recorded as taken.
    fn reserve(&self, now: Instant) -> Instant {
        let n = self.per_sec.get() as usize;
        let mut s = self.lock();
        let spacing = GUARD_WINDOW.div_f64(n as f64 * s.factor);
        let mut at = now;
        if let Some(last) = s.slots.back() {
            at = at.max(*last + spacing);
        }
        if s.slots.len() >= n {
            at = at.max(s.slots[s.slots.len() - n] + GUARD_WINDOW);
        }
        s.slots.push_back(at);
        while s.slots.len() > n {
            s.slots.pop_front();
        }
        at
    }

    /// Records a 429: halves the rate and keeps the next request a whole window away.
    pub fn on_rate_limited(&self) {
        let mut s = self.lock();
        let floor = 1.0 / self.per_sec.get() as f64;
        s.factor = (s.factor * 0.5).max(floor);
        let pause = Instant::now() + GUARD_WINDOW;
        if s.slots.back().is_none_or(|t| *t < pause) {
            s.slots.push_back(pause);
            if s.slots.len() > self.per_sec.get() as usize {
                s.slots.pop_front();
            }
        }
    }

    /// Records an answered request: regains a little of the rate after a 429.
    pub fn on_success(&self) {
        let mut s = self.lock();
        if s.factor < 1.0 {
            s.factor = (s.factor + RECOVERY_STEP).min(1.0);
        }
    }

    /// What to persist: the latest slots as wall-clock times and the rate share.
    pub fn state(&self) -> LimiterState {
        let s = self.lock();
        let (now_i, now_ms) = (Instant::now(), unix_ms_now());
        LimiterState {
            sent_unix_ms: s
                .slots
                .iter()
                .map(|t| {
                    if *t >= now_i {
                        now_ms + t.duration_since(now_i).as_millis() as i64
                    } else {
                        now_ms - now_i.duration_since(*t).as_millis() as i64
                    }
                })
                .collect(),
            bucket_level: 0.0,
            at_unix_ms: now_ms,
            rate_factor: Some(s.factor),
        }
    }

    /// Starts from a persisted state: slots still inside the window count against it.
    pub fn restore(&self, state: &LimiterState) {
        let (now_i, now_ms) = (Instant::now(), unix_ms_now());
        let horizon = GUARD_WINDOW.as_millis() as i64;
        let mut s = self.lock();
        let mut restored: Vec<Instant> = state
            .sent_unix_ms
            .iter()
            .filter(|ms| now_ms - **ms < horizon)
            .map(|ms| {
                let d = now_ms - ms;
                if d >= 0 {
                    now_i
                        .checked_sub(Duration::from_millis(d as u64))
                        .unwrap_or(now_i)
                } else {
                    // A slot reserved ahead of the old process's exit; never more than a window.
                    now_i + Duration::from_millis((-d).min(horizon) as u64)
                }
            })
            .collect();
        restored.extend(s.slots.iter().copied());
        restored.sort();
        s.slots = restored.into_iter().collect();
        while s.slots.len() > self.per_sec.get() as usize {
            s.slots.pop_front();
        }
        if let Some(f) = state.rate_factor.filter(|f| f.is_finite()) {
            let floor = 1.0 / self.per_sec.get() as f64;
            s.factor = s.factor.min(f.clamp(floor, 1.0));
        }
    }
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts, over every window of `span` starting at a slot, the most slots inside it.
    fn max_in_window(slots: &[Instant], span: Duration) -> usize {
        slots
            .iter()
            .map(|a| {
                slots
                    .iter()
                    .filter(|b| **b >= *a && **b - *a < span)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn no_second_holds_more_than_the_rate_even_with_jitter() {
        let l = Limiter::new(NonZeroU32::new(7).unwrap());
        let start = Instant::now();
        let slots: Vec<Instant> = (0..200).map(|_| l.reserve(start)).collect();
        // 150 ms of jitter pulling every other request earlier still keeps 7 per second.
        let jittered: Vec<Instant> = slots
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if i % 2 == 0 {
                    *t
                } else {
                    t.checked_sub(Duration::from_millis(140)).unwrap_or(*t)
                }
            })
            .collect();
        assert!(max_in_window(&jittered, Duration::from_secs(1)) <= 7);
        // And the pace is still close to the limit: 200 slots in about 200 / 6.09 s.
        let took = (*slots.last().unwrap() - start).as_secs_f64();
        assert!((32.0..33.5).contains(&took), "took {took} s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_halves_the_rate_and_it_recovers() {
        let l = Limiter::new(NonZeroU32::new(7).unwrap());
        l.on_rate_limited();
        assert_eq!(l.rate_factor(), 0.5);
        l.on_rate_limited();
        l.on_rate_limited();
        l.on_rate_limited();
        assert!((l.rate_factor() - 1.0 / 7.0).abs() < 1e-9, "floor");
        for _ in 0..200 {
            l.on_success();
        }
        assert_eq!(l.rate_factor(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restored_state_counts_the_previous_process() {
        let a = Limiter::new(NonZeroU32::new(7).unwrap());
        let now = Instant::now();
        for _ in 0..7 {
            a.reserve(now);
        }
        let saved = a.state();
        let b = Limiter::new(NonZeroU32::new(7).unwrap());
        b.restore(&saved);
        // The previous process took a whole window: the next slot is after it.
        let next = b.reserve(Instant::now());
        assert!(next - now >= GUARD_WINDOW - Duration::from_millis(5));
        // A fresh limiter would have sent at once.
        let c = Limiter::new(NonZeroU32::new(7).unwrap());
        assert_eq!(c.reserve(now), now);
    }
}
