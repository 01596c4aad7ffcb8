//! The fit driver the count models share (BG/NBD, MBG/NBD, Pareto/NBD, MBG/CNBD-k): times
//! rescaled so that the largest T is 10 (as `lifetimes` does), a starting point from the
//! base's purchase rate, BFGS on log-parameters, a warm start on an evenly spread sample of
//! the rows for big bases, and Nelder-Mead when BFGS does not converge. Each model brings
//! only its likelihood.
#![allow(clippy::needless_range_loop)] // index loops over small fixed arrays read clearer
use super::optim::{Minimum, bfgs, bfgs_from, nelder_mead};

/// One aggregated row of the likelihood: `count` customers with the same summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SummaryRow {
    /// Repeat purchases (purchase days after the first).
    pub x: u32,
    /// Time from the first to the last purchase.
    pub t_x: f64,
    /// Time from the first purchase to the end of observation.
    pub t: f64,
    /// Number of customers with this summary.
    pub count: f64,
}

/// The rows of a fit on rescaled time, with the statistics the starting point needs.
pub(crate) struct Scaled {
    /// The rows, times multiplied by `scale`, in the input order.
    pub rows: Vec<SummaryRow>,
    /// The factor times were multiplied by.
    pub scale: f64,
    /// Customers.
    pub n: f64,
    /// Repeat purchases of all customers.
    pub purchases: f64,
    /// Repeat purchases per unit of rescaled time (at least 1e-3).
    pub rate: f64,
}

impl Scaled {
    /// `None` when there are no rows or no customer ever came back (the dropout process is
    /// then not identifiable).
    pub(crate) fn new(rows: &[SummaryRow]) -> Option<Scaled> {
        if rows.is_empty() || !rows.iter().any(|r| r.x > 0) {
            return None;
        }
        let t_max = rows.iter().fold(0.0f64, |m, r| m.max(r.t));
        let scale = if t_max > 0.0 { 10.0 / t_max } else { 1.0 };
        let rows: Vec<SummaryRow> = rows
            .iter()
            .map(|r| SummaryRow {
                t_x: r.t_x * scale,
                t: r.t * scale,
                ..*r
            })
            .collect();
        let n: f64 = rows.iter().map(|r| r.count).sum();
        let purchases: f64 = rows.iter().map(|r| r.count * r.x as f64).sum();
        let exposure: f64 = rows.iter().map(|r| r.count * r.t).sum::<f64>().max(1e-9);
        Some(Scaled {
            rows,
            scale,
            n,
            purchases,
            rate: (purchases / exposure).max(1e-3),
        })
    }

    /// An evenly spread sample of about `size` rows when there are more than four times as
    /// many (0: never). Rows sorted by x keep every purchase count represented.
    pub(crate) fn sample(&self, size: usize) -> Option<Vec<SummaryRow>> {
        (size > 0 && self.rows.len() > 4 * size).then(|| {
            let stride = self.rows.len() / size;
            self.rows.iter().step_by(stride).copied().collect()
        })
    }
}

/// Customers in `rows`.
pub(crate) fn customers(rows: &[SummaryRow]) -> f64 {
    rows.iter().map(|r| r.count).sum()
}

/// A negative mean log-likelihood on log-parameters with its gradient.
pub(crate) type Objective<'a, const N: usize> = &'a dyn Fn(&[f64; N]) -> (f64, [f64; N]);

/// Minimises `full` from `x0`: when `sample` (the same objective on a sample of the rows) is
/// given, most of the work is done there and the full data only confirms and polishes the
/// optimum, starting from the sample's optimum and curvature (a few full evaluations instead
/// of ~200). When BFGS does not converge, Nelder-Mead restarts it.
pub(crate) fn minimise<const N: usize>(
    full: Objective<'_, N>,
    sample: Option<Objective<'_, N>>,
    x0: [f64; N],
    gtol: f64,
) -> Minimum<N> {
    let mut m = None;
    if let Some(sample) = sample {
        let warm = bfgs(sample, x0, gtol * 100.0, 500);
        if warm.converged {
            let polished = bfgs_from(full, warm.x, Some(warm.inv_hessian), gtol, 500);
            if polished.converged {
                m = Some(polished);
            }
        }
    }
    let mut m = m.unwrap_or_else(|| bfgs(full, x0, gtol, 500));
    if !m.converged {
        let nm = nelder_mead(|x| full(x).0, m.x, 0.3, 1e-13, 20_000);
        m = bfgs(full, nm.x, gtol, 500);
        if !m.converged && nm.f < m.f {
            m.x = nm.x;
            m.f = nm.f;
        }
    }
    m
}

/// `-ll / n` and its gradient with respect to the log-parameters, from the log-likelihood
/// `ll` and its gradient with respect to the parameters `p` (d/d ln p = p d/dp).
pub(crate) fn to_log_space<const N: usize>(
    (ll, g): (f64, [f64; N]),
    p: &[f64; N],
    n: f64,
) -> (f64, [f64; N]) {
    let mut gl = [0.0; N];
    for i in 0..N {
        gl[i] = -g[i] * p[i] / n;
    }
    (-ll / n, gl)
}

/// Sums `f` over chunks of `items` on all cores when there are at least 20 000 of them
/// (likelihoods over distinct rows); on the calling thread otherwise.
pub(crate) fn par_sum<T: Sync, const N: usize>(
    items: &[T],
    f: impl Fn(&[T]) -> (f64, [f64; N]) + Sync,
) -> (f64, [f64; N]) {
    let threads = if items.len() >= 20_000 {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8)
    } else {
        1
    };
    if threads <= 1 {
        return f(items);
    }
    let size = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks(size).map(|c| s.spawn(move || f(c))).collect();
        let mut total = (0.0, [0.0; N]);
        for h in handles {
            let (v, g) = h.join().expect("likelihood worker panicked");
            total.0 += v;
            for i in 0..N {
                total.1[i] += g[i];
            }
        }
        total
    })
}
