//! Register-tiled kernels for the many small products of the attention moments
//! (`layers/attention/moment/pieces.rs`): blocks of head size (16–64) too small for a GEMM
//! call, in `f64` or `f32` ([`Real`]). A caller compiles its loop once per [`Kernel`] and
//! picks AVX-512 or AVX2 + FMA at run time.

/// The element types of the kernels: `f64`, and `f32` (twice the lanes per register).
pub(crate) trait Real:
    faer::traits::RealField
    + Copy
    + Default
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
    + std::iter::Sum
{
    fn of(x: f64) -> Self;
    fn wide(self) -> f64;
    /// `self·x + acc`, fused where the caller is compiled with FMA.
    fn mul_add_to(self, x: Self, acc: Self) -> Self;
    /// A 256-bit and a 512-bit register of this type.
    #[cfg(target_arch = "x86_64")]
    type V256: simd::Lanes<E = Self>;
    #[cfg(target_arch = "x86_64")]
    type V512: simd::Lanes<E = Self>;
}

macro_rules! real {
    ($t:ty, $v256:ident, $v512:ident) => {
        impl Real for $t {
            #[inline(always)]
            fn of(x: f64) -> $t {
                x as $t
            }
            #[inline(always)]
            fn wide(self) -> f64 {
                f64::from(self)
            }
            #[inline(always)]
            fn mul_add_to(self, x: $t, acc: $t) -> $t {
                self.mul_add(x, acc)
            }
            #[cfg(target_arch = "x86_64")]
            type V256 = std::arch::x86_64::$v256;
            #[cfg(target_arch = "x86_64")]
            type V512 = std::arch::x86_64::$v512;
        }
    };
}

real!(f64, __m256d, __m512d);
real!(f32, __m256, __m512);

/// The terms `(a_t, k_t, b_t)` of a sum of products (see [`Kernel::gemm_sum`]).
pub(crate) type Terms<'a, T> = [(&'a [T], usize, &'a [T])];

/// Small products on contiguous row-major blocks: portable, AVX2 + FMA, or AVX-512.
pub(crate) trait Kernel {
    fn mul_add<T: Real>(acc: T, x: T, y: T) -> T;

    /// `c (m×n) = Σ_t a_t (m×k_t) · b_t (k_t×n)` over terms `(a_t, k_t, b_t)`, every matrix
    /// contiguous and row-major; zero for no terms.
    fn gemm_sum<T: Real>(m: usize, n: usize, terms: &Terms<'_, T>, c: &mut [T]);

    /// `a·b` for slices of equal length.
    fn dot<T: Real>(a: &[T], b: &[T]) -> T;
}

pub(crate) struct Portable;

impl Kernel for Portable {
    #[inline(always)]
    fn mul_add<T: Real>(acc: T, x: T, y: T) -> T {
        acc + x * y
    }

    #[inline(always)]
    fn gemm_sum<T: Real>(m: usize, n: usize, terms: &Terms<'_, T>, c: &mut [T]) {
        columns::<Self, T>(0, m, n, terms, c);
    }

