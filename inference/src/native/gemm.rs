//! Matrix multiplication for linear layers: `out = a · Wᵀ + bias`, with `W` packed once at load.
//!
//! The weights of a linear layer never change, so they are packed at load into the layout the
//! micro-kernel reads: panels of [`NR`] output columns, each panel `k`-major. The activations are
//! read in place, row by row (f32), or from one bf16 copy per call kept in a per-thread buffer
//! (bf16: `m × k` conversions, small next to the `m × k × n` multiply-adds). The micro-kernel
//! keeps a `MR × NR` tile of the output in registers (24 of the 32 AVX-512 registers) and streams
//! the weight panel from cache.
//!
//! The kernels, picked once at run time by what the CPU has:
//! - AVX-512F, f32 (the default precision);
//! - for the opt-in bf16 precision (weights and activations rounded to bf16, products
//!   accumulated in f32): AMX tiles (`tdpbf16ps`, [`amx`]) where present, else AVX512-BF16
//!   (`vdpbf16ps`);
//! - AVX2 with FMA, f32, for CPUs without AVX-512 (AMD before Zen 4, Intel client CPUs): the
//!   tile in blocks of 6 × 16 that fit AVX2's 16 registers (the portable kernel's 12 × 32 tile,
//!   vectorised by the compiler, spilled its accumulators and ran at a quarter of the speed);
//! - a portable kernel (plain Rust, vectorised by the compiler) for other CPUs, for the bf16
//!   products on CPUs without AVX-512, and for checking the others.
//!
//! Work is split across the calling rayon pool by chunks of rows (or, for a few rows, by output
//! panels), so the embedder's thread settings govern it.

use rayon::prelude::*;

use super::cpu::{multiversion, Isa};
use super::pause::pause_point;

/// Rows of the output tile a micro-kernel computes.
pub const MR: usize = 12;
/// Columns of the output tile (two AVX-512 vectors).
pub const NR: usize = 32;

/// How a layer's weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights and arithmetic: the same results as the reference implementation.
    F32,
    /// bf16 weights and activations in the matrix products, f32 accumulation; about twice the
    /// arithmetic rate where the CPU has AVX512-BF16.
    Bf16,
}

enum Packed {
    /// `[panel][k][NR]`
    F32(Vec<f32>),
    /// `[panel][k/2][NR][2]`: pairs of consecutive `k` for one column, as `vdpbf16ps` reads them.
    Bf16(Vec<u16>),
}

/// A linear layer `y = x · Wᵀ + b` with `W` (`n × k`, row-major as stored by PyTorch) packed.
pub struct PackedLinear {
    n: usize,
    k: usize,
    panels: usize,
    packed: Packed,
    /// Padded to `panels × NR`.
    bias: Vec<f32>,
    isa: Isa,
    /// bf16 products on AMX tiles.
    amx: bool,
}

impl PackedLinear {
    /// Pack `weight` (`n × k`, row-major) and `bias` (`n`).
    ///
    /// # Panics
    /// If the slices do not have these lengths, or the packed sizes overflow `usize`.
    pub fn new(weight: &[f32], bias: &[f32], n: usize, k: usize, precision: Precision) -> Self {
        let weights = n.checked_mul(k).expect("weight shape: n × k overflows");
        assert_eq!(weight.len(), weights, "weight shape");
        assert_eq!(bias.len(), n, "bias shape");
        let isa = Isa::detect();
        let panels = n.div_ceil(NR);
        // `forward` computes offsets below these sizes without checking again.
        let overflow = || panic!("weight shape: the packed size overflows");
        let packed = match precision {
            Precision::F32 => {
                let len = panels.checked_mul(k).and_then(|x| x.checked_mul(NR));
                let mut p = vec![0f32; len.unwrap_or_else(overflow)];
                for (col, row) in weight.chunks_exact(k).enumerate() {
                    let (panel, j) = (col / NR, col % NR);
                    let base = panel * k * NR + j;
                    for (kk, &w) in row.iter().enumerate() {
                        p[base + kk * NR] = w;
                    }
                }
                Packed::F32(p)
            }
            Precision::Bf16 => {
                let kp = padded_pairs(k);
                let len = panels.checked_mul(kp).and_then(|x| x.checked_mul(NR * 2));
                let mut p = vec![0u16; len.unwrap_or_else(overflow)];
                for (col, row) in weight.chunks_exact(k).enumerate() {
                    let (panel, j) = (col / NR, col % NR);
                    let base = panel * kp * NR * 2 + j * 2;
                    for (kk, &w) in row.iter().enumerate() {
                        p[base + (kk / 2) * NR * 2 + (kk % 2)] = to_bf16(w);
                    }
                }
                Packed::Bf16(p)
            }
        };
        let mut padded_bias = vec![0f32; panels * NR];
        padded_bias[..n].copy_from_slice(bias);
        PackedLinear {
            n,
            k,
            panels,
            packed,
            bias: padded_bias,
            isa,
            amx: precision == Precision::Bf16 && isa != Isa::Portable && amx::available(),
        }
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn precision(&self) -> Precision {
        match self.packed {
            Packed::F32(_) => Precision::F32,
            Packed::Bf16(_) => Precision::Bf16,
        }
    }

    /// Use the portable kernel whatever the CPU has (for tests comparing kernels).
    #[cfg(test)]
    pub fn force_portable(&mut self) {
        self.isa = Isa::Portable;
        self.amx = false;
    }

    /// Use the AVX2/FMA kernels (for tests comparing kernels); false, leaving the layer as it
    /// was, where the CPU has not both.
    #[cfg(test)]
    pub fn force_avx2(&mut self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            self.isa = Isa::Avx2;
            self.amx = false;
            return true;
        }
        false
    }

