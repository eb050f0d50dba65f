//! The layout of an attention moment: the legs of every (head, query, key) combination as
//! rows of the projected input (`Side`), and their covariances between two sides cut into
//! contiguous blocks (`Gram`), the unit the small products of `pieces.rs` read.

use std::ops::Range;

use rayon::prelude::*;

use crate::einsum::Tensor;
use crate::layers::attention::{turn_rows, turns, Network};
use crate::linalg::kernels::Real;
use crate::linalg::{mul, mul_into, Mat, MatRef, Par};

/// Legs per head.
const ROLES: usize = 5;
const Q1: usize = 0;
const K1: usize = 1;
const Q2: usize = 2;
const K2: usize = 3;
const V: usize = 4;

/// Classes of row groups, by the position of a combination they sit at: the raw coordinates
/// (an identity term's vector, at its query), `Q₁ Q₂` (at the query), `K₁ K₂ V` (at the key).
const CLASSES: usize = 3;
const RAW: usize = 0;
const QUERY: usize = 1;
const KEY: usize = 2;

/// One side's network and the layout of its projected rows: per position, the `w` raw padded
/// coordinates, then the `h` rows of `Q₁, Q₂` of every head, then those of `K₁, K₂, V` of every
/// head (each class contiguous). A group of rows is the raw coordinates or one leg at one
/// position.
pub(super) struct Side<'a> {
    net: &'a Network,
    pub n: usize,
    pub w: usize,
    pub h: usize,
    pub heads: usize,
    /// The rotary turns of every position (empty without rotary).
    turns: Vec<Vec<(f64, f64)>>,
    /// Per role, the power of two `c` its projected rows are held times, and that of the
    /// output map (see [`Side::unscale`]).
    scale: [f64; ROLES],
    out_scale: f64,
}

