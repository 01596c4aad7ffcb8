//! The MBG/CNBD-k model (Platzer and Reutterer 2016, "Ticking Away the Moments: Timing
//! Regularity Helps to Better Predict Customer Activity"; BTYDplus `mbgcnbd`): MBG/NBD with
//! Erlang-k gaps between purchases instead of exponential ones, so customers who buy at a
//! regular rhythm (k > 1) are told apart from customers who stopped. While alive a customer's
//! gaps are Erlang-k with rate lambda, lambda ~ gamma(r, alpha) across customers (mean gap
//! k / lambda); at every purchase, the first included, the customer drops out with a
//! beta(a, b) distributed probability. For k = 1 it is MBG/NBD. Per customer, with
//! `R = r + k x`:
//!
//! `L = (k-1) litt - x ln((k-1)!) + ln B(a, b+x+1)/B(a, b) + ln Gamma(R)/Gamma(r) + r ln alpha`
//! `  + ln[ (alpha+T)^-R sum_{j<k} (R)_j/j! ((T-t_x)/(alpha+T))^j + a/(b+x) (alpha+t_x)^-R ]`
//!
//! where `litt` is the sum of the logarithms of the customer's gaps. That term does not depend
//! on the parameters, so the fit for a given k runs on the aggregated (x, t_x, T) rows and only
//! the base's total `litt` enters, when the likelihoods of different k are compared: k is
//! chosen per base as the one of 1..=[`MAX_K`] with the highest likelihood.
//!
//! Predictions are exact for every k (BTYDplus approximates them for k > 1): given alive, the
//! posterior of lambda is a mixture over j, the Erlang phases already completed in the current
//! gap, of gamma(R + j, alpha + T) with weights `(R)_j/j! ((T-t_x)/(alpha+T))^j`; the phases
//! in the next h time units are then negative binomial, and every k phases is a purchase after
//! which the customer stays with a probability whose posterior is beta(a, b + x + 1).
#![allow(clippy::needless_range_loop)] // index loops over small fixed arrays read clearer
use super::bgnbd::SummaryRow;
use super::fit;
use super::special::{digamma, ln_gamma};
use serde::Serialize;

/// The largest regularity tried.
pub const MAX_K: u32 = 12;

/// Fitted MBG/CNBD-k parameters. `alpha` is in the time unit of the data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MbgCnbdParams {
    /// Regularity: Erlang-k gaps (1 = exponential, as MBG/NBD).
    pub k: u32,
    /// Shape of the gamma of the phase rate lambda.
    pub r: f64,
    /// Scale of the gamma of the phase rate lambda (time units).
    pub alpha: f64,
    /// Beta dropout parameter a.
    pub a: f64,
    /// Beta dropout parameter b.
    pub b: f64,
    /// Log-likelihood at the optimum, with the gap term (comparable across k).
    pub log_likelihood: f64,
    /// Whether the optimiser converged.
    pub converged: bool,
}

/// The inputs of the fit besides the rows: the sum over customers of the logarithms of their
/// gaps (in the rows' time unit) and the number of gaps.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GapLogs {
    /// Sum of ln(gap) over all gaps of all customers.
    pub litt: f64,
    /// Number of gaps (repeat purchases).
    pub gaps: f64,
}

impl GapLogs {
    /// The gap statistics of customers' purchase times (each ascending, distinct).
    pub fn of<'a>(days: impl IntoIterator<Item = &'a [f64]>) -> GapLogs {
        let mut g = GapLogs::default();
        for d in days {
            for w in d.windows(2) {
                g.litt += (w[1] - w[0]).ln();
                g.gaps += 1.0;
            }
        }
        g
    }
}

/// `ln((k-1)!)`.
fn ln_fact(k: u32) -> f64 {
    ln_gamma(k as f64)
}