    #[inline(always)]
    fn dot<T: Real>(a: &[T], b: &[T]) -> T {
        a.iter().zip(b).map(|(&x, &y)| x * y).sum()
    }
}

/// Columns `j0..n` of [`Kernel::gemm_sum`], one dot product per entry.
#[inline(always)]
fn columns<K: Kernel, T: Real>(j0: usize, m: usize, n: usize, terms: &Terms<'_, T>, c: &mut [T]) {
    for j in j0..n {
        for i in 0..m {
            let mut s = T::default();
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
    fn mul_add<T: Real>(acc: T, x: T, y: T) -> T {
        x.mul_add_to(y, acc)
    }

    /// AVX2 panels ([`avx2_panels`]), then single columns.
    #[inline(always)]
    fn gemm_sum<T: Real>(m: usize, n: usize, terms: &Terms<'_, T>, c: &mut [T]) {
        // SAFETY: the CPU has AVX2 and FMA (see the type).
        let j = unsafe { avx2_panels(0, (m, n), terms, c) };
        columns::<Self, T>(j, m, n, terms, c);
    }

    #[inline(always)]
    fn dot<T: Real>(a: &[T], b: &[T]) -> T {
        // SAFETY: the CPU has AVX2 and FMA (see the type).
        unsafe { simd::dot::<T::V256>(a, b) }
    }
}

/// Only used inside code compiled with `#[target_feature(enable = "avx512f,avx2,fma")]`, on
/// a CPU with those features (see [`avx512`]).
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx512 {
    #[inline(always)]
    fn mul_add<T: Real>(acc: T, x: T, y: T) -> T {
        x.mul_add_to(y, acc)
    }

    /// Panels of 4, 2 and 1 registers' width in 6-row tiles (24 of the 32 vector registers
    /// accumulate in the widest), then AVX2 panels ([`avx2_panels`]) and single columns.
    #[inline(always)]
    fn gemm_sum<T: Real>(m: usize, n: usize, terms: &Terms<'_, T>, c: &mut [T]) {
        let w = <T::V512 as simd::Lanes>::LANES;
        let mut j = 0;
        // SAFETY (every call): the CPU has AVX-512F, AVX2 and FMA (see the type).
        sweep(&mut j, n, 4 * w, |j| unsafe {
            simd::avx512::<T::V512, 6, 3, 4>(j, (m, n), terms, c)
        });
        sweep(&mut j, n, 2 * w, |j| unsafe {
            simd::avx512::<T::V512, 11, 3, 2>(j, (m, n), terms, c)
        });
        sweep(&mut j, n, w, |j| unsafe {
            simd::avx512::<T::V512, 6, 3, 1>(j, (m, n), terms, c)
        });
        let j = unsafe { avx2_panels(j, (m, n), terms, c) };
        columns::<Self, T>(j, m, n, terms, c);
    }

    /// As [`Avx2`].
    #[inline(always)]
    fn dot<T: Real>(a: &[T], b: &[T]) -> T {
        Avx2::dot(a, b)
    }
}

/// Columns `j..` of [`Kernel::gemm_sum`] in panels of 4, 2 and 1 AVX2 registers' width (2-,
/// 4- and 4-row tiles: each tile's accumulators fill the vector registers); returns where
/// they end. SAFETY: the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn avx2_panels<T: Real>(
    mut j: usize,
    (m, n): (usize, usize),
    terms: &Terms<'_, T>,
    c: &mut [T],
) -> usize {
    let w = <T::V256 as simd::Lanes>::LANES;
    sweep(&mut j, n, 4 * w, |j| unsafe {
        simd::avx2::<T::V256, 2, 1, 4>(j, (m, n), terms, c)
    });
    sweep(&mut j, n, 2 * w, |j| unsafe {
        simd::avx2::<T::V256, 4, 1, 2>(j, (m, n), terms, c)
    });
    sweep(&mut j, n, w, |j| unsafe {
        simd::avx2::<T::V256, 4, 1, 1>(j, (m, n), terms, c)
    });
    j
}

/// `panel(j)` at every whole panel of `width` columns from `j` up to `n`; `j` ends after them.
#[inline(always)]
fn sweep(j: &mut usize, n: usize, width: usize, mut panel: impl FnMut(usize)) {
    while *j + width <= n {
        panel(*j);
        *j += width;
    }
}

/// Whether this CPU runs the [`Avx512`] kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

/// The register tiles of both vector widths and both element types; every function here is
/// inlined into a caller compiled with the width's features.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{Real, Terms};

    /// A vector register of `LANES` elements of type `E`.
    pub(crate) trait Lanes: Copy {
        type E: Real;
        const LANES: usize;
        unsafe fn zero() -> Self;
        unsafe fn load(p: *const Self::E) -> Self;
        unsafe fn splat(x: Self::E) -> Self;
        /// `a·b + c`.
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
        unsafe fn store(p: *mut Self::E, v: Self);
    }

    macro_rules! lanes {
        ($v:ty, $e:ty, $n:expr, $zero:ident, $load:ident, $splat:ident, $fma:ident, $store:ident) => {
            impl Lanes for $v {
                type E = $e;
                const LANES: usize = $n;
                #[inline(always)]
                unsafe fn zero() -> Self {
                    unsafe { $zero() }
                }
                #[inline(always)]
                unsafe fn load(p: *const $e) -> Self {
                    unsafe { $load(p) }
                }
                #[inline(always)]
                unsafe fn splat(x: $e) -> Self {
                    unsafe { $splat(x) }
                }
                #[inline(always)]
                unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
                    unsafe { $fma(a, b, c) }
                }
                #[inline(always)]
                unsafe fn store(p: *mut $e, v: Self) {
                    unsafe { $store(p, v) }
                }
            }
        };
    }

