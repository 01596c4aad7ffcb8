//! A synthetic base of periodic buyers for the backtest and its benchmark: every customer
//! buys at their own rhythm, with Erlang-k gaps whose regularity k and mean length differ
//! from customer to customer, and stops after any purchase (the first included) with a
//! customer-specific probability. Deterministic for a seed.
//!
//! The set: births spread over the first 26 weeks, 52 weeks of calibration, 39 weeks of
//! holdout (the shape of the CDNOW split, a year of history before it). Per customer:
//! - regularity k uniform in {2, 3, 4, 6, 8, 12};
//! - mean gap log-normal with median 30 days (sigma 0.9), kept within 5 .. 200 days;
//! - dropout probability at each purchase beta(1, 7) (mean 12.5%).
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution, Gamma, LogNormal};

/// The name of the set, as the benchmark heads its section.
pub const NAME: &str = "Periodic buyers (Erlang-k)";

/// First day of the history (2024-01-01 as a day number).
const START: i64 = 19_723;
const BIRTH_DAYS: f64 = 182.0;
const CALIBRATION_DAYS: i64 = 364;
const HOLDOUT_DAYS: i64 = 273;
const SIGMA: f64 = 0.9;

/// A generated base: purchase days per customer (distinct, ascending day numbers), split at
/// `cutoff` (last calibration day) with the holdout ending on `end`.
#[derive(Debug, Clone)]
pub struct PeriodicSet {
    /// Purchase days of every customer.
    pub days: Vec<Vec<i64>>,
    /// Last calibration day.
    pub cutoff: i64,
    /// Last holdout day.
    pub end: i64,
}

/// Generates `customers` periodic buyers from `seed`.
pub fn generate(customers: usize, seed: u64) -> PeriodicSet {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ks = [2u32, 3, 4, 6, 8, 12];
    let gap = LogNormal::new(30f64.ln(), SIGMA).expect("valid log-normal");
    let dropout = Beta::new(1.0, 7.0).expect("valid beta");
    let cutoff = START + CALIBRATION_DAYS - 1;
    let end = cutoff + HOLDOUT_DAYS;
    let horizon = (end - START + 1) as f64;
    let days = (0..customers)
        .map(|_| {
            let k = ks[rng.random_range(0..ks.len())];
            let mean_gap: f64 = gap.sample(&mut rng).clamp(5.0, 200.0);
            let p: f64 = dropout.sample(&mut rng);
            // Erlang-k with mean mean_gap: gamma(k, mean_gap / k).
            let erlang = Gamma::new(k as f64, mean_gap / k as f64).expect("valid gamma");
            let mut t = rng.random_range(0.0..BIRTH_DAYS);
            let mut out = vec![START + t as i64];
            while rng.random::<f64>() >= p {
                t += erlang.sample(&mut rng);
                if t >= horizon {
                    break;
                }
                let d = START + t as i64;
                if out.last() != Some(&d) {
                    out.push(d);
                }
            }
            out
        })
        .collect();
    PeriodicSet { days, cutoff, end }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped_as_described() {
        let a = generate(3_000, 14);
        assert_eq!(a.days, generate(3_000, 14).days);
        assert_ne!(a.days, generate(3_000, 15).days);
        assert_eq!(a.end - a.cutoff, HOLDOUT_DAYS);
        let births_ok = a.days.iter().all(|d| d[0] >= START && d[0] < START + 182);
        assert!(births_ok);
        assert!(a.days.iter().all(|d| d.windows(2).all(|w| w[0] < w[1])));
        let repeat = a.days.iter().filter(|d| d.len() > 1).count();
        let in_holdout = a
            .days
            .iter()
            .filter(|d| d.iter().any(|&x| x > a.cutoff && x <= a.end))
            .count();
        // Most come back at least once; a good part is still buying in the holdout.
        assert!(repeat > 2_000 && in_holdout > 600, "{repeat} {in_holdout}");
    }
}