/// The likelihood without the gap term, and its gradient with respect to (r, alpha, a, b);
/// `rows` sorted by x.
fn ll_grad(rows: &[SummaryRow], k: u32, p: [f64; 4]) -> (f64, [f64; 4]) {
    let [r, alpha, a, b] = p;
    let kf = k as f64;
    let chunk = |rows: &[SummaryRow]| {
        let mut ll = 0.0;
        let mut g = [0.0; 4];
        let mut cur = u32::MAX;
        let (mut base, mut d_r, mut d_a, mut d_b, mut ln_c) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let (lg_r, dg_r, ln_alpha) = (ln_gamma(r), digamma(r), alpha.ln());
        let (lg_ab, dg_ab, lg_b, dg_b) = (ln_gamma(a + b), digamma(a + b), ln_gamma(b), digamma(b));
        for row in rows {
            let xf = row.x as f64;
            let big_r = r + kf * xf;
            if row.x != cur {
                cur = row.x;
                base = ln_gamma(big_r) - lg_r + r * ln_alpha + lg_ab + ln_gamma(b + xf + 1.0)
                    - lg_b
                    - ln_gamma(a + b + xf + 1.0);
                d_r = digamma(big_r) - dg_r + ln_alpha;
                let dg_abx = digamma(a + b + xf + 1.0);
                d_a = dg_ab - dg_abx;
                d_b = dg_ab + digamma(b + xf + 1.0) - dg_b - dg_abx;
                ln_c = a.ln() - (b + xf).ln();
            }
            let (at, atx) = (alpha + row.t, alpha + row.t_x);
            let (lt, ltx) = (at.ln(), atx.ln());
            // S = sum_{j<k} (R)_j/j! q^j, with dS/dR and dS/dalpha (dq/dalpha = -q/(alpha+T)).
            let q = (row.t - row.t_x) / at;
            let (mut c, mut h, mut s, mut s_r, mut s_a) = (1.0, 0.0, 1.0, 0.0, 0.0);
            for j in 1..k {
                let jf = j as f64;
                h += 1.0 / (big_r + jf - 1.0);
                c *= (big_r + jf - 1.0) * q / jf;
                s += c;
                s_r += c * h;
                s_a -= jf * c / at;
            }
            let u = -big_r * lt + s.ln();
            let v = ln_c - big_r * ltx;
            let (lse, w) = if v >= u {
                let e = (u - v).exp();
                (v + e.ln_1p(), 1.0 / (1.0 + e))
            } else {
                let e = (v - u).exp();
                (u + e.ln_1p(), e / (1.0 + e))
            };
            let cnt = row.count;
            ll += cnt * (base + lse);
            g[0] += cnt * (d_r + (1.0 - w) * (s_r / s - lt) - w * ltx);
            g[1] += cnt * (r / alpha + (1.0 - w) * (s_a / s - big_r / at) - w * big_r / atx);
            g[2] += cnt * (d_a + w / a);
            g[3] += cnt * (d_b - w / (b + xf));
        }
        (ll, g)
    };
    fit::par_sum(rows, chunk)
}

/// The log-likelihood of `params` on `rows` with the gap statistics `gaps`.
pub fn log_likelihood(rows: &[SummaryRow], gaps: GapLogs, p: &MbgCnbdParams) -> f64 {
    let mut sorted = rows.to_vec();
    sorted.sort_by_key(|r| r.x);
    ll_grad(&sorted, p.k, [p.r, p.alpha, p.a, p.b]).0 + gap_term(gaps, p.k)
}

/// `(k-1) litt - gaps ln((k-1)!)`.
fn gap_term(gaps: GapLogs, k: u32) -> f64 {
    (k as f64 - 1.0) * gaps.litt - gaps.gaps * ln_fact(k)
}