impl<'a> Side<'a> {
    pub(super) fn new(net: &'a Network) -> Side<'a> {
        let mut side = Side {
            net,
            n: net.mask.shape[0],
            w: net.gamma.len(),
            h: net.heads[0].v.shape[0],
            heads: net.heads.len(),
            turns: vec![],
            scale: [1.0; ROLES],
            out_scale: 1.0,
        };
        if let Some(base) = net.rotary {
            side.turns = (0..side.n).map(|p| turns(base, side.h, p)).collect();
        }
        // Each head's `h × w` rows of a role at position 0 (rotary turns keep the sum of
        // squares of a position's rows), and its `w × h` output map.
        let hw = side.h * side.w;
        side.scale = std::array::from_fn(|role| {
            let rows = net.heads.iter().map(|f| match role {
                V => &f.v.data[..hw],
                _ => &[&f.q[0], &f.k[0], &f.q[1], &f.k[1]][role].data[..hw],
            });
            unit_scale(rows, side.w)
        });
        side.out_scale = unit_scale(net.heads.iter().map(|f| &f.o.data[..]), side.h);
        side
    }

    /// `1 / Π c` over the legs and output map of the term's combinations (1 for the identity
    /// term). Every projected row of a role, and the output map, is held times its `c`, a
    /// power of two bringing its rows' RMS norm near 1, so that products of a pair's ten legs
    /// stay inside `f32`'s range whatever the weights' size; the moments, multilinear in the
    /// legs and maps, are then `Π c` times their own (exactly: powers of two), which this
    /// undoes in `f64`.
    pub(super) fn unscale(&self, active: bool) -> f64 {
        if active {
            1.0 / (self.out_scale * self.scale.iter().product::<f64>())
        } else {
            1.0
        }
    }

    /// Rows per position.
    pub(super) fn stride(&self) -> usize {
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
        let g = self.group(head, role);
        Leg {
            row: p * self.stride() + self.first_row(g),
            group: p * self.per() + g,
            size: self.h,
        }
    }

    /// Group (within a position) of `role` of `head`.
    fn group(&self, head: usize, role: usize) -> usize {
        let key = 1 + 2 * self.heads + 3 * head;
        match role {
            Q1 => 1 + 2 * head,
            Q2 => 2 + 2 * head,
            K1 => key,
            K2 => key + 1,
            _ => key + 2,
        }
    }

    /// `(head, role)` of a group (within a position) other than the raw one.
    fn role(&self, g: usize) -> (usize, usize) {
        let k = g - 1;
        if k < 2 * self.heads {
            (k / 2, [Q1, Q2][k % 2])
        } else {
            let k = k - 2 * self.heads;
            (k / 3, [K1, K2, V][k % 3])
        }
    }

    /// The groups (within a position) of a class.
    fn class(&self, c: usize) -> Range<usize> {
        let q = 1 + 2 * self.heads;
        [0..1, 1..q, q..self.per()][c].clone()
    }

    /// Size of group `g`.
    fn size(&self, g: usize) -> usize {
        if g.is_multiple_of(self.per()) {
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

    /// `Π[p]` (row-major) in `T`: the rows above as maps of the padded input at position `p`.
    fn projection<T: Real>(&self, p: usize) -> Vec<T> {
        let (w, h) = (self.w, self.h);
        let mut out = vec![T::default(); self.stride() * w];
        for (r, row) in out.chunks_exact_mut(w).enumerate() {
            if r < w {
                row[r] = T::of(1.0);
                continue;
            }
            let ((head, role), e) = (self.role(1 + (r - w) / h), (r - w) % h);
            let f = &self.net.heads[head];
            let src = match role {
                V => &f.v.data[e * w..][..w],
                _ => &[&f.q[0], &f.k[0], &f.q[1], &f.k[1]][role].data[(p * h + e) * w..][..w],
            };
            let c = self.scale[role];
            row.iter_mut()
                .zip(src)
                .for_each(|(y, &x)| *y = T::of(c * x));
        }
        out
    }

    /// `Π[p]` of every position in `T`, row-major.
    pub(super) fn projections<T: Real>(&self) -> Vec<Vec<T>> {
        (0..self.n).map(|p| self.projection(p)).collect()
    }

    /// `Π[p]` as a matrix.
    fn projected<T>(proj: &[T], stride: usize) -> MatRef<'_, T> {
        MatRef::from_row_major_slice(proj, stride, proj.len() / stride)
    }

    /// `Π μ`: the mean of every row.
    pub(super) fn means(&self, mu: &Tensor) -> Vec<f64> {
        (0..self.n)
            .flat_map(|p| {
                let x = Mat::from_fn(self.w, 1, |i, _| mu.data[p * self.w + i]);
                let y = mul(
                    Side::projected(&self.projection::<f64>(p), self.stride()),
                    x.as_ref(),
                    Par::Seq,
                );
                (0..y.nrows()).map(move |r| y[(r, 0)])
            })
            .collect()
    }

    /// The combinations of a term: identity (`x̂_t`, block `t`) or active (`v` at `(u, η)`,
    /// scores at `(t, u, η)`, block `(t, η)`, weight `M[t, u]`).
    pub(super) fn combos(&self, active: bool) -> Vec<Combo> {
        if !active {
            return (0..self.n)
                .map(|t| Combo {
                    vector: self.raw(t),
                    scores: vec![],
                    query: t,
                    key: t,
                    block: t,
                })
                .collect();
        }
        let mut out = vec![];
        for t in 0..self.n {
            for head in 0..self.heads {
                for u in 0..self.n {
                    if self.weight(true, t, u) != 0.0 {
                        out.push(Combo {
                            vector: self.leg(u, head, V),
                            scores: vec![
                                [self.leg(t, head, Q1), self.leg(u, head, K1)],
                                [self.leg(t, head, Q2), self.leg(u, head, K2)],
                            ],
                            query: t,
                            key: u,
                            block: t * self.heads + head,
                        });
                    }
                }
            }
        }
        out
    }

    /// Weight of a combination at query `t` and key `u`: `M[t, u]` (active), 1 (identity).
    pub(super) fn weight(&self, active: bool, t: usize, u: usize) -> f64 {
        if active {
            self.net.mask.data[t * self.n + u]
        } else {
            1.0
        }
    }

    /// `ρ_p` on group `g` (numbered within a position) as its turns, where `g` is a query or
    /// key leg of a rotary layer.
    fn turn(&self, p: usize, g: usize) -> Option<&[(f64, f64)]> {
        let g = g % self.per();
        (g != 0 && self.role(g).1 != V)
            .then(|| self.turns.get(p).map(Vec::as_slice))
            .flatten()
    }

    /// Whether the mask keeps every combination when both its positions move back by one
    /// (`M[t, u] ≠ 0 ⇒ M[t−1, u−1] ≠ 0`): causal, full and diagonal masks do.
    pub(super) fn shift_closed(&self) -> bool {
        let (n, m) = (self.n, &self.net.mask.data);
        (1..n * n)
            .filter(|tu| tu / n > 0 && tu % n > 0 && m[*tu] != 0.0)
            .all(|tu| m[tu - n - 1] != 0.0)
    }

    /// Output map of a term at position `t`: `diag(γ)` (identity) or `[O_1 | … | O_H]` (active).
    /// In `T`, as the moments it maps (times its `c`: [`Side::unscale`]).
    pub(super) fn output_map<T: Real>(&self, active: bool) -> OutputMap<T> {
        if !active {
            return OutputMap::Diagonal(self.net.gamma.iter().map(|&g| T::of(g)).collect());
        }
        let c = self.out_scale;
        OutputMap::Dense(Mat::from_fn(self.w, self.heads * self.h, |o, e| {
            T::of(c * self.net.heads[e / self.h].o.data[o * self.h + e % self.h])
        }))
    }
}

/// `2^−round(log₂ σ)`, σ the RMS norm of the rows (of `row` entries) of `blocks`; 1 where that
/// is zero or not finite.
fn unit_scale<'t>(blocks: impl Iterator<Item = &'t [f64]>, row: usize) -> f64 {
    let (sum, count) = blocks.fold((0.0, 0), |(s, c), b| {
        (s + b.iter().map(|x| x * x).sum::<f64>(), c + b.len() / row)
    });
    let log = (0.5 * (sum / count as f64).log2()).round();
    if log.is_finite() {
        (-log).exp2()
    } else {
        1.0
    }
}

/// A term's output map `M`, diagonal or dense.
pub(super) enum OutputMap<T> {
    Diagonal(Vec<T>),
    Dense(Mat<T>),
}

impl<T: Real> OutputMap<T> {
    /// `M B`.
    pub(super) fn left(&self, b: MatRef<'_, T>) -> Mat<T> {
        match self {
            OutputMap::Diagonal(g) => Mat::from_fn(b.nrows(), b.ncols(), |i, j| g[i] * b[(i, j)]),
            OutputMap::Dense(m) => mul(m.as_ref(), b, Par::Seq),
        }
    }

