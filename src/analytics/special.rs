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
    }
}