    /// Use the AVX512-BF16 kernel rather than AMX (for tests comparing kernels).
    #[cfg(test)]
    pub fn force_no_amx(&mut self) {
        self.amx = false;
    }

    /// Whether bf16 products run on AMX tiles.
    pub fn uses_amx(&self) -> bool {
        self.amx
    }

    /// `out[m × n] = a[m × k] · Wᵀ + bias`, both row-major.
    ///
    /// # Panics
    /// If `a` has fewer than `m × k` values or `out` fewer than `m × n` (or these overflow).
    pub fn forward(&self, a: &[f32], m: usize, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        // The kernels read and write through raw pointers: these checks are what keeps them
        // inside `a` and `out`, so they are real asserts, on sizes that cannot wrap.
        let a_len = m.checked_mul(k).expect("matmul shapes: m × k overflows");
        let out_len = m.checked_mul(n).expect("matmul shapes: m × n overflows");
        assert!(
            a.len() >= a_len,
            "matmul shapes: a has {} values, not {m} × {k}",
            a.len()
        );
        assert!(
            out.len() >= out_len,
            "matmul shapes: out has {} values, not {m} × {n}",
            out.len()
        );
        // With n ≥ 1, m ≤ out.len(): every size below (rows rounded up to a block, bf16 rows
        // of k rounded up) stays far from overflowing.
        if m == 0 || n == 0 {
            return;
        }
        let row_blocks = m.div_ceil(MR);
        let out_ptr = SendPtr(out.as_mut_ptr());
        match &self.packed {
            Packed::F32(w) => {
                // The activations are read in place, row by row: no packing.
                let a_ptr = SendConstPtr(a.as_ptr());
                self.schedule(row_blocks, MR * k * 4, false, |blocks, panel| {
                    let rhs = Rhs {
                        ptr: w[panel * k * NR..(panel + 1) * k * NR].as_ptr(),
                        ld: NR,
                    };
                    let bias = &self.bias[panel * NR..(panel + 1) * NR];
                    let cols = NR.min(n - panel * NR);
                    for rb in blocks {
                        let rows = MR.min(m - rb * MR);
                        let lhs = Lhs {
                            // SAFETY: row rb*MR < m is inside `a` (rb < row_blocks, a.len() >=
                            // m*k asserted above).
                            ptr: unsafe { a_ptr.get().add(rb * MR * k) },
                            row: k,
                            step: 1,
                        };
                        // SAFETY: rb*MR*n + panel*NR < m*n <= out.len().
                        let c = unsafe { out_ptr.get().add(rb * MR * n + panel * NR) };
                        // SAFETY: `lhs` has `rows` (1..=MR) rows of `k` values inside `a`; `rhs`
                        // is this panel's k × NR slice of `w`; `c` is valid for `rows` rows of
                        // `cols` values at stride n (the last one, (m-1)*n + n-1, is inside
                        // `out`), and this (row block, panel) tile is written by this task only
                        // (`schedule` hands each pair to one task), while nothing else reads
                        // `out`.
                        unsafe { kernel_f32(self.isa, k, lhs, rhs, bias, c, n, rows, cols) }
                    }
                });
            }
            Packed::Bf16(w) if self.amx => {
                let kp = padded_pairs(k);
                let lda = kp * 2;
                let padded_rows = m.div_ceil(amx::ROWS) * amx::ROWS;
                // Rows past `m` are computed but never stored.
                let ap = bf16_rows(a, m, k, padded_rows, lda);
                let blocks = padded_rows / amx::ROWS;
                self.schedule(blocks, amx::ROWS * lda * 2, true, |blocks, panel| {
                    let wp = &w[panel * kp * NR * 2..(panel + 1) * kp * NR * 2];
                    let bias = &self.bias[panel * NR..(panel + 1) * NR];
                    let cols = NR.min(n - panel * NR);
                    // SAFETY: AMX is enabled for this process (`self.amx`); `ap` holds
                    // `padded_rows` rows of `lda` values, `wp` one panel of `kp` pairs; `out` at
                    // column panel*NR is valid for `m` rows of `cols` values at stride n, and
                    // the tiles of this panel in `blocks` are written by this task only.
                    unsafe {
                        amx::panel(
                            kp,
                            &ap,
                            lda,
                            blocks,
                            m,
                            wp,
                            bias,
                            out_ptr.get().add(panel * NR),
                            n,
                            cols,
                        )
                    }
                });
                BF16_ROWS.set(ap);
            }
            Packed::Bf16(w) => {
                // The activations as bf16 rows (pairs of consecutive `k` as one u32), converted
                // once per product into a buffer kept per thread, then read in place.
                let kp_packed = padded_pairs(k);
                let kp = k.div_ceil(2);
                let lda = kp * 2;
                let ap = bf16_rows(a, m, k, m, lda);
                let rows_bf16 = &ap[..m * lda];
                let native = self.isa == Isa::Avx512Bf16;
                self.schedule(row_blocks, MR * lda * 2, false, |blocks, panel| {
                    let wp = &w[panel * kp_packed * NR * 2..(panel + 1) * kp_packed * NR * 2];
                    let bias = &self.bias[panel * NR..(panel + 1) * NR];
                    let cols = NR.min(n - panel * NR);
                    for rb in blocks {
                        let rows = MR.min(m - rb * MR);
                        let a_blk = &rows_bf16[rb * MR * lda..(rb * MR + rows) * lda];
                        // SAFETY: rb*MR*n + panel*NR < m*n <= out.len().
                        let c = unsafe { out_ptr.get().add(rb * MR * n + panel * NR) };
                        #[cfg(target_arch = "x86_64")]
                        if native {
                            // SAFETY: the CPU has AVX512-BF16 (checked by Isa::detect); `c` is
                            // valid for this task's `rows` × `cols` tile at stride n, as in the
                            // f32 path, and written by this task only.
                            unsafe { kernel_bf16_avx512(kp, a_blk, rows, wp, bias, c, n, cols) };
                            continue;
                        }
                        // SAFETY: as above.
                        unsafe { kernel_bf16_portable(kp, a_blk, rows, wp, bias, c, n, cols) }
                    }
                });
                BF16_ROWS.set(ap);
            }
        }
    }