    /// `B Mᵀ`.
    pub(super) fn right(&self, b: MatRef<'_, T>) -> Mat<T> {
        match self {
            OutputMap::Diagonal(g) => Mat::from_fn(b.nrows(), b.ncols(), |i, j| b[(i, j)] * g[j]),
            OutputMap::Dense(m) => mul(b, m.transpose(), Par::Seq),
        }
    }
}

/// A group of rows of one side: its first row, its index and its size.
#[derive(Clone, Copy, Default)]
pub(super) struct Leg {
    pub row: usize,
    pub group: usize,
    pub size: usize,
}

/// One term at one (head, query, key): its vector, its scores' legs, its output position (the
/// query), its key position (the query for an identity term) and block (its weight:
/// [`Side::weight`]).
pub(super) struct Combo {
    pub vector: Leg,
    pub scores: Vec<[Leg; 2]>,
    pub query: usize,
    pub key: usize,
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
/// products of `pieces.rs` read ([`Gram::view`]). Blocks that are zero (positions whose inputs
/// are independent, as before the first layer that mixes positions) or never read are not
/// stored; nor are those another stored block gives: `G[q,p] = G[p,q]ᵀ` of one side with its
/// own covariance, and `G[p,p] = ρ_p G[0,0] ρ_pᵀ` for inputs independent with one law (rotary
/// turns on query and key legs).
pub(super) struct Gram<T> {
    data: Vec<T>,
    /// Offset of block `(gx, gy)` at `gx · cols + gy`; [`ABSENT`] where it is not stored.
    at: Vec<usize>,
    cols: usize,
    /// `G = Gᵀ`: a block not stored is read as the transpose of its mirror, if that is.
    symmetric: bool,
    /// Both sides' rotations, where the parts `(p, p)`, `p > 0`, may be read turned from
    /// `(0, 0)` (shifts).
    turned: Option<[Rotation; 2]>,
}

/// The blocks of one position pair `(p, q)`: their range in `data` and their offsets.
struct Part {
    p: usize,
    q: usize,
    panels: Panels,
    data: Range<usize>,
    /// Every block `(gx, gy, offset)` of the panels in storage order.
    blocks: Vec<(usize, usize, usize)>,
}

const ABSENT: usize = usize::MAX;

/// Runs of row groups × runs of column groups (groups numbered within a position).
type Panels = Vec<[Range<usize>; 2]>;

/// A side's rotary turns by group: groups per position, whether rotary turns a group (numbered
/// within its position), the turns at every position.
struct Rotation {
    per: usize,
    turned: Vec<bool>,
    turns: Vec<Vec<(f64, f64)>>,
}

impl Rotation {
    fn of(side: &Side) -> Rotation {
        Rotation {
            per: side.per(),
            turned: (0..side.per()).map(|g| side.turn(0, g).is_some()).collect(),
            turns: side.turns.clone(),
        }
    }

