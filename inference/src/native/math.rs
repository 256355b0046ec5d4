//! Element-wise and row-wise operations of the encoder, written so the compiler vectorises them
//! (lane-wise accumulators instead of serial float reductions), compiled per instruction set.

use super::cpu::multiversion;

const LANES: usize = 16;

/// Sum of `xs`, in 16 independent lanes (vectorisable).
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    let mut s = chunks.remainder().iter().sum::<f32>();
    for a in acc {
        s += a;
    }
    s
}

#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for a in acc {
        m = m.max(a);
    }
    m
}

/// `e^x` to about 1e-7 relative error, branch-free (Cody-Waite reduction, Cephes polynomial).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n without a float-to-int conversion (Rust's saturating `as` does not vectorise): adding
    // 1.5 × 2^23 puts the integer n + 127 (1..=254 after the clamp) in the low mantissa bits.
    let biased = (n + (127.0 + 12_582_912.0)).to_bits();
    y * f32::from_bits(biased << 23)
}

/// `erf(x)`, absolute error below 2e-7 (Abramowitz & Stegun 7.1.26), branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// The activation between a BERT layer's two feed-forward matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · Φ(x)` with the exact (erf) normal CDF: BERT's "gelu".
    Gelu,
    /// The tanh approximation ("gelu_new", "gelu_pytorch_tanh").
    GeluTanh,
    Relu,
}

impl Activation {
    pub fn from_config(name: &str) -> Option<Activation> {
        match name {
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    pub fn apply(self, xs: &mut [f32]) {
        match self {
            Activation::Gelu => gelu_erf(xs),
            Activation::GeluTanh => gelu_tanh(xs),
            Activation::Relu => relu(xs),
        }
    }
}

multiversion! {
    fn gelu_erf(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            let v = *x;
            *x = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

multiversion! {
    fn gelu_tanh(xs: &mut [f32]) {
        const C: f32 = 0.797_884_6; // sqrt(2/pi)
        for x in xs.iter_mut() {
            let v = *x;
            let u = C * (v + 0.044_715 * v * v * v);
            // tanh(u) = 1 - 2 / (e^{2u} + 1)
            let t = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
            *x = 0.5 * v * (1.0 + t);
        }
    }
}

multiversion! {
    fn relu(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = x.max(0.0);
        }
    }
}

multiversion! {
    /// `dst = LayerNorm(dst + residual)` for each row of width `gamma.len()`.
    pub fn add_layer_norm(dst: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let h = gamma.len();
        for (row, res) in dst.chunks_exact_mut(h).zip(residual.chunks_exact(h)) {
            for (x, r) in row.iter_mut().zip(res) {
                *x += *r;
            }
            normalize_row(row, gamma, beta, eps);
        }
    }
}

multiversion! {
    /// `dst = LayerNorm(dst)` for each row of width `gamma.len()`.
    pub fn layer_norm(dst: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let h = gamma.len();
        for row in dst.chunks_exact_mut(h) {
            normalize_row(row, gamma, beta, eps);
        }
    }
}

#[inline(always)]
fn normalize_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let h = row.len() as f32;
    let mean = sum(row) / h;
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let d = c[l] - mean;
            acc[l] += d * d;
        }
    }
    let mut var = chunks
        .remainder()
        .iter()
        .map(|&x| (x - mean) * (x - mean))
        .sum::<f32>();
    for a in acc {
        var += a;
    }
    let rstd = 1.0 / (var / h + eps).sqrt();
    for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *x = (*x - mean) * rstd * g + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        let mut x = -30.0f32;
        while x < 30.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
        for i in -400..400 {
            let x = i as f32 / 100.0;
            let want = libm_erf(x as f64);
            assert!((erf(x) as f64 - want).abs() < 5e-7, "erf({x})");
        }
    }

    // erf by its series / continued fraction in f64, for the test only.
    fn libm_erf(x: f64) -> f64 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)), fine for |x| <= 4 in f64
        let mut term = x;
        let mut s = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * s.abs().max(1e-300) {
            n += 1.0;
            term *= -x * x / n;
            s += term / (2.0 * n + 1.0);
            if n > 200.0 {
                break;
            }
        }
        s * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn layer_norm_normalizes() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 14.0];
        layer_norm(&mut x, &[1.0; 4], &[0.5; 4], 1e-12);
        for row in x.chunks(4) {
            let mean: f32 = row.iter().sum::<f32>() / 4.0;
            let var: f32 = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4.0;
            assert!((mean - 0.5).abs() < 1e-5 && (var - 1.0).abs() < 1e-4);
        }
    }
}