    /// Run `f(row blocks, panel)` over every (row block, output panel) pair, spread over the
    /// current rayon pool. With enough rows, each task takes a chunk of row blocks whose packed
    /// activations (`block_bytes` each) stay in its core's L2 cache while every weight panel
    /// streams past them once; with few rows (a query), tasks split the panels instead.
    fn schedule(
        &self,
        row_blocks: usize,
        block_bytes: usize,
        amx_blocks: bool,
        f: impl Fn(std::ops::Range<usize>, usize) + Sync + Send,
    ) {
        /// Packed activations one task keeps in L2 (a core has 1-2 MiB on current x86 servers).
        const CHUNK_BYTES: usize = 768 * 1024;
        // Packed activations a task takes past one weight panel between two pause points with
        // the f32 and AVX-512 bf16 kernels: about a sixth of a chunk, 0.1 ms of work on one
        // core with f32 (a whole chunk took 0.6 ms and more, and a query waited that long for
        // ingest's threads to step aside). AMX, several times faster and setting up its tiles
        // at each call, keeps whole chunks.
        let pause_bytes = if amx_blocks {
            CHUNK_BYTES
        } else {
            CHUNK_BYTES / 6
        };
        let threads = rayon::current_num_threads();
        if threads == 1 || row_blocks >= 2 * threads {
            let per_chunk = (CHUNK_BYTES / block_bytes.max(1))
                .max(1)
                .min(row_blocks.div_ceil(threads));
            let per_pause = (pause_bytes / block_bytes.max(1)).max(1);
            let run = |start: usize| {
                let end = (start + per_chunk).min(row_blocks);
                for panel in 0..self.panels {
                    for from in (start..end).step_by(per_pause) {
                        pause_point();
                        f(from..(from + per_pause).min(end), panel);
                    }
                }
            };
            if threads == 1 || per_chunk >= row_blocks {
                (0..row_blocks).step_by(per_chunk).for_each(run);
            } else {
                let starts: Vec<usize> = (0..row_blocks).step_by(per_chunk).collect();
                starts.into_par_iter().for_each(run);
            }
        } else if self.panels == 1 {
            f(0..row_blocks, 0);
        } else {
            (0..self.panels).into_par_iter().for_each(|panel| {
                pause_point();
                f(0..row_blocks, panel)
            });
        }
    }
}

/// One `MR × NR` output tile: `c = lhs · rhs` over `k` steps; stores `rows × cols` values at
/// stride `ldc`.
///
/// # Safety
/// `lhs` must be readable for `k` steps of `rows` rows (`lhs.ptr + i*lhs.row + kk*lhs.step` for
/// `i < rows`, `kk < k`), `rhs` for `k` rows of `NR` values `rhs.ld` apart, and `c` writable for
/// `rows` rows of `cols` values at stride `ldc`, with no other access to those values during the
/// call; `rows <= MR`, `cols <= NR` (an empty tile writes nothing); `isa` one this CPU runs
/// (from [`Isa::detect`], or checked with `is_x86_feature_detected!`).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile(
    isa: Isa,
    k: usize,
    lhs: Lhs,
    rhs: Rhs,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    const ZERO: [f32; NR] = [0.0; NR];
    // SAFETY: the caller vouches for the operands.
    unsafe { kernel_f32(isa, k, lhs, rhs, &ZERO, c, ldc, rows, cols) }
}