    fn turn(&self, group: usize) -> Option<&[(f64, f64)]> {
        let (p, g) = (group / self.per, group % self.per);
        self.turned[g].then(|| self.turns[p].as_slice())
    }
}

/// A block as read from a [`Gram`]: a stored block (row-major), transposed or not, then turned
/// on its rows and its columns.
#[derive(Clone, Copy)]
pub(super) struct View<'a, T> {
    src: &'a [T],
    transposed: bool,
    turns: [Option<&'a [(f64, f64)]>; 2],
}

impl<'a, T: Real> View<'a, T> {
    /// The stored block itself, where it is the block read.
    pub(super) fn stored(&self) -> Option<&'a [T]> {
        (!self.transposed && self.turns.iter().all(Option::is_none)).then_some(self.src)
    }

    /// The view of the transposed block.
    pub(super) fn flipped(self) -> View<'a, T> {
        View {
            src: self.src,
            transposed: !self.transposed,
            turns: [self.turns[1], self.turns[0]],
        }
    }

    /// Write the block (`cols` columns) row-major into `dst`.
    #[inline(always)]
    pub(super) fn write(&self, cols: usize, dst: &mut [T]) {
        if self.transposed {
            transpose(self.src, dst.len() / cols, dst);
        } else {
            dst.copy_from_slice(self.src);
        }
        turn(dst, cols, self.turns[0], self.turns[1]);
    }
}

/// Which blocks of a [`Gram`] are computed and stored.
pub(super) enum Holds {
    /// One side with itself: what pairs of legs inside one combination touch, the legs of
    /// one head against the same head's (at one position all of them, across positions
    /// `(t, u)` the query legs at `t` against the key legs at `u`).
    Within,
    /// Every group of the class pairs marked at `((p·3 + c)·3n + q·3 + c')`.
    Reads(Vec<bool>),
}

impl Holds {
    /// The class pairs at positions `(p, q)` that a visited pair of combinations touches:
    /// a leg of the left one against a leg of the right one (`both`: the Gram also serves
    /// each side against itself, so any two legs of the pair). `local`: only pairs with one
    /// query are visited.
    pub(super) fn reads(x: &Side, y: &Side, local: bool, both: bool) -> Holds {
        let n = x.n;
        // Per combination its query and (position, class) legs: identity `(t, raw)`, active
        // `(t, query), (u, key)`.
        let legs = |s: &Side| {
            let active = (0..n * n)
                .filter(|&tu| s.net.mask.data[tu] != 0.0)
                .map(|tu| (tu / n, vec![(tu / n, QUERY), (tu % n, KEY)]));
            (0..n)
                .map(|t| (t, vec![(t, RAW)]))
                .chain(active)
                .collect::<Vec<_>>()
        };
        let (lx, ly) = (legs(x), legs(y));
        let mut reads = vec![false; (CLASSES * n).pow(2)];
        let mut mark = |(p, c): (usize, usize), (q, d): (usize, usize)| {
            reads[(p * CLASSES + c) * CLASSES * n + q * CLASSES + d] = true;
        };
        for (tl, l) in &lx {
            for (_, r) in ly.iter().filter(|(tr, _)| !local || tr == tl) {
                let (rows, cols) = if both {
                    let all: Vec<_> = l.iter().chain(r).copied().collect();
                    (all.clone(), all)
                } else {
                    (l.clone(), r.clone())
                };
                for &a in &rows {
                    for &b in &cols {
                        mark(a, b);
                    }
                }
            }
        }
        Holds::Reads(reads)
    }

