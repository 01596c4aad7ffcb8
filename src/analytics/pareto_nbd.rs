//! The Pareto/NBD model (Schmittlein, Morrison and Colombo 1987): while alive a customer buys
//! as a Poisson process with a gamma(r, alpha) distributed rate, and the lifetime is exponential
//! with a gamma(s, beta) distributed dropout rate. Fitted by maximum likelihood on the same
//! (x, t_x, T) summaries as BG/NBD ([`SummaryRow`]), in the form of Fader and Hardie (2005), "A
//! Note on Deriving the Pareto/NBD Model and Related Expressions":
//!
//! `L = Gamma(r+x) alpha^r beta^s / Gamma(r) * [ (alpha+T)^-(r+x) (beta+T)^-s + s/(r+s+x) A0 ]`
//!
//! where `A0` is a difference of two Gauss hypergeometric terms `2F1(r+s+x, .; r+s+x+1; z)`,
//! computed in logs by [`ln_hyp2f1_a_a1`] (stable for `z` up to 1). The fit is BFGS on
//! log-parameters with a central-difference gradient, on times rescaled so the largest T is 10;
//! big bases start on a sample of the rows, as BG/NBD does.
use super::bgnbd::SummaryRow;
use super::fit;
use super::special::{ln_gamma, ln_hyp2f1_a_a1};
use serde::Serialize;

/// Fitted Pareto/NBD parameters. `alpha` and `beta` are in the time unit of the data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ParetoNbdParams {
    /// Shape of the purchase-rate gamma.
    pub r: f64,
    /// Scale of the purchase-rate gamma (time units).
    pub alpha: f64,
    /// Shape of the dropout-rate gamma.
    pub s: f64,
    /// Scale of the dropout-rate gamma (time units).
    pub beta: f64,
    /// Log-likelihood at the optimum.
    pub log_likelihood: f64,
    /// Whether the optimiser converged.
    pub converged: bool,
}

/// `ln(e^u + e^v)`.
fn log_add(u: f64, v: f64) -> f64 {
    if u == f64::NEG_INFINITY {
        return v;
    }
    if v == f64::NEG_INFINITY {
        return u;
    }
    let m = u.max(v);
    m + (-(u - v).abs()).exp().ln_1p()
}

/// The two log-terms of one customer's likelihood bracket: `ln[(alpha+T)^-(r+x)(beta+T)^-s]`
/// (alive at T) and `ln[s/(r+s+x) A0]` (died between t_x and T; `-inf` when t_x = T).
fn terms(r: f64, alpha: f64, s: f64, beta: f64, x: u32, t_x: f64, t: f64) -> (f64, f64) {
    let xf = x as f64;
    let alive = -(r + xf) * (alpha + t).ln() - s * (beta + t).ln();
    let rsx = r + s + xf;
    // The larger of alpha and beta goes into the denominator, so the argument is in [0, 1).
    let (m, b2) = if alpha >= beta {
        (alpha, s + 1.0)
    } else {
        (beta, r + xf)
    };
    let diff = (alpha - beta).abs();
    let part = |y: f64| ln_hyp2f1_a_a1(rsx, b2, diff / (m + y)) - rsx * (m + y).ln();
    let (l1, l2) = (part(t_x), part(t));
    let dead = if l2 < l1 {
        (s / rsx).ln() + l1 + (-(l2 - l1).exp_m1()).ln()
    } else {
        f64::NEG_INFINITY
    };
    (alive, dead)
}

/// The log-likelihood of one row (without the count).
fn row_ll(p: [f64; 4], x: u32, t_x: f64, t: f64) -> f64 {
    let [r, alpha, s, beta] = p;
    let xf = x as f64;
    let (alive, dead) = terms(r, alpha, s, beta, x, t_x, t);
    ln_gamma(r + xf) - ln_gamma(r) + r * alpha.ln() + s * beta.ln() + log_add(alive, dead)
}

/// The log-likelihood of `rows` at `p` = (r, alpha, s, beta).
fn ll(rows: &[SummaryRow], p: [f64; 4]) -> f64 {
    let chunk_ll = |c: &[SummaryRow]| {
        c.iter()
            .map(|r| r.count * row_ll(p, r.x, r.t_x, r.t))
            .sum::<f64>()
    };
    fit::par_sum(rows, |c| (chunk_ll(c), [0.0; 0])).0
}