/// The f32 micro-kernel for `isa`: `c = lhs · rhs + bias` on one tile.
///
/// # Safety
/// As [`tile`]. (`bias` must hold `NR` values: asserted.)
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_f32(
    isa: Isa,
    k: usize,
    lhs: Lhs,
    rhs: Rhs,
    bias: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    assert!(rows <= MR && cols <= NR && bias.len() >= NR);
    if rows == 0 || cols == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 || isa == Isa::Avx512Bf16 {
        // SAFETY: the CPU has AVX-512 (Isa::detect); the caller vouches for the operands.
        return unsafe { kernel_f32_avx512(k, lhs, rhs, bias, c, ldc, rows, cols) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA (Isa::detect); the caller vouches for the operands.
        return unsafe { kernel_f32_avx2(k, lhs, rhs, bias, c, ldc, rows, cols) };
    }
    // (elsewhere detection only ever says Portable)
    let _ = isa;
    // SAFETY: the caller vouches for the operands (the same contract).
    unsafe { kernel_f32_portable(k, lhs, rhs, bias, c, ldc, rows, cols) }
}

#[derive(Clone, Copy)]
struct SendConstPtr(*const f32);
// SAFETY: used only to share one read-only input among the tasks of one call.
unsafe impl Send for SendConstPtr {}
// SAFETY: as above.
unsafe impl Sync for SendConstPtr {}
impl SendConstPtr {
    fn get(self) -> *const f32 {
        self.0
    }
}

thread_local! {
    /// bf16 activations for the bf16 products, kept per thread.
    static BF16_ROWS: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

/// An output buffer shared by the tasks of one call, each writing its own disjoint block.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: used only to hand disjoint blocks of one buffer to the tasks of one call.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// Round to the nearest bf16, ties to even (NaN stays NaN).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    ((bits.wrapping_add(round)) >> 16) as u16
}

#[inline(always)]
pub fn from_bf16(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

multiversion! {
    /// `out[i][j] = tile[i][j] + bias[j]` for the first `rows` rows and `cols` columns (`out` at
    /// stride `ldc`).
    ///
    /// # Safety
    /// `out` must be valid for writes of `rows.min(tile.len())` rows of `cols` values at stride
    /// `ldc` (`out + i*ldc .. out + i*ldc + cols`), and nothing else may access those values
    /// during the call. (`cols <= NR` and `bias.len() >= cols` are checked: a panic otherwise.)
    unsafe fn add_bias_rows(
        tile: &[[f32; NR]],
        rows: usize,
        bias: &[f32],
        out: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let bias = &bias[..cols];
        for (i, row) in tile.iter().enumerate().take(rows) {
            let row = &row[..cols];
            // SAFETY: the caller passes `out` valid for `rows` rows of `cols` values at `ldc`,
            // accessed by nobody else: this one row is an exclusive slice.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.add(i * ldc), cols) };
            for ((d, t), b) in dst.iter_mut().zip(row).zip(bias) {
                *d = t + b;
            }
        }
    }
}

/// The first `m` rows of `a` (`k` values each) as bf16 rows of `lda` values, in the buffer kept
/// per thread (no allocation per product; hand it back with `BF16_ROWS.set`), which gets room for
/// `rows >= m` rows. Columns past `k` meet zero weights, so they only need to be finite: they are
/// zeroed.
fn bf16_rows(a: &[f32], m: usize, k: usize, rows: usize, lda: usize) -> Vec<u16> {
    assert!(rows >= m && lda >= k);
    let len = rows.checked_mul(lda).expect("bf16 rows: size overflows");
    let mut ap = BF16_ROWS.take();
    if ap.len() < len {
        ap.resize(len, 0);
    }
    rows_to_bf16(&a[..m * k], k, &mut ap, lda);
    if lda > k {
        for row in ap[..len].chunks_exact_mut(lda) {
            row[k..].fill(0);
        }
    }
    ap
}

/// Pairs of `k` values in a packed bf16 column: a multiple of 16, so AMX tiles (32 values of
/// `k`) never read past a panel.
fn padded_pairs(k: usize) -> usize {
    k.div_ceil(32) * 16
}

multiversion! {
    /// `src` rows of `k` values as bf16 rows of `lda` values in `dst` (the rest stays zero).
    pub(crate) fn rows_to_bf16(src: &[f32], k: usize, dst: &mut [u16], lda: usize) {
        for (s, d) in src.chunks_exact(k).zip(dst.chunks_exact_mut(lda)) {
            for (x, y) in s.iter().zip(d.iter_mut()) {
                let bits = x.to_bits();
                let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
                *y = if x.is_nan() { 0x7fc0 } else { rounded as u16 };
            }
        }
    }
}

multiversion! {
    /// The portable f32 micro-kernel: `c = lhs · rhs + bias` on one tile.
    ///
    /// # Safety
    /// As [`tile`]; `bias` holds at least `cols` values.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel_f32_portable(
        k: usize,
        lhs: Lhs,
        rhs: Rhs,
        bias: &[f32],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        let off = row_offsets(lhs.row, rows);
        let mut acc = [[0f32; NR]; MR];
        for kk in 0..k {
            // SAFETY: the caller guarantees `k` steps of `rows` rows of `lhs` (the offsets
            // repeat the last valid row) and `k` rows of NR values of `rhs`.
            let (ap, bv) = unsafe {
                (
                    lhs.ptr.add(kk * lhs.step),
                    std::slice::from_raw_parts(rhs.ptr.add(kk * rhs.ld), NR),
                )
            };
            for i in 0..MR {
                // SAFETY: as above.
                let x = unsafe { *ap.add(off[i]) };
                for j in 0..NR {
                    acc[i][j] += x * bv[j];
                }
            }
        }
        // SAFETY: the caller passes `c` valid for `rows` rows of `cols` values at `ldc`.
        unsafe { add_bias_rows(&acc, rows, bias, c, ldc, cols) };
    }
}

multiversion! {
    /// `c = a · b + bias` on one tile: `a` holds `rows` rows of `kp` bf16 pairs, `b` `kp`
    /// steps of `NR` pairs (both read through bounds-checked slices).
    ///
    /// # Safety
    /// `c` must be valid for writes of `rows.min(MR)` rows of `cols` values at stride `ldc`, with
    /// no other access to them during the call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel_bf16_portable(
        kp: usize,
        a: &[u16],
        rows: usize,
        b: &[u16],
        bias: &[f32],
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let mut acc = [[0f32; NR]; MR];
        for (kk, bv) in b.chunks_exact(NR * 2).take(kp).enumerate() {
            for (i, row) in acc.iter_mut().enumerate().take(rows) {
                let lo = from_bf16(a[i * 2 * kp + 2 * kk]);
                let hi = from_bf16(a[i * 2 * kp + 2 * kk + 1]);
                for j in 0..NR {
                    row[j] += lo * from_bf16(bv[2 * j]) + hi * from_bf16(bv[2 * j + 1]);
                }
            }
        }
        // SAFETY: the caller passes `c` valid for `rows` rows of `cols` values at `ldc`.
        unsafe { add_bias_rows(&acc, rows, bias, c, ldc, cols) };
    }
}

