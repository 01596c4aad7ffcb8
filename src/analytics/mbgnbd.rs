//! The MBG/NBD model (Batislam, Denizel and Filiztekin 2007): BG/NBD in which a customer may
//! also drop out right after the first purchase, so a one-time buyer gets a real P(alive)
//! below one. Purchases while alive are Poisson with a gamma(r, alpha) rate; after every
//! purchase, the first included, the customer drops out with a beta(a, b) distributed
//! probability. Per customer:
//!
//! `L = B(a, b+x+1)/B(a, b) Gamma(r+x) alpha^r / Gamma(r) [(alpha+T)^-(r+x) + a/(b+x) (alpha+t_x)^-(r+x)]`
//!
//! Fitted by BFGS with the analytic gradient on log-parameters, on times rescaled so that the
//! largest T is 10, on the aggregated rows of [`SummaryRow`].
#![allow(clippy::needless_range_loop)] // index loops over small fixed arrays read clearer
use super::bgnbd::SummaryRow;
use super::fit;
use super::special::{digamma, hyp2f1, ln_gamma};
use serde::Serialize;

/// Fitted MBG/NBD parameters. `alpha` is in the time unit of the data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MbgNbdParams {
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

/// Log-likelihood and gradient with respect to (r, alpha, a, b); `rows` sorted by x.
fn ll_grad(rows: &[SummaryRow], p: [f64; 4]) -> (f64, [f64; 4]) {
    let [r, alpha, a, b] = p;
    let chunk = |rows: &[SummaryRow]| {
        let mut ll = 0.0;
        let mut g = [0.0; 4];
        let mut cur = u32::MAX;
        let (mut base, mut d_r, mut d_a, mut d_b, mut ln_c) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let (lg_r, dg_r, ln_alpha) = (ln_gamma(r), digamma(r), alpha.ln());
        let (lg_ab, dg_ab, lg_b, dg_b) = (ln_gamma(a + b), digamma(a + b), ln_gamma(b), digamma(b));
        for row in rows {
            if row.x != cur {
                cur = row.x;
                let xf = cur as f64;
                base = ln_gamma(r + xf) - lg_r + r * ln_alpha + lg_ab + ln_gamma(b + xf + 1.0)
                    - lg_b
                    - ln_gamma(a + b + xf + 1.0);
                d_r = digamma(r + xf) - dg_r + ln_alpha;
                let dg_abx = digamma(a + b + xf + 1.0);
                d_a = dg_ab - dg_abx;
                d_b = dg_ab + digamma(b + xf + 1.0) - dg_b - dg_abx;
                ln_c = a.ln() - (b + xf).ln();
            }
            let xf = row.x as f64;
            let rx = r + xf;
            let (lt, ltx) = ((alpha + row.t).ln(), (alpha + row.t_x).ln());
            let u = -rx * lt;
            let v = ln_c - rx * ltx;
            let (lse, w) = if v >= u {
                let e = (u - v).exp();
                (v + e.ln_1p(), 1.0 / (1.0 + e))
            } else {
                let e = (v - u).exp();
                (u + e.ln_1p(), e / (1.0 + e))
            };
            let c = row.count;
            ll += c * (base + lse);
            g[0] += c * (d_r - (1.0 - w) * lt - w * ltx);
            g[1] += c * (r / alpha - rx * ((1.0 - w) / (alpha + row.t) + w / (alpha + row.t_x)));
            g[2] += c * (d_a + w / a);
            g[3] += c * (d_b - w / (b + xf));
        }
        (ll, g)
    };
    fit::par_sum(rows, chunk)
}

/// The log-likelihood of `params` on `rows` (for reporting and tests).
pub fn log_likelihood(rows: &[SummaryRow], r: f64, alpha: f64, a: f64, b: f64) -> f64 {
    ll_grad(rows, [r, alpha, a, b]).0
}

/// Fits MBG/NBD by maximum likelihood. `None` when there are no rows or no customer ever came
/// back.
pub fn fit(rows: &[SummaryRow]) -> Option<MbgNbdParams> {
    let mut sc = fit::Scaled::new(rows)?;
    sc.rows.sort_by_key(|r| r.x);
    let x0 = [0.0, (1.0 / sc.rate).ln(), 0.0, 0.0];
    let obj = |lp: &[f64; 4]| {
        let p = lp.map(f64::exp);
        fit::to_log_space(ll_grad(&sc.rows, p), &p, sc.n)
    };
    let m = fit::minimise(&obj, None, x0, 1e-10);
    let p = m.x.map(f64::exp);
    Some(MbgNbdParams {
        r: p[0],
        alpha: p[1] / sc.scale,
        a: p[2],
        b: p[3],
        log_likelihood: -m.f * sc.n + sc.scale.ln() * sc.purchases,
        converged: m.converged,
    })
}

impl MbgNbdParams {
    /// `1 / P(alive | x, t_x, T)`.
    pub fn alive_denominator(&self, x: u32, t_x: f64, t: f64) -> f64 {
        let xf = x as f64;
        1.0 + self.a / (self.b + xf)
            * ((self.r + xf) * ((self.alpha + t).ln() - (self.alpha + t_x).ln())).exp()
    }

