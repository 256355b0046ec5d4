//! Scaled dot-product attention of one head over one text, as two blocked matrix products on the
//! same micro-kernel as the linear layers: `S = Q·Kᵀ` (keys packed as panels of [`NR`]), a
//! softmax per row, then `O = P·V` (values packed as panels of [`NR`] of the head's width).

use super::cpu::{multiversion, Isa};
use super::gemm::{amx, rows_to_bf16, tile, to_bf16, Lhs, Rhs, MR, NR};

/// Scratch space reused across the heads one task computes.
#[derive(Default)]
pub struct Scratch {
    keys: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
    q16: Vec<u16>,
    k16: Vec<u16>,
    p16: Vec<u16>,
    v16: Vec<u16>,
    /// 1 / softmax sum of each query row (AMX path).
    inv: Vec<f32>,
}

/// `q`, `k`, `v`: rows of `stride` values, the head's `d` values at each row's start; `len`
/// rows. Writes `len` rows of `d` values to `out` at stride `out_stride`, and nothing else.
///
/// `out` is a pointer, not a slice, so that the heads of one text, whose outputs interleave
/// (columns `head × d ..` of the same rows), can be computed on different threads without
/// anyone holding a `&mut` over another head's values.
///
/// # Safety
/// For every row `i < len`, `out + i × out_stride .. out + i × out_stride + d` must be valid for
/// reads and writes, and nothing else may access those values during the call (other values
/// between them may be in use elsewhere: they are never touched, nor referenced).
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    len: usize,
    d: usize,
    scale: f32,
    out: *mut f32,
    out_stride: usize,
    s: &mut Scratch,
) {
    check_head(q, k, v, stride, len, d, out_stride);
    let isa = Isa::detect();
    let key_panels = len.div_ceil(NR);
    let lp = key_panels * NR;
    // Keys transposed into panels `[panel][d][NR]` (the right operand of Q·Kᵀ).
    s.keys.clear();
    s.keys.resize(key_panels * d * NR, 0.0);
    for p in 0..key_panels {
        let panel = &mut s.keys[p * d * NR..(p + 1) * d * NR];
        for jj in 0..NR.min(len - p * NR) {
            let row = &k[(p * NR + jj) * stride..(p * NR + jj) * stride + d];
            for (dd, &x) in row.iter().enumerate() {
                panel[dd * NR + jj] = x;
            }
        }
    }
    // Values are read in place when the head's width is whole panels (MiniLM: 32); otherwise
    // copied into zero-padded panels `[panel][len][NR]`.
    let value_panels = d.div_ceil(NR);
    let in_place = d.is_multiple_of(NR);
    if !in_place {
        s.values.clear();
        s.values.resize(value_panels * len * NR, 0.0);
        for j in 0..len {
            for dd in 0..d {
                let (p, x) = (dd / NR, dd % NR);
                s.values[(p * len + j) * NR + x] = v[j * stride + dd];
            }
        }
    }
    s.scores.resize(MR * lp, 0.0);
    for r0 in (0..len).step_by(MR) {
        let rows = MR.min(len - r0);
        // S = Q·Kᵀ for this block of queries, read in place
        let lhs = Lhs {
            ptr: q[r0 * stride..].as_ptr(),
            row: stride,
            step: 1,
        };
        for p in 0..key_panels {
            let cols = NR.min(len - p * NR);
            let rhs = Rhs {
                ptr: s.keys[p * d * NR..].as_ptr(),
                ld: NR,
            };
            // SAFETY: `lhs` has `rows` rows of d values (asserted above), `rhs` d rows of NR;
            // the tile lies inside `scores` (MR rows of lp).
            unsafe {
                tile(
                    isa,
                    d,
                    lhs,
                    rhs,
                    s.scores.as_mut_ptr().add(p * NR),
                    lp,
                    rows,
                    cols,
                )
            };
        }
        // softmax of each row (scaled), left unnormalised: 1/sum is applied to the output
        let mut inv = [0f32; MR];
        for (i, inv) in inv.iter_mut().enumerate().take(rows) {
            *inv = 1.0 / softmax_unnormalized(&mut s.scores[i * lp..i * lp + len], scale);
        }
        // O = P·V, P read in place from the scores
        let lhs = Lhs {
            ptr: s.scores.as_ptr(),
            row: lp,
            step: 1,
        };
        for p in 0..value_panels {
            let cols = NR.min(d - p * NR);
            let rhs = if in_place {
                Rhs {
                    ptr: v[p * NR..].as_ptr(),
                    ld: stride,
                }
            } else {
                Rhs {
                    ptr: s.values[p * len * NR..].as_ptr(),
                    ld: NR,
                }
            };
            // SAFETY: `lhs` has `rows` rows of `len` probabilities; `rhs` has `len` rows of NR
            // values (in place: whole panels of the head's d columns, d is a multiple of NR); the
            // tile writes rows r0..r0+rows, columns p*NR..p*NR+cols <= d of `out`, which the
            // caller hands to this call alone.
            unsafe {
                tile(
                    isa,
                    len,
                    lhs,
                    rhs,
                    out.add(r0 * out_stride + p * NR),
                    out_stride,
                    rows,
                    cols,
                )
            };
        }
        for (i, f) in inv.iter().enumerate().take(rows) {
            // SAFETY: row r0 + i < len of `out`: its d values are this call's alone.
            let row = unsafe { out_row(out, r0 + i, out_stride, d) };
            for o in row {
                *o *= f;
            }
        }
    }
}