/// The left operand of a tile: element (row `i`, step `kk`) at `ptr[i * row + kk * step]`.
/// Rows past the tile's valid ones repeat its last valid row (never stored).
#[derive(Clone, Copy)]
pub(crate) struct Lhs {
    pub ptr: *const f32,
    pub row: usize,
    pub step: usize,
}

/// The right operand of a tile: `k` rows of [`NR`] contiguous values, `ld` apart.
#[derive(Clone, Copy)]
pub(crate) struct Rhs {
    pub ptr: *const f32,
    pub ld: usize,
}

/// Where each of the [`MR`] rows of a tile starts, `stride` apart; rows past the `rows` valid
/// ones repeat the last valid row (computed, never stored).
#[inline(always)]
fn row_offsets(stride: usize, rows: usize) -> [usize; MR] {
    let mut off = [0usize; MR];
    for (i, o) in off.iter_mut().enumerate() {
        *o = i.min(rows.max(1) - 1) * stride;
    }
    off
}

/// The AVX-512 f32 micro-kernel.
///
/// # Safety
/// As [`tile`], on a CPU with AVX-512F; `bias` holds `NR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_f32_avx512(
    k: usize,
    lhs: Lhs,
    rhs: Rhs,
    bias: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    assert!(bias.len() >= NR);
    let off = row_offsets(lhs.row, rows);
    let mut c0 = [_mm512_setzero_ps(); MR];
    let mut c1 = [_mm512_setzero_ps(); MR];
    let mut ap = lhs.ptr;
    let mut bp = rhs.ptr;
    for _ in 0..k {
        // SAFETY: the caller guarantees `k` steps of `rows` valid rows of `lhs` and `k` rows of
        // NR values of `rhs`.
        unsafe {
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            for i in 0..MR {
                let x = _mm512_set1_ps(*ap.add(off[i]));
                c0[i] = _mm512_fmadd_ps(x, b0, c0[i]);
                c1[i] = _mm512_fmadd_ps(x, b1, c1[i]);
            }
        }
        // (wrapping: after the last step they point past the operands, never read)
        ap = ap.wrapping_add(lhs.step);
        bp = bp.wrapping_add(rhs.ld);
    }
    // SAFETY: bias has NR values; `c` points at a tile with `rows × cols` valid elements.
    unsafe { store_avx512(&c0, &c1, bias, c, ldc, rows, cols) }
}

/// The AVX2/FMA f32 micro-kernel. AVX2 has 16 vector registers of 8 values, too few for the
/// `MR × NR` tile (48 of them): the tile is computed in up to four blocks of 6 rows × 16 columns,
/// each in 12 accumulator registers (with two for the weights and one for the broadcast
/// activation), the two row blocks of one column half back to back so that the half panel they
/// read (`k` × 16 values) is still in cache the second time (L1 up to `k` ≈ 500, else L2).
/// Blocks wholly past the tile's `rows` or `cols` are skipped.
///
/// # Safety
/// As [`tile`], on a CPU with AVX2 and FMA. (`bias` holds `NR` values: asserted.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_f32_avx2(
    k: usize,
    lhs: Lhs,
    rhs: Rhs,
    bias: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    /// Rows and columns of one block.
    const BR: usize = 6;
    const BC: usize = 16;
    const _: () = assert!(MR == 2 * BR && NR == 2 * BC);
    assert!(bias.len() >= NR && rows <= MR && cols <= NR);
    let off = row_offsets(lhs.row, rows);
    for c0 in (0..cols).step_by(BC) {
        let block_cols = BC.min(cols - c0);
        for r0 in (0..rows).step_by(BR) {
            let block_rows = BR.min(rows - r0);
            let o: [usize; BR] = std::array::from_fn(|i| off[r0 + i]);
            let mut lo = [_mm256_setzero_ps(); BR];
            let mut hi = [_mm256_setzero_ps(); BR];
            let mut ap = lhs.ptr;
            // (wrapping: with k = 0 nothing is read through it)
            let mut bp = rhs.ptr.wrapping_add(c0);
            for _ in 0..k {
                // SAFETY: the caller guarantees `k` steps of `rows` valid rows of `lhs` (the
                // offsets of rows past them repeat the last valid row) and `k` rows of NR values
                // of `rhs`, of which this reads columns c0..c0 + 16.
                unsafe {
                    let b0 = _mm256_loadu_ps(bp);
                    let b1 = _mm256_loadu_ps(bp.add(8));
                    for i in 0..BR {
                        let x = _mm256_broadcast_ss(&*ap.add(o[i]));
                        lo[i] = _mm256_fmadd_ps(x, b0, lo[i]);
                        hi[i] = _mm256_fmadd_ps(x, b1, hi[i]);
                    }
                }
                // (wrapping: after the last step they point past the operands, never read)
                ap = ap.wrapping_add(lhs.step);
                bp = bp.wrapping_add(rhs.ld);
            }
            // SAFETY: bias holds NR values, c0 + 16 <= NR.
            let (bias0, bias1) = unsafe {
                (
                    _mm256_loadu_ps(bias.as_ptr().add(c0)),
                    _mm256_loadu_ps(bias.as_ptr().add(c0 + 8)),
                )
            };
            for i in 0..block_rows {
                let (v0, v1) = (_mm256_add_ps(lo[i], bias0), _mm256_add_ps(hi[i], bias1));
                // SAFETY: row r0 + i < rows and columns c0..c0 + block_cols <= cols of the tile
                // are valid for writes (the caller's contract); partial rows go through a copy.
                unsafe {
                    let dst = c.add((r0 + i) * ldc + c0);
                    if block_cols == BC {
                        _mm256_storeu_ps(dst, v0);
                        _mm256_storeu_ps(dst.add(8), v1);
                    } else {
                        let mut tmp = [0f32; BC];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), v0);
                        _mm256_storeu_ps(tmp.as_mut_ptr().add(8), v1);
                        std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, block_cols);
                    }
                }
            }
        }
    }
}

