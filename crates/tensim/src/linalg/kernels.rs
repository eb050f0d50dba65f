//! Register-tiled kernels for the many small products of the attention moments
//! (`layers/attention/moment/pieces.rs`): blocks of head size (16–64) too small for a GEMM
//! call. A caller compiles its loop once per [`Kernel`] and picks AVX-512 or AVX2 + FMA at
//! run time.

/// Small products on contiguous row-major blocks: portable, AVX2 + FMA, or AVX-512.
pub(crate) trait Kernel {
    fn mul_add(acc: f64, x: f64, y: f64) -> f64;

    /// `c (m×n) = Σ_t a_t (m×k_t) · b_t (k_t×n)` over terms `(a_t, k_t, b_t)`, every matrix
    /// contiguous and row-major; zero for no terms.
    fn gemm_sum(m: usize, n: usize, terms: &[(&[f64], usize, &[f64])], c: &mut [f64]);

    /// `a·b` for slices of equal length.
    fn dot(a: &[f64], b: &[f64]) -> f64;
}

pub(crate) struct Portable;

impl Kernel for Portable {
    #[inline(always)]
    fn mul_add(acc: f64, x: f64, y: f64) -> f64 {
        acc + x * y
    }

    #[inline(always)]
    fn gemm_sum(m: usize, n: usize, terms: &[(&[f64], usize, &[f64])], c: &mut [f64]) {
        columns::<Self>(0, m, n, terms, c);
    }

    #[inline(always)]
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
}

/// Columns `j0..n` of [`Kernel::gemm_sum`], one dot product per entry.
#[inline(always)]
fn columns<K: Kernel>(
    j0: usize,
    m: usize,
    n: usize,
    terms: &[(&[f64], usize, &[f64])],
    c: &mut [f64],
) {
    for j in j0..n {
        for i in 0..m {
            let mut s = 0.0;
            for &(a, k, b) in terms {
                for p in 0..k {
                    s = K::mul_add(s, a[i * k + p], b[p * n + j]);
                }
            }
            c[i * n + j] = s;
        }
    }
}

/// Only used inside code compiled with `#[target_feature(enable = "avx2,fma")]`, on a CPU
/// with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx2 {
    #[inline(always)]
    fn mul_add(acc: f64, x: f64, y: f64) -> f64 {
        x.mul_add(y, acc)
    }

    /// Panels of 16 columns in 2-row tiles, of 8 in 4-row tiles (each tile's accumulators
    /// fill the vector registers), then single columns.
    #[inline(always)]
    fn gemm_sum(m: usize, n: usize, terms: &[(&[f64], usize, &[f64])], c: &mut [f64]) {
        let mut j = 0;
        // SAFETY: the CPU has AVX2 and FMA (see the type).
        unsafe {
            while j + 16 <= n {
                avx2::panel::<2, 4>(j, (m, n), terms, c);
                j += 16;
            }
            while j + 8 <= n {
                avx2::panel::<4, 2>(j, (m, n), terms, c);
                j += 8;
            }
        }
        columns::<Self>(j, m, n, terms, c);
    }

    #[inline(always)]
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        // SAFETY: the CPU has AVX2 and FMA (see the type).
        unsafe { avx2::dot(a, b) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m256d, _mm256_fmadd_pd, _mm256_loadu_pd};
    use std::arch::x86_64::{_mm256_add_pd, _mm256_setzero_pd, _mm256_storeu_pd};

    /// `a·b` in four vector accumulators (sixteen independent partial sums).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let mut acc = [_mm256_setzero_pd(); 4];
        let mut i = 0;
        while i + 16 <= a.len() {
            for (q, t) in acc.iter_mut().enumerate() {
                // SAFETY: `i + 16 ≤ len` for both slices.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_pd(a.as_ptr().add(i + 4 * q)),
                        _mm256_loadu_pd(b.as_ptr().add(i + 4 * q)),
                    )
                };
                *t = _mm256_fmadd_pd(x, y, *t);
            }
            i += 16;
        }
        let v = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
        let mut lanes = [0.0; 4];
        // SAFETY: four lanes into a four-element array.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), v) };
        let tail: f64 = a[i..].iter().zip(&b[i..]).map(|(x, y)| x * y).sum();
        lanes.iter().sum::<f64>() + tail
    }

    /// Columns `j..j+4Q` of `gemm_sum` in `R × 4Q` tiles (single rows at the end).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn panel<const R: usize, const Q: usize>(
        j: usize,
        dims: (usize, usize),
        terms: &[(&[f64], usize, &[f64])],
        c: &mut [f64],
    ) {
        // SAFETY: this function runs with AVX2 and FMA.
        unsafe { super::simd::panel::<__m256d, R, 1, Q>(j, dims, terms, c) }
    }
}

