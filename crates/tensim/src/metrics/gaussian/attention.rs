//! The Gaussian moment of two attention layers' outputs (MATH.md §2.5, §5.6), the Wick sum
//! organised by connected pieces instead of visited configuration by configuration.
//!
//! For head `η`, query `t` and key `u`, the active term is a product of atoms: the value
//! `v = V̂_η x̂_u` (a vector) and the scores `s_c = (ρ_tQ̂c_η x̂_t)·(ρ_uK̂c_η x̂_u)` (two legs joined
//! by `Σ_e`); the identity term is the vector `x̂_t` alone. This file lays out the legs of every
//! such combination, their covariances block by block ([`Gram`]), and sums the moments of all
//! pairs of combinations into the output blocks; `pieces.rs` computes the moment of one pair.

use std::ops::Range;

use rayon::prelude::*;

use super::pieces::{Pair, Scratch};
use super::Positions;
use crate::einsum::Tensor;
use crate::error::Result;
use crate::layers::attention::Network;
use crate::linalg::{mul, mul_into, Mat, Par};
use crate::wick::Moments;

/// Legs per head, in this order in the projected rows.
const ROLES: usize = 5;
const Q1: usize = 0;
const K1: usize = 1;
const Q2: usize = 2;
const K2: usize = 3;
const V: usize = 4;

/// One side's network and the layout of its projected rows: per position, the `w` raw padded
/// coordinates, then per head the `h` rows of `Q₁, K₁, Q₂, K₂, V`. A group of rows is the raw
/// coordinates or one leg at one position.
struct Side<'a> {
    net: &'a Network,
    n: usize,
    w: usize,
    h: usize,
    heads: usize,
    /// `Π[p]` of every position (see [`Side::projection`]).
    proj: Vec<Mat<f64>>,
}