    /// Entries of the blocks `self` names at the live position pairs: what [`Gram::new`]
    /// stores without symmetry or shifts (with them, less).
    pub(super) fn entries(&self, x: &Side, y: &Side, independent: bool) -> f64 {
        let n = x.n;
        let live = (0..n * n).filter(|pq| !independent || pq / n == pq % n);
        live.flat_map(|pq| self.panels(x, pq / n, y, pq % n, false))
            .map(|[gxs, gys]| (x.rows(&gxs).1 * y.rows(&gys).1) as f64)
            .sum()
    }
    /// The panels of positions `(p, q)`, runs of row groups × runs of column groups, those
    /// of one column run consecutive. `upper`: only row classes up to the column's (a
    /// symmetric Gram's part `(p, p)`, whose other blocks are read transposed).
    fn panels(&self, x: &Side, p: usize, y: &Side, q: usize, upper: bool) -> Panels {
        let reads = match self {
            Holds::Within => {
                // A combination's query legs sit at t, its key legs at u (M[t, u] ≠ 0): at
                // p ≠ q only query rows against key columns (M[p, q] ≠ 0) and key rows
                // against query columns (M[q, p] ≠ 0).
                let kept = |t: usize, u: usize| p == q || x.net.mask.data[t * x.n + u] != 0.0;
                let wanted = [
                    (QUERY, QUERY, p == q),
                    (KEY, QUERY, kept(q, p)),
                    (QUERY, KEY, kept(p, q)),
                    (KEY, KEY, p == q),
                ];
                return (0..x.heads)
                    .flat_map(|hd| {
                        let run = move |c: usize| match c {
                            QUERY => x.group(hd, Q1)..x.group(hd, Q2) + 1,
                            _ => x.group(hd, K1)..x.group(hd, V) + 1,
                        };
                        (wanted.into_iter())
                            .filter(move |&(r, c, keep)| keep && (!upper || r <= c))
                            .map(move |(r, c, _)| [run(r), run(c)])
                    })
                    .collect();
            }
            Holds::Reads(reads) => reads,
        };
        // The row classes read against column class `d`.
        let rows = |d: usize| -> Vec<bool> {
            (0..CLASSES)
                .map(|c| {
                    reads[(p * CLASSES + c) * CLASSES * x.n + q * CLASSES + d] && (!upper || c <= d)
                })
                .collect()
        };
        // Column classes with equal rows merged, then each run of read row classes.
        let mut out = vec![];
        let mut d = 0;
        while d < CLASSES {
            let want = rows(d);
            let end = (d + 1..CLASSES)
                .find(|&e| rows(e) != want)
                .unwrap_or(CLASSES);
            let cols = y.class(d).start..y.class(end - 1).end;
            let mut c = 0;
            while c < CLASSES {
                if want[c] {
                    let e = (c + 1..CLASSES).find(|&e| !want[e]).unwrap_or(CLASSES);
                    out.push([x.class(c).start..x.class(e - 1).end, cols.clone()]);
                    c = e;
                } else {
                    c += 1;
                }
            }
            d = end;
        }
        out
    }
}