/// Only used inside code compiled with `#[target_feature(enable = "avx512f,avx2,fma")]`, on
/// a CPU with those features (see [`avx512`]).
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx512 {
    #[inline(always)]
    fn mul_add(acc: f64, x: f64, y: f64) -> f64 {
        x.mul_add(y, acc)
    }

    /// Panels of 32 columns in 6-row tiles (24 of the 32 vector registers accumulate), of 16
    /// in 6-row tiles, then an AVX2 panel of 8 and single columns.
    #[inline(always)]
    fn gemm_sum(m: usize, n: usize, terms: &[(&[f64], usize, &[f64])], c: &mut [f64]) {
        let mut j = 0;
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA (see the type).
        unsafe {
            while j + 32 <= n {
                avx512::panel::<4>(j, (m, n), terms, c);
                j += 32;
            }
            while j + 16 <= n {
                avx512::panel::<2>(j, (m, n), terms, c);
                j += 16;
            }
            while j + 8 <= n {
                avx2::panel::<4, 2>(j, (m, n), terms, c);
                j += 8;
            }
        }
        columns::<Self>(j, m, n, terms, c);
    }

    #[inline(always)]
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        // SAFETY: the CPU has AVX2 and FMA (see the type).
        unsafe { avx2::dot(a, b) }
    }
}

/// Whether this CPU runs the [`Avx512`] kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::__m512d;

    /// Columns `j..j+8Q` of `gemm_sum`: 6-row tiles, then 3-row, then single rows.
    #[target_feature(enable = "avx512f")]
    pub(super) fn panel<const Q: usize>(
        j: usize,
        dims: (usize, usize),
        terms: &[(&[f64], usize, &[f64])],
        c: &mut [f64],
    ) {
        // SAFETY: this function runs with AVX-512F.
        unsafe { super::simd::panel::<__m512d, 6, 3, Q>(j, dims, terms, c) }
    }
}

/// The register tiles of both vector widths; every function here is inlined into a caller
/// compiled with the width's features.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::{__m256d, _mm256_fmadd_pd, _mm256_loadu_pd, _mm256_set1_pd};
    use std::arch::x86_64::{__m512d, _mm512_fmadd_pd, _mm512_loadu_pd, _mm512_set1_pd};
    use std::arch::x86_64::{_mm256_setzero_pd, _mm256_storeu_pd};
    use std::arch::x86_64::{_mm512_setzero_pd, _mm512_storeu_pd};

    /// A vector register of `LANES` f64.
    pub(super) trait Lanes: Copy {
        const LANES: usize;
        unsafe fn zero() -> Self;
        unsafe fn load(p: *const f64) -> Self;
        unsafe fn splat(x: f64) -> Self;
        /// `a·b + c`.
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
        unsafe fn store(p: *mut f64, v: Self);
    }

    impl Lanes for __m256d {
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm256_setzero_pd()
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            unsafe { _mm256_loadu_pd(p) }
        }
        #[inline(always)]
        unsafe fn splat(x: f64) -> Self {
            _mm256_set1_pd(x)
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            _mm256_fmadd_pd(a, b, c)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f64, v: Self) {
            unsafe { _mm256_storeu_pd(p, v) }
        }
    }

    impl Lanes for __m512d {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm512_setzero_pd()
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            unsafe { _mm512_loadu_pd(p) }
        }
        #[inline(always)]
        unsafe fn splat(x: f64) -> Self {
            _mm512_set1_pd(x)
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            _mm512_fmadd_pd(a, b, c)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f64, v: Self) {
            unsafe { _mm512_storeu_pd(p, v) }
        }
    }

    /// Columns `j..j+Q·LANES` of `gemm_sum`: `R`-row tiles, then `H`-row, then single rows.
    /// SAFETY: the caller runs with `V`'s features.
    #[inline(always)]
    pub(super) unsafe fn panel<V: Lanes, const R: usize, const H: usize, const Q: usize>(
        j: usize,
        (m, n): (usize, usize),
        terms: &[(&[f64], usize, &[f64])],
        c: &mut [f64],
    ) {
        let mut i = 0;
        while i + R <= m {
            unsafe { tile::<V, R, Q>(i, j, n, terms, c) };
            i += R;
        }
        while i + H <= m {
            unsafe { tile::<V, H, Q>(i, j, n, terms, c) };
            i += H;
        }
        while i < m {
            unsafe { tile::<V, 1, Q>(i, j, n, terms, c) };
            i += 1;
        }
    }

    /// Rows `i..i+R`, columns `j..j+Q·LANES`, accumulated in registers over every term.
    #[inline(always)]
    unsafe fn tile<V: Lanes, const R: usize, const Q: usize>(
        i: usize,
        j: usize,
        n: usize,
        terms: &[(&[f64], usize, &[f64])],
        c: &mut [f64],
    ) {
        let w = V::LANES;
        let mut acc = [[unsafe { V::zero() }; Q]; R];
        for &(a, k, b) in terms {
            assert!(a.len() >= (i + R) * k && b.len() >= k * n && j + w * Q <= n);
            for p in 0..k {
                // SAFETY: the reads stay inside `a` and `b` (asserted above).
                let bv: [V; Q] =
                    std::array::from_fn(|q| unsafe { V::load(b.as_ptr().add(p * n + j + w * q)) });
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = unsafe { V::splat(*a.get_unchecked((i + r) * k + p)) };
                    for (t, &y) in row.iter_mut().zip(&bv) {
                        *t = unsafe { V::fma(x, y, *t) };
                    }
                }
            }
        }
        assert!(c.len() >= (i + R - 1) * n + j + w * Q);
        for (r, row) in acc.iter().enumerate() {
            for (q, &t) in row.iter().enumerate() {
                // SAFETY: inside `c` (asserted above).
                unsafe { V::store(c.as_mut_ptr().add((i + r) * n + j + w * q), t) };
            }
        }
    }
}

