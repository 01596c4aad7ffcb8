//! The Gamma-Gamma spend model (Fader, Hardie and Lee 2005, "RFM and CLV: Using Iso-Value Curves
//! for Customer Base Analysis"): a customer's order values are gamma(p, nu) with nu ~ gamma(q,
//! gamma) across customers. Fitted by maximum likelihood on the customers with repeat purchases,
//! using x (repeat purchases) and zbar (mean value of the repeat purchases).
//!
//! Money enters here as `f64` (a statistic of the spend distribution) and the expected order
//! value leaves through [`GammaGammaParams::expected_order_value`] as `f64`; the caller converts
//! it to `Decimal` rounded to kopecks at the boundary.
use super::special::{digamma, ln_gamma};
use serde::Serialize;

/// Fitted Gamma-Gamma parameters (`gamma` in money units of the data).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GammaGammaParams {
    /// Shape of the per-transaction spend.
    pub p: f64,
    /// Shape of the gamma mixing distribution.
    pub q: f64,
    /// Scale of the mixing distribution (money units).
    pub gamma: f64,
    /// Log-likelihood at the optimum.
    pub log_likelihood: f64,
    /// Whether the optimiser converged.
    pub converged: bool,
}

fn ll_grad(rows: &[(f64, f64)], p: f64, q: f64, v: f64) -> (f64, [f64; 3]) {
    let mut ll = 0.0;
    let mut g = [0.0; 3];
    let (lg_q, dg_q, ln_v) = (ln_gamma(q), digamma(q), v.ln());
    let mut cur = f64::NAN;
    let (mut lg, mut dpx, mut dpxq, mut ln_x) = (0.0, 0.0, 0.0, 0.0);
    for &(x, m) in rows {
        if x != cur {
            cur = x;
            lg = ln_gamma(p * x + q) - ln_gamma(p * x) - lg_q;
            dpx = digamma(p * x);
            dpxq = digamma(p * x + q);
            ln_x = x.ln();
        }
        let ln_m = m.ln();
        let ln_s = (x * m + v).ln();
        ll += lg + q * ln_v + (p * x - 1.0) * ln_m + p * x * ln_x - (p * x + q) * ln_s;
        g[0] += x * (dpxq - dpx + ln_m + ln_x - ln_s);
        g[1] += dpxq - dg_q + ln_v - ln_s;
        g[2] += q / v - (p * x + q) / (x * m + v);
    }
    (ll, g)
}

/// Fits the model on `(x, zbar)` of customers with `x > 0` and `zbar > 0` (others are ignored).
/// `None` with fewer than 2 usable customers.
pub fn fit(data: &[(f64, f64)]) -> Option<GammaGammaParams> {
    let mut rows: Vec<(f64, f64)> = data
        .iter()
        .copied()
        .filter(|&(x, m)| x > 0.0 && m > 0.0 && m.is_finite())
        .collect();
    if rows.len() < 2 {
        return None;
    }
    // Rescale money so the mean order is 1: gamma scales with money, p and q do not.
    let scale = rows.iter().map(|r| r.1).sum::<f64>() / rows.len() as f64;
    for r in &mut rows {
        r.1 /= scale;
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = rows.len() as f64;
    let neg = |lp: &[f64; 3]| {
        let p = lp.map(f64::exp);
        let (f, g) = ll_grad(&rows, p[0], p[1], p[2]);
        (
            -f / n,
            [-g[0] * p[0] / n, -g[1] * p[1] / n, -g[2] * p[2] / n],
        )
    };
    let x0 = [0.0, 1.0f64.ln() + 1.0, 1.0f64.ln()];
    let m = super::fit::minimise(&neg, None, x0, 1e-10);
    let p = m.x.map(f64::exp);
    // The log-likelihood of the unscaled data differs by the Jacobian of the rescaling.
    let jac: f64 = rows.iter().map(|_| scale.ln()).sum::<f64>();
    Some(GammaGammaParams {
        p: p[0],
        q: p[1],
        gamma: p[2] * scale,
        log_likelihood: -m.f * n - jac,
        converged: m.converged,
    })
}

impl GammaGammaParams {
    /// E[order value | x repeat purchases with mean value zbar]; the population mean
    /// `p gamma / (q - 1)` for customers without repeat purchases. `None` when q <= 1 (the mean
    /// does not exist).
    pub fn expected_order_value(&self, x: u32, zbar: f64) -> Option<f64> {
        if self.q <= 1.0 {
            return None;
        }
        let xf = x as f64;
        let zbar = if x == 0 { 0.0 } else { zbar };
        Some(self.p * (self.gamma + xf * zbar) / (self.p * xf + self.q - 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let rows = vec![(1.0, 12.0), (1.0, 30.0), (3.0, 17.5), (6.0, 40.0)];
        let p = [3.0, 2.5, 11.0];
        let (_, g) = ll_grad(&rows, p[0], p[1], p[2]);
        for i in 0..3 {
            let h = 1e-6 * p[i];
            let (mut up, mut dn) = (p, p);
            up[i] += h;
            dn[i] -= h;
            let f = |q: [f64; 3]| ll_grad(&rows, q[0], q[1], q[2]).0;
            let num = (f(up) - f(dn)) / (2.0 * h);
            assert!(
                (num - g[i]).abs() < 1e-5 * num.abs().max(1.0),
                "{i}: {num} vs {}",
                g[i]
            );
        }
    }
}
