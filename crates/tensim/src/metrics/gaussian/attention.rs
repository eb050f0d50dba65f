//! The Gaussian moment of two attention layers' outputs (MATH.md §2.5, §5.6), the Wick sum
//! organised by connected pieces instead of visited configuration by configuration.
//!
//! For head `η`, query `t` and key `u`, the active term is a product of atoms: the value
//! `v = V̂_η x̂_u` (a vector) and the scores `s_c = (ρ_tQ̂c_η x̂_t)·(ρ_uK̂c_η x̂_u)` (two legs joined
//! by `Σ_e`); the identity term is the vector `x̂_t` alone. For one such combination on each side
//! with scores `J`, every Wick configuration splits into the path from the left vector (ending
//! at the right vector or at a mean leg), the path from the right vector, and closed pieces
//! among the other scores:
//!
//! ```text
//! E[v_L v_Rᵀ Π_J s] = Σ_U P_LR(U)·Sc(J∖U) + Σ_{U₁∩U₂=∅} P_L(U₁)·P_R(U₂)ᵀ·Sc(J∖U₁∖U₂)
//! ```
//!
//! `P_LR(U)`: paths `v_L →` every score of `U` (any order, either orientation) `→ v_R`; `P_L(U)`:
//! paths `v_L → U →` a mean leg; `Sc(U) = E[Π_U s]` from cumulants `κ(B)` (mean-ended paths and
//! cycles through `B`). A path is a product of transfer matrices
//! `X_jk[(ℓ,e),(ℓ',e')] = C[leg ℓ of j, leg ¬ℓ' of k]` (state: the leg a score is left through,
//! and its coordinate), summed over orders by dynamic programming over subsets of `J`.

use rayon::prelude::*;

use crate::einsum::Tensor;
use crate::error::Result;
use crate::layers::attention::Network;
use crate::linalg::{mul, Mat, Par};
use crate::wick::Moments;

/// Legs per head, in this order in the projected rows.
const ROLES: usize = 5;
const Q1: usize = 0;
const K1: usize = 1;
const Q2: usize = 2;
const K2: usize = 3;
const V: usize = 4;

/// One side's network and the layout of its projected rows: per position, the `w` raw padded
/// coordinates, then per head the `h` rows of `Q₁, K₁, Q₂, K₂, V`.
struct Side<'a> {
    net: &'a Network,
    n: usize,
    w: usize,
    h: usize,
    heads: usize,
}