/// The log-likelihood of `params` on `rows` (for reporting and tests).
pub fn log_likelihood(rows: &[SummaryRow], r: f64, alpha: f64, s: f64, beta: f64) -> f64 {
    ll(rows, [r, alpha, s, beta])
}

/// The negative mean log-likelihood over `n` customers as a function of the log-parameters,
/// with its central-difference gradient.
fn objective(rows: &[SummaryRow], n: f64) -> impl Fn(&[f64; 4]) -> (f64, [f64; 4]) + '_ {
    move |lp: &[f64; 4]| {
        let f = |x: [f64; 4]| -ll(rows, x.map(f64::exp)) / n;
        let f0 = f(*lp);
        let mut g = [0.0; 4];
        let h = 1e-5;
        for i in 0..4 {
            let (mut up, mut dn) = (*lp, *lp);
            up[i] += h;
            dn[i] -= h;
            g[i] = (f(up) - f(dn)) / (2.0 * h);
        }
        (f0, g)
    }
}

/// Rows of the sample a big fit starts on.
const SAMPLE_ROWS: usize = 10_000;

/// Fits Pareto/NBD by maximum likelihood. `None` when there are no rows or no customer ever
/// came back.
pub fn fit(rows: &[SummaryRow]) -> Option<ParetoNbdParams> {
    let sc = fit::Scaled::new(rows)?;
    // A moderate rate and a mean lifetime of the order of the observation window.
    let x0 = [0.0, (1.0 / sc.rate).ln(), 0.0, 10f64.ln()];
    let full = objective(&sc.rows, sc.n);
    let sample = sc.sample(SAMPLE_ROWS);
    let sample_obj = sample.as_ref().map(|s| objective(s, fit::customers(s)));
    let m = fit::minimise(
        &full,
        sample_obj.as_ref().map(|f| f as fit::Objective<'_, 4>),
        x0,
        1e-9,
    );
    let p = m.x.map(f64::exp);
    Some(ParetoNbdParams {
        r: p[0],
        alpha: p[1] / sc.scale,
        s: p[2],
        beta: p[3] / sc.scale,
        log_likelihood: -m.f * sc.n + sc.scale.ln() * sc.purchases,
        converged: m.converged,
    })
}

impl ParetoNbdParams {
    /// P(alive | x, t_x, T): the alive term's share of the likelihood bracket.
    pub fn p_alive(&self, x: u32, t_x: f64, t: f64) -> f64 {
        let (alive, dead) = terms(self.r, self.alpha, self.s, self.beta, x, t_x, t);
        let p = (alive - log_add(alive, dead)).exp();
        if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Expected purchases in the next `horizon` time units of a customer alive at T with x
    /// purchases: `(r+x)(beta+T) / ((alpha+T)(s-1)) [1 - ((beta+T)/(beta+T+t))^(s-1)]` (the
    /// logarithmic limit at s = 1).
    pub fn expected_if_alive(&self, horizon: f64, x: u32, t: f64) -> f64 {
        if horizon <= 0.0 {
            return 0.0;
        }
        let (r, alpha, s, beta) = (self.r, self.alpha, self.s, self.beta);
        let rate = (r + x as f64) / (alpha + t);
        let l = (1.0 + horizon / (beta + t)).ln(); // ln((beta+T+t)/(beta+T))
        let sm1 = s - 1.0;
        // (beta+T)/(s-1) [1 - e^{-(s-1) l}] -> (beta+T) l as s -> 1.
        let life = if (sm1 * l).abs() < 1e-8 {
            (beta + t) * l * (1.0 - sm1 * l / 2.0)
        } else {
            (beta + t) * -(-sm1 * l).exp_m1() / sm1
        };
        rate * life
    }

    /// E[purchases in the next `horizon` time units | x, t_x, T].
    pub fn expected_purchases(&self, horizon: f64, x: u32, t_x: f64, t: f64) -> f64 {
        let e = self.expected_if_alive(horizon, x, t) * self.p_alive(x, t_x, t);
        if e.is_finite() { e.max(0.0) } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ParetoNbdParams = ParetoNbdParams {
        r: 0.55,
        alpha: 10.5,
        s: 0.6,
        beta: 11.7,
        log_likelihood: 0.0,
        converged: true,
    };

    /// Adaptive Simpson on [a, b].
    fn integrate(f: &dyn Fn(f64) -> f64, a: f64, b: f64) -> f64 {
        fn step(
            f: &dyn Fn(f64) -> f64,
            a: f64,
            b: f64,
            fa: f64,
            fm: f64,
            fb: f64,
            depth: u32,
        ) -> f64 {
            let m = 0.5 * (a + b);
            let (lm, rm) = (0.5 * (a + m), 0.5 * (m + b));
            let (flm, frm) = (f(lm), f(rm));
            let whole = (b - a) / 6.0 * (fa + 4.0 * fm + fb);
            let left = (m - a) / 6.0 * (fa + 4.0 * flm + fm);
            let right = (b - m) / 6.0 * (fm + 4.0 * frm + fb);
            if depth == 0 || (left + right - whole).abs() <= 1e-13 * (left + right).abs() {
                return left + right + (left + right - whole) / 15.0;
            }
            step(f, a, m, fa, flm, fm, depth - 1) + step(f, m, b, fm, frm, fb, depth - 1)
        }
        let m = 0.5 * (a + b);
        step(f, a, b, f(a), f(m), f(b), 40)
    }

    /// The likelihood from its definition: alive at T, or dead at some tau in (t_x, T), the
    /// dead part integrated numerically (no hypergeometric function): both orders of alpha and
    /// beta, one-time and repeat buyers.
    #[test]
    fn likelihood_matches_the_integral_over_the_death_time() {
        for (alpha, beta) in [(10.5, 11.7), (11.7, 10.5), (200.0, 0.5), (0.3, 80.0)] {
            let p = [P.r, alpha, P.s, beta];
            for (x, t_x, t) in [
                (0u32, 0.0, 30.0),
                (2, 10.0, 38.0),
                (9, 35.0, 39.0),
                (1, 0.5, 77.0),
            ] {
                let xf = x as f64;
                let (r, s) = (P.r, P.s);
                let dead = integrate(
                    &|tau: f64| s * (alpha + tau).powf(-(r + xf)) * (beta + tau).powf(-(s + 1.0)),
                    t_x,
                    t,
                );
                let alive = (alpha + t).powf(-(r + xf)) * (beta + t).powf(-s);
                let want = ln_gamma(r + xf) - ln_gamma(r)
                    + r * alpha.ln()
                    + s * beta.ln()
                    + (alive + dead).ln();
                let got = row_ll(p, x, t_x, t);
                assert!(
                    (got - want).abs() < 1e-9 * want.abs().max(1.0),
                    "{alpha} {beta} {x} {t_x} {t}: {got} vs {want}"
                );
                let params = ParetoNbdParams { alpha, beta, ..P };
                let pa = params.p_alive(x, t_x, t);
                assert!((pa - alive / (alive + dead)).abs() < 1e-9, "p_alive {pa}");
            }
        }
    }

    /// For a new customer (x = 0, T = 0) the conditional expectation is the unconditional
    /// E[X(t)] = E[lambda] E[(1 - e^{-mu t}) / mu], the second mean integrated numerically over
    /// mu ~ gamma(s, beta).
    #[test]
    fn expectation_matches_numeric_integral_for_new_customer() {
        for s in [0.6, 1.0, 2.5] {
            let p = ParetoNbdParams { s, ..P };
            let t = 39.0;
            let ln_norm = s * p.beta.ln() - ln_gamma(s);
            // mu = e^u: density of u is beta^s e^{s u - beta e^u} / Gamma(s).
            let f = |u: f64| {
                let mu = u.exp();
                let dens = (ln_norm + s * u - p.beta * mu).exp();
                dens * -(-mu * t).exp_m1() / mu
            };
            let want = p.r / p.alpha * integrate(&f, -40.0, 5.0);
            let got = p.expected_purchases(t, 0, 0.0, 0.0);
            assert!((got - want).abs() < 1e-7 * want, "s {s}: {got} vs {want}");
        }
    }

    #[test]
    fn p_alive_falls_with_silence() {
        assert!(P.p_alive(3, 29.0, 30.0) > P.p_alive(3, 5.0, 30.0));
        assert!(P.p_alive(0, 0.0, 60.0) < P.p_alive(0, 0.0, 10.0));
        assert!((P.p_alive(4, 30.0, 30.0) - 1.0).abs() < 1e-15);
    }
}
