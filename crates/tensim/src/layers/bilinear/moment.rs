//! The Gaussian moment of two bilinear layers' outputs in closed form (MATH.md §2.2, §5.6).
//!
//! With the padded nodes `(L̂, R̂, D̂)`, both legs at the output position: `a = L̂x̂_t`,
//! `b = R̂x̂_t` on the left, `a' = L̂'ŷ_t'`, `b' = R̂'ŷ_t'` on the right, and second moments
//! `S = C + μμᵀ`, the ten Wick configurations of the four legs sum to
//!
//! ```text
//! E[a_k b_k a'_k' b'_k'] = S_ab[k,k]·S_a'b'[k',k'] + S_aa'[k,k']·S_bb'[k,k'] + S_ab'[k,k']·S_ba'[k,k']
//!                          − 2·μ_a[k] μ_b[k] μ_a'[k'] μ_b'[k']
//! ```
//!
//! (the all-mean configuration sits in each of the three products), and
//! `Σ'[t,o,t',o'] = (D̂ E[t,t'] D̂'ᵀ)[o,o']`.

use rayon::prelude::*;

use super::{unit_row, PaddedBilinear};
use crate::einsum::Tensor;
use crate::linalg::{mul, mul_into, mul_t, scratch, Mat, MatRef, Par};
use crate::moment::second;
use crate::wick::Moments;

/// Per position `t`: `μ_a ∘ μ_b` and `diag(S_ab)` of one side's node.
fn side_terms(node: &PaddedBilinear, c: &Tensor, mu: &Tensor) -> Vec<(Vec<f64>, Vec<f64>)> {
    let (n, w) = (mu.shape[0], mu.shape[1]);
    (0..n)
        .map(|t| {
            let m = Mat::from_fn(w, 1, |i, _| mu.data[t * w + i]);
            let (ma, mb) = (
                mul(node.l.as_ref(), m.as_ref(), Par::Seq),
                mul(node.r.as_ref(), m.as_ref(), Par::Seq),
            );
            let ls = mul(node.l.as_ref(), second(c, mu, mu, t, t).as_ref(), Par::Seq);
            let k = node.l.nrows();
            let means = (0..k).map(|x| ma[(x, 0)] * mb[(x, 0)]).collect();
            let diag = (0..k)
                .map(|x| (0..w).map(|i| ls[(x, i)] * node.r[(x, i)]).sum())
                .collect();
            (means, diag)
        })
        .collect()
}

/// Column `j` of a column-major matrix.
fn col(x: MatRef<'_, f64>, j: usize) -> &[f64] {
    x.col(j).try_as_col_major().expect("contiguous").as_slice()
}

/// A node with its hidden units reordered dense first (the order of the units does not
/// change the moment): units `k < dense` have general rows; the others have unit rows
/// `e_i` in `L̂` and `e_j` in `R̂` (unit slot, residual units), kept as `(i, j)`, whose
/// entries of `q` are entries of `X S` or `S` instead of products.
struct Split {
    node: PaddedBilinear,
    dense: usize,
    select: Vec<(usize, usize)>,
    /// `[L̂_d; R̂_d]`: the dense units' rows.
    stack: Mat<f64>,
}

impl Split {
    fn new(x: &PaddedBilinear) -> Split {
        let units = x.l.nrows();
        let unit = |k: usize| unit_row(&x.l, k).zip(unit_row(&x.r, k));
        let (dense, select): (Vec<usize>, Vec<usize>) =
            (0..units).partition(|&k| unit(k).is_none());
        let order: Vec<usize> = dense.iter().chain(&select).copied().collect();
        let rows = |m: &Mat<f64>| Mat::from_fn(units, m.ncols(), |k, j| m[(order[k], j)]);
        let node = PaddedBilinear {
            l: rows(&x.l),
            r: rows(&x.r),
            d: Mat::from_fn(x.d.nrows(), units, |o, k| x.d[(o, order[k])]),
        };
        let nd = dense.len();
        let stack = Mat::from_fn(2 * nd, x.l.ncols(), |i, j| {
            if i < nd {
                node.l[(i, j)]
            } else {
                node.r[(i - nd, j)]
            }
        });
        Split {
            select: select
                .iter()
                .map(|&k| unit(k).expect("a selector"))
                .collect(),
            dense: nd,
            node,
            stack,
        }
    }
}

