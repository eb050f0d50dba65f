//! Tensor similarity of one-bilinear-layer models for many pairs at once (MATH.md §8, [G1]).
//! After composing the linear layers before the bilinear node into `L̂, R̂` and those after it
//! into `D̂` (widths may differ), stack every checkpoint's rows, `U = [L̂₁Ê₁; …; L̂_NÊ_N]`,
//! `V = [R̂₁Ê₁; …]`, `D = [D₁ … D_N]` (data output rows), and get every pair of a tile of
//! checkpoints `(I, J)` from five GEMMs:
//!
//! ```text
//! K = ½[(U_I U_Jᵀ) ∘ (V_I V_Jᵀ) + (U_I V_Jᵀ) ∘ (V_I U_Jᵀ)],  Γ = D_Iᵀ D_J
//! inner(i, j) = Σ over the (i, j) block of K ∘ Γ
//! ```
//!
//! Each tile's GEMMs are single-threaded (tiles run in parallel). Memory: the stacked `U, V, D`
//! plus, per worker thread, five `(T·H)²` tile matrices for `T` checkpoints of `H` hidden rows
//! per tile side.

use std::ops::Range;

use rayon::prelude::*;

use crate::error::Result;
use crate::layers::{compose_linear, PaddedLayer};
use crate::linalg::{mul, mul_t, Mat, MatRef, Par};
use crate::metrics::batch::Batch;
use crate::model::Model;

/// A model with one bilinear node in folded form: `U = L̂Ê`, `V = R̂Ê` (rows over the padded
/// input) and `D` (the data output rows of `Ŵ_head D̂`).
struct Folded {
    u: Mat<f64>,
    v: Mat<f64>,
    d: Mat<f64>,
}

fn fold_single(model: &Model) -> Option<Folded> {
    if model.n_bilinear() != 1 {
        return None;
    }
    let nodes = model.padded();
    let at = nodes
        .iter()
        .position(|n| matches!(n, PaddedLayer::Bilinear(_)))?;
    let PaddedLayer::Bilinear(b) = &nodes[at] else {
        unreachable!()
    };
    let (pre, post) = (
        compose_linear(&nodes[..at]),
        compose_linear(&nodes[at + 1..]),
    );
    let apply_pre = |m: &Mat<f64>| {
        pre.as_ref()
            .map_or_else(|| m.clone(), |p| mul(m.as_ref(), p.as_ref(), Par::Seq))
    };
    let d = post.map_or_else(|| b.d.clone(), |p| mul(p.as_ref(), b.d.as_ref(), Par::Seq));
    Some(Folded {
        u: apply_pre(&b.l),
        v: apply_pre(&b.r),
        d: d.subrows(1, d.nrows() - 1).to_owned(),
    })
}

/// Stacked folded rows of all checkpoints.
struct Stack {
    u: Mat<f64>,
    v: Mat<f64>,
    d: Mat<f64>,
    /// Row offsets: checkpoint `i` owns rows `offsets[i]..offsets[i+1]`.
    offsets: Vec<usize>,
}

impl Stack {
    fn new(folded: &[Folded]) -> Stack {
        let mut offsets = vec![0];
        for f in folded {
            offsets.push(offsets.last().unwrap() + f.u.nrows());
        }
        let (rows, p, c) = (
            *offsets.last().unwrap(),
            folded[0].u.ncols(),
            folded[0].d.nrows(),
        );
        let (mut u, mut v, mut d) = (
            Mat::zeros(rows, p),
            Mat::zeros(rows, p),
            Mat::zeros(c, rows),
        );
        for (f, &o) in folded.iter().zip(&offsets) {
            let h = f.u.nrows();
            u.subrows_mut(o, h).copy_from(&f.u);
            v.subrows_mut(o, h).copy_from(&f.v);
            d.subcols_mut(o, h).copy_from(&f.d);
        }
        Stack { u, v, d, offsets }
    }

    fn rows(&self, r: &Range<usize>) -> (usize, usize) {
        (
            self.offsets[r.start],
            self.offsets[r.end] - self.offsets[r.start],
        )
    }

    /// GEMM flops of one tile: four `nr×nc×p` products and `Γ` (`nr×nc×c`).
    fn tile_flops(&self, ci: &Range<usize>, cj: &Range<usize>) -> u64 {
        let (nr, nc) = (self.rows(ci).1 as u64, self.rows(cj).1 as u64);
        2 * nr * nc * (4 * self.u.ncols() as u64 + self.d.nrows() as u64)
    }