impl<'a> Side<'a> {
    fn new(net: &'a Network) -> Side<'a> {
        let mut side = Side {
            net,
            n: net.mask.shape[0],
            w: net.gamma.len(),
            h: net.heads[0].v.shape[0],
            heads: net.heads.len(),
            proj: vec![],
        };
        side.proj = (0..side.n).map(|p| side.projection(p)).collect();
        side
    }

    /// Rows per position.
    fn stride(&self) -> usize {
        self.w + ROLES * self.heads * self.h
    }

    /// Groups per position.
    fn per(&self) -> usize {
        1 + ROLES * self.heads
    }

    fn raw(&self, p: usize) -> Leg {
        Leg {
            row: p * self.stride(),
            group: p * self.per(),
            size: self.w,
        }
    }

    fn leg(&self, p: usize, head: usize, role: usize) -> Leg {
        let g = head * ROLES + role;
        Leg {
            row: p * self.stride() + self.w + g * self.h,
            group: p * self.per() + 1 + g,
            size: self.h,
        }
    }

    /// Size of group `g`.
    fn size(&self, g: usize) -> usize {
        if g % self.per() == 0 {
            self.w
        } else {
            self.h
        }
    }

    /// First projected row of group `g` within its position.
    fn first_row(&self, g: usize) -> usize {
        match g % self.per() {
            0 => 0,
            l => self.w + (l - 1) * self.h,
        }
    }

    /// First row and number of rows of a run of groups (numbered within a position).
    fn rows(&self, gs: &Range<usize>) -> (usize, usize) {
        let first = self.first_row(gs.start);
        let last = gs.end - 1;
        (first, self.first_row(last) + self.size(last) - first)
    }

    /// `Π[p]`: the rows above as maps of the padded input at position `p`.
    fn projection(&self, p: usize) -> Mat<f64> {
        let (w, h) = (self.w, self.h);
        Mat::from_fn(self.stride(), w, |r, i| {
            if r < w {
                return f64::from(u8::from(r == i));
            }
            let (head, role, e) = ((r - w) / (ROLES * h), (r - w) / h % ROLES, (r - w) % h);
            let f = &self.net.heads[head];
            match role {
                V => f.v.data[e * w + i],
                _ => {
                    let t = [&f.q[0], &f.k[0], &f.q[1], &f.k[1]][role];
                    t.data[(p * h + e) * w + i]
                }
            }
        })
    }

    /// `Π μ`: the mean of every row.
    fn means(&self, mu: &Tensor) -> Vec<f64> {
        (0..self.n)
            .flat_map(|p| {
                let x = Mat::from_fn(self.w, 1, |i, _| mu.data[p * self.w + i]);
                let y = mul(self.proj[p].as_ref(), x.as_ref(), Par::Seq);
                (0..y.nrows()).map(move |r| y[(r, 0)])
            })
            .collect()
    }

    /// The combinations of a term: identity (`x̂_t`, block `t`) or active (`v` at `(u, η)`,
    /// scores at `(t, u, η)`, block `(t, η)`, weight `M[t, u]`).
    fn combos(&self, active: bool) -> Vec<Combo> {
        if !active {
            return (0..self.n)
                .map(|t| Combo {
                    vector: self.raw(t),
                    scores: vec![],
                    weight: 1.0,
                    query: t,
                    block: t,
                })
                .collect();
        }
        let mut out = vec![];
        for t in 0..self.n {
            for head in 0..self.heads {
                for u in 0..self.n {
                    let weight = self.net.mask.data[t * self.n + u];
                    if weight != 0.0 {
                        out.push(Combo {
                            vector: self.leg(u, head, V),
                            scores: vec![
                                [self.leg(t, head, Q1), self.leg(u, head, K1)],
                                [self.leg(t, head, Q2), self.leg(u, head, K2)],
                            ],
                            weight,
                            query: t,
                            block: t * self.heads + head,
                        });
                    }
                }
            }
        }
        out
    }

    /// Output map of a term at position `t`: `diag(γ)` (identity) or `[O_1 | … | O_H]` (active).
    fn output_map(&self, active: bool) -> Mat<f64> {
        let w = self.w;
        if !active {
            return Mat::from_fn(w, w, |o, i| if o == i { self.net.gamma[o] } else { 0.0 });
        }
        Mat::from_fn(w, self.heads * self.h, |o, c| {
            self.net.heads[c / self.h].o.data[o * self.h + c % self.h]
        })
    }
}

/// A group of rows of one side: its first row, its index and its size.
#[derive(Clone, Copy, Default)]
pub(super) struct Leg {
    pub row: usize,
    pub group: usize,
    pub size: usize,
}

/// One term at one (head, query, key): its vector, its scores' legs, its weight, its output
/// position (the query) and block.
pub(super) struct Combo {
    pub vector: Leg,
    pub scores: Vec<[Leg; 2]>,
    pub weight: f64,
    pub query: usize,
    pub block: usize,
}

impl Combo {
    /// The vector, then both legs of every score.
    pub(super) fn legs(&self) -> impl Iterator<Item = Leg> + Clone + '_ {
        std::iter::once(self.vector).chain(self.scores.iter().flatten().copied())
    }
}

/// Covariances between the row groups of two sides, `(Π_x[p] C[p,p'] Π_y[p']ᵀ)` cut into
/// blocks (row group × column group), each contiguous and row-major: the unit the small
/// products of `pieces.rs` read. Blocks that are zero (positions whose inputs are independent,
/// as before the first layer that mixes positions) or never read are not stored.
pub(super) struct Gram {
    data: Vec<f64>,
    /// Offset of block `(gx, gy)` at `gx · cols + gy`; [`ABSENT`] where it is not stored.
    at: Vec<usize>,
    cols: usize,
    /// The stored blocks `(gx, gy, offset)` in storage order.
    blocks: Vec<(usize, usize, usize)>,
    /// One position pair's stored blocks.
    parts: Vec<Part>,
}

/// The blocks of one position pair `(p, q)`: their range in `data` and in `blocks`.
#[derive(Clone)]
struct Part {
    p: usize,
    q: usize,
    data: Range<usize>,
    blocks: Range<usize>,
}

const ABSENT: usize = usize::MAX;

impl Gram {
    /// The block of row group `x` against column group `y` (row stride `y.size`), or `None`
    /// where it is zero.
    pub(super) fn block(&self, x: Leg, y: Leg) -> Option<&[f64]> {
        let o = self.at[x.group * self.cols + y.group];
        (o != ABSENT).then(|| &self.data[o..o + x.size * y.size])
    }

