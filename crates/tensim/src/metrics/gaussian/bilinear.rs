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

use crate::einsum::Tensor;
use crate::layers::PaddedBilinear;
use crate::linalg::{mul, mul_into, mul_t, scratch, Mat, Par};
use crate::wick::Moments;

/// `S[t, :, t', :]` of `C + μ_x μ_yᵀ` as a `(w_x × w_y)` matrix.
fn second(c: &Tensor, mx: &Tensor, my: &Tensor, t: usize, t2: usize) -> Mat<f64> {
    let (n, wx, wy) = (c.shape[0], c.shape[1], c.shape[3]);
    Mat::from_fn(wx, wy, |i, j| {
        c.data[((t * wx + i) * n + t2) * wy + j] + mx.data[t * wx + i] * my.data[t2 * wy + j]
    })
}

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

/// `Σ'[t, o, t', o']` of the left node against the right one. `symmetric`: the same node and
/// input on both sides (a self moment), where only blocks `t ≤ t'` are computed.
pub fn moment(l: &PaddedBilinear, r: &PaddedBilinear, m: &Moments<'_>, symmetric: bool) -> Tensor {
    let (n, wl, wr) = (m.mu[0].shape[0], l.d.nrows(), r.d.nrows());
    let (sl, sr) = (
        side_terms(l, m.cov[0], m.mu[0]),
        side_terms(r, m.cov[2], m.mu[1]),
    );
    let pairs: Vec<(usize, usize)> = (0..n * n)
        .map(|x| (x / n, x % n))
        .filter(|&(t, t2)| !symmetric || t <= t2)
        .collect();
    // `[L̂; R̂]` of each side: one product gives all four `S_ab`-type blocks.
    let stack = |x: &PaddedBilinear| {
        let k = x.l.nrows();
        Mat::from_fn(2 * k, x.l.ncols(), |i, j| {
            if i < k {
                x.l[(i, j)]
            } else {
                x.r[(i - k, j)]
            }
        })
    };
    let (lx, rx) = (stack(l), stack(r));
    let (kl, kr) = (l.l.nrows(), r.l.nrows());
    // Per worker: X S, q, E and D̂ E, reused from one position pair to the next.
    let blocks: Vec<Mat<f64>> = pairs
        .par_iter()
        .map_init(
            || std::array::from_fn::<Mat<f64>, 4, _>(|_| Mat::new()),
            |[xs, q, e, de], &(t, t2)| {
                let s = second(m.cov[1], m.mu[0], m.mu[1], t, t2);
                // q = [L̂; R̂] S [L̂'; R̂']ᵀ = [[aa, ab], [ba, bb]].
                let xs = mul_into(xs, lx.as_ref(), s.as_ref(), Par::Seq);
                let q = mul_into(q, xs, rx.transpose(), Par::Seq);
                let ((ml, ul), (mr, ur)) = (&sl[t], &sr[t2]);
                // Column k' of E from columns k' (a') and k_r + k' (b') of q.
                let col = |j: usize| q.col(j).try_as_col_major().expect("contiguous").as_slice();
                let mut e = scratch(e, kl, kr);
                for k2 in 0..kr {
                    let ((aa, ba), (ab, bb)) = (col(k2).split_at(kl), col(kr + k2).split_at(kl));
                    let dst = e
                        .as_mut()
                        .col_mut(k2)
                        .try_as_col_major_mut()
                        .expect("contiguous");
                    for (k, x) in dst.as_slice_mut().iter_mut().enumerate() {
                        *x = ul[k] * ur[k2] + aa[k] * bb[k] + ab[k] * ba[k] - 2.0 * ml[k] * mr[k2];
                    }
                }
                let de = mul_into(de, l.d.as_ref(), e.as_ref(), Par::Seq);
                mul_t(de, r.d.as_ref(), Par::Seq)
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
            let zero = |r: usize| r % w == 0;
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
        let close = |fast: &Tensor, slow: &Tensor| {
            let scale = slow.data.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let err = fast
                .data
                .iter()
                .zip(&slow.data)
                .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
            assert!(scale > 1e-3 && err <= 1e-12 * scale, "{err} vs {scale}");
        };
        let all = crate::wick::configs(4);
        let slow = crate::wick::pair_moment(&l.term(), &r.term(), &m, diag, &all).unwrap();
        close(&moment(&l, &r, &m, false), &slow);
        // A self moment, computed on blocks t ≤ t' and mirrored.
        let sm = Moments {
            mu: [&ma, &ma],
            cov: [&cov[0], &cov[0], &cov[0]],
        };
        let sd = [diag[0], diag[0]];
        let slow = crate::wick::pair_moment(&l.term(), &l.term(), &sm, sd, &all).unwrap();
        close(&moment(&l, &l, &sm, true), &slow);
    }
}