impl<'a> Side<'a> {
    fn new(net: &'a Network) -> Side<'a> {
        Side {
            net,
            n: net.mask.shape[0],
            w: net.gamma.len(),
            h: net.heads[0].v.shape[0],
            heads: net.heads.len(),
        }
    }

    fn stride(&self) -> usize {
        self.w + ROLES * self.heads * self.h
    }

    fn raw(&self, p: usize) -> usize {
        p * self.stride()
    }

    fn leg(&self, p: usize, head: usize, role: usize) -> usize {
        p * self.stride() + self.w + (head * ROLES + role) * self.h
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
                let y = mul(self.projection(p).as_ref(), x.as_ref(), Par::Seq);
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

/// One term at one (head, query, key): its vector's first row, its scores' leg rows, its weight
/// and output block.
struct Combo {
    vector: usize,
    scores: Vec<[usize; 2]>,
    weight: f64,
    block: usize,
}

/// A row-major matrix of covariances between the rows of two sides, and which position pairs
/// `(p, p')` have any non-zero covariance (inputs at different positions are independent before
/// the first layer that mixes positions).
struct Gram {
    data: Vec<f64>,
    cols: usize,
    /// `live[p·n + p']`.
    live: Vec<bool>,
    n: usize,
}

impl Gram {
    /// `G[(p,r),(p',r')] = (Π_x[p] C[p,p'] Π_y[p']ᵀ)[r,r']`; `within`: one side with itself.
    fn new(x: &Side, cov: &Tensor, y: &Side, within: bool) -> Gram {
        let n = x.n;
        let (sx, sy) = (x.stride(), y.stride());
        let (px, py): (Vec<Mat<f64>>, Vec<Mat<f64>>) =
            (0..n).map(|p| (x.projection(p), y.projection(p))).unzip();
        let cols = n * sy;
        let mut data = vec![0.0; n * sx * cols];
        let live = (0..n * n)
            .map(|pq| {
                let (p, q) = (pq / n, pq % n);
                (0..x.w * y.w)
                    .any(|ij| cov.data[((p * x.w + ij / y.w) * n + q) * y.w + ij % y.w] != 0.0)
            })
            .collect();
        // Blocks (rows, columns) computed: everything, or within one side only the legs of
        // one head against the same head's (all that pairs inside one combination touch).
        let blocks: Vec<[usize; 4]> = if within {
            let (a, b) = (ROLES * x.h, ROLES * y.h);
            (0..x.heads)
                .map(|hd| [x.w + hd * a, a, y.w + hd * b, b])
                .collect()
        } else {
            vec![[0, sx, 0, sy]]
        };
        let (c0, cn) = (
            blocks[0][2],
            blocks[blocks.len() - 1][2] + blocks[0][3] - blocks[0][2],
        );
        // One band of rows (position p) per task; block (p, q) = Π_x[p] · (C[p,q] · Π_y[q]ᵀ).
        data.par_chunks_mut(sx * cols)
            .enumerate()
            .for_each(|(p, band)| {
                for (q, pq) in py.iter().enumerate() {
                    let c =
                        Mat::from_fn(x.w, y.w, |i, j| cov.data[((p * x.w + i) * n + q) * y.w + j]);
                    let b = mul(c.as_ref(), pq.subrows(c0, cn).transpose(), Par::Seq);
                    for &[r0, rn, b0, bn] in &blocks {
                        // Dᵀ column-major is D row-major: row a of the block is column a.
                        let dt = mul(
                            b.subcols(b0 - c0, bn).transpose(),
                            px[p].subrows(r0, rn).transpose(),
                            Par::Seq,
                        );
                        for a in 0..rn {
                            let col = dt.col(a).try_as_col_major().expect("contiguous column");
                            band[(r0 + a) * cols + q * sy + b0..][..bn]
                                .copy_from_slice(col.as_slice());
                        }
                    }
                }
            });
        Gram {
            data,
            cols,
            live,
            n,
        }
    }

    /// `Gᵀ` (the covariances of the other side's rows with this side's).
    fn transposed(&self) -> Gram {
        let rows = self.data.len() / self.cols;
        let mut data = vec![0.0; self.data.len()];
        // Bands of 64 output rows, each read as 64-column strips of the source.
        data.par_chunks_mut(64 * rows)
            .enumerate()
            .for_each(|(band, out)| {
                let c0 = band * 64;
                let width = out.len() / rows;
                for r in 0..rows {
                    let src = &self.data[r * self.cols + c0..][..width];
                    for (c, &v) in src.iter().enumerate() {
                        out[c * rows + r] = v;
                    }
                }
            });
        let n = self.n;
        let live = (0..n * n)
            .map(|pq| self.live[pq % n * n + pq / n])
            .collect();
        Gram {
            data,
            cols: rows,
            live,
            n,
        }
    }
}

/// Everything a pair of combinations reads: covariances `G_xy` (`x, y ∈ {L, R}`, indexed
/// `2x + y`), the rows' means and the score sizes `h` of both sides.
struct Pair<'a> {
    g: [&'a Gram; 4],
    mu: [&'a [f64]; 2],
    h: [usize; 2],
    /// Rows per position of each side.
    stride: [usize; 2],
}

/// `acc + x·y`, fused where the CPU has FMA.
trait MulAdd {
    fn mul_add(acc: f64, x: f64, y: f64) -> f64;
}

struct Fused;
struct Plain;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(acc: f64, x: f64, y: f64) -> f64 {
        x.mul_add(y, acc)
    }
}

impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(acc: f64, x: f64, y: f64) -> f64 {
        acc + x * y
    }
}

/// `c (m×n) += a (m×k, row stride lda) · b (k×n, row stride ldb)`; `c` contiguous.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm<M: MulAdd>(
    m: usize,
    k: usize,
    n: usize,
    a: &[f64],
    lda: usize,
    b: &[f64],
    ldb: usize,
    c: &mut [f64],
) {
    let mut i = 0;
    while i + 4 <= m {
        rows::<4, M>(i, k, n, a, lda, b, ldb, c);
        i += 4;
    }
    for i in i..m {
        rows::<1, M>(i, k, n, a, lda, b, ldb, c);
    }
}

/// Rows `i..i+R` of [`gemm`]: an `R × 8` tile of `c` held in registers over the inner dimension.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows<const R: usize, M: MulAdd>(
    i: usize,
    k: usize,
    n: usize,
    a: &[f64],
    lda: usize,
    b: &[f64],
    ldb: usize,
    c: &mut [f64],
) {
    let mut j = 0;
    while j + 8 <= n {
        let mut acc = [[0.0f64; 8]; R];
        for (r, t) in acc.iter_mut().enumerate() {
            t.copy_from_slice(&c[(i + r) * n + j..][..8]);
        }
        for p in 0..k {
            let bp: &[f64; 8] = b[p * ldb + j..][..8].try_into().expect("eight");
            for (r, t) in acc.iter_mut().enumerate() {
                let x = a[(i + r) * lda + p];
                for q in 0..8 {
                    t[q] = M::mul_add(t[q], x, bp[q]);
                }
            }
        }
        for (r, t) in acc.iter().enumerate() {
            c[(i + r) * n + j..][..8].copy_from_slice(t);
        }
        j += 8;
    }
    for r in 0..R {
        for jj in j..n {
            let s = (0..k).fold(0.0, |s, p| {
                M::mul_add(s, a[(i + r) * lda + p], b[p * ldb + jj])
            });
            c[(i + r) * n + jj] += s;
        }
    }
}

