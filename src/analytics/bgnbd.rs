//! The BG/NBD model (Fader, Hardie and Lee 2005, "Counting Your Customers the Easy Way"):
//! purchases while alive follow a Poisson process with a gamma(r, alpha) distributed rate; after
//! each purchase the customer drops out with a beta(a, b) distributed probability. Fitted by
//! maximum likelihood on each customer's (x = repeat purchases, t_x = time of the last purchase
//! since the first, T = time from the first purchase to the analysis date).
//!
//! Speed: the likelihood only depends on the distinct (x, t_x, T) triples, so customers are
//! aggregated into weighted rows first ([`aggregate`]); everything that depends only on x
//! (log-gamma and digamma terms) is computed once per distinct x per evaluation, and the rows
//! are summed on all cores. The fit is BFGS with the analytic gradient on log-parameters, from
//! times rescaled so that the largest T is 10 (as `lifetimes` does), with Nelder-Mead as a
//! fallback.
#![allow(clippy::needless_range_loop)] // index loops over small fixed arrays read clearer
use super::fit;
use super::special::{digamma, hyp2f1, hyp2f1_multi, ln_gamma};
use serde::Serialize;

pub use super::fit::SummaryRow;

/// Fitted BG/NBD parameters. `alpha` is in the time unit of the data (days for portals).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BgNbdParams {
    /// Shape of the purchase-rate gamma.
    pub r: f64,
    /// Scale of the purchase-rate gamma (time units).
    pub alpha: f64,
    /// Beta dropout parameter a.
    pub a: f64,
    /// Beta dropout parameter b.
    pub b: f64,
    /// Log-likelihood at the optimum.
    pub log_likelihood: f64,
    /// Whether the optimiser converged.
    pub converged: bool,
}

/// Aggregates per-customer summaries `(x, t_x, T)` into weighted distinct rows, sorted by
/// (x, t_x, T).
pub fn aggregate(rows: Vec<(u32, f64, f64)>) -> Vec<SummaryRow> {
    aggregate_indexed(rows).0
}

/// Like [`aggregate`], also returning for each input its row index (so callers map rows back
/// to customers without searching).
pub fn aggregate_indexed(rows: Vec<(u32, f64, f64)>) -> (Vec<SummaryRow>, Vec<u32>) {
    let mut keyed: Vec<(u32, f64, f64, u32)> = rows
        .into_iter()
        .enumerate()
        .map(|(i, (x, tx, t))| (x, tx, t, i as u32))
        .collect();
    keyed.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(a.2.total_cmp(&b.2))
    });
    let mut out: Vec<SummaryRow> = Vec::new();
    let mut index = vec![0u32; keyed.len()];
    for (x, t_x, t, i) in keyed {
        match out.last_mut() {
            Some(last) if last.x == x && last.t_x == t_x && last.t == t => last.count += 1.0,
            _ => out.push(SummaryRow {
                x,
                t_x,
                t,
                count: 1.0,
            }),
        }
        index[i as usize] = (out.len() - 1) as u32;
    }
    (out, index)
}

/// Per-x constants of one likelihood evaluation.
struct XTerms {
    /// lgamma(r+x) - lgamma(r) + r ln(alpha) + A2.
    base: f64,
    /// ln a - ln(b+x-1) (x > 0).
    ln_c: f64,
    /// d base / d r, d base / d a, d base / d b.
    d_r: f64,
    d_a: f64,
    d_b: f64,
}

/// Rows in the form the likelihood loop wants: times replaced by indices into a table of the
/// distinct time values, so `ln(alpha + t)` and `1 / (alpha + t)` are computed once per distinct
/// time per evaluation instead of once per row (portal times are whole days: a few thousand
/// distinct values for hundreds of thousands of rows).
struct Compiled {
    times: Vec<f64>,
    /// (x, index of T, index of t_x, count), sorted by x.
    rows: Vec<(u32, u32, u32, f64)>,
}

