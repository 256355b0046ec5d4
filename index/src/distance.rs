//! Vector arithmetic of the index: dot product and squared euclidean distance, with AVX-512 or
//! AVX2/FMA kernels chosen at run time where the CPU has them (the portable kernels are written
//! so that the compiler vectorises them with the baseline instruction set).
//!
//! Similarity is cosine on L2-normalised vectors: score = dot product, graph distance = 1 - dot.

/// Dot product of two slices (over the shorter one's length).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    kernel().dot(a, b)
}

/// Squared euclidean distance of two slices (over the shorter one's length).
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    kernel().l2_squared(a, b)
}

pub(crate) fn kernel() -> Kernel {
    static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(Kernel::detect)
}

/// A distance kernel picked once for this CPU (no feature check per call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Only `x86::detect_avx512` makes the token (its field is private to `x86`).
    #[cfg(target_arch = "x86_64")]
    Avx512(x86::Avx512),
    /// Only `x86::detect` makes the token.
    #[cfg(target_arch = "x86_64")]
    Avx2(x86::Detected),
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs; the portable one when `SHOAL_FORCE_PORTABLE_KERNELS`
    /// is set (as for the inference kernels: the test suite runs once more that way).
    pub fn detect() -> Kernel {
        if std::env::var_os("SHOAL_FORCE_PORTABLE_KERNELS").is_some() {
            return Kernel::Portable;
        }
        Kernel::available()[0]
    }

    /// Every kernel this CPU runs, fastest first (the tests check each).
    pub fn available() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(token) = x86::detect_avx512() {
                kernels.push(Kernel::Avx512(token));
            }
            if let Some(token) = x86::detect() {
                kernels.push(Kernel::Avx2(token));
            }
        }
        kernels.push(Kernel::Portable);
        kernels
    }

    #[inline]
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            // SAFETY: an `Avx2` kernel carries a token only `x86::detect` makes, on a CPU with
            // AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => unsafe { x86::dot(a, b) },
            // SAFETY: an `Avx512` kernel's token is made only on a CPU with AVX-512F, AVX2 and
            // FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) if x86::long(a, b) => unsafe { x86::dot_avx512(a, b) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) => unsafe { x86::dot(a, b) },
            Kernel::Portable => dot_portable(a, b),
        }
    }

    #[inline]
    pub fn l2_squared(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            // SAFETY: as in `dot`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => unsafe { x86::l2_squared(a, b) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) if x86::long(a, b) => unsafe { x86::l2_squared_avx512(a, b) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) => unsafe { x86::l2_squared(a, b) },
            Kernel::Portable => l2_portable(a, b),
        }
    }

    /// Dot product of floats with int8 codes (`Σ a[i] · c[i]`, over the shorter one's length):
    /// a query against a vector quantised to int8 (`crate::graph`'s codes, whose scale the
    /// caller applies).
    #[inline]
    pub fn dot_i8(self, a: &[f32], c: &[i8]) -> f32 {
        match self {
            // SAFETY: as in `dot`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) if a.len().min(c.len()) >= 64 => unsafe { x86::dot_i8_avx512(a, c) },
            // SAFETY: both tokens are made only on a CPU with AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) | Kernel::Avx2(_) => unsafe { x86::dot_i8(a, c) },
            Kernel::Portable => dot_i8_portable(a, c),
        }
    }
}

/// `step(x, y)` summed over both slices (over the shorter one's length) in eight independent
/// accumulators, so that the compiler vectorises without reassociating. The dot product and the
/// squared distance differ only in `step`; `b` holds floats, or int8 codes for `dot_i8`.
#[inline(always)]
fn reduce_portable<B: Copy>(a: &[f32], b: &[B], step: impl Fn(f32, B) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += step(x[i], y[i]);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += step(*x, *y);
    }
    sum
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    reduce_portable(a, b, |x, y| x * y)
}

fn l2_portable(a: &[f32], b: &[f32]) -> f32 {
    reduce_portable(a, b, |x, y| (x - y) * (x - y))
}