#[inline(always)]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Indices of the set bits of `u`.
fn members(u: usize) -> impl Iterator<Item = usize> {
    (0..usize::BITS as usize).filter(move |&j| u >> j & 1 == 1)
}

/// Permutations of `items` (Heap's algorithm).
fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    fn heap(k: usize, v: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if k <= 1 {
            out.push(v.clone());
            return;
        }
        for i in 0..k {
            heap(k - 1, v, out);
            let j = if k % 2 == 0 { i } else { 0 };
            v.swap(j, k - 1);
        }
    }
    let mut out = vec![];
    heap(items.len(), &mut items.to_vec(), &mut out);
    out
}

/// The cycles through every subset of `nj` scores: `(subset, order from its first score)`, one
/// order per cycle of ≥ 3 scores (its reverse has the same trace), with weight ½ for two.
fn cycle_orders(nj: usize) -> Vec<(usize, Vec<usize>, f64)> {
    let mut out = vec![];
    for u in 1..1usize << nj {
        let js: Vec<usize> = members(u).collect();
        if js.len() < 2 {
            continue;
        }
        for order in permutations(&js[1..]) {
            let last = order[order.len() - 1];
            if order.len() >= 2 && order[0] > last {
                continue;
            }
            let mut o = vec![js[0]];
            o.extend(order.iter().copied());
            out.push((u, o, if js.len() == 2 { 0.5 } else { 1.0 }));
        }
    }
    out
}

/// Buffers of one worker, reused from one pair of combinations to the next, and the cycle
/// orders of its term pair's scores ([`cycle_orders`]).
#[derive(Default)]
struct Scratch {
    cycles: Vec<(usize, Vec<usize>, f64)>,
    am: Vec<f64>,
    fm: Vec<f64>,
    chain: Vec<f64>,
    next: Vec<f64>,
    aw: Vec<f64>,
    pl: Vec<f64>,
    pr: Vec<f64>,
}

/// `v[..len]`, grown as needed.
fn sized(v: &mut Vec<f64>, len: usize) -> &mut [f64] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// `tr(A·B)` for `A (m×k, stride lda)`, `B (k×m, stride ldb)`.
#[inline(always)]
fn trace_prod(m: usize, k: usize, a: &[f64], lda: usize, b: &[f64], ldb: usize) -> f64 {
    (0..m)
        .map(|i| (0..k).map(|c| a[i * lda + c] * b[c * ldb + i]).sum::<f64>())
        .sum()
}

