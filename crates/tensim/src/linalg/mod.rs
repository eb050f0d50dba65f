//! Thin helpers over faer's GEMM. Parallelism is an argument of every call (faer's `Par`):
//! single comparisons use all cores inside the GEMM; batch work parallelises over pairs and
//! passes `Par::Seq`. `kernels`: hand-tiled small products where a GEMM call costs more than
//! the product.

pub(crate) mod kernels;

pub use faer::{Mat, MatMut, MatRef, Par};

use faer::linalg::matmul::matmul;
use faer::reborrow::IntoConst;
use faer::traits::math_utils::one;
use faer::traits::RealField;
use faer::Accum;

/// Runs `f` with rayon's parallel iterators confined to `par`: on the current pool when `par`
/// asks for all of its threads, else on a pool of `par`'s size (one thread for `Par::Seq`).
pub fn within<R: Send>(par: Par, f: impl FnOnce() -> R + Send) -> R {
    let threads = match par {
        Par::Seq => 1,
        Par::Rayon(n) => n.get(),
    };
    if threads == rayon::current_num_threads() {
        return f();
    }
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// `A · B`.
pub fn mul<T: RealField>(a: MatRef<'_, T>, b: MatRef<'_, T>, par: Par) -> Mat<T> {
    let mut out = Mat::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, one::<T>(), par);
    out
}

/// `out = A · B` into a buffer sized to fit (grown as needed, its old contents ignored): for
/// products repeated in a loop, without a fresh zeroed matrix each time.
pub fn mul_into<'o, T: RealField>(
    out: &'o mut Mat<T>,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    par: Par,
) -> MatRef<'o, T> {
    let mut view = scratch(out, a.nrows(), b.ncols());
    matmul(view.as_mut(), Accum::Replace, a, b, one::<T>(), par);
    view.into_const()
}

/// The leading `m × n` block of a buffer grown as needed (contents unspecified).
pub fn scratch<T: RealField>(out: &mut Mat<T>, m: usize, n: usize) -> MatMut<'_, T> {
    if out.nrows() < m || out.ncols() < n {
        *out = Mat::zeros(m.max(out.nrows()), n.max(out.ncols()));
    }
    out.as_mut().submatrix_mut(0, 0, m, n)
}

/// `A · Bᵀ`.
pub fn mul_t(a: MatRef<'_, f64>, b: MatRef<'_, f64>, par: Par) -> Mat<f64> {
    mul(a, b.transpose(), par)
}

/// `A ∘ B` (elementwise product).
pub fn hadamard(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] * b[(i, j)])
}

/// `Y + 1 bᵀ`: add `bias` to every row (no-op for `None`).
pub fn add_bias(mut y: Mat<f64>, bias: &Option<Vec<f64>>) -> Mat<f64> {
    if let Some(b) = bias {
        for j in 0..y.ncols() {
            for i in 0..y.nrows() {
                y[(i, j)] += b[j];
            }
        }
    }
    y
}

/// Largest absolute entry (0 for an empty matrix).
pub fn max_abs(a: MatRef<'_, f64>) -> f64 {
    let mut m = 0.0f64;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            m = m.max(a[(i, j)].abs());
        }
    }
    m
}

/// Every `(i, j)` of a `rows × cols` matrix, in 64 × 64 tiles, columns within a tile: a copy
/// between row-major and column-major layouts entry by entry would otherwise stride through
/// one of them a cache line per entry.
fn tiled(rows: usize, cols: usize, mut f: impl FnMut(usize, usize)) {
    const TILE: usize = 64;
    for j0 in (0..cols).step_by(TILE) {
        for i0 in (0..rows).step_by(TILE) {
            for j in j0..(j0 + TILE).min(cols) {
                for i in i0..(i0 + TILE).min(rows) {
                    f(i, j);
                }
            }
        }
    }
}

/// Row-major `rows × cols` slice into a matrix.
pub fn from_row_major(rows: usize, cols: usize, data: &[f64]) -> Mat<f64> {
    assert_eq!(data.len(), rows * cols);
    let mut out = Mat::<f64>::zeros(rows, cols);
    tiled(rows, cols, |i, j| out[(i, j)] = data[i * cols + j]);
    out
}

/// The matrix flattened row-major (PyTorch's order).
pub fn to_row_major(a: MatRef<'_, f64>) -> Vec<f64> {
    let (rows, cols) = (a.nrows(), a.ncols());
    let mut v = vec![0.0; rows * cols];
    tiled(rows, cols, |i, j| v[i * cols + j] = a[(i, j)]);
    v
}

/// `[1 | X]`: prepend the unit column (the padded form of a batch of inputs).
pub fn pad_ones(x: MatRef<'_, f64>) -> Mat<f64> {
    Mat::from_fn(x.nrows(), x.ncols() + 1, |i, j| {
        if j == 0 {
            1.0
        } else {
            x[(i, j - 1)]
        }
    })
}

/// Drop the unit column of a padded batch.
pub fn unpad(x: MatRef<'_, f64>) -> Mat<f64> {
    x.subcols(1, x.ncols() - 1).to_owned()
}
