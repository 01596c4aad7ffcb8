//! Fault injection: what a flaky CRM gateway does to an integration.
//!
//! A [`FaultConfig`] holds the share of requests that get each fault; a [`FaultPicker`] draws
//! faults from a seeded generator, so a sequential client sees the same faults on every run.
//! The emulators apply faults to API calls only (never to the inspection endpoints). A faulted
//! write is not applied, except under [`Fault::DropAfterWrite`]: the write is applied and the
//! connection dropped before the answer, the case where a client that sends the write again
//! creates a duplicate.
use crate::rng::Rng;
use std::time::Duration;

/// Shares of requests (each in `0.0..=1.0`) that get a fault. The default is no faults.
///
/// The shares are tried in this order on one uniform draw: 5xx, extra 429, dropped connection,
/// dropped connection after a write, malformed body, slow answer; so their sum should stay
/// `<= 1.0`.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct FaultConfig {
    /// Answer 502, 503 or 504 (nginx HTML or a JSON problem) without running the request.
    pub error_5xx_rate: f64,
    /// Answer 429 (HTML, no `Retry-After`) although the rate limit was not exceeded. These do
    /// not count as the client's violations (they never lead to a block).
    pub extra_429_rate: f64,
    /// Delay the answer by `slow_ms` (the request is then served normally).
    pub slow_rate: f64,
    /// The delay of a slow answer, in milliseconds.
    pub slow_ms: u64,
    /// Start a 200 answer and abort the connection in the middle of the body (a write is not
    /// applied).
    pub drop_rate: f64,
    /// Apply a write, then abort the connection in the middle of its answer (reads drawn for
    /// it are served normally).
    pub drop_after_write_rate: f64,
    /// Answer 200 with a truncated JSON body (reads only; a malformed write answer is sent
    /// without applying the write).
    pub malformed_rate: f64,
}

impl FaultConfig {
    /// No faults at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// The same mild mix on every kind: `rate` of 5xx, extra 429s, drops, drops after the
    /// write and malformed bodies each, and `rate` of slow answers of 200 ms.
    pub fn uniform(rate: f64) -> Self {
        Self {
            error_5xx_rate: rate,
            extra_429_rate: rate,
            slow_rate: rate,
            slow_ms: 200,
            drop_rate: rate,
            drop_after_write_rate: rate,
            malformed_rate: rate,
        }
    }

    /// Whether any fault can happen.
    pub fn is_active(&self) -> bool {
        [
            self.error_5xx_rate,
            self.extra_429_rate,
            self.slow_rate,
            self.drop_rate,
            self.drop_after_write_rate,
            self.malformed_rate,
        ]
        .iter()
        .any(|r| *r > 0.0)
    }
}

impl std::str::FromStr for FaultConfig {
    type Err = String;

    /// Parses `rebuy emulate --faults`: either one share for every kind (`0.05`, as
    /// [`FaultConfig::uniform`]) or a comma-separated list of `kind=share` with the kinds `5xx`,
    /// `429`, `drop`, `drop-after-write`, `malformed`, `slow`, and `slow-ms=MILLISECONDS` (the
    /// delay of a slow answer, 200 by default). Shares lie in `0..=1` and add up to at most 1.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let share = |k: &str, v: &str| -> Result<f64, String> {
            let x: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("fault share {k}={v:?} is not a number"))?;
            if !(0.0..=1.0).contains(&x) {
                return Err(format!("fault share {k}={x} is outside 0..=1"));
            }
            Ok(x)
        };
        let s = s.trim();
        if !s.contains('=') {
            let x = share("all", s)?;
            if x * 6.0 > 1.0 {
                return Err(format!(
                    "a uniform fault share of {x} on six kinds adds up to more than 1 (at most 0.16)"
                ));
            }
            return Ok(Self::uniform(x));
        }
        let mut f = Self {
            slow_ms: 200,
            ..Self::default()
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("fault {part:?} is not kind=share"))?;
            let k = k.trim();
            match k {
                "5xx" => f.error_5xx_rate = share(k, v)?,
                "429" => f.extra_429_rate = share(k, v)?,
                "drop" => f.drop_rate = share(k, v)?,
                "drop-after-write" => f.drop_after_write_rate = share(k, v)?,
                "malformed" => f.malformed_rate = share(k, v)?,
                "slow" => f.slow_rate = share(k, v)?,
                "slow-ms" => {
                    f.slow_ms = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("slow-ms={v:?} is not a number of milliseconds"))?
                }
                other => {
                    return Err(format!(
                        "unknown fault kind {other:?} (known: 5xx, 429, drop, drop-after-write, malformed, slow, slow-ms)"
                    ));
                }
            }
        }
        let sum = f.error_5xx_rate
            + f.extra_429_rate
            + f.drop_rate
            + f.drop_after_write_rate
            + f.malformed_rate
            + f.slow_rate;
        if sum > 1.0 + 1e-9 {
            return Err(format!("fault shares add up to {sum}, more than 1"));
        }
        Ok(f)
    }
}

