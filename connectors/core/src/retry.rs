//! The retry decision as a pure function (after async-stripe's `request_strategy`): given the
//! error and the attempt number, retry after a delay or give up. Exponential backoff with full
//! jitter spreads retries so a fault never turns into a storm; a hard attempt cap means nothing
//! is retried forever.
use crate::error::ConnectorError;
use std::time::Duration;

/// Tunables of the retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay scale of the first retry.
    pub base: Duration,
    /// Upper bound of one delay.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this delay.
    Retry(Duration),
    /// Stop and report the error.
    GiveUp,
}

/// Decides whether attempt number `attempt` (1 = the first try, which just failed) is retried.
/// `jitter` is a number in `[0, 1)` supplied by the caller so the function stays pure.
pub fn decide(err: &ConnectorError, attempt: u32, policy: &RetryPolicy, jitter: f64) -> Decision {
    if !err.is_retryable() || attempt >= policy.max_attempts {
        return Decision::GiveUp;
    }
    let exp = policy
        .base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(policy.cap);
    // Full jitter, but never below half the ceiling: rate limits need a real pause.
    let delay = ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    let delay = match err {
        ConnectorError::RateLimited {
            retry_after: Some(after),
            ..
        } => delay.max(*after),
        // A 429 without Retry-After (amoCRM): wait at least a second, the limit's window.
        ConnectorError::RateLimited {
            retry_after: None, ..
        } => delay.max(Duration::from_secs(1)),
        _ => delay,
    };
    Decision::Retry(delay.min(policy.cap.max(Duration::from_secs(1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> ConnectorError {
        ConnectorError::transient("502")
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let e = ConnectorError::Rejected {
            status: 400,
            code: None,
            message: "bad".into(),
        };
        assert_eq!(
            decide(&e, 1, &RetryPolicy::default(), 0.5),
            Decision::GiveUp
        );
        let e = ConnectorError::Blocked {
            message: "403".into(),
        };
        assert_eq!(
            decide(&e, 1, &RetryPolicy::default(), 0.5),
            Decision::GiveUp
        );
    }

    #[test]
    fn attempts_are_capped() {
        let p = RetryPolicy::default();
        assert!(matches!(
            decide(&transient(), p.max_attempts - 1, &p, 0.0),
            Decision::Retry(_)
        ));
        assert_eq!(
            decide(&transient(), p.max_attempts, &p, 0.0),
            Decision::GiveUp
        );
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let p = RetryPolicy::default();
        let d = |a| match decide(&transient(), a, &p, 1.0) {
            Decision::Retry(d) => d,
            Decision::GiveUp => unreachable!(),
        };
        assert!(d(1) < d(2) && d(2) < d(3));
        assert!(d(7) <= p.cap);
    }

    #[test]
    fn rate_limit_waits_at_least_retry_after() {
        let e = ConnectorError::RateLimited {
            retry_after: Some(Duration::from_secs(5)),
            message: String::new(),
        };
        assert_eq!(
            decide(&e, 1, &RetryPolicy::default(), 0.0),
            Decision::Retry(Duration::from_secs(5))
        );
    }
}