fn dot_i8_portable(a: &[f32], c: &[i8]) -> f32 {
    reduce_portable(a, c, |x, y| x * y as f32)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Proof that this CPU has AVX2 and FMA.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Detected(());

    pub fn detect() -> Option<Detected> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
            .then_some(Detected(()))
    }

    /// Proof that this CPU has AVX-512F, and AVX2 and FMA (for short vectors).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Avx512(());

    pub fn detect_avx512() -> Option<Avx512> {
        (is_x86_feature_detected!("avx512f") && detect().is_some()).then_some(Avx512(()))
    }

    /// Whether the AVX-512 kernels pay for themselves: vectors of at least 64 floats (one round
    /// of the four accumulators). Measured on Zen 5 only, at two sizes: on GloVe's 50
    /// dimensions (56 floats padded) the AVX2 kernel searched about 1.27x faster (the 512-bit
    /// sum and masked tail cost more than they saved); on MiniLM's 384, AVX-512 searched
    /// 1.06-1.21x faster. Sizes between, and Intel CPUs (whose 512-bit FMAs may lower the
    /// clock), are not measured.
    #[inline]
    pub fn long(a: &[f32], b: &[f32]) -> bool {
        a.len().min(b.len()) >= 64
    }

    /// The lanes of a 16-float block that hold the last `rest` floats (1 to 15).
    #[inline]
    fn tail_mask(rest: usize) -> __mmask16 {
        ((1u32 << rest) - 1) as __mmask16
    }

    /// `step(acc, x, y)` over both slices 16 floats at a time with four accumulators, the last
    /// block masked (its lanes past the end are neither read nor counted); the accumulators'
    /// sum. The dot product and the squared distance differ only in `step`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn reduce_avx512(
        a: &[f32],
        b: &[f32],
        step: impl Fn(__m512, __m512, __m512) -> __m512,
    ) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (every load): in the first loop o + 16 <= i + 64 <= n, in the second
        // i + 16 <= n, so within both slices; the masked load reads only the lanes below n - i
        // (masked-out lanes are not accessed and cannot fault).
        while i + 64 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let o = i + 16 * j;
                *acc =
                    unsafe { step(*acc, _mm512_loadu_ps(pa.add(o)), _mm512_loadu_ps(pb.add(o))) };
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = unsafe {
                step(
                    acc[0],
                    _mm512_loadu_ps(pa.add(i)),
                    _mm512_loadu_ps(pb.add(i)),
                )
            };
            i += 16;
        }
        if i < n {
            let m = tail_mask(n - i);
            acc[1] = unsafe {
                step(
                    acc[1],
                    _mm512_maskz_loadu_ps(m, pa.add(i)),
                    _mm512_maskz_loadu_ps(m, pb.add(i)),
                )
            };
        }
        _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ))
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: the caller's.
        unsafe { reduce_avx512(a, b, |acc, x, y| _mm512_fmadd_ps(x, y, acc)) }
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn l2_squared_avx512(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: the caller's.
        unsafe {
            reduce_avx512(a, b, |acc, x, y| {
                let d = _mm512_sub_ps(x, y);
                _mm512_fmadd_ps(d, d, acc)
            })
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn sum8(v: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(v, 1);
        let lo = _mm256_castps256_ps128(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
        _mm_cvtss_f32(s)
    }

    /// `step(acc, x, y)` over both slices 8 floats at a time with four accumulators, and
    /// `tail(x, y)` summed over the floats past the last whole block. The dot product and the
    /// squared distance differ only in these two.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn reduce_avx2(
        a: &[f32],
        b: &[f32],
        step: impl Fn(__m256, __m256, __m256) -> __m256,
        tail: impl Fn(f32, f32) -> f32,
    ) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (every load): in the first loop o + 8 <= i + 32 <= n, in the second
        // i + 8 <= n, so within both slices.
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let o = i + 8 * j;
                *acc =
                    unsafe { step(*acc, _mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o))) };
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = unsafe {
                step(
                    acc[0],
                    _mm256_loadu_ps(pa.add(i)),
                    _mm256_loadu_ps(pb.add(i)),
                )
            };
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = sum8(v);
        for k in i..n {
            sum += tail(a[k], b[k]);
        }
        sum
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: the caller's.
        unsafe { reduce_avx2(a, b, |acc, x, y| _mm256_fmadd_ps(x, y, acc), |x, y| x * y) }
    }

    /// `Σ a[i] · c[i]` over the shorter slice, 16 codes at a time (widened to 32-bit integers,
    /// converted to floats) with two accumulators, the rest one by one.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_i8_avx512(a: &[f32], c: &[i8]) -> f32 {
        let n = a.len().min(c.len());
        let (pa, pc) = (a.as_ptr(), c.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        // SAFETY (every load): o + 16 <= i + 32 <= n, within both slices (16 codes are 16
        // bytes, 16 floats 64).
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let o = i + 16 * j;
                let codes = unsafe { _mm_loadu_si128(pc.add(o) as *const __m128i) };
                let y = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes));
                *acc = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(pa.add(o)) }, y, *acc);
            }
            i += 32;
        }
        let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        for k in i..n {
            sum += a[k] * c[k] as f32;
        }
        sum
    }

    /// `Σ a[i] · c[i]` over the shorter slice, 8 codes at a time with four accumulators, the
    /// rest one by one.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_i8(a: &[f32], c: &[i8]) -> f32 {
        let n = a.len().min(c.len());
        let (pa, pc) = (a.as_ptr(), c.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (every load): o + 8 <= i + 32 <= n, within both slices (8 codes are the 8
        // bytes `_mm_loadl_epi64` reads).
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let o = i + 8 * j;
                let codes = unsafe { _mm_loadl_epi64(pc.add(o) as *const __m128i) };
                let y = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(codes));
                *acc = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(pa.add(o)) }, y, *acc);
            }
            i += 32;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = sum8(v);
        for k in i..n {
            sum += a[k] * c[k] as f32;
        }
        sum
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: the caller's.
        unsafe {
            reduce_avx2(
                a,
                b,
                |acc, x, y| {
                    let d = _mm256_sub_ps(x, y);
                    _mm256_fmadd_ps(d, d, acc)
                },
                |x, y| (x - y) * (x - y),
            )
        }
    }
}