impl Compiled {
    fn new(rows: &[SummaryRow]) -> Compiled {
        let mut times: Vec<f64> = rows.iter().flat_map(|r| [r.t, r.t_x]).collect();
        times.sort_by(f64::total_cmp);
        times.dedup();
        let index = |v: f64| times.binary_search_by(|x| x.total_cmp(&v)).expect("listed") as u32;
        let mut out: Vec<(u32, u32, u32, f64)> = rows
            .iter()
            .map(|r| (r.x, index(r.t), index(r.t_x), r.count))
            .collect();
        out.sort_by_key(|r| r.0);
        Compiled { times, rows: out }
    }
}

/// Log-likelihood and its gradient with respect to (r, alpha, a, b).
fn ll_grad(c: &Compiled, p: [f64; 4]) -> (f64, [f64; 4]) {
    let [r, alpha, a, b] = p;
    let ln_v: Vec<f64> = c.times.iter().map(|t| (alpha + t).ln()).collect();
    let inv: Vec<f64> = c.times.iter().map(|t| 1.0 / (alpha + t)).collect();
    let (ln_v, inv) = (&ln_v[..], &inv[..]);
    fit::par_sum(&c.rows, |rows| {
        ll_grad_chunk(rows, ln_v, inv, r, alpha, a, b)
    })
}

fn x_terms(x: u32, r: f64, alpha: f64, a: f64, b: f64) -> XTerms {
    let xf = x as f64;
    let (a2, d_a2a, d_a2b) = if x == 0 {
        (0.0, 0.0, 0.0)
    } else {
        (
            ln_gamma(a + b) + ln_gamma(b + xf) - ln_gamma(b) - ln_gamma(a + b + xf),
            digamma(a + b) - digamma(a + b + xf),
            digamma(a + b) + digamma(b + xf) - digamma(b) - digamma(a + b + xf),
        )
    };
    XTerms {
        base: ln_gamma(r + xf) - ln_gamma(r) + r * alpha.ln() + a2,
        ln_c: if x > 0 {
            a.ln() - (b + xf - 1.0).ln()
        } else {
            0.0
        },
        d_r: digamma(r + xf) - digamma(r) + alpha.ln(),
        d_a: d_a2a,
        d_b: d_a2b,
    }
}

#[allow(clippy::too_many_arguments)]
fn ll_grad_chunk(
    rows: &[(u32, u32, u32, f64)],
    ln_v: &[f64],
    inv: &[f64],
    r: f64,
    alpha: f64,
    a: f64,
    b: f64,
) -> (f64, [f64; 4]) {
    let mut ll = 0.0;
    let mut g = [0.0; 4];
    let mut cur_x = u32::MAX;
    let mut xt = x_terms(0, r, alpha, a, b);
    let mut n = 0.0;
    let mut inv_b = 0.0;
    for &(x, ti, txi, c) in rows {
        if x != cur_x {
            cur_x = x;
            xt = x_terms(cur_x, r, alpha, a, b);
            inv_b = if x > 0 {
                1.0 / (b + x as f64 - 1.0)
            } else {
                0.0
            };
        }
        let rx = r + x as f64;
        let ln_t = ln_v[ti as usize];
        let u = -rx * ln_t;
        n += c;
        if x > 0 {
            let ln_tx = ln_v[txi as usize];
            let v = xt.ln_c - rx * ln_tx;
            // log(e^u + e^v) and the weight w = e^v / (e^u + e^v) from one exp.
            let (lse, w) = if v >= u {
                let e = (u - v).exp();
                (v + e.ln_1p(), 1.0 / (1.0 + e))
            } else {
                let e = (v - u).exp();
                (u + e.ln_1p(), e / (1.0 + e))
            };
            ll += c * (xt.base + lse);
            g[0] += c * (xt.d_r - (1.0 - w) * ln_t - w * ln_tx);
            g[1] -= c * rx * ((1.0 - w) * inv[ti as usize] + w * inv[txi as usize]);
            g[2] += c * (xt.d_a + w / a);
            g[3] += c * (xt.d_b - w * inv_b);
        } else {
            ll += c * (xt.base + u);
            g[0] += c * (xt.d_r - ln_t);
            g[1] -= c * rx * inv[ti as usize];
        }
    }
    g[1] += n * r / alpha;
    (ll, g)
}

/// Rows of the sample a big fit starts on (see [`fit`]).
const SAMPLE_ROWS: usize = 20_000;

