//! The tensor-network form of an attention layer at `n` positions (MATH.md §2.5): an identity
//! term and a five-leg active term per head.

use super::Attention;
use crate::einsum::{Einsum, Tensor};
use crate::linalg::Mat;

/// The factors of one head's active term, indexed by position (`n` positions, padded size
/// `d + 1`): `v[e, i] = V̂_η` (unit column zero) and `o[o, e] = (s/h²)·O_η` (row `o = 0`
/// zero), `q[c][t, e, i]`, `k[c][u, e, i]`.
#[derive(Clone, Debug)]
pub struct HeadFactors {
    pub v: Tensor,
    pub o: Tensor,
    pub q: [Tensor; 2],
    pub k: [Tensor; 2],
}

impl HeadFactors {
    /// `vo = o·v` (`(d+1) × (d+1)`).
    pub fn vo(&self) -> Tensor {
        let (w, h) = (self.v.shape[1], self.v.shape[0]);
        let mut vo = Tensor::zeros(vec![w, w]);
        for out in 1..w {
            for e in 0..h {
                let x = self.o.data[out * h + e];
                let row = &mut vo.data[out * w..][..w];
                row.iter_mut()
                    .zip(&self.v.data[e * w..][..w])
                    .for_each(|(y, v)| *y += x * v);
            }
        }
        vo
    }
}

/// The tensor-network form of the layer at `n` positions.
#[derive(Clone, Debug)]
pub struct Network {
    /// `γ_i` of the identity term (`γ₀ = 1`).
    pub gamma: Vec<f64>,
    /// `M[t, u]`.
    pub mask: Tensor,
    pub heads: Vec<HeadFactors>,
    /// The rotary base: `q[c][t]` and `k[c][t]` are `ρ_t` times those at position 0, nothing
    /// else depends on position.
    pub rotary: Option<f64>,
}

impl Attention {
    /// Rows of head `head` of `[b | W]` (`h × (d+1)`), rotated by `ρ_t`: `out[t, e, i]`.
    fn padded_rotated(&self, w: &Mat<f64>, b: &Option<Vec<f64>>, head: usize, n: usize) -> Tensor {
        let (d, h) = (self.dim(), self.head_size());
        let mut data = vec![0.0; n * h * (d + 1)];
        // Position 0: the rows themselves (read column by column from the column-major W).
        let (first, rest) = data.split_at_mut(h * (d + 1));
        for (e, row) in first.chunks_exact_mut(d + 1).enumerate() {
            row[0] = b.as_ref().map_or(0.0, |b| b[head * h + e]);
        }
        for i in 0..d {
            let col = w.col(i);
            for e in 0..h {
                first[e * (d + 1) + 1 + i] = col[head * h + e];
            }
        }
        for block in rest.chunks_exact_mut(h * (d + 1)) {
            block.copy_from_slice(first);
        }
        if let Some(base) = self.rotary {
            for (t, block) in data.chunks_exact_mut(h * (d + 1)).enumerate().skip(1) {
                super::turn_rows(block, d + 1, &super::turns(base, h, t));
            }
        }
        Tensor::new(vec![n, h, d + 1], data)
    }

    /// The tensor-network form at `n` positions.
    pub fn network(&self, n: usize) -> Network {
        let (d, h) = (self.dim(), self.head_size());
        let (c, r) = self.path_weights();
        let mut gamma = vec![r; d + 1];
        gamma[0] = 1.0;
        let mask = Tensor::new(
            vec![n, n],
            (0..n * n).map(|k| self.mask_value(k / n, k % n)).collect(),
        );
        let heads = (0..self.n_head)
            .map(|head| {
                // V̂_η (h × (d+1)) and (s/h²)·O_η ((d+1) × h).
                let (w, rows) = (d + 1, head * h..(head + 1) * h);
                let mut v = Tensor::zeros(vec![h, w]);
                let mut o = Tensor::zeros(vec![w, h]);
                for (e, row) in rows.enumerate() {
                    for i in 0..d {
                        v.data[e * w + 1 + i] = self.v[(row, i)];
                        o.data[(1 + i) * h + e] = c * self.o[(i, row)] / (h * h) as f64;
                    }
                }
                HeadFactors {
                    v,
                    o,
                    q: [
                        self.padded_rotated(&self.q1, &self.q1_bias, head, n),
                        self.padded_rotated(&self.q2, &self.q2_bias, head, n),
                    ],
                    k: [
                        self.padded_rotated(&self.k1, &self.k1_bias, head, n),
                        self.padded_rotated(&self.k2, &self.k2_bias, head, n),
                    ],
                }
            })
            .collect();
        Network {
            gamma,
            mask,
            heads,
            rotary: self.rotary,
        }
    }
}