/// `Σ'[t, o, t', o']` of the left node against the right one. `symmetric`: the same node and
/// input on both sides (a self moment), where only blocks `t ≤ t'` are computed. `local`: only
/// blocks `t = t'`; the others stay zero.
///
/// Per block, `q = X S Yᵀ` with `X = [L̂; R̂]` is a product of the dense rows only
/// (`q_d = X_d S Y_dᵀ`); a unit row `e_i` of `X` reads row `i` of `S Y_dᵀ` (or of `S`),
/// one of `Y` column `i` of `X_d S` (or of `S`).
pub fn moment(
    l: &PaddedBilinear,
    r: &PaddedBilinear,
    m: &Moments<'_>,
    symmetric: bool,
    local: bool,
) -> Tensor {
    let (l, r) = (Split::new(l), Split::new(r));
    let (n, wl, wr) = (m.mu[0].shape[0], l.node.d.nrows(), r.node.d.nrows());
    let (sl, sr) = (
        side_terms(&l.node, m.cov[0], m.mu[0]),
        side_terms(&r.node, m.cov[2], m.mu[1]),
    );
    let pairs: Vec<(usize, usize)> = (0..n * n)
        .map(|x| (x / n, x % n))
        .filter(|&(t, t2)| (!symmetric || t <= t2) && (!local || t == t2))
        .collect();
    let (kl, kr) = (l.node.l.nrows(), r.node.l.nrows());
    let (hl, hr) = (l.dense, r.dense);
    // Per worker: X_d S, q_d, S Y_dᵀ, E and D̂ E, reused from one position pair to the next.
    let blocks: Vec<Mat<f64>> = pairs
        .par_iter()
        .map_init(
            || std::array::from_fn::<Mat<f64>, 5, _>(|_| Mat::new()),
            |[xs, q, sy, e, de], &(t, t2)| {
                let s = second(m.cov[1], m.mu[0], m.mu[1], t, t2);
                let xs = mul_into(xs, l.stack.as_ref(), s.as_ref(), Par::Seq);
                let q = mul_into(q, xs, r.stack.transpose(), Par::Seq);
                let sy = mul_into(sy, s.as_ref(), r.stack.transpose(), Par::Seq);
                let ((ml, ul), (mr, ur)) = (&sl[t], &sr[t2]);
                let mut e = scratch(e, kl, kr);
                for k2 in 0..kr {
                    // Column k2 of E from the columns of q for L̂' and R̂' row k2: their
                    // dense-row parts (`[a; b]`-stacked) and unit-row parts (indexed by i).
                    let ((ad, asel), (bd, bsel)) = if k2 < hr {
                        (
                            (col(q, k2), col(sy, k2)),
                            (col(q, hr + k2), col(sy, hr + k2)),
                        )
                    } else {
                        let (i, j) = r.select[k2 - hr];
                        (
                            (col(xs, i), col(s.as_ref(), i)),
                            (col(xs, j), col(s.as_ref(), j)),
                        )
                    };
                    let dst = e
                        .as_mut()
                        .col_mut(k2)
                        .try_as_col_major_mut()
                        .expect("contiguous")
                        .as_slice_mut();
                    // E[k, k2] = S_ab S_a'b' − 2 μ_a μ_b μ_a' μ_b' + q_aa' q_bb' + q_ab' q_ba'.
                    let (u2, m2) = (ur[k2], -2.0 * mr[k2]);
                    let fixed = ul.iter().zip(ml).map(|(u, m)| u * u2 + m * m2);
                    let (dd, ds) = dst.split_at_mut(hl);
                    let (aa, ba) = ad.split_at(hl);
                    let (ab, bb) = bd.split_at(hl);
                    let dense = aa.iter().zip(bb).zip(ab.iter().zip(ba));
                    for ((x, f), ((a, b), (c, d))) in dd.iter_mut().zip(fixed.clone()).zip(dense) {
                        *x = f + a * b + c * d;
                    }
                    let fixed = fixed.skip(hl);
                    for ((x, f), &(i, j)) in ds.iter_mut().zip(fixed).zip(&l.select) {
                        *x = f + asel[i] * bsel[j] + bsel[i] * asel[j];
                    }
                }
                let de = mul_into(de, l.node.d.as_ref(), e.as_ref(), Par::Seq);
                mul_t(de, r.node.d.as_ref(), Par::Seq)
            },
        )
        .collect();
    let mut out = Tensor::zeros(vec![n, wl, n, wr]);
    for (&(t, t2), b) in pairs.iter().zip(&blocks) {
        for o in 0..wl {
            for o2 in 0..wr {
                out.data[((t * wl + o) * n + t2) * wr + o2] = b[(o, o2)];
                if symmetric {
                    out.data[((t2 * wr + o2) * n + t) * wl + o] = b[(o, o2)];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::arch::{Residual, ResidualMode};
    use crate::layers::Bilinear;

    #[test]
    fn the_closed_form_equals_the_configuration_sum() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut mat = |r: usize, c: usize| Mat::from_fn(r, c, |_, _| rng.random_range(-0.6..0.6));
        let (n, d) = (3, 4);
        let node = |mat: &mut dyn FnMut(usize, usize) -> Mat<f64>, h: usize| {
            Bilinear {
                left: mat(h, d),
                right: mat(h, d),
                down: Some(mat(d, h)),
                left_bias: Some(vec![0.3; h]),
                right_bias: None,
                down_bias: Some(vec![-0.2; d]),
                residual: Some(Residual {
                    mode: ResidualMode::Lerp,
                    scale: 0.6,
                }),
            }
            .padded()
        };
        let (l, r) = (node(&mut mat, 5), node(&mut mat, 3));
        // Moments of (X_a, X_b) = (μ_a, μ_b) + A g with the unit slots fixed.
        let w = d + 1;
        let a = mat(2 * n * w, 7);
        let g = |x: usize, y: usize| -> f64 {
            let zero = |r: usize| r.is_multiple_of(w);
            if zero(x) || zero(y) {
                return 0.0;
            }
            (0..7).map(|k| a[(x, k)] * a[(y, k)]).sum()
        };
        let block = |sx: usize, sy: usize| {
            Tensor::new(
                vec![n, w, n, w],
                (0..n * w * n * w)
                    .map(|k| g(sx * n * w + k / (n * w), sy * n * w + k % (n * w)))
                    .collect(),
            )
        };
        let cov = [block(0, 0), block(0, 1), block(1, 1)];
        let mu = |x: f64| {
            Tensor::new(
                vec![n, w],
                (0..n * w)
                    .map(|k| {
                        if k % w == 0 {
                            1.0
                        } else {
                            x * (k as f64).sin()
                        }
                    })
                    .collect(),
            )
        };
        let (ma, mb) = (mu(0.4), mu(-0.3));
        let m = Moments {
            mu: [&ma, &mb],
            cov: [&cov[0], &cov[1], &cov[2]],
        };
        let diag = [
            &crate::wick::diagonal(&cov[0]),
            &crate::wick::diagonal(&cov[2]),
        ];
        // `local`: the fast moment holds the same-position blocks alone.
        let close = |fast: &Tensor, slow: &Tensor, local: bool| {
            let slow = &if local {
                crate::moment::same_position(slow.clone())
            } else {
                slow.clone()
            };
            let scale = slow.data.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let err = crate::moment::max_diff(&fast.data, &slow.data);
            assert!(scale > 1e-3 && err <= 1e-12 * scale, "{err} vs {scale}");
        };
        let all = crate::wick::configs(4);
        let slow = crate::wick::pair_moment(&l.term(), &r.term(), &m, diag, &all).unwrap();
        for local in [false, true] {
            close(&moment(&l, &r, &m, false, local), &slow, local);
        }
        // A self moment, computed on blocks t ≤ t' and mirrored.
        let sm = Moments {
            mu: [&ma, &ma],
            cov: [&cov[0], &cov[0], &cov[0]],
        };
        let sd = [diag[0], diag[0]];
        let slow = crate::wick::pair_moment(&l.term(), &l.term(), &sm, sd, &all).unwrap();
        for local in [false, true] {
            close(&moment(&l, &l, &sm, true, local), &slow, local);
        }
    }
}