/// The negative mean log-likelihood over `n` customers and its gradient, as a function of the
/// log-parameters (so positivity needs no constraint).
fn objective(c: &Compiled, n: f64) -> impl Fn(&[f64; 4]) -> (f64, [f64; 4]) + '_ {
    move |lp: &[f64; 4]| {
        let p = lp.map(f64::exp);
        fit::to_log_space(ll_grad(c, p), &p, n)
    }
}

/// The log-likelihood of `params` on `rows` (for reporting and tests).
pub fn log_likelihood(rows: &[SummaryRow], r: f64, alpha: f64, a: f64, b: f64) -> f64 {
    ll_grad(&Compiled::new(rows), [r, alpha, a, b]).0
}

/// Fits BG/NBD by maximum likelihood. `None` when there are no rows or no customer ever came
/// back (the dropout process is then not identifiable).
pub fn fit(rows: &[SummaryRow]) -> Option<BgNbdParams> {
    fit_sampled(rows, SAMPLE_ROWS)
}

/// [`fit`] that starts on a sample of `sample_rows` rows when there are more than four times
/// as many (0: never).
fn fit_sampled(rows: &[SummaryRow], sample_rows: usize) -> Option<BgNbdParams> {
    let sc = fit::Scaled::new(rows)?;
    // Starting point: a moderate rate (r/alpha ~ purchases per unit of scaled time) and a
    // symmetric dropout prior; the scaled problem is well conditioned around it.
    let x0 = [0.0, (1.0 / sc.rate).ln(), 0.0, 0.0];
    let compiled = Compiled::new(&sc.rows);
    let full = objective(&compiled, sc.n);
    let sample = sc.sample(sample_rows);
    let sample_compiled = sample
        .as_ref()
        .map(|s| (Compiled::new(s), fit::customers(s)));
    let sample_obj = sample_compiled.as_ref().map(|(c, n)| objective(c, *n));
    let m = fit::minimise(
        &full,
        sample_obj.as_ref().map(|f| f as fit::Objective<'_, 4>),
        x0,
        1e-10,
    );
    let p = m.x.map(f64::exp);
    Some(BgNbdParams {
        r: p[0],
        alpha: p[1] / sc.scale,
        a: p[2],
        b: p[3],
        // Rescaling time by s shifts the log-likelihood by -ln(s) per repeat purchase.
        log_likelihood: -m.f * sc.n + sc.scale.ln() * sc.purchases,
        converged: m.converged,
    })
}

impl BgNbdParams {
    /// P(alive | x, t_x, T).
    pub fn p_alive(&self, x: u32, t_x: f64, t: f64) -> f64 {
        1.0 / self.alive_denominator(x, t_x, t)
    }

    /// Expected purchases in the next `horizon` time units given (x, t_x, T): equation (10) of
    /// Fader, Hardie and Lee (2005), `expected_numerator / alive_denominator`.
    pub fn expected_purchases(&self, horizon: f64, x: u32, t_x: f64, t: f64) -> f64 {
        let e = self.expected_numerator(horizon, x, t) / self.alive_denominator(x, t_x, t);
        if e.is_finite() { e.max(0.0) } else { 0.0 }
    }

    /// The numerator of equation (10): it depends on (x, T) only, not on t_x, so callers with
    /// many customers compute it once per distinct (x, T).
    pub fn expected_numerator(&self, horizon: f64, x: u32, t: f64) -> f64 {
        if horizon <= 0.0 {
            return 0.0;
        }
        let (r, alpha, a, b) = (self.r, self.alpha, self.a, self.b);
        let xf = x as f64;
        let z = horizon / (alpha + t + horizon);
        let lead = (a + b + xf - 1.0) / (a - 1.0);
        // ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z) after Euler's transformation
        // 2F1(A, B; C; z) = (1-z)^(C-A-B) 2F1(C-A, C-B; C; z): the powers combine into
        // (1-z)^(a-1) and the new series converges fast for large x (no cancellation of huge
        // terms).
        let head = ((a - 1.0) * (1.0 - z).ln()).exp();
        lead * (1.0 - head * hyp2f1(a + b - 1.0 - r, a - 1.0, a + b + xf - 1.0, z))
    }

    /// [`Self::expected_numerator`] for several horizons at once (one shared series).
    pub fn expected_numerators(&self, horizons: &[f64], x: u32, t: f64) -> Vec<f64> {
        let (r, alpha, a, b) = (self.r, self.alpha, self.a, self.b);
        let xf = x as f64;
        let zs: Vec<f64> = horizons.iter().map(|h| h / (alpha + t + h)).collect();
        let mut f = vec![0.0; zs.len()];
        hyp2f1_multi(a + b - 1.0 - r, a - 1.0, a + b + xf - 1.0, &zs, &mut f);
        let lead = (a + b + xf - 1.0) / (a - 1.0);
        horizons
            .iter()
            .zip(zs.iter().zip(f))
            .map(|(&h, (&z, f))| {
                if h <= 0.0 {
                    0.0
                } else {
                    lead * (1.0 - ((a - 1.0) * (1.0 - z).ln()).exp() * f)
                }
            })
            .collect()
    }

    /// `1 / P(alive | x, t_x, T)`, the denominator of equation (10).
    pub fn alive_denominator(&self, x: u32, t_x: f64, t: f64) -> f64 {
        if x == 0 {
            return 1.0;
        }
        let xf = x as f64;
        1.0 + self.a / (self.b + xf - 1.0)
            * ((self.r + xf) * ((self.alpha + t).ln() - (self.alpha + t_x).ln())).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// E[X(t)] for a new customer (x = 0, T = 0) equals the unconditional expectation, which
    /// integrates (1/p)(1 - (alpha/(alpha+p t))^r) over p ~ Beta(a, b): an independent check of
    /// the hypergeometric formula.
    #[test]
    fn conditional_expectation_matches_numeric_integral_for_new_customer() {
        let p = BgNbdParams {
            r: 0.8,
            alpha: 5.0,
            a: 2.5,
            b: 3.0,
            log_likelihood: 0.0,
            converged: true,
        };
        let t = 20.0;
        let n = 200_000;
        let ln_beta = ln_gamma(p.a) + ln_gamma(p.b) - ln_gamma(p.a + p.b);
        let mut sum = 0.0;
        for i in 0..n {
            let q = (i as f64 + 0.5) / n as f64;
            let dens = ((p.a - 1.0) * q.ln() + (p.b - 1.0) * (1.0 - q).ln() - ln_beta).exp();
            sum += (1.0 - (p.alpha / (p.alpha + q * t)).powf(p.r)) / q * dens / n as f64;
        }
        let formula = p.expected_purchases(t, 0, 0.0, 0.0);
        assert!((formula - sum).abs() < 1e-6 * sum, "{formula} vs {sum}");
    }

    /// Customers drawn from BG/NBD itself (continuous times, so nearly every customer is a
    /// row of its own): the fit that starts on a sample reaches the same optimum as the plain
    /// fit, and both recover the parameters the data was drawn from.
    #[test]
    fn sampled_start_reaches_the_plain_optimum_and_recovers_the_truth() {
        use rand::{Rng, SeedableRng};
        use rand_distr::{Beta, Distribution, Exp, Gamma};
        let (r, alpha, a, b) = (0.25, 4.0, 0.8, 2.5);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let rate = Gamma::new(r, 1.0 / alpha).unwrap();
        let dropout = Beta::new(a, b).unwrap();
        let summaries: Vec<(u32, f64, f64)> = (0..30_000)
            .map(|_| {
                let t_end: f64 = rng.random_range(20.0..40.0);
                let (lambda, p): (f64, f64) = (rate.sample(&mut rng), dropout.sample(&mut rng));
                let (mut x, mut t, mut t_x) = (0u32, 0.0, 0.0);
                if let Ok(gap) = Exp::new(lambda.max(1e-12)) {
                    loop {
                        t += gap.sample(&mut rng);
                        if t > t_end {
                            break;
                        }
                        x += 1;
                        t_x = t;
                        if rng.random::<f64>() < p {
                            break;
                        }
                    }
                }
                (x, t_x, t_end)
            })
            .collect();
        let rows = aggregate(summaries);
        assert!(rows.len() > 4 * 2_000, "{} rows", rows.len());
        let plain = fit_sampled(&rows, 0).unwrap();
        let sampled = fit_sampled(&rows, 2_000).unwrap();
        assert!(plain.converged && sampled.converged);
        for (name, p, s) in [
            ("r", plain.r, sampled.r),
            ("alpha", plain.alpha, sampled.alpha),
            ("a", plain.a, sampled.a),
            ("b", plain.b, sampled.b),
        ] {
            assert!(
                (p - s).abs() <= 1e-5 * p,
                "{name}: plain {p} vs sampled {s}"
            );
        }
        assert!((plain.log_likelihood - sampled.log_likelihood).abs() < 1e-6);
        for (name, got, truth, tol) in [
            ("r", plain.r, r, 0.1),
            ("alpha", plain.alpha, alpha, 0.1),
            ("a", plain.a, a, 0.3),
            ("b", plain.b, b, 0.3),
        ] {
            assert!(
                (got - truth).abs() <= tol * truth,
                "{name}: fitted {got}, drawn with {truth}"
            );
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let rows = aggregate(vec![
            (0, 0.0, 5.0),
            (2, 3.0, 7.0),
            (5, 6.5, 8.0),
            (1, 0.5, 9.0),
            (2, 3.0, 7.0),
        ]);
        let p = [0.7, 2.0, 0.9, 2.5];
        let rows = Compiled::new(&rows);
        let (_, g) = ll_grad(&rows, p);
        for i in 0..4 {
            let h = 1e-6 * p[i];
            let (mut up, mut dn) = (p, p);
            up[i] += h;
            dn[i] -= h;
            let num = (ll_grad(&rows, up).0 - ll_grad(&rows, dn).0) / (2.0 * h);
            assert!(
                (num - g[i]).abs() < 1e-5 * num.abs().max(1.0),
                "{i}: {num} vs {}",
                g[i]
            );
        }
    }

    /// The Euler-transformed numerator equals the direct form of equation (10).
    #[test]
    fn numerator_matches_the_untransformed_formula() {
        let p = BgNbdParams {
            r: 0.24,
            alpha: 4.4,
            a: 0.79,
            b: 2.4,
            log_likelihood: 0.0,
            converged: true,
        };
        for (x, t, h) in [
            (0u32, 10.0, 39.0),
            (2, 38.86, 39.0),
            (7, 20.0, 5.0),
            (15, 3.0, 52.0),
        ] {
            let xf = x as f64;
            let z = h / (p.alpha + t + h);
            let direct = (p.a + p.b + xf - 1.0) / (p.a - 1.0)
                * (1.0
                    - ((p.alpha + t) / (p.alpha + t + h)).powf(p.r + xf)
                        * hyp2f1(p.r + xf, p.b + xf, p.a + p.b + xf - 1.0, z));
            let got = p.expected_numerator(h, x, t);
            assert!(
                (got - direct).abs() <= 1e-9 * direct.abs().max(1e-9),
                "{x} {t} {h}: {got} vs {direct}"
            );
        }
    }

    #[test]
    fn many_horizons_at_once_equal_one_by_one() {
        let p = BgNbdParams {
            r: 0.24,
            alpha: 4.4,
            a: 0.79,
            b: 2.4,
            log_likelihood: 0.0,
            converged: true,
        };
        let h = [30.0, 90.0, 365.0];
        let many = p.expected_numerators(&h, 3, 20.0);
        for (i, &t) in h.iter().enumerate() {
            let one = p.expected_numerator(t, 3, 20.0);
            assert!((many[i] - one).abs() <= 1e-12 * one.abs(), "{t}");
        }
    }

    #[test]
    fn p_alive_is_one_without_repeat_and_falls_with_silence() {
        let p = BgNbdParams {
            r: 0.24,
            alpha: 4.4,
            a: 0.79,
            b: 2.4,
            log_likelihood: 0.0,
            converged: true,
        };
        assert_eq!(p.p_alive(0, 0.0, 30.0), 1.0);
        assert!(p.p_alive(3, 29.0, 30.0) > p.p_alive(3, 5.0, 30.0));
    }
}