impl<T: Real> Gram<T> {
    /// The block of row group `x` against column group `y`, or `None` where it is zero.
    pub(super) fn view(&self, x: Leg, y: Leg) -> Option<View<'_, T>> {
        let stored = |gx: usize, gy: usize| {
            let at =
                |gx: usize, gy: usize| Some(self.at[gx * self.cols + gy]).filter(|&o| o != ABSENT);
            let (src, transposed) = match at(gx, gy) {
                Some(o) => (o, false),
                None if self.symmetric => (at(gy, gx)?, true),
                None => return None,
            };
            Some(View {
                src: &self.data[src..][..x.size * y.size],
                transposed,
                turns: [None, None],
            })
        };
        if let Some(v) = stored(x.group, y.group) {
            return Some(v);
        }
        let [rx, ry] = self.turned.as_ref()?;
        let (p, q) = (x.group / rx.per, y.group / ry.per);
        if p != q || p == 0 {
            return None;
        }
        let v = stored(x.group - p * rx.per, y.group - q * ry.per)?;
        Some(View {
            turns: [rx.turn(x.group), ry.turn(y.group)],
            ..v
        })
    }

    /// The blocks `holds` names. `independent`: the covariances across positions are zero
    /// (whatever rounding left in `cov`). `symmetric`: `x` and `y` are one side and `cov` its
    /// own covariance, so `G[q,p] = G[p,q]ᵀ`: the parts `p > q` are read transposed. `shifts`:
    /// the positions are independent with one law, so the parts `(p, p)` are read turned from
    /// `(0, 0)`. `px`, `py`: both sides' [`Side::projections`] in `T`.
    pub(super) fn new(
        (x, px): (&Side, &[Vec<T>]),
        cov: &Tensor,
        (y, py): (&Side, &[Vec<T>]),
        holds: &Holds,
        independent: bool,
        symmetric: bool,
        shifts: bool,
    ) -> Gram<T> {
        let n = x.n;
        let live = |p: usize, q: usize| {
            (p == q || !independent)
                && (0..x.w * y.w)
                    .any(|ij| cov.data[((p * x.w + ij / y.w) * n + q) * y.w + ij % y.w] != 0.0)
        };
        let cols = n * y.per();
        // Every live position pair with its panels and blocks (offsets set where stored).
        let parts: Vec<Part> = (0..n * n)
            .map(|pq| (pq / n, pq % n))
            .filter(|&(p, q)| live(p, q))
            .map(|(p, q)| {
                let panels = holds.panels(x, p, y, q, symmetric && p == q);
                let blocks = (panels.iter())
                    .flat_map(|[gxs, gys]| {
                        gxs.clone()
                            .flat_map(move |gx| gys.clone().map(move |gy| (gx, gy)))
                    })
                    .map(|(gx, gy)| (p * x.per() + gx, q * y.per() + gy, ABSENT))
                    .collect();
                Part {
                    p,
                    q,
                    panels,
                    data: 0..0,
                    blocks,
                }
            })
            .filter(|part| !part.panels.is_empty())
            .collect();
        let mut named = vec![false; n * x.per() * cols];
        for &(gx, gy, _) in parts.iter().flat_map(|part| &part.blocks) {
            named[gx * cols + gy] = true;
        }
        // Parts another one gives: `p > q` of a symmetric Gram whose mirrored blocks are all
        // named, and `(p, p)` with the blocks of `(0, 0)` under shifts.
        let first = parts
            .first()
            .filter(|f| (f.p, f.q) == (0, 0))
            .map(|f| f.panels.clone());
        let given = |part: &Part| {
            let (p, q) = (part.p, part.q);
            let mirrored = symmetric
                && p > q
                && x.per() == y.per()
                && (part.blocks.iter()).all(|&(gx, gy, _)| named[gy * cols + gx]);
            let turned = shifts && p == q && p > 0 && first.as_ref() == Some(&part.panels);
            mirrored || turned
        };
        let mut stored: Vec<Part> = parts.into_iter().filter(|part| !given(part)).collect();
        let mut g = Gram {
            data: vec![],
            at: vec![ABSENT; n * x.per() * cols],
            cols,
            symmetric,
            turned: shifts.then(|| [Rotation::of(x), Rotation::of(y)]),
        };
        // Storage order: position pairs, panels, row groups, column groups.
        let mut len = 0;
        for part in &mut stored {
            let start = len;
            for (gx, gy, o) in &mut part.blocks {
                (g.at[*gx * cols + *gy], *o) = (len, len);
                len += x.size(*gx) * y.size(*gy);
            }
            part.data = start..len;
        }
        let mut data = vec![T::default(); len];
        // One position pair per task: Dᵀ = (Π_y[q] C[p,q]ᵀ) Π_x[p]ᵀ panel by panel (column `a`
        // of Dᵀ is row `a` of D, contiguous), cut into its blocks. With fewer tasks than
        // threads, the products use them.
        let par = if stored.len() < rayon::current_num_threads() {
            Par::rayon(0)
        } else {
            Par::Seq
        };
        regions(&mut data, &stored)
            .into_par_iter()
            .zip(&stored)
            .for_each_init(
                || (Mat::new(), Mat::new()),
                |(b, dt), (out, part)| {
                    let (p, q) = (part.p, part.q);
                    let c = Mat::from_fn(y.w, x.w, |j, i| {
                        T::of(cov.data[((p * x.w + i) * n + q) * y.w + j])
                    });
                    let mut blocks = part.blocks.iter();
                    let mut last = None;
                    for [gxs, gys] in &part.panels {
                        let ((r0, rn), (c0, cn)) = (x.rows(gxs), y.rows(gys));
                        // Panels of one column run are consecutive: its first product once.
                        if last != Some((c0, cn)) {
                            mul_into(
                                b,
                                Side::projected(&py[q], y.stride()).subrows(c0, cn),
                                c.as_ref(),
                                par,
                            );
                            last = Some((c0, cn));
                        }
                        let b = b.as_ref().submatrix(0, 0, cn, x.w);
                        // The raw rows of Π_x[p] are the identity: their columns of Dᵀ are B's.
                        let raw = if gxs.start == 0 { x.w } else { 0 };
                        let pt = Side::projected(&px[p], x.stride())
                            .subrows(r0 + raw, rn - raw)
                            .transpose();
                        let dt = mul_into(dt, b, pt, par);
                        let col = |i: usize| if i < raw { b.col(i) } else { dt.col(i - raw) };
                        for &(gx, gy, o) in blocks.by_ref().take(gxs.len() * gys.len()) {
                            let (hx, hy) = (x.size(gx), y.size(gy));
                            let (r, cc) = (x.first_row(gx) - r0, y.first_row(gy) - c0);
                            let dst = &mut out[o - part.data.start..][..hx * hy];
                            for a in 0..hx {
                                let col = col(r + a).try_as_col_major().expect("contiguous");
                                dst[a * hy..][..hy].copy_from_slice(&col.as_slice()[cc..][..hy]);
                            }
                        }
                    }
                },
            );
        g.data = data;
        g
    }
}

