//! The Gaussian moment of two attention layers' outputs (MATH.md §2.5, §5.6), the Wick sum
//! organised by connected pieces instead of visited configuration by configuration.
//!
//! For head `η`, query `t` and key `u`, the active term is a product of atoms: the value
//! `v = V̂_η x̂_u` (a vector) and the scores `s_c = (ρ_tQ̂c_η x̂_t)·(ρ_uK̂c_η x̂_u)` (two legs joined
//! by `Σ_e`); the identity term is the vector `x̂_t` alone. `blocks.rs` lays out the legs of
//! every such combination and their covariances block by block (`Gram`); `pieces.rs` computes
//! the moment of one pair of combinations; this file sums them into the output blocks.

mod blocks;
mod pieces;

use rayon::prelude::*;

use blocks::{Combo, Gram, Holds, Side};
use pieces::{Pair, Pool};

use crate::arch::Mask;
use crate::einsum::Tensor;
use crate::error::Result;
use crate::layers::attention::Network;
use crate::layers::Attention;
use crate::linalg::kernels::{axpy_wide, Real};
use crate::linalg::Mat;
use crate::moment::{Positions, Precision};
use crate::wick::Moments;

/// `Σ_{combination pairs} w_l w_r E[v_L v_Rᵀ Π s]` summed into output blocks, then mapped to
/// `[t, o, t', o']` by both terms' output maps. `local`: only blocks `t = t'` (pairs of
/// combinations with one query position); the others stay zero.
fn term_pair<T: Real>(
    pair: &Pair<'_, T>,
    (ls, la): (&Side, bool),
    (rs, ra): (&Side, bool),
    symmetric: bool,
    local: bool,
    shifts: bool,
) -> Tensor {
    let (lc, rc) = (ls.combos(la), rs.combos(ra));
    let dim = |s: &Side, active: bool| if active { s.h } else { s.w };
    let (dl, dr) = (dim(ls, la), dim(rs, ra));
    let per = |s: &Side, active: bool| if active { s.heads } else { 1 };
    let (bl, br) = (per(ls, la), per(rs, ra));
    // `local`: each row block t holds only its column block t (the others are zero).
    let (rows, cols) = (ls.n * bl * dl, if local { br * dr } else { rs.n * br * dr });
    // First column of right block `b` in z.
    let first_col = |b: usize| if local { b % br * dr } else { b * dr };
    // Each combination's mean, for the pairs without a covariance between them.
    let means = |pair: &Pair<'_, T>, cs: &[Combo], d: usize| -> Vec<Vec<T>> {
        let pool = Pool::new(cs[0].scores.len());
        cs.par_iter()
            .map_init(|| pool.take(), |ws, c| pair.moment(c, None, (d, 1), ws))
            .collect()
    };
    let el = means(pair, &lc, dl);
    let er = if symmetric {
        el.clone()
    } else {
        means(&pair.mirrored(), &rc, dr)
    };
    // Row slab of block b: every left combination of block b against the right ones, each
    // pair's moment added in place. Symmetric: pairs visited once (k ≥ i), the slabs hold
    // each pair once (a pair with itself halved) and z is their sum with its transpose.
    // `shifts`: a pair's moment is unchanged when all its positions move together, so only
    // pairs touching position 0 are computed, each added at every shift that stays inside;
    // a unit of work is then every block of one left head (shifts keep the head).
    let pool = Pool::new(lc[0].scores.len() + rc[0].scores.len());
    let mut z = vec![0.0; rows * cols];
    let mut slabs: Vec<Option<&mut [f64]>> = z.chunks_mut(dl * cols).map(Some).collect();
    let units: Vec<Vec<(usize, &mut [f64])>> = if shifts {
        (0..bl)
            .map(|h| {
                let blocks = (0..ls.n).map(|t| t * bl + h);
                blocks
                    .map(|b| (b, slabs[b].take().expect("once")))
                    .collect()
            })
            .collect()
    } else {
        slabs
            .iter_mut()
            .enumerate()
            .map(|(b, s)| vec![(b, s.take().expect("once"))])
            .collect()
    };
    units.into_par_iter().for_each_init(
        || pool.take(),
        |ws, mut unit| {
            let mine = |b: usize| unit.iter().any(|&(u, _)| u == b);
            let lefts: Vec<(usize, &Combo)> = (lc.iter().enumerate())
                .filter(|(_, l)| mine(l.block))
                .collect();
            for (ci, l) in lefts {
                let start = if symmetric { ci } else { 0 };
                let right = rc.iter().enumerate().skip(start);
                for (ck, r) in right.filter(|(_, r)| !local || r.query == l.query) {
                    let half = if symmetric && ck == ci { 0.5 } else { 1.0 };
                    let connected = pair.connected(l, r);
                    let spots = [l.query, l.key, r.query, r.key];
                    if connected && shifts && spots.iter().min() != Some(&0) {
                        continue;
                    }
                    let e = connected.then(|| pair.moment(l, Some(r), (dl, dr), ws));
                    // Shifted copies (only the pair itself without `shifts`).
                    let last = spots.into_iter().max().unwrap_or(0);
                    let copies = if connected && shifts { ls.n - last } else { 1 };
                    for d in 0..copies {
                        let f: f64 = half
                            * ls.weight(la, l.query + d, l.key + d)
                            * rs.weight(ra, r.query + d, r.key + d);
                        if f == 0.0 {
                            continue;
                        }
                        // A unit holds its head's blocks by query (one block without shifts).
                        let slab = &mut *unit[if shifts { l.query + d } else { 0 }].1;
                        let at = |i: usize| i * cols + first_col(r.block + d * br);
                        match &e {
                            Some(e) => {
                                for i in 0..dl {
                                    axpy_wide(&mut slab[at(i)..][..dr], f, &e[i * dr..][..dr]);
                                }
                            }
                            // No covariance between them: the product of their means.
                            None => {
                                for (i, &a) in el[ci].iter().enumerate() {
                                    axpy_wide(&mut slab[at(i)..][..dr], f * a.wide(), &er[ck]);
                                }
                            }
                        }
                    }
                }
            }
        },
    );
    if symmetric {
        // z + zᵀ in place (z square, or each of its local blocks).
        let (side, count) = if local { (cols, ls.n) } else { (rows, 1) };
        for b in z.chunks_exact_mut(side * side).take(count) {
            for i in 0..side {
                for j in i..side {
                    let s = b[i * side + j] + b[j * side + i];
                    (b[i * side + j], b[j * side + i]) = (s, s);
                }
            }
        }
    }
    let (ml, mr) = (ls.output_map::<T>(la), rs.output_map::<T>(ra));
    let (wl, wr, n) = (ls.w, rs.w, ls.n);
    let mut out = Tensor::zeros(vec![n, wl, n, wr]);
    let (kl, kr) = (bl * dl, br * dr);
    // Symmetric: block (t', t) is the transpose of block (t, t'), mapped once.
    let blocks: Vec<(usize, usize)> = (0..n * n)
        .map(|tt| (tt / n, tt % n))
        .filter(|&(t, t2)| {
            if local {
                t2 == t
            } else {
                !symmetric || t2 >= t
            }
        })
        .collect();
    // Each block in `T`: its sums rounded once, the maps' products as the moments', the
    // legs' and maps' scales undone after.
    let unscale = ls.unscale(la) * rs.unscale(ra);
    let mapped: Vec<Mat<T>> = blocks
        .par_iter()
        .map(|&(t, t2)| {
            let at = t * kl * cols + first_col(t2 * br);
            let blk = Mat::from_fn(kl, kr, |i, j| T::of(z[at + i * cols + j]));
            mr.right(ml.left(blk.as_ref()).as_ref())
        })
        .collect();
    for (&(t, t2), y) in blocks.iter().zip(&mapped) {
        for o2 in 0..wr {
            for (o, v) in y.col(o2).iter().map(|v| unscale * v.wide()).enumerate() {
                out.data[((t * wl + o) * n + t2) * wr + o2] = v;
                if symmetric && t2 != t {
                    out.data[((t2 * wl + o2) * n + t) * wr + o] = v;
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
/// same-position blocks are wanted. `precision`: of the projected covariances and the moments
/// of pairs of combinations (their sums are `f64`).
pub fn moments(
    left: &Network,
    right: &Network,
    m: &Moments<'_>,
    symmetric: bool,
    positions: Positions,
    precision: Precision,
) -> Result<Vec<(usize, usize, Tensor)>> {
    match precision {
        Precision::F64 => moments_in::<f64>(left, right, m, symmetric, positions),
        Precision::F32 => moments_in::<f32>(left, right, m, symmetric, positions),
    }
}

fn moments_in<T: Real>(
    left: &Network,
    right: &Network,
    m: &Moments<'_>,
    symmetric: bool,
    positions: Positions,
) -> Result<Vec<(usize, usize, Tensor)>> {
    let (independent, local) = (positions.independent, positions.local);
    let (ls, rs) = (Side::new(left), Side::new(right));
    let holds = Holds::reads(&ls, &rs, local, symmetric);
    let stored = |x: &Side, y: &Side, holds: &Holds| holds.entries(x, y, independent);
    let cross = stored(&ls, &rs, &holds);
    let entries = if symmetric {
        cross
    } else {
        cross + stored(&ls, &ls, &Holds::Within) + stored(&rs, &rs, &Holds::Within)
    };
    let bytes = std::mem::size_of::<T>() as f64 / 8.0;
    crate::budget::check(
        "the attention layers' projected covariances",
        bytes * entries,
    )?;
    let shifts = independent && shift_invariant(m, &ls, &rs);
    // Each side's projections in `T`, once for all its Grams (freed before the pairs run).
    let (cross, within) = {
        // A self step's sides are one layer: its projections once.
        let pl = ls.projections::<T>();
        let pr = (!symmetric).then(|| rs.projections::<T>());
        let (l, r) = ((&ls, &pl[..]), (&rs, pr.as_deref().unwrap_or(&pl)));
        let gram = |x, c: &Tensor, y, holds: &Holds, symmetric: bool| {
            Gram::<T>::new(x, c, y, holds, independent, symmetric, shifts)
        };
        let cross = gram(l, m.cov[1], r, &holds, symmetric);
        let within = (!symmetric).then(|| {
            let gl = gram(l, m.cov[0], l, &Holds::Within, true);
            (gl, gram(r, m.cov[2], r, &Holds::Within, true))
        });
        (cross, within)
    };
    // G_RL = G_LRᵀ: the cross Gram read transposed.
    let g = match &within {
        Some((gl, gr)) => [(gl, false), (&cross, false), (&cross, true), (gr, false)],
        None => [(&cross, false); 4],
    };
    let narrow = |v: Vec<f64>| -> Vec<T> { v.into_iter().map(T::of).collect() };
    let (mu_l, mu_r) = (narrow(ls.means(m.mu[0])), narrow(rs.means(m.mu[1])));
    let pair = Pair {
        g,
        mu: [&mu_l, &mu_r],
    };
    let term = |pair: &Pair<'_, T>, l: (&Side, bool), r: (&Side, bool), symmetric: bool| {
        term_pair(pair, l, r, symmetric, local, shifts)
    };
    let same = |active: bool| term(&pair, (&ls, active), (&rs, active), symmetric);
    // (identity, active) as the transpose of (active, identity) on the mirrored sides: the
    // dynamic programme then runs over `h + 1` rows (an active vector) instead of `w + 1`.
    let active_identity = term(&pair, (&ls, true), (&rs, false), false);
    let identity_active = if symmetric {
        transpose(&active_identity)
    } else {
        transpose(&term(&pair.mirrored(), (&rs, true), (&ls, false), false))
    };
    Ok(vec![
        (1, 1, same(false)),
        (1, 5, identity_active),
        (5, 1, active_identity),
        (5, 5, same(true)),
    ])
}

/// Whether every pair of combinations has the moment of its copy with all positions moved
/// back together, for inputs independent across positions: every position has the same
/// means and the same covariances (in all three), and the masks keep combinations when moved.
/// (A layer's factors depend on position only through rotary rotations `ρ_{t+d} = ρ_d ρ_t`,
/// which a score does not see when both its legs turn together.)
fn shift_invariant(m: &Moments<'_>, ls: &Side, rs: &Side) -> bool {
    let n = ls.n;
    let rows_equal = |t: &Tensor| {
        let w = t.shape[1];
        (1..n).all(|p| t.data[p * w..][..w] == t.data[..w])
    };
    let diagonal_equal = |c: &Tensor| {
        let (wx, wy) = (c.shape[1], c.shape[3]);
        let at = |p: usize, i: usize, j: usize| c.data[((p * wx + i) * n + p) * wy + j];
        (1..n).all(|p| (0..wx * wy).all(|ij| at(p, ij / wy, ij % wy) == at(0, ij / wy, ij % wy)))
    };
    ls.shift_closed()
        && rs.shift_closed()
        && m.mu.iter().all(|mu| rows_equal(mu))
        && m.cov.iter().all(|c| diagonal_equal(c))
}

/// Entries of the projected covariances an attention step of `left` against `right` holds at
/// `n` positions, at most, from the sizes alone (nothing of size `n` is formed): the class
/// blocks its pairs of combinations read ([`Holds::reads`]) at every live position pair, and
/// each side's within-head blocks.
pub fn covariance_entries(left: &Attention, right: &Attention, n: usize, p: Positions) -> f64 {
    let n = n as f64;
    let (dl, dr) = (left.dim() as f64, right.dim() as f64);
    let live = if p.independent { n } else { n * n };
    let cross = if p.local {
        // One query t: raw and query legs (3d + 1 rows) at t, key legs (3d) at every u with
        // M[t, u] ≠ 0, so two key legs at any two keys of one query.
        let allowed = |m: Mask| match m {
            _ if p.independent => n,
            Mask::Causal => n * (n + 1.0) / 2.0,
            Mask::None => n * n,
            Mask::Diag => n,
        };
        let keys = if p.independent || (left.mask, right.mask) == (Mask::Diag, Mask::Diag) {
            n
        } else {
            n * n
        };
        let (ql, qr, kl, kr) = (3.0 * dl + 1.0, 3.0 * dr + 1.0, 3.0 * dl, 3.0 * dr);
        n * ql * qr + ql * kr * allowed(right.mask) + kl * qr * allowed(left.mask) + kl * kr * keys
    } else {
        live * (6.0 * dl + 1.0) * (6.0 * dr + 1.0)
    };
    // Per head `(5h)²` entries at each position, `2h × 3h` at `(t, u ≠ t)` for each of
    // `M[t, u] ≠ 0` and `M[u, t] ≠ 0` (none with independent positions).
    let within = |a: &Attention| {
        let across = match a.mask {
            _ if p.independent => 0.0,
            Mask::Causal => n * (n - 1.0),
            Mask::None => 2.0 * n * (n - 1.0),
            Mask::Diag => 0.0,
        };
        (25.0 * n + 6.0 * across) * a.dim().pow(2) as f64 / a.n_head as f64
    };
    cross + within(left) + within(right)
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
    use crate::arch::{Residual, ResidualMode};

    fn attention(rng: &mut rand::rngs::StdRng, d: usize, heads: usize, mask: Mask) -> Network {
        layer(rng, d, heads, mask).network(3)
    }

    fn layer(rng: &mut rand::rngs::StdRng, d: usize, heads: usize, mask: Mask) -> Attention {
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
    }

    /// The estimate from sizes alone against the blocks a cross step stores: equal for one
    /// mask kind on both sides, an upper bound for mixed kinds.
    #[test]
    fn covariance_entries_bound_the_stored_blocks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let masks = [Mask::Causal, Mask::None, Mask::Diag];
        for (ml, mr) in masks.iter().flat_map(|&l| masks.map(|r| (l, r))) {
            let (a, b) = (layer(&mut rng, 4, 2, ml), layer(&mut rng, 6, 3, mr));
            for n in [1, 3, 5] {
                let (na, nb) = (a.network(n), b.network(n));
                let (ls, rs) = (Side::new(&na), Side::new(&nb));
                for pq in 0..4 {
                    let p = Positions {
                        independent: pq & 1 == 1,
                        local: pq & 2 == 2,
                    };
                    let holds = Holds::reads(&ls, &rs, p.local, false);
                    let stored = |x: &Side, y: &Side, h: &Holds| h.entries(x, y, p.independent);
                    let actual = stored(&ls, &rs, &holds)
                        + stored(&ls, &ls, &Holds::Within)
                        + stored(&rs, &rs, &Holds::Within);
                    let estimate = covariance_entries(&a, &b, n, p);
                    let what = format!("{ml:?} × {mr:?}, n {n}, {pq}: {estimate} vs {actual}");
                    if ml == mr {
                        assert_eq!(estimate, actual, "{what}");
                    } else {
                        assert!(estimate >= actual, "{what}");
                    }
                }
            }
        }
    }

    /// Random joint moments of two sides' inputs: `μ_x` and the centred covariances of
    /// `(X_a, X_b) = (μ_a, μ_b) + A g` (unit slots fixed).
    /// `independent`: every position its own factors (no covariance across positions);
    /// `iid`: besides, every position the same law (the coefficients and means of position 0).
    fn moments(
        rng: &mut rand::rngs::StdRng,
        n: usize,
        w: [usize; 2],
        (independent, iid): (bool, bool),
    ) -> ([Tensor; 2], [Tensor; 3]) {
        let rank = 2 * n;
        let mut side = |w: usize| {
            let mut a: Vec<f64> = (0..n * w * rank)
                .map(|k| {
                    let (row, g) = (k / rank, k % rank);
                    if row % w == 0 || (independent && g % n != row / w) {
                        0.0
                    } else {
                        rng.random_range(-0.7..0.7)
                    }
                })
                .collect();
            let mut mu: Vec<f64> = (0..n * w)
                .map(|k| {
                    if k % w == 0 {
                        1.0
                    } else {
                        rng.random_range(-0.5..0.5)
                    }
                })
                .collect();
            if iid {
                // Row i at position p: factor g of position 0 moved to g + p.
                for k in w * rank..n * w * rank {
                    let (p, i, g) = (k / (w * rank), k / rank % w, k % rank);
                    a[k] = if g % n == p { a[i * rank + g - p] } else { 0.0 };
                }
                for k in w..n * w {
                    mu[k] = mu[k % w];
                }
            }
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
        let parts = crate::propagate::term_moments(&l.terms(), &r.terms(), m, diag).unwrap();
        parts.into_iter().map(|(_, _, t)| t).collect()
    }

    /// The moments by connected pieces, in both precisions, against the configuration sum
    /// (`f32` within its rounding: 1e-5 of the largest entry); `p.local`: the fast moments
    /// hold the same-position blocks alone.
    fn close(what: &str, (l, r): (&Network, &Network), m: &Moments<'_>, sym: bool, p: Positions) {
        let slow = generic(l, r, m);
        for (precision, tol) in [(Precision::F64, 1e-12), (Precision::F32, 1e-5)] {
            let fast = super::moments(l, r, m, sym, p, precision).unwrap();
            for ((kl, kr, f), s) in fast.iter().zip(&slow) {
                let s = &if p.local {
                    crate::moment::same_position(s.clone())
                } else {
                    s.clone()
                };
                let scale = s.data.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                let err = crate::moment::max_diff(&f.data, &s.data);
                assert!(
                    err <= tol * scale.max(1.0),
                    "{what} {precision:?} ({kl},{kr}): {err} vs scale {scale}"
                );
            }
        }
    }

    /// Every projection times 1e-6 or 1e6: a pair's ten legs multiply to 1e∓60, outside
    /// `f32`'s range; with the rows held near unit size `f32` stays within its rounding of
    /// `f64` (relative to each term pair's own size).
    #[test]
    fn f32_moments_hold_weights_of_any_size() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (mu, cov) = moments(&mut rng, 3, [5, 5], (false, false));
        let m = Moments {
            mu: [&mu[0], &mu[1]],
            cov: [&cov[0], &cov[1], &cov[2]],
        };
        for factor in [1e-6, 1e6] {
            let (mut l, mut r) = (
                attention(&mut rng, 4, 2, Mask::Causal),
                attention(&mut rng, 4, 1, Mask::None),
            );
            for f in l.heads.iter_mut().chain(r.heads.iter_mut()) {
                let [q1, q2] = &mut f.q;
                let [k1, k2] = &mut f.k;
                for t in [&mut f.v, q1, k1, q2, k2] {
                    t.data.iter_mut().for_each(|x| *x *= factor);
                }
            }
            let p = Positions::default();
            let wide = super::moments(&l, &r, &m, false, p, Precision::F64).unwrap();
            let narrow = super::moments(&l, &r, &m, false, p, Precision::F32).unwrap();
            for ((kl, kr, a), (_, _, b)) in wide.iter().zip(&narrow) {
                let scale = a.data.iter().fold(0.0f64, |s, v| s.max(v.abs()));
                let err = crate::moment::max_diff(&a.data, &b.data);
                assert!(
                    scale > 0.0 && err <= 1e-5 * scale,
                    "×{factor} ({kl},{kr}): {err} vs scale {scale}"
                );
            }
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
        let (mu, cov) = moments(&mut rng, 3, [5, 5], (false, false));
        let m = Moments {
            mu: [&mu[0], &mu[1]],
            cov: [&cov[0], &cov[1], &cov[2]],
        };
        close("causal × diag", (&l, &d), &m, false, Positions::default());
        // Inputs: dependent, independent, independent with one law (each pair then computed
        // once and moved along the positions).
        let laws = [(false, false), (true, false), (true, true)];
        for ((independent, iid), local) in laws.iter().flat_map(|&p| [(p, false), (p, true)]) {
            let positions = Positions { independent, local };
            let (mu, cov) = moments(&mut rng, 3, [5, 5], (independent, iid));
            let m = Moments {
                mu: [&mu[0], &mu[1]],
                cov: [&cov[0], &cov[1], &cov[2]],
            };
            let (sl, sr) = (Side::new(&l), Side::new(&r));
            assert_eq!(independent && shift_invariant(&m, &sl, &sr), iid);
            let what = format!("{independent} {local}");
            close(&format!("cross {what}"), (&l, &r), &m, false, positions);
            // Self moment: one side, one input.
            let sm = Moments {
                mu: [&mu[0], &mu[0]],
                cov: [&cov[0], &cov[0], &cov[0]],
            };
            close(&format!("self {what}"), (&l, &l), &sm, true, positions);
        }
    }
}