/// Scale `v` to unit length. Returns false (and leaves `v` alone) for a zero or non-finite vector.
pub fn normalize(v: &mut [f32]) -> bool {
    let norm = dot(v, v).sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return false;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_naive_sums_at_every_length() {
        for n in [
            0usize, 1, 7, 8, 9, 31, 32, 33, 50, 63, 64, 65, 72, 79, 80, 127, 128, 129, 384, 385,
            784,
        ] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let naive_l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            let tol = 1e-4 * (1.0 + n as f32).sqrt();
            assert!((dot(&a, &b) - naive_dot).abs() < tol, "dot at {n}");
            for k in Kernel::available() {
                assert!((k.dot(&a, &b) - naive_dot).abs() < tol, "{k:?} dot at {n}");
                assert!(
                    (k.l2_squared(&a, &b) - naive_l2).abs() < tol,
                    "{k:?} l2 at {n}"
                );
            }
            assert!(
                (dot_portable(&a, &b) - naive_dot).abs() < tol,
                "portable dot at {n}"
            );
            assert!((l2_squared(&a, &b) - naive_l2).abs() < tol, "l2 at {n}");
            assert!(
                (l2_portable(&a, &b) - naive_l2).abs() < tol,
                "portable l2 at {n}"
            );
        }
        // unequal lengths: the shorter one counts
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[1.0, 1.0]), 3.0);
    }

    /// The AVX-512 kernels on every length up to 200 (the dispatch sends short vectors to
    /// AVX2, so their masked tails and single blocks are called directly here), against sums in
    /// f64. Each slice is followed in memory by NaNs: a lane read past its end would make the
    /// sum NaN.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_kernels_match_at_every_length() {
        let Some(_) = x86::detect_avx512() else {
            eprintln!("no AVX-512 here: its kernels are not checked on this CPU");
            return;
        };
        for n in 0..=200usize {
            let then_nan = |f: fn(f32) -> f32| -> Vec<f32> {
                (0..n + 16)
                    .map(|i| if i < n { f(i as f32) } else { f32::NAN })
                    .collect()
            };
            let a = then_nan(|x| (x * 0.37).sin());
            let b = then_nan(|x| (x * 0.11).cos());
            let (a, b) = (&a[..n], &b[..n]);
            let dot64: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let l2: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                .sum();
            let tol = 1e-4 * (1.0 + n as f64).sqrt();
            // SAFETY: detect_avx512 found AVX-512F.
            let (d, e) = unsafe { (x86::dot_avx512(a, b), x86::l2_squared_avx512(a, b)) };
            assert!((d as f64 - dot64).abs() < tol, "dot at {n}: {d} vs {dot64}");
            assert!((e as f64 - l2).abs() < tol, "l2 at {n}: {e} vs {l2}");
        }
    }

    /// Every int8 kernel this CPU runs, at every length up to 200 and at the graph's lengths,
    /// against sums in f64; each slice is followed in memory by values that would change the sum
    /// if a kernel read past its end (NaN floats, and codes under a float slice cut short).
    #[test]
    fn int8_kernels_match_at_every_length() {
        for n in (0..=200usize).chain([384, 416, 784]) {
            let a: Vec<f32> = (0..n + 32)
                .map(|i| {
                    if i < n {
                        (i as f32 * 0.37).sin()
                    } else {
                        f32::NAN
                    }
                })
                .collect();
            let c: Vec<i8> = (0..n + 32)
                .map(|i| ((i * 37 + 11) % 255) as i32 - 127)
                .map(|x| x as i8)
                .collect();
            let (a, c) = (&a[..n], &c[..n]);
            let exact: f64 = a.iter().zip(c).map(|(x, y)| *x as f64 * *y as f64).sum();
            let tol = 1e-4 * 127.0 * (1.0 + n as f64).sqrt();
            for k in Kernel::available() {
                let d = k.dot_i8(a, c) as f64;
                assert!((d - exact).abs() < tol, "{k:?} at {n}: {d} vs {exact}");
            }
            #[cfg(target_arch = "x86_64")]
            if x86::detect_avx512().is_some() {
                // SAFETY: AVX-512F is there (the dispatch sends short slices to AVX2).
                let d = unsafe { x86::dot_i8_avx512(a, c) } as f64;
                assert!((d - exact).abs() < tol, "AVX-512 at {n}: {d} vs {exact}");
            }
            let d = dot_i8_portable(a, c) as f64;
            assert!((d - exact).abs() < tol, "portable at {n}: {d} vs {exact}");
        }
        // unequal lengths: the shorter one counts (a padded query against shorter codes), past
        // the SIMD loops' thresholds too
        let long: Vec<f32> = (0..96).map(|i| i as f32).collect();
        let short: Vec<i8> = (0..40).map(|i| (i % 3) as i8 - 1).collect();
        let want: f32 = (0..40).map(|i| i as f32 * ((i % 3) as f32 - 1.0)).sum();
        for k in Kernel::available() {
            assert_eq!(k.dot_i8(&[1.0, 2.0, 3.0, 4.0], &[1, -1]), -1.0);
            assert_eq!(k.dot_i8(&long, &short), want, "{k:?}");
            assert_eq!(
                k.dot_i8(&long[..40], &[short.clone(), vec![9; 56]].concat()),
                want
            );
        }
    }

    #[test]
    fn normalize_refuses_what_has_no_direction() {
        let mut u = vec![0.3f32; 384];
        assert!(normalize(&mut u));
        assert!((dot(&u, &u) - 1.0).abs() < 1e-5);
        assert!(!normalize(&mut [0.0, 0.0]));
        assert!(!normalize(&mut [f32::NAN, 1.0]));
    }
}