/// Fits MBG/CNBD-k for one given `k`. `None` when there are no rows or no customer ever came
/// back.
pub fn fit_k(rows: &[SummaryRow], gaps: GapLogs, k: u32) -> Option<MbgCnbdParams> {
    let mut sc = fit::Scaled::new(rows)?;
    sc.rows.sort_by_key(|r| r.x);
    let kf = k.max(1) as f64;
    // The phase rate is k times the purchase rate.
    let x0 = [0.0, (1.0 / (kf * sc.rate)).ln(), 0.0, 0.0];
    let obj = |lp: &[f64; 4]| {
        let p = lp.map(f64::exp);
        fit::to_log_space(ll_grad(&sc.rows, k.max(1), p), &p, sc.n)
    };
    let m = fit::minimise(&obj, None, x0, 1e-10);
    let p = m.x.map(f64::exp);
    // Rescaling time by s multiplies the density of every gap by s (k phases each): the
    // likelihood in the data's unit is the rescaled one plus k ln(s) per gap.
    Some(MbgCnbdParams {
        k: k.max(1),
        r: p[0],
        alpha: p[1] / sc.scale,
        a: p[2],
        b: p[3],
        log_likelihood: -m.f * sc.n + kf * sc.scale.ln() * sc.purchases + gap_term(gaps, k),
        converged: m.converged,
    })
}

/// Fits MBG/CNBD-k for k = 1, 2, ... and keeps the k with the highest likelihood; the search
/// stops after [`MAX_K`] or once the likelihood fell twice in a row.
pub fn fit(rows: &[SummaryRow], gaps: GapLogs) -> Option<MbgCnbdParams> {
    let mut best: Option<MbgCnbdParams> = None;
    let mut falls = 0;
    let mut prev = f64::NEG_INFINITY;
    for k in 1..=MAX_K {
        let Some(p) = fit_k(rows, gaps, k) else {
            break;
        };
        if !p.log_likelihood.is_finite() {
            break;
        }
        falls = if p.log_likelihood < prev {
            falls + 1
        } else {
            0
        };
        prev = p.log_likelihood;
        if best.is_none_or(|b| p.log_likelihood > b.log_likelihood) {
            best = Some(p);
        }
        if falls >= 2 {
            break;
        }
    }
    best
}

/// Negative binomial probabilities of the number of Erlang phases in `h` time units when the
/// phase rate is gamma(shape, scale) distributed, term by term in logs (no underflow for big
/// shapes), handed to `f(i, P(N = i))` until the rest of the mass is negligible; `f` returns
/// false to stop early.
fn nbd_terms(shape: f64, scale: f64, h: f64, mut f: impl FnMut(u64, f64) -> bool) {
    let ln_p0 = (scale / (scale + h)).ln();
    let ln_q = (h / (scale + h)).ln();
    let mean = shape * h / scale;
    let sd = (mean * (1.0 + h / scale)).sqrt();
    let mut lp = shape * ln_p0;
    let mut cum = 0.0;
    let mut i = 0u64;
    loop {
        let p = lp.exp();
        cum += p;
        if !f(i, p) {
            return;
        }
        let fi = i as f64;
        if (fi > mean && 1.0 - cum < 1e-13) || fi > mean + 60.0 * sd + 100.0 || i > 5_000_000 {
            return;
        }
        lp += (shape + fi).ln() - (fi + 1.0).ln() + ln_q;
        i += 1;
    }
}

impl MbgCnbdParams {
    /// The log of the two parts of the likelihood bracket (alive: no purchase since t_x; dead:
    /// dropped out at the last purchase), and the posterior weights of the phases completed in
    /// the current gap given alive.
    fn parts(&self, x: u32, t_x: f64, t: f64) -> (f64, f64, Vec<f64>) {
        let xf = x as f64;
        let big_r = self.r + self.k as f64 * xf;
        let at = self.alpha + t;
        let q = (t - t_x).max(0.0) / at;
        let mut w = Vec::with_capacity(self.k as usize);
        let mut c = 1.0;
        w.push(1.0);
        for j in 1..self.k {
            let jf = j as f64;
            c *= (big_r + jf - 1.0) * q / jf;
            w.push(c);
        }
        let s: f64 = w.iter().sum();
        for v in &mut w {
            *v /= s;
        }
        let alive = -big_r * at.ln() + s.ln();
        let dead = self.a.ln() - (self.b + xf).ln() - big_r * (self.alpha + t_x).ln();
        (alive, dead, w)
    }