    /// `within`: one side with itself, where only the legs of one head against the same
    /// head's are stored (all that pairs inside one combination touch). `independent`: the
    /// covariances across positions are zero (whatever rounding left in `cov`). `mirror`:
    /// also `Gᵀ` (the covariances of `y`'s rows with `x`'s), written in the same pass.
    fn new(
        x: &Side,
        cov: &Tensor,
        y: &Side,
        within: bool,
        independent: bool,
        mirror: bool,
    ) -> (Gram, Option<Gram>) {
        let (n, px, py) = (x.n, &x.proj, &y.proj);
        let live = |p: usize, q: usize| {
            (p == q || !independent)
                && (0..x.w * y.w)
                    .any(|ij| cov.data[((p * x.w + ij / y.w) * n + q) * y.w + ij % y.w] != 0.0)
        };
        // Panels computed per position pair: runs of row groups × runs of column groups
        // (groups numbered within a position).
        let panels: Vec<[Range<usize>; 2]> = if within {
            (0..x.heads)
                .map(|hd| {
                    let g = 1 + hd * ROLES..1 + (hd + 1) * ROLES;
                    [g.clone(), g]
                })
                .collect()
        } else {
            vec![[0..x.per(), 0..y.per()]]
        };
        let cols = n * y.per();
        let mut g = Gram {
            data: vec![],
            at: vec![ABSENT; n * x.per() * cols],
            cols,
            blocks: vec![],
            parts: vec![],
        };
        // Storage order: position pairs, panels, row groups, column groups.
        let mut len = 0;
        for (p, q) in (0..n * n).map(|pq| (pq / n, pq % n)) {
            if !live(p, q) {
                continue;
            }
            let (d0, b0) = (len, g.blocks.len());
            for [gxs, gys] in &panels {
                for gx in gxs.clone().map(|gx| p * x.per() + gx) {
                    for gy in gys.clone().map(|gy| q * y.per() + gy) {
                        g.at[gx * cols + gy] = len;
                        g.blocks.push((gx, gy, len));
                        len += x.size(gx) * y.size(gy);
                    }
                }
            }
            g.parts.push(Part {
                p,
                q,
                data: d0..len,
                blocks: b0..g.blocks.len(),
            });
        }
        let mut data = vec![0.0; len];
        let mut back = vec![0.0; if mirror { len } else { 0 }];
        let backs: Vec<&mut [f64]> = if mirror {
            regions(&mut back, &g.parts)
        } else {
            g.parts.iter().map(|_| &mut [][..]).collect()
        };
        // One position pair per task: Dᵀ = (Π_y[q] C[p,q]ᵀ) Π_x[p]ᵀ panel by panel (column `a`
        // of Dᵀ is row `a` of D, contiguous), cut into its blocks (and their transposes).
        regions(&mut data, &g.parts)
            .into_par_iter()
            .zip(backs)
            .zip(&g.parts)
            .for_each_init(
                || (Mat::new(), Mat::new()),
                |(b, dt), ((out, back), part)| {
                    let (p, q) = (part.p, part.q);
                    let c =
                        Mat::from_fn(y.w, x.w, |j, i| cov.data[((p * x.w + i) * n + q) * y.w + j]);
                    let mut blocks = g.blocks[part.blocks.clone()].iter();
                    for [gxs, gys] in &panels {
                        let ((r0, rn), (c0, cn)) = (x.rows(gxs), y.rows(gys));
                        let b = mul_into(b, py[q].subrows(c0, cn), c.as_ref(), Par::Seq);
                        let dt = mul_into(dt, b, px[p].subrows(r0, rn).transpose(), Par::Seq);
                        for &(gx, gy, o) in blocks.by_ref().take(gxs.len() * gys.len()) {
                            let (hx, hy) = (x.size(gx), y.size(gy));
                            let (r, cc) = (x.first_row(gx) - r0, y.first_row(gy) - c0);
                            let at = o - part.data.start..o - part.data.start + hx * hy;
                            let dst = &mut out[at.clone()];
                            for a in 0..hx {
                                let col = dt.col(r + a).try_as_col_major().expect("contiguous");
                                let row = &col.as_slice()[cc..][..hy];
                                dst[a * hy..][..hy].copy_from_slice(row);
                                if mirror {
                                    let dst = &mut back[at.clone()];
                                    row.iter()
                                        .enumerate()
                                        .for_each(|(e, &v)| dst[e * hx + a] = v);
                                }
                            }
                        }
                    }
                },
            );
        g.data = data;
        let back = mirror.then(|| g.mirrored(back));
        (g, back)
    }