    /// P(alive | x, t_x, T); below one also for one-time buyers.
    pub fn p_alive(&self, x: u32, t_x: f64, t: f64) -> f64 {
        1.0 / self.alive_denominator(x, t_x, t)
    }

    /// The numerator of the conditional expectation (it depends on (x, T) only):
    /// `(a+b+x)/(a-1) [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x+1; a+b+x; z)]`,
    /// `z = t/(alpha+T+t)`, after Euler's transformation (as in BG/NBD).
    pub fn expected_numerator(&self, horizon: f64, x: u32, t: f64) -> f64 {
        if horizon <= 0.0 {
            return 0.0;
        }
        let (r, alpha, a, b) = (self.r, self.alpha, self.a, self.b);
        let xf = x as f64;
        let z = horizon / (alpha + t + horizon);
        let head = ((a - 1.0) * (1.0 - z).ln()).exp();
        (a + b + xf) / (a - 1.0) * (1.0 - head * hyp2f1(a + b - r, a - 1.0, a + b + xf, z))
    }

    /// E[purchases in the next `horizon` time units | x, t_x, T].
    pub fn expected_purchases(&self, horizon: f64, x: u32, t_x: f64, t: f64) -> f64 {
        let e = self.expected_numerator(horizon, x, t) / self.alive_denominator(x, t_x, t);
        if e.is_finite() { e.max(0.0) } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::bgnbd::aggregate;

    const P: MbgNbdParams = MbgNbdParams {
        r: 0.8,
        alpha: 5.0,
        a: 2.5,
        b: 3.0,
        log_likelihood: 0.0,
        converged: true,
    };

    /// For a new customer the expectation integrates ((1-p)/p)(1 - (alpha/(alpha+p t))^r)
    /// over p ~ Beta(a, b) (alive after the first purchase with probability 1-p, then
    /// BG-like): an independent check of the hypergeometric formula.
    #[test]
    fn expectation_matches_numeric_integral_for_new_customer() {
        let p = P;
        let t = 20.0;
        let n = 200_000;
        let ln_beta = ln_gamma(p.a) + ln_gamma(p.b) - ln_gamma(p.a + p.b);
        let mut sum = 0.0;
        for i in 0..n {
            let q = (i as f64 + 0.5) / n as f64;
            let dens = ((p.a - 1.0) * q.ln() + (p.b - 1.0) * (1.0 - q).ln() - ln_beta).exp();
            sum +=
                (1.0 - (p.alpha / (p.alpha + q * t)).powf(p.r)) * (1.0 - q) / q * dens / n as f64;
        }
        let formula = p.expected_purchases(t, 0, 0.0, 0.0);
        assert!((formula - sum).abs() < 1e-6 * sum, "{formula} vs {sum}");
        // A new customer is alive with probability E[1 - p] = b / (a + b).
        assert!((p.p_alive(0, 0.0, 0.0) - p.b / (p.a + p.b)).abs() < 1e-15);
    }

    /// The Euler-transformed numerator equals the direct form.
    #[test]
    fn numerator_matches_the_untransformed_formula() {
        let p = MbgNbdParams {
            r: 0.52,
            alpha: 6.18,
            a: 0.89,
            b: 1.61,
            ..P
        };
        for (x, t, h) in [
            (0u32, 10.0, 39.0),
            (2, 38.86, 39.0),
            (7, 20.0, 5.0),
            (15, 3.0, 52.0),
        ] {
            let xf = x as f64;
            let z = h / (p.alpha + t + h);
            let direct = (p.a + p.b + xf) / (p.a - 1.0)
                * (1.0
                    - ((p.alpha + t) / (p.alpha + t + h)).powf(p.r + xf)
                        * hyp2f1(p.r + xf, p.b + xf + 1.0, p.a + p.b + xf, z));
            let got = p.expected_numerator(h, x, t);
            assert!(
                (got - direct).abs() <= 1e-9 * direct.abs(),
                "{x} {t} {h}: {got} vs {direct}"
            );
        }
    }

    /// The likelihood from its definition, with beta functions (not the gradient's digamma
    /// bookkeeping), and the gradient against finite differences.
    #[test]
    fn likelihood_and_gradient_match_their_definitions() {
        let rows = aggregate(vec![
            (0, 0.0, 5.0),
            (2, 3.0, 7.0),
            (5, 6.5, 8.0),
            (1, 0.5, 9.0),
            (2, 3.0, 7.0),
        ]);
        let p = [0.7, 2.0, 0.9, 2.5];
        let [r, alpha, a, b] = p;
        let ln_b = |x: f64, y: f64| ln_gamma(x) + ln_gamma(y) - ln_gamma(x + y);
        let want: f64 = rows
            .iter()
            .map(|row| {
                let xf = row.x as f64;
                row.count
                    * (ln_b(a, b + xf + 1.0) - ln_b(a, b) + ln_gamma(r + xf) - ln_gamma(r)
                        + r * alpha.ln()
                        + ((alpha + row.t).powf(-(r + xf))
                            + a / (b + xf) * (alpha + row.t_x).powf(-(r + xf)))
                        .ln())
            })
            .sum();
        let (got, g) = ll_grad(&rows, p);
        assert!((got - want).abs() < 1e-10 * want.abs(), "{got} vs {want}");
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
}