/// The `d` values of row `i` of a head's output.
///
/// # Safety
/// As for [`attention_head`]'s `out`, with `i < len`; the slice must be dropped before anything
/// else touches those values.
#[inline(always)]
unsafe fn out_row<'a>(out: *mut f32, i: usize, out_stride: usize, d: usize) -> &'a mut [f32] {
    // SAFETY: the caller's contract: these d values are valid and accessed by nobody else.
    unsafe { std::slice::from_raw_parts_mut(out.add(i * out_stride), d) }
}

/// The bounds every head computation relies on (those of the inputs; `out` is the caller's).
fn check_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    len: usize,
    d: usize,
    out_stride: usize,
) {
    assert!(len >= 1 && d >= 1, "attention over no tokens");
    assert!(stride >= d && out_stride >= d, "rows overlap");
    let rows = (len - 1)
        .checked_mul(stride)
        .and_then(|x| x.checked_add(d))
        .expect("attention shapes overflow");
    assert!(q.len() >= rows && k.len() >= rows && v.len() >= rows);
}

/// [`attention_head`] with both products on AMX tiles in bf16 (the opt-in reduced precision):
/// queries, keys, probabilities and values are rounded to bf16, scores and sums stay f32.
/// Only call where [`amx::available`] is true (asserted).
///
/// # Safety
/// As [`attention_head`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_head_amx(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    len: usize,
    d: usize,
    scale: f32,
    out: *mut f32,
    out_stride: usize,
    s: &mut Scratch,
) {
    const ZERO: [f32; NR] = [0.0; NR];
    const T: usize = amx::ROWS; // 32: rows per block, values per k step, columns per panel
    assert!(amx::available());
    check_head(q, k, v, stride, len, d, out_stride);
    let dp = d.div_ceil(T) * T; // head width padded: the k of Q·Kᵀ
    let lp = len.div_ceil(T) * T; // keys padded: columns of S, the k of P·V
    let blocks = 0..lp / T;
    s.q16.clear();
    s.q16.resize(lp * dp, 0);
    s.k16.clear();
    s.k16.resize(lp * dp, 0);
    s.v16.clear();
    s.v16.resize(lp * dp, 0);
    for j in 0..len {
        let (qr, kr, vr) = (
            &q[j * stride..j * stride + d],
            &k[j * stride..j * stride + d],
            &v[j * stride..j * stride + d],
        );
        for dd in 0..d {
            s.q16[j * dp + dd] = to_bf16(qr[dd]);
            // keys: panels of 32 keys, `[panel][d/2][32][2]`
            s.k16[(j / T) * dp * T + (dd / 2) * 2 * T + (j % T) * 2 + dd % 2] = to_bf16(kr[dd]);
            // values: panels of 32 dims, `[panel][len/2][32][2]`
            s.v16[(dd / T) * lp * T + (j / 2) * 2 * T + (dd % T) * 2 + j % 2] = to_bf16(vr[dd]);
        }
    }
    s.scores.clear();
    s.scores.resize(len * lp, 0.0);
    for p in 0..lp / T {
        // SAFETY: AMX is available; q16 has lp rows of dp values, k16 one panel of dp/2 pairs
        // per 32 keys; the output tile lies in `scores` (len rows of lp).
        unsafe {
            amx::panel(
                dp / 2,
                &s.q16,
                dp,
                blocks.clone(),
                len,
                &s.k16[p * dp * T..],
                &ZERO,
                s.scores.as_mut_ptr().add(p * T),
                lp,
                T.min(len - p * T),
            )
        };
    }
    s.inv.clear();
    s.inv.resize(len, 0.0);
    for (i, inv) in s.inv.iter_mut().enumerate() {
        *inv = 1.0 / softmax_unnormalized(&mut s.scores[i * lp..i * lp + len], scale);
    }
    s.p16.clear();
    s.p16.resize(lp * lp, 0);
    for i in 0..len {
        rows_to_bf16(
            &s.scores[i * lp..i * lp + len],
            len,
            &mut s.p16[i * lp..(i + 1) * lp],
            lp,
        );
    }
    for p in 0..dp / T {
        // SAFETY: AMX is available; p16 has lp rows of lp values, v16 a panel of lp/2 pairs per
        // 32 dims; the panel writes rows 0..len, columns p*32..p*32+cols <= d of `out`, which
        // the caller hands to this call alone.
        unsafe {
            amx::panel(
                lp / 2,
                &s.p16,
                lp,
                blocks.clone(),
                len,
                &s.v16[p * lp * T..],
                &ZERO,
                out.add(p * T),
                out_stride,
                T.min(d - p * T),
            )
        };
    }
    for (i, f) in s.inv.iter().enumerate() {
        // SAFETY: row i < len of `out`: its d values are this call's alone.
        let row = unsafe { out_row(out, i, out_stride, d) };
        for o in row {
            *o *= f;
        }
    }
}