impl std::fmt::Display for FaultConfig {
    /// The `--faults` form of this mix (`none` when no fault can happen).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.is_active() {
            return f.write_str("none");
        }
        let parts = [
            ("5xx", self.error_5xx_rate),
            ("429", self.extra_429_rate),
            ("drop", self.drop_rate),
            ("drop-after-write", self.drop_after_write_rate),
            ("malformed", self.malformed_rate),
            ("slow", self.slow_rate),
        ];
        let mut first = true;
        for (k, v) in parts.iter().filter(|(_, v)| *v > 0.0) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        if self.slow_rate > 0.0 {
            write!(f, ",slow-ms={}", self.slow_ms)?;
        }
        Ok(())
    }
}

/// One drawn fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Serve normally.
    None,
    /// A gateway error with this status; `json` picks a JSON problem body over nginx HTML.
    ServerError {
        /// 502, 503 or 504.
        status: u16,
        /// JSON body instead of HTML.
        json: bool,
    },
    /// A 429 not caused by the client's rate.
    Extra429,
    /// Serve after this delay.
    Slow(Duration),
    /// Abort the connection mid-body.
    Drop,
    /// Apply the write, then abort the connection mid-answer (reads are served normally).
    DropAfterWrite,
    /// Truncate the JSON body.
    Malformed,
}

/// Draws faults deterministically from a seed.
#[derive(Debug, Clone)]
pub struct FaultPicker {
    rng: Rng,
}

impl FaultPicker {
    /// A picker seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed ^ 0xFA17),
        }
    }

    /// Draws the fault of the next request.
    pub fn pick(&mut self, cfg: &FaultConfig) -> Fault {
        if !cfg.is_active() {
            return Fault::None;
        }
        let x = self.rng.unit();
        let mut edge = 0.0;
        let mut hit = |rate: f64| {
            edge += rate.clamp(0.0, 1.0);
            x < edge
        };
        if hit(cfg.error_5xx_rate) {
            let status = [502, 503, 504][self.rng.below(3) as usize];
            return Fault::ServerError {
                status,
                json: self.rng.chance(0.3),
            };
        }
        if hit(cfg.extra_429_rate) {
            return Fault::Extra429;
        }
        if hit(cfg.drop_rate) {
            return Fault::Drop;
        }
        if hit(cfg.drop_after_write_rate) {
            return Fault::DropAfterWrite;
        }
        if hit(cfg.malformed_rate) {
            return Fault::Malformed;
        }
        if hit(cfg.slow_rate) {
            return Fault::Slow(Duration::from_millis(cfg.slow_ms));
        }
        Fault::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_form_parses_round_trips_and_refuses_nonsense() {
        let f: FaultConfig = "5xx=0.1, drop-after-write=0.05,slow=0.2,slow-ms=1500"
            .parse()
            .unwrap();
        assert_eq!(f.error_5xx_rate, 0.1);
        assert_eq!(f.drop_after_write_rate, 0.05);
        assert_eq!((f.slow_rate, f.slow_ms), (0.2, 1500));
        assert_eq!(f.drop_rate, 0.0);
        assert_eq!(f.to_string().parse::<FaultConfig>().unwrap(), f);
        assert_eq!(
            "0.05".parse::<FaultConfig>().unwrap(),
            FaultConfig::uniform(0.05)
        );
        assert_eq!("0".parse::<FaultConfig>().unwrap().to_string(), "none");
        for bad in [
            "0.5",
            "5xx=2",
            "drop=x",
            "teapot=0.1",
            "5xx=0.6,429=0.6",
            "drop",
        ] {
            let e = bad.parse::<FaultConfig>().unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(
            "teapot=0.1"
                .parse::<FaultConfig>()
                .unwrap_err()
                .contains("teapot")
        );
    }

    #[test]
    fn no_config_no_faults() {
        let mut p = FaultPicker::new(1);
        assert!((0..1000).all(|_| p.pick(&FaultConfig::none()) == Fault::None));
    }

    #[test]
    fn shares_are_respected_and_deterministic() {
        let cfg = FaultConfig {
            error_5xx_rate: 0.2,
            drop_rate: 0.1,
            ..Default::default()
        };
        let draw = || {
            let mut p = FaultPicker::new(9);
            (0..10_000).map(|_| p.pick(&cfg)).collect::<Vec<_>>()
        };
        let a = draw();
        assert_eq!(a, draw());
        let errors = a
            .iter()
            .filter(|f| matches!(f, Fault::ServerError { .. }))
            .count();
        let drops = a.iter().filter(|f| **f == Fault::Drop).count();
        assert!((1_700..2_300).contains(&errors), "{errors}");
        assert!((800..1_200).contains(&drops), "{drops}");
    }
}
