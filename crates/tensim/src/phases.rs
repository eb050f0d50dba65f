//! Training phases: the segmentation of checkpoints `0..N` into `K` contiguous phases that
//! minimises the within-phase dissimilarity
//!
//! `cost = Σ_phases Σ_{i,j ∈ phase} (1 − S[i,j])`,
//!
//! found exactly by dynamic programming over phase ends, `f_k(b) = min_a f_{k−1}(a) + c(a, b)`,
//! with `c(a, b)` read in O(1) from 2-D prefix sums: O(K N²) time, O(K N) memory.

use crate::error::{Error, Result};
use crate::linalg::Mat;

/// An optimal segmentation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Phases {
    /// First checkpoint index of every phase (the first is 0).
    pub starts: Vec<usize>,
    /// The minimised within-phase dissimilarity.
    pub cost: f64,
}

impl Phases {
    /// Phase boundaries: the starts after the first.
    pub fn boundaries(&self) -> Vec<usize> {
        self.starts[1..].to_vec()
    }
}

/// The `k` contiguous phases of the square matrix `sim` with the least within-phase dissimilarity.
pub fn segment(sim: &Mat<f64>, k: usize) -> Result<Phases> {
    let n = sim.nrows();
    if sim.ncols() != n {
        return Err(Error::Invalid(format!(
            "a similarity matrix must be square, got {}×{}",
            n,
            sim.ncols()
        )));
    }
    for i in 0..n {
        for j in 0..n {
            let (v, w) = (sim[(i, j)], sim[(j, i)]);
            let bad = if !v.is_finite() {
                "phases need a similarity for every pair (a checkpoint of zero norm has none: leave it out)"
            } else if v.abs() > 1.0 + 1e-9 {
                "not a similarity matrix (its entries lie in [-1, 1])"
            } else if (v - w).abs() > 1e-9 {
                "not a similarity matrix (it is not symmetric)"
            } else {
                continue;
            };
            return Err(Error::Invalid(format!(
                "entry ({i}, {j}) is {v} (({j}, {i}) is {w}): {bad}"
            )));
        }
    }
    if k == 0 || k > n {
        return Err(Error::Invalid(format!(
            "the number of phases must be between 1 and {n}, got {k}"
        )));
    }
    // P[a][b] = Σ_{i<a, j<b} (1 − S[i,j]); c(a, b) = block [a, b) × [a, b).
    let mut p = vec![vec![0.0; n + 1]; n + 1];
    for i in 0..n {
        for j in 0..n {
            p[i + 1][j + 1] = p[i][j + 1] + p[i + 1][j] - p[i][j] + (1.0 - sim[(i, j)]);
        }
    }
    let cost = |a: usize, b: usize| p[b][b] - p[a][b] - p[b][a] + p[a][a];
    // f[m][b]: best cost of splitting 0..b into m phases; arg[m][b]: the start of the last.
    let mut f = vec![vec![f64::INFINITY; n + 1]; k + 1];
    let mut arg = vec![vec![0usize; n + 1]; k + 1];
    f[0][0] = 0.0;
    for m in 1..=k {
        for b in m..=n {
            for a in (m - 1)..b {
                let v = f[m - 1][a] + cost(a, b);
                if v < f[m][b] {
                    f[m][b] = v;
                    arg[m][b] = a;
                }
            }
        }
    }
    let mut starts = vec![0; k];
    let mut b = n;
    for m in (1..=k).rev() {
        starts[m - 1] = arg[m][b];
        b = arg[m][b];
    }
    Ok(Phases {
        starts,
        cost: f[k][n],
    })
}
