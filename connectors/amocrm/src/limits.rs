//! The request limiter of one portal.
//!
//! amoCRM allows 7 requests per second per integration and answers more with 429; repeated
//! 429s escalate to a 403 block of the account that only support lifts. So the client never
//! relies on 429s: every HTTP attempt (retries included) first waits here. The quota has a
//! burst of 1, i.e. requests leave evenly spaced (1/7 s apart) instead of in bursts of 7, so
//! network jitter that bunches a few requests together on the server's side still stays under
//! a server that counts per second. One limiter per [`crate::AmoClient`], i.e. per portal;
//! nothing is global.
use governor::clock::DefaultClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;

/// Evenly spaced request slots at a fixed rate.
#[derive(Debug)]
pub struct Limiter {
    inner: RateLimiter<NotKeyed, InMemoryState, DefaultClock, NoOpMiddleware>,
    per_sec: NonZeroU32,
}

impl Limiter {
    /// A limiter of `per_sec` requests per second with a burst of one.
    pub fn new(per_sec: NonZeroU32) -> Self {
        let quota = Quota::per_second(per_sec).allow_burst(NonZeroU32::MIN);
        Self {
            inner: RateLimiter::direct(quota),
            per_sec,
        }
    }

    /// The configured rate.
    pub fn per_sec(&self) -> u32 {
        self.per_sec.get()
    }

    /// Waits for the next slot.
    pub async fn wait(&self) {
        self.inner.until_ready().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn requests_are_spaced() {
        let l = Limiter::new(NonZeroU32::new(50).unwrap());
        let start = Instant::now();
        for _ in 0..11 {
            l.wait().await;
        }
        // 11 requests at 50/s with burst 1: the first is free, 10 more need >= 200 ms.
        let took = start.elapsed().as_millis();
        assert!(took >= 190, "took {took} ms");
        assert!(took < 600, "took {took} ms");
    }
}