    /// P(alive | x, t_x, T); below one also for one-time buyers.
    pub fn p_alive(&self, x: u32, t_x: f64, t: f64) -> f64 {
        let (alive, dead, _) = self.parts(x, t_x, t);
        1.0 / (1.0 + (dead - alive).exp())
    }

    /// E[purchases in the next `horizon` time units | x, t_x, T].
    pub fn expected_purchases(&self, horizon: f64, x: u32, t_x: f64, t: f64) -> f64 {
        self.expected_many(&[horizon], x, t_x, t)[0]
    }

    /// [`Self::expected_purchases`] for several horizons.
    pub fn expected_many(&self, horizons: &[f64], x: u32, t_x: f64, t: f64) -> Vec<f64> {
        let (alive, dead, w) = self.parts(x, t_x, t);
        let p_alive = 1.0 / (1.0 + (dead - alive).exp());
        let xf = x as f64;
        let big_r = self.r + self.k as f64 * xf;
        let k = self.k as u64;
        let (a, b) = (self.a, self.b + xf + 1.0);
        // cum[m] = sum_{n=1}^{m} E[(1-p)^(n-1)], p ~ beta(a, b + x + 1): the expected purchases
        // when m purchase times fall in the horizon (the n-th happens only if the customer
        // stayed after the n-1 before it).
        let mut cum: Vec<f64> = vec![0.0, 1.0];
        let mut stay = 1.0;
        horizons
            .iter()
            .map(|&h| {
                if h <= 0.0 || !p_alive.is_finite() {
                    return 0.0;
                }
                let mut e = 0.0;
                for (j, &wj) in w.iter().enumerate() {
                    if wj < 1e-16 {
                        continue;
                    }
                    let mut ej = 0.0;
                    nbd_terms(big_r + j as f64, self.alpha + t, h, |i, p| {
                        let m = ((i + j as u64) / k) as usize;
                        while cum.len() <= m {
                            let n = (cum.len() - 1) as f64; // the purchase being added is n+1
                            stay *= (b + n - 1.0) / (a + b + n - 1.0);
                            let last = cum[cum.len() - 1];
                            cum.push(last + stay);
                        }
                        ej += p * cum[m];
                        true
                    });
                    e += wj * ej;
                }
                let e = e * p_alive;
                if e.is_finite() { e.max(0.0) } else { 0.0 }
            })
            .collect()
    }