impl Pair<'_> {
    /// Covariances of rows `x..` (side `sx`) with rows `y..` (side `sy`): a row-major view and
    /// its row stride.
    fn blk(&self, sx: usize, x: usize, sy: usize, y: usize) -> (&[f64], usize) {
        let g = self.g[2 * sx + sy];
        (&g.data[x * g.cols + y..], g.cols)
    }

    /// Whether the covariances of rows `x` and `y` can be non-zero (their positions' block).
    fn live(&self, sx: usize, x: usize, sy: usize, y: usize) -> bool {
        let (p, q, g) = (
            x / self.stride[sx],
            y / self.stride[sy],
            self.g[2 * sx + sy],
        );
        g.live[p * g.n + q]
    }

    /// `E[v_L v_Rᵀ Π s]` (`dl × dr`, row-major) for one left and one right combination.
    fn moment(&self, l: &Combo, r: &Combo, dims: (usize, usize), ws: &mut Scratch) -> Vec<f64> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features this copy is compiled for.
            return unsafe { self.moment_avx2(l, r, dims, ws) };
        }
        self.moment_any::<Plain>(l, r, dims, ws)
    }

    /// [`Pair::moment`] compiled for AVX2 (its small products vectorise 4 wide).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn moment_avx2(
        &self,
        l: &Combo,
        r: &Combo,
        dims: (usize, usize),
        ws: &mut Scratch,
    ) -> Vec<f64> {
        self.moment_any::<Fused>(l, r, dims, ws)
    }

    #[inline(always)]
    fn moment_any<M: MulAdd>(
        &self,
        l: &Combo,
        r: &Combo,
        (dl, dr): (usize, usize),
        ws: &mut Scratch,
    ) -> Vec<f64> {
        // Scores: left ones first (side 0), then right ones (side 1). A state is a score j with
        // the leg ℓ it is left through; `leg(j, ℓ)` is that leg's first row.
        let atoms: Vec<(usize, [usize; 2])> = (l.scores.iter().map(|&s| (0, s)))
            .chain(r.scores.iter().map(|&s| (1, s)))
            .collect();
        let nj = atoms.len();
        let side = |j: usize| atoms[j].0;
        let hj = |j: usize| self.h[atoms[j].0];
        let leg = |j: usize, lg: usize| atoms[j].1[lg];
        let hmax = self.h[0].max(self.h[1]);
        let full = (1usize << nj) - 1;
        // Transfer from state (k, ℓ') into state (j, ℓ): C[leg ℓ' of k, leg ¬ℓ of j].
        let step = |k: usize, lk: usize, j: usize, lg: usize| {
            self.blk(side(k), leg(k, lk), side(j), leg(j, 1 - lg))
        };
        let live = |k: usize, lk: usize, j: usize, lg: usize| {
            self.live(side(k), leg(k, lk), side(j), leg(j, 1 - lg))
        };
        // Means of the legs; paths into (j, ℓ) from v_L (entering through ¬ℓ) or from a mean.
        let mean = |j: usize, lg: usize| &self.mu[side(j)][leg(j, lg)..][..hj(j)];
        let from_v = |j: usize, lg: usize| self.blk(0, l.vector, side(j), leg(j, 1 - lg));

        // Forward over subsets U (sources precede targets in memory): states (j, ℓ) after
        // visiting U, from v_L (am, dl × h_j) and from a mean leg (fm, h_j). Single-score
        // bases are read in place.
        let slot = |u: usize, j: usize, lg: usize| (u * nj + j) * 2 + lg;
        let am = sized(&mut ws.am, (full + 1) * nj * 2 * dl * hmax);
        let fm = sized(&mut ws.fm, (full + 1) * nj * 2 * hmax);
        for u in 1..=full {
            for j in members(u) {
                let rest = u & !(1 << j);
                if rest == 0 {
                    continue;
                }
                let a = hj(j);
                for lg in 0..2 {
                    let o = slot(u, j, lg);
                    let (src_a, dst_a) = am.split_at_mut(o * dl * hmax);
                    let dst_a = &mut dst_a[..dl * a];
                    dst_a.fill(0.0);
                    let (src_f, dst_f) = fm.split_at_mut(o * hmax);
                    let dst_f = &mut dst_f[..a];
                    dst_f.fill(0.0);
                    for k in members(rest) {
                        let b = hj(k);
                        for lk in 0..2 {
                            if !live(k, lk, j, lg) {
                                continue;
                            }
                            let (x, ldx) = step(k, lk, j, lg);
                            if rest == 1 << k {
                                if self.live(0, l.vector, side(k), leg(k, 1 - lk)) {
                                    let (v, ldv) = from_v(k, lk);
                                    gemm::<M>(dl, b, a, v, ldv, x, ldx, dst_a);
                                }
                                gemm::<M>(1, b, a, mean(k, 1 - lk), b, x, ldx, dst_f);
                            } else {
                                let from = slot(rest, k, lk);
                                gemm::<M>(dl, b, a, &src_a[from * dl * hmax..], b, x, ldx, dst_a);
                                gemm::<M>(1, b, a, &src_f[from * hmax..], b, x, ldx, dst_f);
                            }
                        }
                    }
                }
            }
        }
        let (am, fm): (&[f64], &[f64]) = (am, fm);
        let fm_at = |u: usize, j: usize, lg: usize| -> &[f64] {
            if u == 1 << j {
                mean(j, 1 - lg)
            } else {
                &fm[slot(u, j, lg) * hmax..][..hj(j)]
            }
        };

        // Cumulants κ(B): a score alone E[s] = tr C_ab + μ_a·μ_b; otherwise mean-ended paths
        // ½ Σ_{j,ℓ} μ(j,ℓ)·fm(B,j,ℓ) plus cycles. Then moments Sc(U) = Σ_{B∋min U} κ(B) Sc(U∖B).
        let mut kappa = vec![0.0; full + 1];
        for (u, kap) in kappa.iter_mut().enumerate().skip(1) {
            if u.count_ones() == 1 {
                let j = u.trailing_zeros() as usize;
                let (g, ld) = self.blk(side(j), leg(j, 0), side(j), leg(j, 1));
                let tr: f64 = (0..hj(j)).map(|e| g[e * ld + e]).sum();
                *kap = tr + dot(mean(j, 0), mean(j, 1));
            } else {
                *kap = 0.5
                    * members(u)
                        .flat_map(|j| (0..2).map(move |lg| (j, lg)))
                        .map(|(j, lg)| dot(mean(j, lg), fm_at(u, j, lg)))
                        .sum::<f64>();
            }
        }
        for (u, order, weight) in &ws.cycles {
            let t = self.cycle_trace::<M>(order, &hj, &step, &live, (&mut ws.chain, &mut ws.next));
            kappa[*u] += weight * t;
        }
        let mut sc = vec![0.0; full + 1];
        sc[0] = 1.0;
        for u in 1..=full {
            let low = u & u.wrapping_neg();
            let rest = u ^ low;
            let mut sub = rest;
            loop {
                let b = low | sub;
                sc[u] += kappa[b] * sc[u & !b];
                if sub == 0 {
                    break;
                }
                sub = (sub - 1) & rest;
            }
        }

        // Connected: Sc(J)·C_LR + Σ_{j,ℓ} (Σ_{U∋j} Sc(J∖U) am(U,j,ℓ)) · C[leg ℓ of j, v_R].
        let mut out = vec![0.0; dl * dr];
        let (c, ldc) = self.blk(0, l.vector, 1, r.vector);
        for i in 0..dl {
            for (jj, o) in out[i * dr..][..dr].iter_mut().enumerate() {
                *o = sc[full] * c[i * ldc + jj];
            }
        }
        for j in 0..nj {
            let a = hj(j);
            for lg in 0..2 {
                let aw = sized(&mut ws.aw, dl * a);
                let (f, (v, ldv)) = (sc[full & !(1 << j)], from_v(j, lg));
                for i in 0..dl {
                    for e in 0..a {
                        aw[i * a + e] = f * v[i * ldv + e];
                    }
                }
                for u in (1..=full).filter(|&u| u >> j & 1 == 1 && u != 1 << j) {
                    let f = sc[full & !u];
                    aw.iter_mut()
                        .zip(&am[slot(u, j, lg) * dl * hmax..][..dl * a])
                        .for_each(|(x, y)| *x += f * y);
                }
                if self.live(side(j), leg(j, lg), 1, r.vector) {
                    let (w, ldw) = self.blk(side(j), leg(j, lg), 1, r.vector);
                    gemm::<M>(dl, a, dr, aw, a, w, ldw, &mut out);
                }
            }
        }
        // Disconnected: P_L(U₁) ⊗ Σ_{U₂} P_R(U₂)·Sc(J∖U₁∖U₂), where P_L(U) sums
        // fm(U,j,ℓ)ᵀ C[leg ℓ of j, v_L] and P_R(U) sums fm(U,j,ℓ)ᵀ C[leg ℓ of j, v_R].
        let pl = sized(&mut ws.pl, (full + 1) * dl);
        pl.fill(0.0);
        pl[..dl].copy_from_slice(&self.mu[0][l.vector..][..dl]);
        let pr = sized(&mut ws.pr, (full + 1) * dr);
        pr.fill(0.0);
        pr[..dr].copy_from_slice(&self.mu[1][r.vector..][..dr]);
        for u in 1..=full {
            for j in members(u) {
                let a = hj(j);
                for lg in 0..2 {
                    let f = fm_at(u, j, lg);
                    if self.live(side(j), leg(j, lg), 0, l.vector) {
                        let (vt, ldv) = self.blk(side(j), leg(j, lg), 0, l.vector);
                        gemm::<M>(1, a, dl, f, a, vt, ldv, &mut pl[u * dl..][..dl]);
                    }
                    if self.live(side(j), leg(j, lg), 1, r.vector) {
                        let (w, ldw) = self.blk(side(j), leg(j, lg), 1, r.vector);
                        gemm::<M>(1, a, dr, f, a, w, ldw, &mut pr[u * dr..][..dr]);
                    }
                }
            }
        }
        let mut y = vec![0.0; dr];
        for u1 in 0..=full {
            let free = full & !u1;
            y.fill(0.0);
            let mut u2 = free;
            loop {
                let f = sc[free & !u2];
                y.iter_mut()
                    .zip(&pr[u2 * dr..][..dr])
                    .for_each(|(a, b)| *a += f * b);
                if u2 == 0 {
                    break;
                }
                u2 = (u2 - 1) & free;
            }
            gemm::<M>(dl, 1, dr, &pl[u1 * dl..], 1, &y, dr, &mut out);
        }
        out
    }

    /// `tr(X_{o₀o₁} X_{o₁o₂} ⋯ X_{o_k o₀})` over states (score, leg left through).
    #[inline(always)]
    fn cycle_trace<'s, M: MulAdd>(
        &'s self,
        order: &[usize],
        hj: &dyn Fn(usize) -> usize,
        step: &dyn Fn(usize, usize, usize, usize) -> (&'s [f64], usize),
        live: &dyn Fn(usize, usize, usize, usize) -> bool,
        (chain, next): (&mut Vec<f64>, &mut Vec<f64>),
    ) -> f64 {
        let (first, last) = (order[0], order[order.len() - 1]);
        let (hf, hmax) = (hj(first), self.h[0].max(self.h[1]));
        let mut total = 0.0;
        for l0 in 0..2 {
            if order.len() == 2 {
                for l1 in
                    (0..2).filter(|&l1| live(first, l0, last, l1) && live(last, l1, first, l0))
                {
                    let (a, lda) = step(first, l0, last, l1);
                    let (b, ldb) = step(last, l1, first, l0);
                    total += trace_prod(hf, hj(last), a, lda, b, ldb);
                }
                continue;
            }
            // chain[ℓ]: products from state (first, l0) to state (current score, ℓ).
            let c = sized(chain, 2 * hf * hmax);
            c.fill(0.0);
            let (o1, o2) = (order[1], order[2]);
            for l2 in 0..2 {
                for l1 in (0..2).filter(|&l1| live(first, l0, o1, l1) && live(o1, l1, o2, l2)) {
                    let (a, lda) = step(first, l0, o1, l1);
                    let (b, ldb) = step(o1, l1, o2, l2);
                    let dst = &mut c[l2 * hf * hmax..][..hf * hj(o2)];
                    gemm::<M>(hf, hj(o1), hj(o2), a, lda, b, ldb, dst);
                }
            }
            for w in order[2..].windows(2) {
                let (cur, nxt) = (w[0], w[1]);
                sized(next, 2 * hf * hmax).fill(0.0);
                for ln in 0..2 {
                    for lc in (0..2).filter(|&lc| live(cur, lc, nxt, ln)) {
                        let (b, ldb) = step(cur, lc, nxt, ln);
                        let dst = &mut next[ln * hf * hmax..][..hf * hj(nxt)];
                        gemm::<M>(
                            hf,
                            hj(cur),
                            hj(nxt),
                            &chain[lc * hf * hmax..],
                            hj(cur),
                            b,
                            ldb,
                            dst,
                        );
                    }
                }
                std::mem::swap(chain, next);
            }
            for ll in (0..2).filter(|&ll| live(last, ll, first, l0)) {
                let (b, ldb) = step(last, ll, first, l0);
                total += trace_prod(hf, hj(last), &chain[ll * hf * hmax..], hj(last), b, ldb);
            }
        }
        total
    }
}