/// `dst = srcᵀ` for a row-major `src` with `cols` columns.
#[inline(always)]
fn transpose<T: Real>(src: &[T], cols: usize, dst: &mut [T]) {
    let rows = src.len() / cols;
    for (a, row) in src.chunks_exact(cols).enumerate() {
        row.iter()
            .enumerate()
            .for_each(|(e, &v)| dst[e * rows + a] = v);
    }
}

/// `ρ_r B ρ_cᵀ` in place for a row-major block `B` with `cols` columns, each rotation given by
/// its turns (`None`: the identity): coordinates `(j, j + h/2)` turned by `θ_j`.
#[inline(always)]
fn turn<T: Real>(b: &mut [T], cols: usize, rows: Option<&[(f64, f64)]>, cs: Option<&[(f64, f64)]>) {
    let narrow = |&(cos, sin): &(f64, f64)| (T::of(cos), T::of(sin));
    if let Some(t) = rows {
        turn_rows(b, cols, t);
    }
    if let Some(t) = cs {
        let half = cols / 2;
        for row in b.chunks_exact_mut(cols) {
            for (j, (cos, sin)) in t.iter().map(narrow).enumerate() {
                let (a, z) = (row[j], row[j + half]);
                row[j] = a * cos - z * sin;
                row[j + half] = z * cos + a * sin;
            }
        }
    }
}

/// `data` cut into the parts' ranges (consecutive, from 0).
fn regions<'d, T>(mut data: &'d mut [T], parts: &[Part]) -> Vec<&'d mut [T]> {
    parts
        .iter()
        .map(|part| {
            let (head, tail) = std::mem::take(&mut data).split_at_mut(part.data.len());
            data = tail;
            head
        })
        .collect()
}