    /// P(next purchase within `h` time units | alive, x, t_x, T): the remaining k - j phases
    /// of the current gap complete within h.
    pub fn next_purchase_cdf(&self, h: f64, x: u32, t_x: f64, t: f64) -> f64 {
        if h <= 0.0 {
            return 0.0;
        }
        let (_, _, w) = self.parts(x, t_x, t);
        let big_r = self.r + self.k as f64 * x as f64;
        let k = self.k as u64;
        let mut f = 0.0;
        for (j, &wj) in w.iter().enumerate() {
            let need = k - j as u64;
            let mut below = 0.0;
            nbd_terms(big_r + j as f64, self.alpha + t, h, |i, p| {
                if i < need {
                    below += p;
                }
                i + 1 < need
            });
            f += wj * (1.0 - below).max(0.0);
        }
        f.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::bgnbd::aggregate;
    use crate::analytics::mbgnbd::{self, MbgNbdParams};

    fn rows() -> Vec<SummaryRow> {
        aggregate(vec![
            (0, 0.0, 5.0),
            (2, 3.0, 7.0),
            (5, 6.5, 8.0),
            (1, 0.5, 9.0),
            (2, 3.0, 7.0),
            (0, 0.0, 2.0),
            (3, 8.0, 8.5),
        ])
    }

    /// The likelihood term by term from its definition (a direct Erlang survival sum), and
    /// the gradient against finite differences, for several k.
    #[test]
    fn likelihood_and_gradient_match_their_definitions() {
        let rows = rows();
        let p = [0.7, 2.0, 0.9, 2.5];
        let [r, alpha, a, b] = p;
        let ln_b = |x: f64, y: f64| ln_gamma(x) + ln_gamma(y) - ln_gamma(x + y);
        for k in [1u32, 2, 4] {
            let kf = k as f64;
            let want: f64 = rows
                .iter()
                .map(|row| {
                    let xf = row.x as f64;
                    let big_r = r + kf * xf;
                    // Integrate lambda out of: lambda^(kx) e^(-lambda T) sum_j (lambda e)^j/j!
                    // (alive) + p-part (dead at t_x), term by term.
                    let e = row.t - row.t_x;
                    let mut alive = 0.0;
                    for j in 0..k {
                        let jf = j as f64;
                        alive += (ln_gamma(big_r + jf) - ln_gamma(r)
                            + r * alpha.ln()
                            + jf * e.max(1e-300).ln()
                            - ln_gamma(jf + 1.0)
                            - (big_r + jf) * (alpha + row.t).ln())
                        .exp()
                            * if j > 0 && e == 0.0 { 0.0 } else { 1.0 };
                    }
                    let dead = (ln_gamma(big_r) - ln_gamma(r) + r * alpha.ln()
                        - big_r * (alpha + row.t_x).ln())
                    .exp();
                    row.count
                        * ((ln_b(a, b + xf + 1.0) - ln_b(a, b)).exp()
                            * (alive + a / (b + xf) * dead))
                            .ln()
                })
                .sum();
            let (got, g) = ll_grad(&rows, k, p);
            assert!(
                (got - want).abs() < 1e-10 * want.abs(),
                "k {k}: {got} vs {want}"
            );
            for i in 0..4 {
                let h = 1e-6 * p[i];
                let (mut up, mut dn) = (p, p);
                up[i] += h;
                dn[i] -= h;
                let num = (ll_grad(&rows, k, up).0 - ll_grad(&rows, k, dn).0) / (2.0 * h);
                assert!(
                    (num - g[i]).abs() < 1e-5 * num.abs().max(1.0),
                    "k {k}, {i}: {num} vs {}",
                    g[i]
                );
            }
        }
    }

    /// For k = 1 MBG/CNBD-k is MBG/NBD: the same likelihood, fit, P(alive) and conditional
    /// expectations (here from the phase series against MBG/NBD's hypergeometric closed form).
    #[test]
    fn k1_is_mbgnbd() {
        let rows = rows();
        let (r, alpha, a, b) = (0.52, 6.18, 0.89, 1.61);
        let c = MbgCnbdParams {
            k: 1,
            r,
            alpha,
            a,
            b,
            log_likelihood: 0.0,
            converged: true,
        };
        let m = MbgNbdParams {
            r,
            alpha,
            a,
            b,
            log_likelihood: 0.0,
            converged: true,
        };
        let want = mbgnbd::log_likelihood(&rows, r, alpha, a, b);
        let got = log_likelihood(&rows, GapLogs::default(), &c);
        assert!((got - want).abs() < 1e-9 * want.abs(), "{got} vs {want}");
        for (x, t_x, t, h) in [
            (0u32, 0.0, 10.0, 39.0),
            (0, 0.0, 0.0, 20.0),
            (2, 30.0, 38.86, 39.0),
            (7, 18.0, 20.0, 5.0),
            (15, 2.5, 3.0, 52.0),
        ] {
            let (e1, e2) = (
                c.expected_purchases(h, x, t_x, t),
                m.expected_purchases(h, x, t_x, t),
            );
            assert!(
                (e1 - e2).abs() <= 1e-6 * e2.abs().max(1e-9),
                "{x} {t_x} {t} {h}: {e1} vs {e2}"
            );
            let (p1, p2) = (c.p_alive(x, t_x, t), m.p_alive(x, t_x, t));
            assert!((p1 - p2).abs() <= 1e-12, "{p1} vs {p2}");
        }
        // Fits on an identified base (periodic buyers, a few thousand customers).
        let set = crate::analytics::periodic::generate(2_000, 5);
        let base = aggregate(
            set.days
                .iter()
                .map(|d| {
                    let cal = &d[..d.partition_point(|&x| x <= set.cutoff)];
                    (
                        cal.len() as u32 - 1,
                        (cal[cal.len() - 1] - cal[0]) as f64,
                        (set.cutoff - cal[0]) as f64,
                    )
                })
                .collect(),
        );
        let f1 = fit_k(&base, GapLogs::default(), 1).unwrap();
        let f2 = mbgnbd::fit(&base).unwrap();
        assert!(f1.converged && f2.converged);
        for (u, v) in [
            (f1.r, f2.r),
            (f1.alpha, f2.alpha),
            (f1.a, f2.a),
            (f1.b, f2.b),
        ] {
            assert!((u - v).abs() <= 1e-6 * v, "{f1:?} vs {f2:?}");
        }
        assert!((f1.log_likelihood - f2.log_likelihood).abs() < 1e-6);
    }

    /// The conditional expectation of a new customer against a simulation-free check: for
    /// k = 3 and a known lambda and p (degenerate mixing: huge r and b), the expected number
    /// of Erlang-3 renewals with geometric dropout, computed by direct summation.
    #[test]
    fn expectation_matches_erlang_renewals_with_dropout() {
        // lambda concentrated at 0.6 (r = 6e6, alpha = 1e7), p concentrated at 0.2.
        let c = MbgCnbdParams {
            k: 3,
            r: 6e6,
            alpha: 1e7,
            a: 2e6,
            b: 8e6,
            log_likelihood: 0.0,
            converged: true,
        };
        let (lambda, p, h): (f64, f64, f64) = (0.6, 0.2, 12.0);
        // P(Gamma(3n, lambda) <= h) = P(Poisson(lambda h) >= 3n).
        let mu: f64 = lambda * h;
        let pois = |i: u32| (-mu + i as f64 * mu.ln() - ln_gamma(i as f64 + 1.0)).exp();
        let mut want = 0.0;
        for n in 1..200u32 {
            let below: f64 = (0..3 * n).map(pois).sum();
            // Alive after the first purchase with 1-p, then stays n-1 times more.
            want += (1.0 - p) * (1.0 - p).powi(n as i32 - 1) * (1.0 - below);
        }
        let got = c.expected_purchases(h, 0, 0.0, 0.0);
        assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
        assert!((c.p_alive(0, 0.0, 0.0) - 0.8).abs() < 1e-6);
    }

    #[test]
    fn next_purchase_cdf_rises_to_one() {
        let c = MbgCnbdParams {
            k: 4,
            r: 3.0,
            alpha: 20.0,
            a: 1.0,
            b: 5.0,
            log_likelihood: 0.0,
            converged: true,
        };
        let mut prev = 0.0;
        for h in [1.0, 5.0, 10.0, 30.0, 100.0, 1e4] {
            let f = c.next_purchase_cdf(h, 5, 40.0, 50.0);
            assert!(f >= prev, "{h}: {f} < {prev}");
            prev = f;
        }
        assert!(prev > 0.999, "{prev}");
        // Ten days into a gap of about 4/0.4 = 10 days the next purchase is nearer than for a
        // customer who just bought.
        assert!(c.next_purchase_cdf(5.0, 5, 40.0, 50.0) > c.next_purchase_cdf(5.0, 5, 50.0, 50.0));
    }
}