/// `Σ_{combination pairs} w_l w_r E[v_L v_Rᵀ Π s]` summed into output blocks, then mapped to
/// `[t, o, t', o']` by both terms' output maps.
fn term_pair(
    pair: &Pair<'_>,
    (ls, la): (&Side, bool),
    (rs, ra): (&Side, bool),
    symmetric: bool,
) -> Tensor {
    let (lc, rc) = (ls.combos(la), rs.combos(ra));
    let dim = |s: &Side, active: bool| if active { s.h } else { s.w };
    let (dl, dr) = (dim(ls, la), dim(rs, ra));
    let per = |s: &Side, active: bool| if active { s.heads } else { 1 };
    let (bl, br) = (per(ls, la), per(rs, ra));
    let (rows, cols) = (ls.n * bl * dl, rs.n * br * dr);
    let parts: Vec<Vec<(usize, Vec<f64>)>> = lc
        .par_iter()
        .enumerate()
        .map_init(
            || Scratch {
                cycles: cycle_orders(lc[0].scores.len() + rc[0].scores.len()),
                ..Default::default()
            },
            |ws, (ci, l)| {
                let start = if symmetric { ci } else { 0 };
                rc[start..]
                    .iter()
                    .enumerate()
                    .map(|(k, r)| (start + k, pair.moment(l, r, (dl, dr), ws)))
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
        for t2 in 0..n {
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
/// both sides (a self moment), where pairs of combinations are visited once.
pub fn moments(
    left: &Network,
    right: &Network,
    m: &Moments<'_>,
    symmetric: bool,
) -> Result<Vec<(usize, usize, Tensor)>> {
    let (ls, rs) = (Side::new(left), Side::new(right));
    // Four covariance matrices between the sides' rows (one when symmetric).
    let rows = [ls.n * ls.stride(), rs.n * rs.stride()];
    crate::budget::check(
        "the attention layers' projected covariances",
        4.0 * rows[0] as f64 * rows[1] as f64,
    )?;
    let cross = Gram::new(&ls, m.cov[1], &rs, false);
    let (gl, gr, back);
    let g = if symmetric {
        [&cross; 4]
    } else {
        gl = Gram::new(&ls, m.cov[0], &ls, true);
        gr = Gram::new(&rs, m.cov[2], &rs, true);
        back = cross.transposed();
        [&gl, &cross, &back, &gr]
    };
    let (mu_l, mu_r) = (ls.means(m.mu[0]), rs.means(m.mu[1]));
    let pair = Pair {
        g,
        mu: [&mu_l, &mu_r],
        h: [ls.h, rs.h],
        stride: [ls.stride(), rs.stride()],
    };
    let legs = |active: bool| if active { 5 } else { 1 };
    let mut out: Vec<(usize, usize, Tensor)> = vec![];
    for la in [false, true] {
        for ra in [false, true] {
            let moment = if symmetric && la && !ra {
                // The (active, identity) moment is the transpose of (identity, active).
                transpose(&out[1].2)
            } else {
                term_pair(&pair, (&ls, la), (&rs, ra), symmetric && la == ra)
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

    fn close(what: &str, fast: &[(usize, usize, Tensor)], slow: &[Tensor]) {
        for ((kl, kr, f), s) in fast.iter().zip(slow) {
            let scale = s.data.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let err = f
                .data
                .iter()
                .zip(&s.data)
                .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
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
            &super::moments(&l, &d, &m, false).unwrap(),
            &generic(&l, &d, &m),
        );
        for independent in [false, true] {
            let (mu, cov) = moments(&mut rng, 3, [5, 5], independent);
            let m = Moments {
                mu: [&mu[0], &mu[1]],
                cov: [&cov[0], &cov[1], &cov[2]],
            };
            close(
                &format!("cross {independent}"),
                &super::moments(&l, &r, &m, false).unwrap(),
                &generic(&l, &r, &m),
            );
            // Self moment: one side, one input.
            let sm = Moments {
                mu: [&mu[0], &mu[0]],
                cov: [&cov[0], &cov[0], &cov[0]],
            };
            close(
                &format!("self {independent}"),
                &super::moments(&l, &l, &sm, true).unwrap(),
                &generic(&l, &l, &sm),
            );
        }
    }
}