    /// `Gᵀ` with its blocks (each transposed) in `data`, at the offsets of their mirrors.
    fn mirrored(&self, data: Vec<f64>) -> Gram {
        let rows = self.at.len() / self.cols;
        let mut at = vec![ABSENT; self.at.len()];
        for &(gx, gy, o) in &self.blocks {
            at[gy * rows + gx] = o;
        }
        Gram {
            data,
            at,
            cols: rows,
            blocks: self.blocks.iter().map(|&(gx, gy, o)| (gy, gx, o)).collect(),
            parts: self.parts.clone(),
        }
    }
}

/// `data` cut into the parts' ranges (consecutive, from 0).
fn regions<'d>(mut data: &'d mut [f64], parts: &[Part]) -> Vec<&'d mut [f64]> {
    parts
        .iter()
        .map(|part| {
            let (head, tail) = std::mem::take(&mut data).split_at_mut(part.data.len());
            data = tail;
            head
        })
        .collect()
}

/// `Σ_{combination pairs} w_l w_r E[v_L v_Rᵀ Π s]` summed into output blocks, then mapped to
/// `[t, o, t', o']` by both terms' output maps. `local`: only blocks `t = t'` (pairs of
/// combinations with one query position); the others stay zero.
fn term_pair(
    pair: &Pair<'_>,
    (ls, la): (&Side, bool),
    (rs, ra): (&Side, bool),
    symmetric: bool,
    local: bool,
) -> Tensor {
    let (lc, rc) = (ls.combos(la), rs.combos(ra));
    let dim = |s: &Side, active: bool| if active { s.h } else { s.w };
    let (dl, dr) = (dim(ls, la), dim(rs, ra));
    let per = |s: &Side, active: bool| if active { s.heads } else { 1 };
    let (bl, br) = (per(ls, la), per(rs, ra));
    let (rows, cols) = (ls.n * bl * dl, rs.n * br * dr);
    // Each combination's mean, for the pairs without a covariance between them.
    let means = |pair: &Pair<'_>, cs: &[Combo], d: usize| -> Vec<Vec<f64>> {
        cs.par_iter()
            .map_init(
                || Scratch::new(cs[0].scores.len()),
                |ws, c| pair.moment(c, None, (d, 1), ws),
            )
            .collect()
    };
    let el = means(pair, &lc, dl);
    let er = if symmetric {
        el.clone()
    } else {
        means(&pair.mirrored(), &rc, dr)
    };
    let parts: Vec<Vec<(usize, Vec<f64>)>> = lc
        .par_iter()
        .enumerate()
        .map_init(
            || Scratch::new(lc[0].scores.len() + rc[0].scores.len()),
            |ws, (ci, l)| {
                let start = if symmetric { ci } else { 0 };
                rc[start..]
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| !local || r.query == l.query)
                    .map(|(k, r)| {
                        let e = if pair.connected(l, r) {
                            pair.moment(l, Some(r), (dl, dr), ws)
                        } else {
                            let (a, b) = (&el[ci], &er[start + k]);
                            a.iter()
                                .flat_map(|x| b.iter().map(move |y| x * y))
                                .collect()
                        };
                        (start + k, e)
                    })
                    .collect()
            },
        )
        .collect();
    let mut z = vec![0.0; rows * cols];
    for (ci, row) in parts.iter().enumerate() {
        let l = &lc[ci];
        for (ck, e) in row {
            let r = &rc[*ck];
            let f = l.weight * r.weight;
            for i in 0..dl {
                let zr = &mut z[(l.block * dl + i) * cols + r.block * dr..][..dr];
                zr.iter_mut()
                    .zip(&e[i * dr..][..dr])
                    .for_each(|(a, b)| *a += f * b);
            }
            if symmetric && *ck != ci {
                for i in 0..dl {
                    for j in 0..dr {
                        z[(r.block * dr + j) * cols + l.block * dl + i] += f * e[i * dr + j];
                    }
                }
            }
        }
    }
    let (ml, mr) = (ls.output_map(la), rs.output_map(ra));
    let (wl, wr, n) = (ls.w, rs.w, ls.n);
    let mut out = Tensor::zeros(vec![n, wl, n, wr]);
    let (kl, kr) = (bl * dl, br * dr);
    for t in 0..n {
        for t2 in (0..n).filter(|&t2| !local || t2 == t) {
            let blk = Mat::from_fn(kl, kr, |i, j| z[(t * kl + i) * cols + t2 * kr + j]);
            let y = mul(
                mul(ml.as_ref(), blk.as_ref(), Par::Seq).as_ref(),
                mr.transpose(),
                Par::Seq,
            );
            for o in 0..wl {
                for o2 in 0..wr {
                    out.data[((t * wl + o) * n + t2) * wr + o2] = y[(o, o2)];
                }
            }
        }
    }
    out
}

