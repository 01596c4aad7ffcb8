//! Special functions for the model likelihoods, in `f64`: log-gamma (Lanczos), digamma
//! (recurrence + asymptotic series) and the Gauss hypergeometric function 2F1 (power series,
//! enough for the `z < 1` arguments of the BG/NBD conditional expectation).
use std::f64::consts::PI;

const LANCZOS_G: f64 = 7.0;
const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];

/// `ln |Gamma(x)|`, relative error about 1e-15 for positive arguments.
pub fn ln_gamma(x: f64) -> f64 {
    if x < 0.5 {
        // Reflection: Gamma(x) Gamma(1-x) = pi / sin(pi x).
        return (PI / (PI * x).sin().abs()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = LANCZOS[0];
    let t = x + LANCZOS_G + 0.5;
    for (i, c) in LANCZOS.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The digamma function `d/dx ln Gamma(x)` for `x > 0`.
pub fn digamma(mut x: f64) -> f64 {
    let mut acc = 0.0;
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    acc + x.ln()
        - 0.5 * inv
        - inv2
            * (1.0 / 12.0
                - inv2 * (1.0 / 120.0 - inv2 * (1.0 / 252.0 - inv2 * (1.0 / 240.0 - inv2 / 132.0))))
}

/// Gauss hypergeometric `2F1(a, b; c; z)` by its power series, for `0 <= z < 1` and `c > 0`.
/// Converges geometrically in `z`; 1e-14 relative tolerance, at most 100 000 terms.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 0..100_000 {
        let k = k as f64;
        term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
        sum += term;
        if term.abs() <= 1e-14 * sum.abs() {
            break;
        }
    }
    sum
}

/// `2F1(a, b; c; z)` for several `z` at once: the coefficients `(a)_k (b)_k / ((c)_k k!)` are
/// shared, so each extra argument costs one multiply-add per term. Writes into `out`.
pub fn hyp2f1_multi(a: f64, b: f64, c: f64, zs: &[f64], out: &mut [f64]) {
    let n = zs.len();
    let mut pow: Vec<f64> = vec![1.0; n];
    out[..n].fill(1.0);
    let mut coef = 1.0;
    for k in 0..100_000 {
        let kf = k as f64;
        coef *= (a + kf) * (b + kf) / ((c + kf) * (kf + 1.0));
        let mut done = true;
        for i in 0..n {
            pow[i] *= zs[i];
            let term = coef * pow[i];
            out[i] += term;
            done &= term.abs() <= 1e-14 * out[i].abs();
        }
        if done {
            break;
        }
    }
}

/// `ln 2F1(a, b; a + 1; z)` for `a > 0` and `0 <= z < 1`: the form the Pareto/NBD likelihood
/// needs. Through the incomplete beta function, `B_z(a, 1 - b) = z^a / a 2F1(a, b; a + 1; z)`,
/// it equals `(1 - z)^(1 - b)` times the continued fraction of `B_z` (modified Lentz), which
/// converges on the whole interval (the power series needs ever more terms as `z -> 1`, and
/// the transformations to `1 - z` are singular for integer `b`). In logs, so the `(1 - z)`
/// power can be large without overflow. Relative accuracy about 1e-14.
pub fn ln_hyp2f1_a_a1(a: f64, b: f64, z: f64) -> f64 {
    if z <= 0.0 {
        return 0.0;
    }
    // For a large `a` with `z` within 1/a of 1 the continued fraction needs thousands of
    // terms (about sqrt(a / (1 - z)) / 60: a Pareto/NBD fit wandering towards a degenerate
    // optimum, r + s + x in the tens of thousands, spent seconds there); the transformation
    // to 1 - z converges in a few terms there.
    // (Also for a small `a` near b with z near 1: a Pareto/NBD fit with s running to 0.)
    let y = 1.0 - z;
    if y <= 0.1 && a * y <= 2.0 && (b - b.round()).abs() >= 0.05 {
        return ln_hyp2f1_a_a1_near_one(a, b, z);
    }
    let bb = 1.0 - b; // the incomplete beta's second parameter
    let tiny = 1e-300;
    let qab = a + bb;
    let qap = a + 1.0;
    let qam = a - 1.0;
    let mut c = 1.0;
    let mut d = 1.0 - qab * z / qap;
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..100_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (bb - m) * z / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < tiny {
            d = tiny;
        }
        c = 1.0 + aa / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * z / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < tiny {
            d = tiny;
        }
        c = 1.0 + aa / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() <= 1e-15 {
            break;
        }
    }
    bb * (-z).ln_1p() + h.ln()
}