/// # Safety
/// As [`kernel_bf16_portable`], on a CPU with AVX512-BF16; `rows <= MR` (the slice lengths are
/// asserted).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_bf16_avx512(
    kp: usize,
    a: &[u16],
    rows: usize,
    b: &[u16],
    bias: &[f32],
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    assert!(a.len() >= rows * kp * 2 && b.len() >= kp * NR * 2 && bias.len() >= NR && rows >= 1);
    let off = row_offsets(kp, rows);
    let mut c0 = [_mm512_setzero_ps(); MR];
    let mut c1 = [_mm512_setzero_ps(); MR];
    let mut ap = a.as_ptr() as *const i32;
    let mut bp = b.as_ptr();
    for _ in 0..kp {
        // SAFETY: `a` holds `rows` rows of kp pairs and `b` kp × NR pairs (the caller's slicing).
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp as *const _));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(NR) as *const _));
            for i in 0..MR {
                let x: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(ap.add(off[i]).read_unaligned()));
                c0[i] = _mm512_dpbf16_ps(c0[i], x, b0);
                c1[i] = _mm512_dpbf16_ps(c1[i], x, b1);
            }
            ap = ap.add(1);
            bp = bp.add(NR * 2);
        }
    }
    // SAFETY: as in the f32 kernel.
    unsafe { store_avx512(&c0, &c1, bias, c, ldc, rows, cols) }
}

