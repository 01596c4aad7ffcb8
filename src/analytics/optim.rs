//! Small unconstrained minimisers for the model fits: BFGS with an Armijo backtracking line
//! search (for likelihoods with analytic gradients), and Nelder-Mead as a derivative-free
//! fallback. Both work on log-parameters, so positivity constraints disappear.
#![allow(clippy::needless_range_loop)] // index loops over small fixed arrays read clearer

/// The outcome of a minimisation.
#[derive(Debug, Clone, Copy)]
pub struct Minimum<const N: usize> {
    /// The argument of the minimum.
    pub x: [f64; N],
    /// The function value there.
    pub f: f64,
    /// Iterations used.
    pub iterations: usize,
    /// Whether the convergence test passed (else the iteration limit was hit).
    pub converged: bool,
    /// The final inverse-Hessian estimate (to warm-start a related minimisation).
    pub inv_hessian: [[f64; N]; N],
}

fn dot<const N: usize>(a: &[f64; N], b: &[f64; N]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises `f` (returning value and gradient) from `x0` by BFGS. Converges when the largest
/// gradient component is below `gtol * max(1, |f|)` or the value stops changing (relative 1e-15
/// over 3 iterations).
pub fn bfgs<const N: usize>(
    f: impl Fn(&[f64; N]) -> (f64, [f64; N]),
    x0: [f64; N],
    gtol: f64,
    max_iter: usize,
) -> Minimum<N> {
    bfgs_from(f, x0, None, gtol, max_iter)
}

/// [`bfgs`] starting from a known inverse-Hessian estimate `h0` (e.g. the one a fit on a sample
/// of the same data ended with): near the optimum the first full step is then already good, so
/// an expensive objective is evaluated a handful of times instead of dozens.
pub fn bfgs_from<const N: usize>(
    f: impl Fn(&[f64; N]) -> (f64, [f64; N]),
    x0: [f64; N],
    h0: Option<[[f64; N]; N]>,
    gtol: f64,
    max_iter: usize,
) -> Minimum<N> {
    let mut x = x0;
    let (mut fx, mut g) = f(&x);
    let warm = h0.is_some();
    let mut h = h0.unwrap_or_else(identity);
    if !fx.is_finite() {
        return Minimum {
            x,
            f: fx,
            iterations: 0,
            converged: false,
            inv_hessian: h,
        };
    }
    let mut stall = 0;
    for it in 0..max_iter {
        let gmax = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if gmax <= gtol * fx.abs().max(1.0) {
            return Minimum {
                x,
                f: fx,
                iterations: it,
                converged: true,
                inv_hessian: h,
            };
        }
        // Direction p = -H g; reset to steepest descent when it is not a descent direction.
        let mut p = [0.0; N];
        for i in 0..N {
            p[i] = -(0..N).map(|j| h[i][j] * g[j]).sum::<f64>();
        }
        if dot(&p, &g) >= 0.0 {
            for i in 0..N {
                for j in 0..N {
                    h[i][j] = if i == j { 1.0 } else { 0.0 };
                }
                p[i] = -g[i];
            }
        }
        // Keep the step in log-parameter space modest: exp() of a huge step overflows.
        let pmax = p.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let mut step = if pmax > 2.0 { 2.0 / pmax } else { 1.0 };
        let slope = dot(&p, &g);
        let mut accepted = None;
        for _ in 0..60 {
            let mut xn = x;
            for i in 0..N {
                xn[i] += step * p[i];
            }
            let (fn_, gn) = f(&xn);
            // Armijo's sufficient decrease; or, near the optimum where the predicted decrease
            // is below the rounding noise of a sum over many rows, the approximate Wolfe test
            // of Hager and Zhang (2005): the value did not rise beyond that noise and the slope
            // along p shrank as a step towards the minimum makes it.
            let armijo = fn_ <= fx + 1e-4 * step * slope;
            let along = step * dot(&gn, &p);
            let approx_wolfe = fn_ <= fx + 1e-12 * fx.abs()
                && along >= 0.9 * step * slope
                && along <= -0.8 * step * slope;
            if fn_.is_finite() && (armijo || approx_wolfe) {
                accepted = Some((xn, fn_, gn));
                break;
            }
            step *= 0.5;
        }
        let Some((xn, fn_, gn)) = accepted else {
            return Minimum {
                x,
                f: fx,
                iterations: it,
                converged: false,
                inv_hessian: h,
            };
        };
        let mut s = [0.0; N];
        let mut y = [0.0; N];
        for i in 0..N {
            s[i] = xn[i] - x[i];
            y[i] = gn[i] - g[i];
        }
        let sy = dot(&s, &y);
        if it == 0 && sy > 0.0 && !warm {
            // Scale the initial inverse Hessian (Nocedal & Wright 6.20).
            let scale = sy / dot(&y, &y);
            for (i, row) in h.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = if i == j { scale } else { 0.0 };
                }
            }
        }
        if sy > 1e-12 * dot(&s, &s).sqrt() * dot(&y, &y).sqrt() {
            let rho = 1.0 / sy;
            let mut hy = [0.0; N];
            for i in 0..N {
                hy[i] = (0..N).map(|j| h[i][j] * y[j]).sum();
            }
            let yhy = dot(&y, &hy);
            for i in 0..N {
                for j in 0..N {
                    h[i][j] +=
                        rho * ((1.0 + rho * yhy) * s[i] * s[j] - hy[i] * s[j] - s[i] * hy[j]);
                }
            }
        }
        let change = (fx - fn_).abs();
        x = xn;
        g = gn;
        let done_by_value = change <= 1e-15 * fx.abs().max(1.0);
        fx = fn_;
        stall = if done_by_value { stall + 1 } else { 0 };
        if stall >= 3 {
            return Minimum {
                x,
                f: fx,
                iterations: it + 1,
                converged: true,
                inv_hessian: h,
            };
        }
    }
    Minimum {
        x,
        f: fx,
        iterations: max_iter,
        converged: false,
        inv_hessian: h,
    }
}