/// `ln 2F1(a, b; a + 1; z)` by the transformation to `y = 1 - z` (DLMF 15.8.4 with
/// `c = a + 1`), for non-integer `b`:
/// `2F1 = Gamma(a+1) Gamma(1-b) / Gamma(a+1-b) z^-a + y^(1-b) a / (b-1) 2F1(1, a+1-b; 2-b; y)`,
/// whose series converges geometrically when `a y` is small.
fn ln_hyp2f1_a_a1_near_one(a: f64, b: f64, z: f64) -> f64 {
    let y = 1.0 - z;
    // ln Gamma(u) - ln Gamma(u - b), for u = a + 1 >= 31 by the Stirling series, written so
    // that the large terms cancel exactly: (w - 1/2) ln(u / w) + b ln u - b + corrections.
    let u = a + 1.0;
    let w = u - b;
    let st = |x: f64| {
        let x2 = x * x;
        1.0 / (12.0 * x) - 1.0 / (360.0 * x * x2) + 1.0 / (1260.0 * x * x2 * x2)
    };
    // (Directly for a small u, where the two log-gammas are small.)
    let ln_ratio = if u >= 31.0 {
        -(w - 0.5) * (-b / u).ln_1p() + b * u.ln() - b + st(u) - st(w)
    } else {
        ln_gamma(u) - ln_gamma(w)
    };
    // Gamma(1 - b): positive for b < 1, else the sign of sin(pi (1 - b)) (reflection).
    let g_sign = if b < 1.0 || (PI * (1.0 - b)).sin() > 0.0 {
        1.0
    } else {
        -1.0
    };
    let l1 = ln_ratio + ln_gamma(1.0 - b) - a * (-y).ln_1p();
    let (mut sum, mut term) = (1.0f64, 1.0f64);
    for n in 0..10_000 {
        let n = n as f64;
        term *= (a + 1.0 - b + n) / (2.0 - b + n) * y;
        sum += term;
        if term.abs() <= 1e-17 * sum.abs() {
            break;
        }
    }
    let l2 = (1.0 - b) * y.ln() + a.ln() - (b - 1.0).abs().ln() + sum.abs().ln();
    let s2 = (b - 1.0).signum() * sum.signum();
    let m = l1.max(l2);
    m + (g_sign * (l1 - m).exp() + s2 * (l2 - m).exp()).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    #[test]
    fn ln_gamma_known_values() {
        assert!(close(ln_gamma(1.0), 0.0, 1e-14));
        assert!(close(ln_gamma(0.5), PI.sqrt().ln(), 1e-14));
        assert!(close(ln_gamma(10.0), 362_880f64.ln(), 1e-14));
        assert!(close(ln_gamma(0.1), 2.252_712_651_734_206, 1e-13));
        assert!(
            close(ln_gamma(1000.5), 5_908.674_175_848_678, 1e-12),
            "{}",
            ln_gamma(1000.5)
        );
    }

    #[test]
    fn digamma_known_values() {
        let euler = 0.577_215_664_901_532_9;
        assert!(close(digamma(1.0), -euler, 1e-13));
        assert!(close(digamma(0.5), -euler - 2.0 * 2f64.ln(), 1e-13));
        assert!(close(digamma(100.0), 4.600_161_852_738_087, 1e-13));
        // Derivative check against ln_gamma.
        for x in [0.2, 1.7, 13.0] {
            let h = 1e-5;
            let num = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            assert!(close(digamma(x), num, 1e-7), "{x}");
        }
    }

    #[test]
    fn hyp2f1_known_values() {
        // 2F1(1, 1; 2; z) = -ln(1 - z) / z.
        for z in [0.1, 0.5, 0.9, 0.99] {
            assert!(
                close(hyp2f1(1.0, 1.0, 2.0, z), -(1.0 - z).ln() / z, 1e-12),
                "{z}"
            );
        }
        // 2F1(a, b; b; z) = (1 - z)^-a.
        assert!(close(hyp2f1(0.3, 2.5, 2.5, 0.7), 0.3f64.powf(-0.3), 1e-12));
        let zs = [0.1, 0.5, 0.9, 0.99];
        let mut out = [0.0; 4];
        hyp2f1_multi(1.3, 2.2, 4.1, &zs, &mut out);
        for (z, v) in zs.iter().zip(out) {
            assert!(close(v, hyp2f1(1.3, 2.2, 4.1, *z), 1e-12), "{z}");
        }
    }

    #[test]
    fn ln_hyp2f1_a_a1_matches_closed_forms_and_the_series() {
        // 2F1(1, 1; 2; z) = -ln(1 - z) / z, also very close to 1.
        for z in [1e-6f64, 0.1, 0.5, 0.9, 0.999, 0.999_999_9] {
            let want = -(-z).ln_1p() / z;
            let got = ln_hyp2f1_a_a1(1.0, 1.0, z).exp();
            assert!(close(got, want, 1e-10), "{z}: {got} vs {want}");
        }
        // 2F1(1, b; 2; z) = ((1 - z)^(1 - b) - 1) / ((b - 1) z).
        for (b, z) in [
            (1.6, 0.3),
            (1.6, 0.99),
            (12.5, 0.7),
            (0.4, 0.9999),
            (51.0, 0.2),
        ] {
            let want = ((1.0f64 - z).powf(1.0 - b) - 1.0) / ((b - 1.0) * z);
            let got = ln_hyp2f1_a_a1(1.0, b, z);
            assert!(
                close(got, want.ln(), 1e-12),
                "{b} {z}: {got} vs {}",
                want.ln()
            );
        }
        // 2F1(a, a + 1; a + 1; z) = (1 - z)^-a.
        for (a, z) in [(0.3, 0.5), (2.7, 0.999), (40.0, 0.95)] {
            let want = -a * (1.0f64 - z).ln();
            assert!(close(ln_hyp2f1_a_a1(a, a + 1.0, z), want, 1e-12), "{a} {z}");
        }
        // 2F1(1/2, 1; 3/2; z) = atanh(sqrt z) / sqrt z.
        for z in [0.25f64, 0.81, 0.9999] {
            let want = (z.sqrt().atanh() / z.sqrt()).ln();
            assert!(close(ln_hyp2f1_a_a1(0.5, 1.0, z), want, 1e-12), "{z}");
        }
        // The Pareto/NBD arguments against the power series where it converges.
        for (a, b, z) in [
            (1.16, 1.6063, 0.05),
            (3.16, 1.6063, 0.6),
            (25.3, 14.55, 0.8),
            (1.7, 0.55, 0.95),
        ] {
            let want = hyp2f1(a, b, a + 1.0, z).ln();
            let got = ln_hyp2f1_a_a1(a, b, z);
            assert!(close(got, want, 1e-12), "{a} {b} {z}: {got} vs {want}");
        }
        assert_eq!(ln_hyp2f1_a_a1(2.0, 3.0, 0.0), 0.0);
        // Near z = 1 with a large a (the transformation to 1 - z), against mpmath's
        // log(hyp2f1(a, b, a + 1, z)) at 40 digits.
        for (a, b, z, want) in [
            (22086.17, 0.16661, 0.99999957959, 1.7752652474025972),
            (22088.17, 2.16661, 0.9999990982845044, 26.034618963142005),
            (14119.7, 0.1666, 0.9999964, 1.6730939668244396),
            (22086.17, 1.16661, 0.99999957959, 13.525096727437754),
            (500.0, 0.3, 0.999, 1.8102302425708356),
            (100.0, 0.5, 0.99, 2.0282955136610794),
            (40.0, 0.45, 0.96, 1.2738130215178358),
            (60.0, 2.3, 0.97, 7.3764216536484195),
            (30.0, 1.02, 0.95, 2.670998438119547),
            (
                0.15567819084939674,
                0.15567669819636348,
                0.9999905054113999,
                0.0401797722694757,
            ),
            (
                2.1556758281398096,
                2.1556752115053768,
                0.9999991224853552,
                16.740660146700908,
            ),
            (3.0, 2.4, 0.95, 4.8485227749838815),
            (10.0, 0.7, 0.9, 1.273295322289164),
        ] {
            let got = ln_hyp2f1_a_a1(a, b, z);
            assert!(close(got, want, 1e-12), "{a} {b} {z}: {got} vs {want}");
        }
    }
}