multiversion! {
    /// `row = exp(scale · (row - max))` in place; writes the sum.
    fn softmax_unnormalized_impl(row: &mut [f32], scale: f32, sum_out: &mut f32) {
        let m = super::math::max(row);
        for x in row.iter_mut() {
            *x = super::math::exp((*x - m) * scale);
        }
        *sum_out = super::math::sum(row);
    }
}

fn softmax_unnormalized(row: &mut [f32], scale: f32) -> f32 {
    let mut s = 0.0;
    softmax_unnormalized_impl(row, scale, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` rows of `stride` values (q, k and v side by side from columns 0, d and 2d).
    fn qkv(len: usize, stride: usize) -> Vec<f32> {
        (0..len * stride)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect()
    }

    /// One head into a fresh `len × d` buffer, with the f32 kernels or the AMX ones.
    fn head(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        stride: usize,
        len: usize,
        d: usize,
        amx: bool,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; len * d];
        let scale = 1.0 / (d as f32).sqrt();
        let mut s = Scratch::default();
        let f = if amx {
            attention_head_amx
        } else {
            attention_head
        };
        // SAFETY: `out` holds len rows of d values, used by nothing else meanwhile.
        unsafe { f(q, k, v, stride, len, d, scale, out.as_mut_ptr(), d, &mut s) };
        out
    }

    #[test]
    fn attention_matches_a_direct_computation() {
        for &(len, d) in &[(19usize, 8usize), (1, 32), (45, 32), (70, 40)] {
            let stride = 3 * d + 5;
            let data = qkv(len, stride);
            let (q, k, v) = (&data[..], &data[d..], &data[2 * d..]);
            let scale = 1.0 / (d as f32).sqrt();
            let out = head(q, k, v, stride, len, d, false);
            if amx::available() {
                let out16 = head(q, k, v, stride, len, d, true);
                let err = out
                    .iter()
                    .zip(&out16)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(err < 0.02, "len {len} d {d}: bf16 attention off by {err}");
            }
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

    /// The heads of one text, each on its own thread, write their interleaved columns of one
    /// shared output (as the encoder does) through the pointer, touching nothing else: the
    /// values around and between the heads' blocks keep their sentinel.
    #[test]
    fn heads_on_threads_write_only_their_own_columns() {
        for amx in [false, true] {
            if amx && !amx::available() {
                continue;
            }
            let (len, heads, d) = (37usize, 4usize, 8usize);
            let h = heads * d;
            let (stride, out_stride) = (3 * h, h + 3); // 3 unused values after each row
            let data = qkv(len, stride);
            let sentinel = 1234.5f32;
            let mut ctx = vec![sentinel; len * out_stride + 5];
            let scale = 1.0 / (d as f32).sqrt();
            let out = super::super::gemm::SendPtr(ctx.as_mut_ptr());
            std::thread::scope(|scope| {
                for hd in 0..heads {
                    let data = &data;
                    scope.spawn(move || {
                        let base = hd * d;
                        let mut s = Scratch::default();
                        let f = if amx {
                            attention_head_amx
                        } else {
                            attention_head
                        };
                        // SAFETY: head hd's block (len rows × columns hd*d..(hd+1)*d at stride
                        // out_stride) lies inside `ctx` and is written by this thread only;
                        // `ctx` itself is not used until the threads are joined.
                        unsafe {
                            f(
                                &data[base..],
                                &data[base + h..],
                                &data[base + 2 * h..],
                                stride,
                                len,
                                d,
                                scale,
                                out.get().add(base),
                                out_stride,
                                &mut s,
                            )
                        }
                    });
                }
            });
            for hd in 0..heads {
                let base = hd * d;
                let want = head(
                    &data[base..],
                    &data[base + h..],
                    &data[base + 2 * h..],
                    stride,
                    len,
                    d,
                    amx,
                );
                for i in 0..len {
                    assert_eq!(
                        &ctx[i * out_stride + base..i * out_stride + base + d],
                        &want[i * d..(i + 1) * d],
                        "head {hd} row {i}"
                    );
                }
            }
            for (i, x) in ctx.iter().enumerate() {
                if i >= len * out_stride || i % out_stride >= h {
                    assert_eq!(
                        *x, sentinel,
                        "value {i} outside every head's block was written"
                    );
                }
            }
        }
    }
}