/// `y += a·x` (over `y`'s length).
#[inline(always)]
pub(crate) fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// `a·b` (over the shorter length).
#[inline(always)]
pub(crate) fn dot<M: Kernel>(a: &[f64], b: &[f64]) -> f64 {
    let len = a.len().min(b.len());
    M::dot(&a[..len], &b[..len])
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// Both kernels against the plain triple loop, on shapes that hit every tile and edge.
    #[test]
    fn kernels_equal_the_plain_sum() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (m, n, ks) in [
            (33, 72, vec![32, 32, 5]),
            (17, 16, vec![16, 16]),
            (5, 27, vec![3, 8, 1]),
            (2, 8, vec![]),
        ] {
            let mats: Vec<(Vec<f64>, usize, Vec<f64>)> = ks
                .iter()
                .map(|&k| {
                    let mut r =
                        |len: usize| (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
                    (r(m * k), k, r(k * n))
                })
                .collect();
            let terms: Vec<(&[f64], usize, &[f64])> =
                mats.iter().map(|(a, k, b)| (&a[..], *k, &b[..])).collect();
            let want: Vec<f64> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    terms
                        .iter()
                        .map(|&(a, k, b)| (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f64>())
                        .sum()
                })
                .collect();
            let check = |got: &[f64], what: &str| {
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-13, "{what} {m}×{n}: {g} vs {w}");
                }
            };
            let mut c = vec![f64::NAN; m * n];
            Portable::gemm_sum(m, n, &terms, &mut c);
            check(&c, "portable");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let mut c = vec![f64::NAN; m * n];
                Avx2::gemm_sum(m, n, &terms, &mut c);
                check(&c, "avx2");
            }
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                let mut c = vec![f64::NAN; m * n];
                Avx512::gemm_sum(m, n, &terms, &mut c);
                check(&c, "avx512");
            }
        }
        // Dot products: lengths below, at and past the vector blocks.
        for len in [0, 3, 16, 37, 256] {
            let mut r = || -> Vec<f64> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
            let (a, b) = (r(), r());
            let want: f64 = (0..len).map(|i| a[i] * b[i]).sum();
            assert!(
                (Portable::dot(&a, &b) - want).abs() <= 1e-13,
                "portable dot {len}"
            );
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                assert!((Avx2::dot(&a, &b) - want).abs() <= 1e-13, "avx2 dot {len}");
            }
        }
    }
}