impl Network {
    /// The two terms: the identity `ℐ[(t,o);(t,i)] = γ_i δ_oi` (one leg) and the active term
    /// (five legs: value, K₁, K₂ at the key position `u`; Q₁, Q₂ at the query position `t`),
    /// heads summed over a label `η`.
    pub fn terms(&self) -> Vec<crate::wick::Term> {
        use crate::wick::Term;
        use std::sync::Arc;
        let w = self.gamma.len();
        let gamma = Tensor::new(
            vec![w, w],
            (0..w * w)
                .map(|k| {
                    if k / w == k % w {
                        self.gamma[k % w]
                    } else {
                        0.0
                    }
                })
                .collect(),
        );
        let identity = Term {
            factors: vec![(vec![1, 2], Arc::new(gamma))],
            out: (0, 1),
            legs: vec![(0, 2)],
            n_labels: 3,
        };
        // Heads stacked along a leading axis.
        let stack = |part: &dyn Fn(&HeadFactors) -> Tensor| {
            let parts: Vec<Tensor> = self.heads.iter().map(part).collect();
            let mut shape = vec![self.heads.len()];
            shape.extend(&parts[0].shape);
            Arc::new(Tensor::new(
                shape,
                parts.into_iter().flat_map(|t| t.data).collect(),
            ))
        };
        let (t, o, u, eta, e, f) = (0, 1, 2, 3, 4, 5);
        let (a, b, c, d, g) = (6, 7, 8, 9, 10);
        let active = Term {
            factors: vec![
                (vec![t, u], Arc::new(self.mask.clone())),
                (vec![eta, o, a], stack(&HeadFactors::vo)),
                (vec![eta, t, e, b], stack(&|h| h.q[0].clone())),
                (vec![eta, u, e, c], stack(&|h| h.k[0].clone())),
                (vec![eta, t, f, d], stack(&|h| h.q[1].clone())),
                (vec![eta, u, f, g], stack(&|h| h.k[1].clone())),
            ],
            out: (t, o),
            legs: vec![(u, a), (u, c), (u, g), (t, b), (t, d)],
            n_labels: 11,
        };
        vec![identity, active]
    }

    /// `ℐ(X̂⁽⁰⁾) + 𝒜(X̂⁽⁰⁾, …, X̂⁽⁴⁾)` (the identity term reads leg 0) for padded inputs `X̂⁽ˡ⁾` of shape `(n, d+1)` (leg `l`):
    /// the multilinear map of the network, contracted by the einsum engine.
    pub fn apply(&self, legs: [&Tensor; 5]) -> Tensor {
        // t: query, u: key, o: output, e/f: the two score contractions, a..g: leg coordinates.
        let active = Einsum::parse("tu,oa,ua,teb,tb,uec,uc,tfd,td,ufg,ug->to").expect("valid");
        let n = self.mask.shape[0];
        let width = self.gamma.len();
        let mut out = Tensor::new(
            vec![n, width],
            (0..n * width)
                .map(|k| self.gamma[k % width] * legs[0].data[k])
                .collect(),
        );
        for head in &self.heads {
            let vo = head.vo();
            let y = active
                .contract(&[
                    &self.mask, &vo, legs[0], &head.q[0], legs[3], &head.k[0], legs[1], &head.q[1],
                    legs[4], &head.k[1], legs[2],
                ])
                .expect("consistent shapes");
            out.data.iter_mut().zip(&y.data).for_each(|(a, b)| *a += b);
        }
        out
    }
}
