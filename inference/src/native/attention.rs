//! Scaled dot-product attention of one head over one text, as two blocked matrix products on the
//! same micro-kernel as the linear layers: `S = Q·Kᵀ` (keys packed as panels of [`NR`]), a
//! softmax per row, then `O = P·V` (values packed as panels of [`NR`] of the head's width).

use super::cpu::{multiversion, Isa};
use super::gemm::{tile, MR, NR};

/// Scratch space reused across the heads one task computes.
#[derive(Default)]
pub struct Scratch {
    keys: Vec<f32>,
    values: Vec<f32>,
    a: Vec<f32>,
    scores: Vec<f32>,
    probs: Vec<f32>,
}

/// `q`, `k`, `v`: rows of `stride` values, the head's `d` values at each row's start; `len`
/// rows. Writes `len` rows of `d` values to `out` at stride `out_stride`.
#[allow(clippy::too_many_arguments)]
pub fn attention_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    len: usize,
    d: usize,
    scale: f32,
    out: &mut [f32],
    out_stride: usize,
    s: &mut Scratch,
) {
    let isa = Isa::detect();
    let key_panels = len.div_ceil(NR);
    let lp = key_panels * NR;
    let value_panels = d.div_ceil(NR);
    // Keys as panels `[panel][d][NR]`; values as panels `[panel][len][NR]`.
    s.keys.clear();
    s.keys.resize(key_panels * d * NR, 0.0);
    for j in 0..len {
        let (p, jj) = (j / NR, j % NR);
        for dd in 0..d {
            s.keys[(p * d + dd) * NR + jj] = k[j * stride + dd];
        }
    }
    s.values.clear();
    s.values.resize(value_panels * len * NR, 0.0);
    for j in 0..len {
        for dd in 0..d {
            let (p, x) = (dd / NR, dd % NR);
            s.values[(p * len + j) * NR + x] = v[j * stride + dd];
        }
    }
    s.scores.resize(MR * lp, 0.0);
    s.probs.resize(len.max(d) * MR, 0.0);
    s.a.resize(d * MR, 0.0);
    for r0 in (0..len).step_by(MR) {
        let rows = MR.min(len - r0);
        // this block's queries, scaled, packed `[d][MR]`
        s.a.fill(0.0);
        for i in 0..rows {
            for dd in 0..d {
                s.a[dd * MR + i] = q[(r0 + i) * stride + dd] * scale;
            }
        }
        for p in 0..key_panels {
            let cols = NR.min(len - p * NR);
            // SAFETY: scores has MR rows of lp values; this tile is rows..MR × p*NR..+cols.
            unsafe {
                tile(
                    isa,
                    d,
                    &s.a,
                    &s.keys[p * d * NR..(p + 1) * d * NR],
                    s.scores.as_mut_ptr().add(p * NR),
                    lp,
                    rows,
                    cols,
                )
            };
        }
        // softmax per row; probabilities packed `[len][MR]` for the second product
        let mut inv = [0f32; MR];
        for (i, inv) in inv.iter_mut().enumerate().take(rows) {
            let row = &mut s.scores[i * lp..i * lp + len];
            *inv = 1.0 / softmax_unnormalized(row);
        }
        s.probs[..len * MR].fill(0.0);
        for i in 0..rows {
            let row = &s.scores[i * lp..i * lp + len];
            for (j, &p) in row.iter().enumerate() {
                s.probs[j * MR + i] = p;
            }
        }
        for p in 0..value_panels {
            let cols = NR.min(d - p * NR);
            // SAFETY: `out` holds `len` rows at `out_stride` with the head's `d` values; this
            // tile writes rows r0..r0+rows, columns p*NR..p*NR+cols < d.
            unsafe {
                tile(
                    isa,
                    len,
                    &s.probs[..len * MR],
                    &s.values[p * len * NR..(p + 1) * len * NR],
                    out.as_mut_ptr().add(r0 * out_stride + p * NR),
                    out_stride,
                    rows,
                    cols,
                )
            };
        }
        for (i, f) in inv.iter().enumerate().take(rows) {
            for o in &mut out[(r0 + i) * out_stride..(r0 + i) * out_stride + d] {
                *o *= f;
            }
        }
    }
}

multiversion! {
    /// `row = exp(row - max)` in place; returns the sum.
    fn softmax_unnormalized_impl(row: &mut [f32], sum_out: &mut f32) {
        let m = super::math::max(row);
        for x in row.iter_mut() {
            *x = super::math::exp(*x - m);
        }
        *sum_out = super::math::sum(row);
    }
}

fn softmax_unnormalized(row: &mut [f32]) -> f32 {
    let mut s = 0.0;
    softmax_unnormalized_impl(row, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_matches_a_direct_computation() {
        for &(len, d) in &[(19usize, 8usize), (1, 32), (45, 32), (70, 40)] {
            let stride = 3 * d + 5;
            let data: Vec<f32> = (0..len * stride)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            let (q, k, v) = (&data[..], &data[d..], &data[2 * d..]);
            let mut out = vec![f32::NAN; len * d];
            let scale = 1.0 / (d as f32).sqrt();
            let mut s = Scratch::default();
            attention_head(q, k, v, stride, len, d, scale, &mut out, d, &mut s);
            for i in 0..len {
                let sc: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..d)
                            .map(|x| (q[i * stride + x] * k[j * stride + x]) as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for x in 0..d {
                    let want: f64 = (0..len).map(|j| e[j] / z * v[j * stride + x] as f64).sum();
                    let got = out[i * d + x] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "len {len} d {d}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