/// Minimises `f` by Nelder-Mead from `x0` with initial simplex steps `step`. Converges when the
/// simplex's value spread is below `ftol * max(1, |f|)`.
pub fn nelder_mead<const N: usize>(
    f: impl Fn(&[f64; N]) -> f64,
    x0: [f64; N],
    step: f64,
    ftol: f64,
    max_iter: usize,
) -> Minimum<N> {
    let val = |x: &[f64; N]| {
        let v = f(x);
        if v.is_finite() { v } else { f64::INFINITY }
    };
    let mut simplex: Vec<([f64; N], f64)> = Vec::with_capacity(N + 1);
    simplex.push((x0, val(&x0)));
    for i in 0..N {
        let mut x = x0;
        x[i] += step;
        simplex.push((x, val(&x)));
    }
    for it in 0..max_iter {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (best, worst) = (simplex[0].1, simplex[N].1);
        if (worst - best).abs() <= ftol * best.abs().max(1.0) {
            return Minimum {
                x: simplex[0].0,
                f: best,
                iterations: it,
                converged: true,
                inv_hessian: identity(),
            };
        }
        let mut c = [0.0; N];
        for (x, _) in &simplex[..N] {
            for i in 0..N {
                c[i] += x[i] / N as f64;
            }
        }
        let at = |t: f64| {
            let mut x = [0.0; N];
            for i in 0..N {
                x[i] = c[i] + t * (simplex[N].0[i] - c[i]);
            }
            x
        };
        let xr = at(-1.0);
        let fr = val(&xr);
        if fr < simplex[0].1 {
            let xe = at(-2.0);
            let fe = val(&xe);
            simplex[N] = if fe < fr { (xe, fe) } else { (xr, fr) };
        } else if fr < simplex[N - 1].1 {
            simplex[N] = (xr, fr);
        } else {
            let xc = if fr < simplex[N].1 { at(-0.5) } else { at(0.5) };
            let fc = val(&xc);
            if fc < fr.min(simplex[N].1) {
                simplex[N] = (xc, fc);
            } else {
                let x0 = simplex[0].0;
                for (x, fx) in simplex.iter_mut().skip(1) {
                    for i in 0..N {
                        x[i] = x0[i] + 0.5 * (x[i] - x0[i]);
                    }
                    *fx = val(x);
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    Minimum {
        x: simplex[0].0,
        f: simplex[0].1,
        iterations: max_iter,
        converged: false,
        inv_hessian: identity(),
    }
}

fn identity<const N: usize>() -> [[f64; N]; N] {
    let mut h = [[0.0; N]; N];
    for (i, row) in h.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rosenbrock(x: &[f64; 2]) -> (f64, [f64; 2]) {
        let (a, b) = (x[0], x[1]);
        let f = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
        let g = [
            -2.0 * (1.0 - a) - 400.0 * a * (b - a * a),
            200.0 * (b - a * a),
        ];
        (f, g)
    }

    #[test]
    fn bfgs_finds_rosenbrock_minimum() {
        let m = bfgs(rosenbrock, [-1.2, 1.0], 1e-10, 500);
        assert!(m.converged);
        assert!(
            (m.x[0] - 1.0).abs() < 1e-6 && (m.x[1] - 1.0).abs() < 1e-6,
            "{m:?}"
        );
    }

    #[test]
    fn nelder_mead_finds_rosenbrock_minimum() {
        let m = nelder_mead(|x| rosenbrock(x).0, [-1.2, 1.0], 0.5, 1e-14, 5000);
        assert!(
            (m.x[0] - 1.0).abs() < 1e-4 && (m.x[1] - 1.0).abs() < 1e-4,
            "{m:?}"
        );
    }
}