    lanes!(
        __m256d,
        f64,
        4,
        _mm256_setzero_pd,
        _mm256_loadu_pd,
        _mm256_set1_pd,
        _mm256_fmadd_pd,
        _mm256_storeu_pd
    );
    lanes!(
        __m512d,
        f64,
        8,
        _mm512_setzero_pd,
        _mm512_loadu_pd,
        _mm512_set1_pd,
        _mm512_fmadd_pd,
        _mm512_storeu_pd
    );
    lanes!(
        __m256,
        f32,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps
    );
    lanes!(
        __m512,
        f32,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    );

    /// `a·b` in four vector accumulators of 256 bits.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot<V: Lanes>(a: &[V::E], b: &[V::E]) -> V::E {
        assert_eq!(a.len(), b.len());
        let w = V::LANES;
        let mut acc = [unsafe { V::zero() }; 4];
        let mut i = 0;
        while i + 4 * w <= a.len() {
            for (q, t) in acc.iter_mut().enumerate() {
                // SAFETY: `i + 4w ≤ len` for both slices.
                let (x, y) = unsafe {
                    (
                        V::load(a.as_ptr().add(i + w * q)),
                        V::load(b.as_ptr().add(i + w * q)),
                    )
                };
                *t = unsafe { V::fma(x, y, *t) };
            }
            i += 4 * w;
        }
        let mut lanes = [V::E::default(); 16];
        let mut sum = V::E::default();
        for t in acc {
            // SAFETY: at most 16 lanes into a 16-element array.
            unsafe { V::store(lanes.as_mut_ptr(), t) };
            sum += lanes[..w].iter().copied().sum::<V::E>();
        }
        let tail: V::E = a[i..].iter().zip(&b[i..]).map(|(&x, &y)| x * y).sum();
        sum + tail
    }

    /// [`panel`] of 256-bit registers, compiled with their features (a function of its own,
    /// so that the intrinsics inline into it).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn avx2<V: Lanes, const R: usize, const H: usize, const Q: usize>(
        j: usize,
        dims: (usize, usize),
        terms: &Terms<'_, V::E>,
        c: &mut [V::E],
    ) {
        // SAFETY: this function runs with AVX2 and FMA.
        unsafe { panel::<V, R, H, Q>(j, dims, terms, c) }
    }

    /// [`panel`] of 512-bit registers.
    #[target_feature(enable = "avx512f")]
    pub(super) fn avx512<V: Lanes, const R: usize, const H: usize, const Q: usize>(
        j: usize,
        dims: (usize, usize),
        terms: &Terms<'_, V::E>,
        c: &mut [V::E],
    ) {
        // SAFETY: this function runs with AVX-512F.
        unsafe { panel::<V, R, H, Q>(j, dims, terms, c) }
    }

    /// Columns `j..j+Q·LANES` of `gemm_sum`: `R`-row tiles, then `H`-row, then single rows.
    /// SAFETY: the caller runs with `V`'s features.
    #[inline(always)]
    unsafe fn panel<V: Lanes, const R: usize, const H: usize, const Q: usize>(
        j: usize,
        (m, n): (usize, usize),
        terms: &Terms<'_, V::E>,
        c: &mut [V::E],
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
        terms: &Terms<'_, V::E>,
        c: &mut [V::E],
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
pub(crate) fn axpy<T: Real>(y: &mut [T], a: T, x: &[T]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y += a * x);
}