/// `c = c0|c1 + bias` for `rows` rows and `cols` columns of a tile.
///
/// # Safety
/// On a CPU with AVX-512F; `c` must be valid for writes of `rows.min(MR)` rows of `cols.min(NR)`
/// values at stride `ldc`, with no other access to them during the call. (`bias` holds `NR`
/// values: asserted.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn store_avx512(
    c0: &[std::arch::x86_64::__m512; MR],
    c1: &[std::arch::x86_64::__m512; MR],
    bias: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    assert!(bias.len() >= NR);
    // SAFETY: bias has NR values; stores are masked to the tile's `cols` valid columns and
    // limited to its `rows` valid rows, which the caller vouches for.
    unsafe {
        let bias0 = _mm512_loadu_ps(bias.as_ptr());
        let bias1 = _mm512_loadu_ps(bias.as_ptr().add(16));
        let m0: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            (1u16 << cols) - 1
        };
        let m1: __mmask16 = if cols >= NR {
            0xffff
        } else if cols <= 16 {
            0
        } else {
            (1u16 << (cols - 16)) - 1
        };
        for i in 0..rows.min(MR) {
            let row = c.add(i * ldc);
            _mm512_mask_storeu_ps(row, m0, _mm512_add_ps(c0[i], bias0));
            _mm512_mask_storeu_ps(row.add(16), m1, _mm512_add_ps(c1[i], bias1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], w: &[f32], bias: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for kk in 0..k {
                    s += a[i * k + kk] as f64 * w[j * k + kk] as f64;
                }
                out[i * n + j] = s as f32 + bias[j];
            }
        }
        out
    }

    fn seeded(len: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            // (f32::max drops NaN: a value never written, left NaN, must fail)
            .fold(
                0.0,
                |m, e| if e.is_nan() { f32::INFINITY } else { m.max(e) },
            )
    }

    #[test]
    fn f32_kernels_match_a_naive_product_on_ragged_shapes() {
        // Tiles of every kind: whole, one to five rows, seven to eleven (the AVX2 kernel's two
        // row blocks, the second partial), columns below, at and past one half of a panel.
        let shapes = [
            (1, 32, 8),
            (13, 40, 37),
            (25, 70, 384),
            (12, 96, 5),
            (7, 57, 19),
            (30, 48, 64),
            (5, 16, 1),
            (11, 31, 33),
        ];
        for &(m, n, k) in &shapes {
            let a = seeded(m * k, 1);
            let w = seeded(n * k, 2);
            let bias = seeded(n, 3);
            let want = naive(&a, &w, &bias, m, n, k);
            let mut lin = PackedLinear::new(&w, &bias, n, k, Precision::F32);
            let mut out = vec![f32::NAN; m * n];
            lin.forward(&a, m, &mut out);
            assert!(max_err(&out, &want) < 1e-4, "detected isa, {m}x{n}x{k}");
            if lin.force_avx2() {
                let mut out = vec![f32::NAN; m * n];
                lin.forward(&a, m, &mut out);
                assert!(max_err(&out, &want) < 1e-4, "avx2, {m}x{n}x{k}");
            }
            lin.force_portable();
            let mut out = vec![f32::NAN; m * n];
            lin.forward(&a, m, &mut out);
            assert!(max_err(&out, &want) < 1e-4, "portable, {m}x{n}x{k}");
        }
    }

    /// The tile kernels write exactly the tile they are given (rows × cols at stride ldc) and
    /// nothing around it, nothing at all for an empty one, reading the right operand at a stride
    /// other than NR (as attention does with values read in place).
    #[test]
    fn tiles_write_only_their_rows_and_columns() {
        let mut isas = vec![Isa::detect(), Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            isas.push(Isa::Avx2);
        }
        let (k, ld, ldc) = (9, NR + 7, NR + 5);
        let a = seeded(MR * k, 7);
        let b = seeded(k * ld, 8);
        for isa in isas {
            for rows in 0..=MR {
                for cols in [0, 1, 7, 8, 15, 16, 17, 24, 31, 32] {
                    let sentinel = -777.0f32;
                    let mut c = vec![sentinel; (MR + 1) * ldc];
                    let lhs = Lhs {
                        ptr: a.as_ptr(),
                        row: k,
                        step: 1,
                    };
                    let rhs = Rhs {
                        ptr: b.as_ptr(),
                        ld,
                    };
                    // SAFETY: `a` holds MR rows of k values, `b` k rows of ld >= NR values, and
                    // `c` MR + 1 rows of ldc >= NR values; nothing else uses them meanwhile.
                    unsafe { tile(isa, k, lhs, rhs, c.as_mut_ptr(), ldc, rows, cols) };
                    for i in 0..=MR {
                        for j in 0..ldc {
                            let got = c[i * ldc + j];
                            if i < rows && j < cols {
                                let want: f32 =
                                    (0..k).map(|kk| a[i * k + kk] * b[kk * ld + j]).sum();
                                assert!(
                                    (got - want).abs() < 1e-4,
                                    "{isa:?} {rows}x{cols} ({i},{j})"
                                );
                            } else {
                                assert_eq!(got, sentinel, "{isa:?} {rows}x{cols} wrote ({i},{j})");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_kernels_agree_with_each_other_and_roughly_with_f32() {
        for &(m, n, k) in &[(1, 32, 8), (13, 40, 37), (25, 70, 384), (70, 64, 100)] {
            let a = seeded(m * k, 4);
            let w = seeded(n * k, 5);
            let bias = seeded(n, 6);
            let want = naive(&a, &w, &bias, m, n, k);
            let mut lin = PackedLinear::new(&w, &bias, n, k, Precision::Bf16);
            let mut fast = vec![f32::NAN; m * n];
            lin.forward(&a, m, &mut fast);
            // AMX where present, then AVX512-BF16 where present, then portable
            let mut no_amx = vec![f32::NAN; m * n];
            lin.force_no_amx();
            lin.forward(&a, m, &mut no_amx);
            assert!(max_err(&fast, &no_amx) < 1e-3, "{m}x{n}x{k}");
            lin.force_portable();
            let mut portable = vec![f32::NAN; m * n];
            lin.forward(&a, m, &mut portable);
            assert!(max_err(&fast, &portable) < 1e-3, "{m}x{n}x{k}");
            // bf16 keeps 8 bits of mantissa: errors grow like sqrt(k) × 2^-8
            let tol = 0.02 * (k as f32).sqrt();
            assert!(max_err(&fast, &want) < tol, "{m}x{n}x{k}");
        }
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn packing_rejects_shapes_whose_size_overflows() {
        // n × k wraps to 0 = weight.len(): unchecked, the layer was built, and `forward` read
        // 2^63 steps of a weight panel that was never allocated.
        PackedLinear::new(&[], &[0.0, 0.0], 2, 1 << 63, Precision::F32);
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn a_product_whose_size_overflows_is_refused() {
        let lin = PackedLinear::new(&[0.5; 4], &[0.0; 2], 2, 2, Precision::F32);
        // m × k and m × n wrap to 0: unchecked, the shape check passed and the kernels read `a`
        // and wrote `out` far past their ends. (One thread: the row blocks run in order.)
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| lin.forward(&[], 1 << 63, &mut []));
    }

    #[test]
    fn a_product_with_short_buffers_is_refused() {
        for precision in [Precision::F32, Precision::Bf16] {
            let lin = PackedLinear::new(&seeded(40 * 8, 1), &[0.0; 40], 40, 8, precision);
            let short = std::panic::catch_unwind(|| lin.forward(&[0.0; 23], 3, &mut [0.0; 120]));
            assert!(short.is_err(), "a shorter than m × k");
            let short = std::panic::catch_unwind(|| lin.forward(&[0.0; 24], 3, &mut [0.0; 119]));
            assert!(short.is_err(), "out shorter than m × n");
            let mut out = [f32::NAN; 121];
            lin.forward(&[0.0; 25], 3, &mut out);
            assert!(out[..120].iter().all(|x| *x == 0.0) && out[120].is_nan());
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0); // tie → even
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }
}

/// Intel AMX (tile registers and `tdpbf16ps`), for bf16 weights: each instruction multiplies a
/// 16 × 32 bf16 tile by a 32 × 16 one into a 16 × 16 f32 tile. Linux hands out the 8 KiB of
/// tile state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), made once per process.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    use super::NR;

    /// Output rows per block: two tiles of 16.
    pub const ROWS: usize = 32;
    // `panel` covers NR columns with two tiles of 16.
    const _: () = assert!(NR == 32);

    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Every tile used here is 16 rows of 64 bytes.
    static CONFIG: TileConfig = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// Whether the CPU has AMX-BF16 and the kernel granted this process the tile state.
    pub fn available() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            if std::env::var_os("SHOAL_DISABLE_AMX").is_some()
                || super::Isa::detect() == super::Isa::Portable
            {
                return false;
            }
            // CPUID.(EAX=7,ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE
            let leaf = std::arch::x86_64::__cpuid_count(7, 0);
            if leaf.edx & (1 << 22) == 0 || leaf.edx & (1 << 24) == 0 {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
            const XFEATURE_XTILEDATA: u64 = 18;
            const SYS_ARCH_PRCTL: u64 = 158;
            let ret: i64;
            // SAFETY: the arch_prctl system call with these arguments only changes this
            // process's permission to use the AMX state; it reads and writes no memory.
            unsafe {
                asm!(
                    "syscall",
                    inlateout("rax") SYS_ARCH_PRCTL as i64 => ret,
                    in("rdi") ARCH_REQ_XCOMP_PERM,
                    in("rsi") XFEATURE_XTILEDATA,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack)
                );
            }
            ret == 0
        })
    }

    /// One output panel (`NR` columns) for the rows of `blocks` (of [`ROWS`] rows, the last
    /// one cut at `m`): `out = a · panel + bias`.
    /// `a`: bf16 rows of `lda` (= 2 × `kp`) values, at least `m` rounded up to [`ROWS`] rows;
    /// `b`: the panel, `kp` pairs × `NR` columns × 2.
    ///
    /// # Safety
    /// [`available`] returned true; `out` is valid for writes of `m` rows of `cols` values at
    /// stride `ldc`, and nothing else accesses the rows of `blocks` among them during the call.
    /// (The sizes of `a`, `b` and `bias` are asserted.)
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panel(
        kp: usize,
        a: &[u16],
        lda: usize,
        blocks: std::ops::Range<usize>,
        m: usize,
        b: &[u16],
        bias: &[f32],
        out: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        /// Bytes between two pair rows of the panel (`NR` columns of 2 bf16), and between two
        /// rows of `tile` (`NR` f32): both 128.
        const B_STRIDE: usize = NR * 2 * 2;
        const T_STRIDE: usize = NR * 4;
        assert!(kp >= 16 && kp.is_multiple_of(16) && cols <= NR && bias.len() >= NR);
        assert!(kp.checked_mul(NR * 2).is_some_and(|n| b.len() >= n));
        // `m` rounded up to whole blocks of ROWS rows, of `lda` values each
        let a_len = (m.div_ceil(ROWS).checked_mul(ROWS)).and_then(|rows| rows.checked_mul(lda));
        assert!(lda >= kp * 2 && a_len.is_some_and(|n| a.len() >= n));
        let mut tile = [[0f32; NR]; ROWS];
        // bytes between two rows of `a`
        let a_stride = lda * 2;
        // SAFETY: AMX is available (the caller's contract); `ldtilecfg` reads the 64-byte
        // `CONFIG` (and zeroes the tiles, which are declared clobbered).
        unsafe {
            asm!(
                "ldtilecfg [{}]",
                in(reg) &CONFIG as *const TileConfig,
                out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                options(nostack, readonly)
            )
        };
        for r0 in blocks.map_while(|b| b.checked_mul(ROWS)).filter(|&r| r < m) {
            let t = tile.as_mut_ptr() as *mut f32;
            // One block of ROWS × NR outputs, accumulated and stored by one asm block, so that no
            // tile register holds anything between asm blocks: tmm0..3 are the four 16 × 16
            // accumulators (rows 0-15 / 16-31 × columns 0-15 / 16-31); each of the kp/16 steps
            // loads 16 rows × 32 bf16 of `a` for each half of the rows (tmm4, tmm5) and 16 pair
            // rows × 16 columns of the panel for each half of the columns (tmm6, tmm7), then
            // `tilestored` writes the accumulators to `tile` (row stride T_STRIDE).
            //
            // SAFETY: AMX is available and configured (16 rows × 64 bytes per tile, above). Reads
            // of `a`: rows r0..r0+32 (r0 < m: inside the whole blocks asserted above), bytes
            // 0..2*lda of each (kp/16 steps of 64 bytes = 2*kp <= 2*lda). Reads of `b`: kp pair
            // rows of 128 bytes, i.e. kp*NR*2 values (asserted). Writes: the 32 × 32 f32 of
            // `tile`. Every tile register used is declared clobbered.
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    "2:",
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tileloadd tmm7, [{b0} + {sb}*1 + 64]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "add {a0}, 64",
                    "add {a1}, 64",
                    "add {b0}, {b_step}",
                    "dec {steps}",
                    "jnz 2b",
                    "tilestored [{t} + {st}*1], tmm0",
                    "tilestored [{t} + {st}*1 + 64], tmm1",
                    "tilestored [{t} + {st}*1 + {t_half}], tmm2",
                    "tilestored [{t} + {st}*1 + {t_half} + 64], tmm3",
                    a0 = inout(reg) a.as_ptr().add(r0 * lda) => _,
                    a1 = inout(reg) a.as_ptr().add((r0 + 16) * lda) => _,
                    b0 = inout(reg) b.as_ptr() => _,
                    steps = inout(reg) kp / 16 => _,
                    sa = in(reg) a_stride,
                    sb = in(reg) B_STRIDE,
                    b_step = const 16 * B_STRIDE,
                    t = in(reg) t,
                    st = in(reg) T_STRIDE,
                    t_half = const 16 * T_STRIDE,
                    out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                    out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                    options(nostack)
                );
            }
            // SAFETY: rows r0..r0 + min(m - r0, ROWS) of `out` are valid for `cols` values at
            // `ldc` and written by this call only (the caller's contract); r0 * ldc stays inside
            // `out` since r0 < m.
            unsafe {
                super::add_bias_rows(
                    &tile,
                    (m - r0).min(ROWS),
                    bias,
                    out.add(r0 * ldc),
                    ldc,
                    cols,
                )
            };
        }
        // SAFETY: AMX is available; releasing the tile state touches no memory.
        unsafe {
            asm!(
                "tilerelease",
                out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                options(nostack, nomem)
            )
        };
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(crate) mod amx {
    pub const ROWS: usize = 32;
    pub fn available() -> bool {
        false
    }
    /// # Safety
    /// Never to be called: [`available`] is false.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panel(
        _kp: usize,
        _a: &[u16],
        _lda: usize,
        _blocks: std::ops::Range<usize>,
        _m: usize,
        _b: &[u16],
        _bias: &[f32],
        _out: *mut f32,
        _ldc: usize,
        _cols: usize,
    ) {
        unreachable!("AMX is only used where available() is true")
    }
}