/// `(k_l, k_r, moment)` of the four term pairs (identity: 1 leg, active: 5 legs) of two
/// attention layers whose inputs have the moments `m`. `symmetric`: the same layer and input on
/// both sides (a self moment), where pairs of combinations are visited once. `positions`: the
/// input positions are independent (covariances across positions are zero); only the output's
/// same-position blocks are wanted.
pub fn moments(
    left: &Network,
    right: &Network,
    m: &Moments<'_>,
    symmetric: bool,
    positions: Positions,
) -> Result<Vec<(usize, usize, Tensor)>> {
    let (independent, local) = (positions.independent, positions.local);
    let (ls, rs) = (Side::new(left), Side::new(right));
    // Four covariance matrices between the sides' rows (one when symmetric).
    let rows = [ls.n * ls.stride(), rs.n * rs.stride()];
    crate::budget::check(
        "the attention layers' projected covariances",
        4.0 * rows[0] as f64 * rows[1] as f64,
    )?;
    let (cross, back) = Gram::new(&ls, m.cov[1], &rs, false, independent, !symmetric);
    let (gl, gr);
    let g = match &back {
        None => [&cross; 4],
        Some(back) => {
            gl = Gram::new(&ls, m.cov[0], &ls, true, independent, false).0;
            gr = Gram::new(&rs, m.cov[2], &rs, true, independent, false).0;
            [&gl, &cross, back, &gr]
        }
    };
    let (mu_l, mu_r) = (ls.means(m.mu[0]), rs.means(m.mu[1]));
    let pair = Pair {
        g,
        mu: [&mu_l, &mu_r],
    };
    let legs = |active: bool| if active { 5 } else { 1 };
    let mut out: Vec<(usize, usize, Tensor)> = vec![];
    for la in [false, true] {
        for ra in [false, true] {
            let moment = if symmetric && la && !ra {
                // The (active, identity) moment is the transpose of (identity, active).
                transpose(&out[1].2)
            } else {
                term_pair(&pair, (&ls, la), (&rs, ra), symmetric && la == ra, local)
            };
            out.push((legs(la), legs(ra), moment));
        }
    }
    Ok(out)
}