/// `y += a·x` into `f64` accumulators (over `y`'s length).
#[inline(always)]
pub(crate) fn axpy_wide<T: Real>(y: &mut [f64], a: f64, x: &[T]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y += a * x.wide());
}

/// `a·b` (over the shorter length).
#[inline(always)]
pub(crate) fn dot<M: Kernel, T: Real>(a: &[T], b: &[T]) -> T {
    let len = a.len().min(b.len());
    M::dot(&a[..len], &b[..len])
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// Every kernel against the plain triple loop in `f64`, in `T` on shapes that hit every
    /// tile and edge (`tol`: relative to the terms' absolute sum).
    fn products<T: Real>(tol: f64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (m, n, ks) in [
            (33, 72, vec![32, 32, 5]),
            (17, 16, vec![16, 16]),
            (13, 120, vec![64]),
            (5, 27, vec![3, 8, 1]),
            (2, 8, vec![]),
        ] {
            let mats: Vec<(Vec<T>, usize, Vec<T>)> = ks
                .iter()
                .map(|&k| {
                    let mut r = |len: usize| {
                        (0..len)
                            .map(|_| T::of(rng.random_range(-1.0..1.0)))
                            .collect()
                    };
                    (r(m * k), k, r(k * n))
                })
                .collect();
            let terms: Vec<(&[T], usize, &[T])> =
                mats.iter().map(|(a, k, b)| (&a[..], *k, &b[..])).collect();
            let entry = |i: usize, j: usize, f: fn(f64) -> f64| -> f64 {
                terms
                    .iter()
                    .map(|&(a, k, b)| {
                        (0..k)
                            .map(|p| f(a[i * k + p].wide() * b[p * n + j].wide()))
                            .sum::<f64>()
                    })
                    .sum()
            };
            let check = |got: &[T], what: &str| {
                for (ij, g) in got.iter().enumerate() {
                    let (i, j) = (ij / n, ij % n);
                    let (want, size) = (entry(i, j, |x| x), entry(i, j, f64::abs));
                    let err = (g.wide() - want).abs();
                    assert!(
                        err <= tol * size.max(1.0),
                        "{what} {m}×{n}: {g:?} vs {want}"
                    );
                }
            };
            let nan = || vec![T::of(f64::NAN); m * n];
            let mut c = nan();
            Portable::gemm_sum(m, n, &terms, &mut c);
            check(&c, "portable");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let mut c = nan();
                Avx2::gemm_sum(m, n, &terms, &mut c);
                check(&c, "avx2");
            }
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                let mut c = nan();
                Avx512::gemm_sum(m, n, &terms, &mut c);
                check(&c, "avx512");
            }
        }
        // Dot products: lengths below, at and past the vector blocks.
        for len in [0, 3, 16, 37, 64, 256] {
            let mut r = || -> Vec<T> {
                (0..len)
                    .map(|_| T::of(rng.random_range(-1.0..1.0)))
                    .collect()
            };
            let (a, b) = (r(), r());
            let want: f64 = (0..len).map(|i| a[i].wide() * b[i].wide()).sum();
            let size: f64 = (0..len).map(|i| (a[i].wide() * b[i].wide()).abs()).sum();
            let ok = |got: T| (got.wide() - want).abs() <= tol * size.max(1.0);
            assert!(ok(Portable::dot(&a, &b)), "portable dot {len}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                assert!(ok(Avx2::dot(&a, &b)), "avx2 dot {len}");
            }
        }
    }

    #[test]
    fn kernels_equal_the_plain_sum() {
        products::<f64>(1e-14);
        products::<f32>(1e-6);
    }
}