    /// Inner products of checkpoints `I × J`: plane 0 the total, and with `per_output` plane
    /// `1 + o` the slice of output `o` (`Γ_o = D_I[o]ᵀ D_J[o]`); row-major `planes × |I| × |J|`.
    fn tile(&self, ci: Range<usize>, cj: Range<usize>, per_output: bool) -> Vec<f64> {
        let ((r0, nr), (c0, nc)) = (self.rows(&ci), self.rows(&cj));
        let (ui, vi) = (self.u.subrows(r0, nr), self.v.subrows(r0, nr));
        let (uj, vj) = (self.u.subrows(c0, nc), self.v.subrows(c0, nc));
        let prod = |a: MatRef<'_, f64>, b: MatRef<'_, f64>| mul_t(a, b, Par::Seq);
        let (ll, rr, lr, rl) = (prod(ui, uj), prod(vi, vj), prod(ui, vj), prod(vi, uj));
        let (di, dj) = (self.d.subcols(r0, nr), self.d.subcols(c0, nc));
        let gamma = mul(di.transpose(), dj, Par::Seq);
        // Row → checkpoint of the tile.
        let owner = |r: usize, base: usize, range: &Range<usize>| {
            range
                .clone()
                .find(|&i| self.offsets[i + 1] > base + r)
                .unwrap()
                - range.start
        };
        let row_owner: Vec<usize> = (0..nr).map(|r| owner(r, r0, &ci)).collect();
        let outputs = if per_output { self.d.nrows() } else { 0 };
        let plane = ci.len() * cj.len();
        let mut out = vec![0.0; (1 + outputs) * plane];
        let mut k = vec![0.0; nr];
        for col in 0..nc {
            let j = owner(col, c0, &cj);
            let (a, b, c, d, g) = (
                ll.col_as_slice(col),
                rr.col_as_slice(col),
                lr.col_as_slice(col),
                rl.col_as_slice(col),
                gamma.col_as_slice(col),
            );
            for r in 0..nr {
                k[r] = 0.5 * (a[r] * b[r] + c[r] * d[r]);
                out[row_owner[r] * cj.len() + j] += k[r] * g[r];
            }
            for o in 0..outputs {
                let w = dj[(o, col)];
                let base = (1 + o) * plane + j;
                for r in 0..nr {
                    out[base + row_owner[r] * cj.len()] += k[r] * di[(o, r)] * w;
                }
            }
        }
        out
    }
}

/// The stacked form with each checkpoint's self inner products `norms[i]`, one per plane.
pub(super) struct Stacked {
    stack: Stack,
    norms: Vec<Vec<f64>>,
    per_output: bool,
}

impl Stacked {
    /// `None` unless every model has exactly one bilinear layer. A checkpoint of zero norm gets
    /// `NaN` similarities.
    pub(super) fn new(models: &[&Model], per_output: bool) -> Option<Stacked> {
        let folded = models
            .iter()
            .copied()
            .map(fold_single)
            .collect::<Option<Vec<_>>>()?;
        let stack = Stack::new(&folded);
        let norms = (0..models.len())
            .into_par_iter()
            .map(|i| stack.tile(i..i + 1, i..i + 1, per_output))
            .collect::<Vec<_>>();
        Some(Stacked {
            stack,
            norms,
            per_output,
        })
    }
}

impl Batch for Stacked {
    fn tile(&self, ci: Range<usize>, cj: Range<usize>) -> Result<Vec<f64>> {
        let (ni, nj) = (ci.len(), cj.len());
        let inner = self.stack.tile(ci.clone(), cj.clone(), self.per_output);
        Ok(inner
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let (p, i, j) = (k / (ni * nj), (k / nj) % ni, k % nj);
                let (a, b) = (self.norms[ci.start + i][p], self.norms[cj.start + j][p]);
                if a > 0.0 && b > 0.0 {
                    (v / (a * b).sqrt()).clamp(-1.0, 1.0)
                } else {
                    f64::NAN
                }
            })
            .collect())
    }

    fn rows_per_checkpoint(&self) -> usize {
        let o = &self.stack.offsets;
        o.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1)
    }

    fn tile_flops(&self, ci: &Range<usize>, cj: &Range<usize>) -> u64 {
        self.stack.tile_flops(ci, cj)
    }
}