/// `T[t', o', t, o]` of `T[t, o, t', o']`.
fn transpose(t: &Tensor) -> Tensor {
    let (n, w, n2, w2) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3]);
    let mut out = Tensor::zeros(vec![n2, w2, n, w]);
    for a in 0..n * w {
        for b in 0..n2 * w2 {
            out.data[b * n * w + a] = t.data[a * n2 * w2 + b];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::arch::{Mask, Residual, ResidualMode};
    use crate::layers::Attention;

    fn attention(rng: &mut rand::rngs::StdRng, d: usize, heads: usize, mask: Mask) -> Network {
        let mut m = || Mat::from_fn(d, d, |_, _| rng.random_range(-0.6..0.6));
        let (q1, k1, q2, k2, v, o) = (m(), m(), m(), m(), m(), m());
        let mut b = || Some((0..d).map(|_| rng.random_range(-0.5..0.5)).collect());
        Attention {
            n_head: heads,
            q1,
            k1,
            q2,
            k2,
            v,
            o,
            q1_bias: b(),
            k1_bias: b(),
            q2_bias: None,
            k2_bias: b(),
            mask,
            rotary: Some(10_000.0),
            residual: Some(Residual {
                mode: ResidualMode::Lerp,
                scale: 0.7,
            }),
        }
        .network(3)
    }

    /// Random joint moments of two sides' inputs: `μ_x` and the centred covariances of
    /// `(X_a, X_b) = (μ_a, μ_b) + A g` (unit slots fixed).
    /// `independent`: every position its own factors (no covariance across positions).
    fn moments(
        rng: &mut rand::rngs::StdRng,
        n: usize,
        w: [usize; 2],
        independent: bool,
    ) -> ([Tensor; 2], [Tensor; 3]) {
        let rank = 6;
        let mut side = |w: usize| {
            let a: Vec<f64> = (0..n * w * rank)
                .map(|k| {
                    let (row, g) = (k / rank, k % rank);
                    if row % w == 0 || (independent && g % n != row / w) {
                        0.0
                    } else {
                        rng.random_range(-0.7..0.7)
                    }
                })
                .collect();
            let mu: Vec<f64> = (0..n * w)
                .map(|k| {
                    if k % w == 0 {
                        1.0
                    } else {
                        rng.random_range(-0.5..0.5)
                    }
                })
                .collect();
            (a, Tensor::new(vec![n, w], mu))
        };
        let ((aa, ma), (ab, mb)) = (side(w[0]), side(w[1]));
        let cov = |x: &[f64], y: &[f64], wx: usize, wy: usize| {
            let (rx, ry) = (n * wx, n * wy);
            let data = (0..rx * ry)
                .map(|k| {
                    (0..rank)
                        .map(|g| x[k / ry * rank + g] * y[k % ry * rank + g])
                        .sum()
                })
                .collect();
            Tensor::new(vec![n, wx, n, wy], data)
        };
        (
            [ma, mb],
            [
                cov(&aa, &aa, w[0], w[0]),
                cov(&aa, &ab, w[0], w[1]),
                cov(&ab, &ab, w[1], w[1]),
            ],
        )
    }

    /// The configuration-by-configuration sum of every term pair.
    fn generic(l: &Network, r: &Network, m: &Moments<'_>) -> Vec<Tensor> {
        let diag = [
            &crate::wick::diagonal(m.cov[0]),
            &crate::wick::diagonal(m.cov[2]),
        ];
        let parts = super::super::term_moments(&l.terms(), &r.terms(), m, diag).unwrap();
        parts.into_iter().map(|(_, _, t)| t).collect()
    }

    /// `fast` against `slow`; `local`: `fast` holds the same-position blocks alone.
    fn close(what: &str, fast: &[(usize, usize, Tensor)], slow: &[Tensor], local: bool) {
        for ((kl, kr, f), s) in fast.iter().zip(slow) {
            let s = &if local {
                super::super::same_position(s.clone())
            } else {
                s.clone()
            };
            let scale = s.data.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let err = super::super::max_diff(&f.data, &s.data);
            assert!(
                err <= 1e-12 * scale.max(1.0),
                "{what} ({kl},{kr}): {err} vs scale {scale}"
            );
        }
    }

    #[test]
    fn connected_pieces_equal_the_configuration_sum() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Cross moment: different widths of heads, causal against no mask (and against diag).
        let (l, r) = (
            attention(&mut rng, 4, 2, Mask::Causal),
            attention(&mut rng, 4, 1, Mask::None),
        );
        let d = attention(&mut rng, 4, 2, Mask::Diag);
        let (mu, cov) = moments(&mut rng, 3, [5, 5], false);
        let m = Moments {
            mu: [&mu[0], &mu[1]],
            cov: [&cov[0], &cov[1], &cov[2]],
        };
        close(
            "causal × diag",
            &super::moments(&l, &d, &m, false, Positions::default()).unwrap(),
            &generic(&l, &d, &m),
            false,
        );
        for (independent, local) in [(false, false), (true, false), (false, true)] {
            let positions = Positions { independent, local };
            let (mu, cov) = moments(&mut rng, 3, [5, 5], independent);
            let m = Moments {
                mu: [&mu[0], &mu[1]],
                cov: [&cov[0], &cov[1], &cov[2]],
            };
            close(
                &format!("cross {independent} {local}"),
                &super::moments(&l, &r, &m, false, positions).unwrap(),
                &generic(&l, &r, &m),
                local,
            );
            // Self moment: one side, one input.
            let sm = Moments {
                mu: [&mu[0], &mu[0]],
                cov: [&cov[0], &cov[0], &cov[0]],
            };
            close(
                &format!("self {independent} {local}"),
                &super::moments(&l, &l, &sm, true, positions).unwrap(),
                &generic(&l, &l, &sm),
                local,
            );
        }
    }
}
