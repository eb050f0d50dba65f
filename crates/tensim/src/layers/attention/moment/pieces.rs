//! The moment of one pair of attention combinations (a left and a right one) by connected
//! pieces.
//!
//! With the scores `J` of both combinations, every Wick configuration of `v_L v_Rᵀ Π_J s` splits
//! into the path from the left vector (ending at the right vector or at a mean leg), the path
//! from the right vector, and closed pieces among the other scores:
//!
//! ```text
//! E[v_L v_Rᵀ Π_J s] = Σ_U P_LR(U)·Sc(J∖U) + Σ_{U₁∩U₂=∅} P_L(U₁)·P_R(U₂)ᵀ·Sc(J∖U₁∖U₂)
//! ```
//!
//! `P_LR(U)`: paths `v_L →` every score of `U` (any order, either orientation) `→ v_R`; `P_L(U)`:
//! paths `v_L → U →` a mean leg; `Sc(U) = E[Π_U s]` from cumulants `κ(B)` (mean-ended paths and
//! cycles through `B`). A path is a product of transfer matrices
//! `X_jk[(ℓ,e),(ℓ',e')] = C[leg ℓ of j, leg ¬ℓ' of k]` (state: the leg a score is left through,
//! and its coordinate), summed over orders by dynamic programming over subsets of `J`. One state
//! `(U, j, ℓ)` holds `d_L + 1` rows: the paths from every coordinate of `v_L`, then the path
//! from a mean leg, so that both run through one product per transfer.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

use super::blocks::{Combo, Gram, Leg, View};
#[cfg(target_arch = "x86_64")]
use crate::linalg::kernels::{self, Avx2, Avx512};
use crate::linalg::kernels::{axpy, dot, Kernel, Portable, Real};

/// Scores of a pair of combinations: two per active term, none for an identity term.
const MAX_SCORES: usize = 4;
/// Legs of a pair of combinations: both vectors and both legs of every score.
const MAX_LEGS: usize = 2 + 2 * MAX_SCORES;

/// Everything a pair of combinations reads: covariances `G_xy` (`x, y ∈ {L, R}`, indexed
/// `2x + y`; `true`: the Gram read transposed, as `G_RL = G_LRᵀ`) and the rows' means of both
/// sides.
pub(super) struct Pair<'a, T> {
    pub g: [(&'a Gram<T>, bool); 4],
    pub mu: [&'a [T]; 2],
}

/// A score: its side, its two legs and their places in the pair's [`Table`].
#[derive(Clone, Copy, Default)]
struct Atom {
    side: usize,
    legs: [Leg; 2],
    ids: [usize; 2],
}

impl Atom {
    fn h(&self) -> usize {
        self.legs[0].size
    }
}

/// Buffers of one worker, reused from one pair of combinations to the next, and what depends
/// only on the number of scores `nj`. One `Scratch` serves one [`Pair`] (its covariances).
pub(super) struct Scratch<T> {
    nj: usize,
    /// Members of every subset.
    members: Vec<Vec<usize>>,
    /// Per score, the subsets holding it.
    containing: Vec<Vec<usize>>,
    /// Index of the states `(U, j, ·)` at `U · nj + j`, subsets in increasing order (a
    /// state's sources come before it).
    index: Vec<usize>,
    cycles: Cycles,
    states: Vec<T>,
    kappa: Vec<T>,
    sc: Vec<T>,
    walks: Vec<T>,
    stack: Vec<T>,
    prod: Vec<T>,
    pl: Vec<T>,
    pr: Vec<T>,
    y: Vec<T>,
    /// The blocks of the pair's [`Table`] not stored as read (transposed or turned), those
    /// among the left combination's legs written in epoch `made_in`.
    made: Vec<T>,
    made_in: u64,
    /// States entering a score from paths through left scores only, which depend on the left
    /// combination and the leg entered alone: kept per (leg, left subset) while the left
    /// combination (`left`, its groups) stays, one after another in `entries`; `slots[key]`:
    /// the epoch a key was kept in and its place.
    entries: Vec<T>,
    slots: Vec<(u64, usize)>,
    used: usize,
    epoch: u64,
    left: Vec<usize>,
}

impl<T: Real> Scratch<T> {
    fn new(nj: usize) -> Scratch<T> {
        assert!(nj <= MAX_SCORES, "{nj} scores in a pair of combinations");
        let subsets = 1usize << nj;
        let members: Vec<Vec<usize>> = (0..subsets).map(|u| bits(u).collect()).collect();
        let containing = (0..nj)
            .map(|j| (1..subsets).filter(|u| u >> j & 1 == 1).collect())
            .collect();
        let mut index = vec![usize::MAX; subsets * nj];
        let mut count = 0;
        for (u, js) in members.iter().enumerate() {
            for &j in js {
                index[u * nj + j] = count;
                count += 1;
            }
        }
        Scratch {
            nj,
            members,
            containing,
            index,
            cycles: Cycles::new(nj),
            states: vec![],
            kappa: vec![],
            sc: vec![],
            walks: vec![],
            stack: vec![],
            prod: vec![],
            pl: vec![],
            pr: vec![],
            y: vec![],
            made: vec![],
            made_in: 0,
            entries: vec![],
            slots: vec![],
            used: 0,
            epoch: 0,
            left: vec![],
        }
    }

    /// Keep the states kept so far only if they belong to the left combination `l`.
    fn keep_for(&mut self, l: &Combo) {
        let groups = l.legs().map(|g| g.group);
        if !groups.clone().eq(self.left.iter().copied()) {
            self.left = groups.collect();
            self.epoch += 1;
            self.used = 0;
        }
    }
}

/// Scratch buffers for pairs of combinations with `nj` scores, each lent to one rayon job at
/// a time and kept between jobs, so that each grows to its working size once.
pub(super) struct Pool<T> {
    nj: usize,
    free: Mutex<Vec<Scratch<T>>>,
}

impl<T: Real> Pool<T> {
    pub(super) fn new(nj: usize) -> Pool<T> {
        Pool {
            nj,
            free: Mutex::new(vec![]),
        }
    }

    pub(super) fn take(&self) -> Lent<'_, T> {
        let free = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        Lent {
            pool: self,
            scratch: Some(free.unwrap_or_else(|| Scratch::new(self.nj))),
        }
    }
}

/// A [`Scratch`] of a [`Pool`], given back when dropped.
pub(super) struct Lent<'p, T> {
    pool: &'p Pool<T>,
    scratch: Option<Scratch<T>>,
}

impl<T> Deref for Lent<'_, T> {
    type Target = Scratch<T>;
    fn deref(&self) -> &Scratch<T> {
        self.scratch.as_ref().expect("lent until dropped")
    }
}

impl<T> DerefMut for Lent<'_, T> {
    fn deref_mut(&mut self) -> &mut Scratch<T> {
        self.scratch.as_mut().expect("lent until dropped")
    }
}

impl<T> Drop for Lent<'_, T> {
    fn drop(&mut self) {
        if let Some(s) = self.scratch.take() {
            let mut free = self
                .pool
                .free
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            free.push(s);
        }
    }
}

/// Indices of the set bits of `u`.
fn bits(u: usize) -> impl Iterator<Item = usize> {
    (0..usize::BITS as usize).filter(move |&j| u >> j & 1 == 1)
}

/// The closed pieces without a mean leg: cycles through ≥ 2 scores. A cycle through `B` is
/// the trace of the transfers around it, summed over the legs each score is left through;
/// one per undirected cycle (a cycle and its reverse have the same trace), ½ for two scores.
///
/// Three or four scores: with the walk `W(x,y,z) = Σ_ℓy X_{x,y} X_{y,z}` (two transfers), a
/// triangle is `tr(W(x,y,z) X_{z,x})` and a 4-cycle `tr(W(x,y,z) W(z,v,x))`. The six walks
/// below give the three 4-cycles through `{a,b,c,d}` (`a b c d`, `a b d c`, `a c b d`) as three
/// such pairs, and every triangle closes one of them.
struct Cycles {
    /// Pairs of scores (2-cycles).
    pairs: Vec<[usize; 2]>,
    /// Walks `[x, y, z]`; `true`: stored transposed (blocks `[ℓz, ℓx]`), so that a 4-cycle
    /// is the plain dot product of a walk and a transposed walk.
    walks: Vec<([usize; 3], bool)>,
    /// Triangles: (subset, the walk closing it).
    triangles: Vec<(usize, usize)>,
    /// 4-cycles: a walk `x → z` and a transposed walk `z → x`.
    squares: Vec<[usize; 2]>,
}

impl Cycles {
    fn new(nj: usize) -> Cycles {
        let (a, b, c, d) = (0, 1, 2, 3);
        let walks = match nj {
            3 => vec![([a, b, c], false)],
            4 => vec![
                ([b, c, d], false),
                ([d, a, b], true),
                ([a, b, d], false),
                ([d, c, a], true),
                ([a, c, b], false),
                ([b, d, a], true),
            ],
            _ => vec![],
        };
        let set = |js: &[usize]| js.iter().fold(0usize, |u, &j| u | 1 << j);
        let triangles = (0..1usize << nj)
            .filter(|u| u.count_ones() == 3)
            .map(|u| {
                let w = walks.iter().position(|(js, _)| set(js) == u);
                (u, w.expect("every triangle closes a walk"))
            })
            .collect();
        Cycles {
            pairs: (0..nj)
                .flat_map(|x| (x + 1..nj).map(move |y| [x, y]))
                .collect(),
            squares: if nj == 4 {
                vec![[0, 1], [2, 3], [4, 5]]
            } else {
                vec![]
            },
            walks,
            triangles,
        }
    }
}

/// `v[..len]`, grown as needed.
fn sized<T: Real>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// The covariances between the legs of one pair of combinations (at most [`MAX_LEGS`]: the
/// left vector, both legs of every score, the right vector), each block row-major: stored
/// blocks in place, the others (read transposed or turned) written once for the pair.
struct Table<'t, T> {
    at: [[Option<&'t [T]>; MAX_LEGS]; MAX_LEGS],
}

impl<'t, T> Table<'t, T> {
    /// Covariances of leg `i` with leg `j`, or `None` where they are zero.
    fn get(&self, i: usize, j: usize) -> Option<&'t [T]> {
        self.at[i][j]
    }

    /// Transfer from state `(k, ℓ')` into state `(j, ℓ)`: `C[leg ℓ' of k, leg ¬ℓ of j]`.
    fn step(
        &self,
        atoms: &[Atom],
        (k, lk): (usize, usize),
        (j, lg): (usize, usize),
    ) -> Option<&'t [T]> {
        self.get(atoms[k].ids[lk], atoms[j].ids[1 - lg])
    }

    /// The transpose of that transfer.
    fn mirror(
        &self,
        atoms: &[Atom],
        (k, lk): (usize, usize),
        (j, lg): (usize, usize),
    ) -> Option<&'t [T]> {
        self.get(atoms[j].ids[1 - lg], atoms[k].ids[lk])
    }
}

impl<T: Real> Pair<'_, T> {
    /// Covariances of group `x` (side `sx`) with group `y` (side `sy`), or `None` where they
    /// are zero.
    fn view(&self, sx: usize, x: Leg, sy: usize, y: Leg) -> Option<View<'_, T>> {
        match self.g[2 * sx + sy] {
            (g, false) => g.view(x, y),
            (g, true) => g.view(y, x).map(View::flipped),
        }
    }

    fn mean(&self, side: usize, x: Leg) -> &[T] {
        &self.mu[side][x.row..][..x.size]
    }

    /// The [`Table`] of `legs` (side, leg), except the blocks out of leg `skip` (a vector no
    /// product leaves); the blocks not stored as read go to `made`, those among the first
    /// `left` legs first (`kept`: they are there already, from the same left legs).
    #[inline(always)]
    fn table<'t>(
        &'t self,
        legs: &[(usize, Leg)],
        skip: Option<usize>,
        (left, kept): (usize, bool),
        made: &'t mut Vec<T>,
    ) -> Table<'t, T> {
        let mut views = [[None; MAX_LEGS]; MAX_LEGS];
        let mut len = 0;
        for (i, &(sx, x)) in legs.iter().enumerate().filter(|&(i, _)| Some(i) != skip) {
            for (j, &(sy, y)) in legs.iter().enumerate().filter(|&(j, _)| j != i) {
                let v = self.view(sx, x, sy, y);
                if v.is_some_and(|v| v.stored().is_none()) {
                    len += x.size * y.size;
                }
                views[i][j] = v;
            }
        }
        let made = sized(made, len);
        let mut offsets = [[0; MAX_LEGS]; MAX_LEGS];
        let mut end = 0;
        let n = legs.len();
        let among_left = |i: usize, j: usize| i < left && j < left;
        let order = (0..n * n).map(|ij| (ij / n, ij % n));
        let order = (order.clone().filter(|&(i, j)| among_left(i, j)))
            .chain(order.filter(|&(i, j)| !among_left(i, j)));
        for (i, j) in order {
            if let Some(v) = views[i][j].filter(|v| v.stored().is_none()) {
                let (rows, cols) = (legs[i].1.size, legs[j].1.size);
                if !(kept && among_left(i, j)) {
                    v.write(cols, &mut made[end..][..rows * cols]);
                }
                offsets[i][j] = end;
                end += rows * cols;
            }
        }
        let made: &'t [T] = made;
        let mut at = [[None; MAX_LEGS]; MAX_LEGS];
        for (i, row) in views.iter().enumerate().take(legs.len()) {
            for (j, v) in row.iter().enumerate().take(legs.len()) {
                let size = legs[i].1.size * legs[j].1.size;
                at[i][j] =
                    v.map(|v| (v.stored()).unwrap_or_else(|| &made[offsets[i][j]..][..size]));
            }
        }
        Table { at }
    }

    /// The same covariances and means with the sides swapped.
    pub(super) fn mirrored(&self) -> Pair<'_, T> {
        let g = self.g;
        Pair {
            g: [g[3], g[2], g[1], g[0]],
            mu: [self.mu[1], self.mu[0]],
        }
    }

    /// Whether any leg of `l` has a covariance with any leg of `r` (else the moment of the pair
    /// is the product of their means).
    pub(super) fn connected(&self, l: &Combo, r: &Combo) -> bool {
        l.legs()
            .any(|x| r.legs().any(|y| self.view(0, x, 1, y).is_some()))
    }

    /// `E[v_L v_Rᵀ Π s]` (`dl × dr`, row-major) for one left and one right combination; with
    /// no right one, the left one's mean `E[v_L Π s]` (`dl × 1`).
    pub(super) fn moment(
        &self,
        l: &Combo,
        r: Option<&Combo>,
        dims: (usize, usize),
        ws: &mut Scratch<T>,
    ) -> Vec<T> {
        #[cfg(target_arch = "x86_64")]
        if kernels::avx512() {
            // SAFETY: the CPU has the features this copy is compiled for.
            return unsafe { self.moment_avx512(l, r, dims, ws) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features this copy is compiled for.
            return unsafe { self.moment_avx2(l, r, dims, ws) };
        }
        self.moment_any::<Portable>(l, r, dims, ws)
    }

    /// [`Pair::moment`] compiled for AVX2 (its small products vectorise 4 wide).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn moment_avx2(
        &self,
        l: &Combo,
        r: Option<&Combo>,
        dims: (usize, usize),
        ws: &mut Scratch<T>,
    ) -> Vec<T> {
        self.moment_any::<Avx2>(l, r, dims, ws)
    }

    /// [`Pair::moment`] compiled for AVX-512 (8 wide, 32 vector registers).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn moment_avx512(
        &self,
        l: &Combo,
        r: Option<&Combo>,
        dims: (usize, usize),
        ws: &mut Scratch<T>,
    ) -> Vec<T> {
        self.moment_any::<Avx512>(l, r, dims, ws)
    }

    #[inline(always)]
    fn moment_any<M: Kernel>(
        &self,
        l: &Combo,
        r: Option<&Combo>,
        (dl, dr): (usize, usize),
        ws: &mut Scratch<T>,
    ) -> Vec<T> {
        // The right vector: a group of side 1, or the constant 1 (no covariances, mean 1).
        let rv = r.map(|r| r.vector);
        let right_scores = r.map_or(&[][..], |r| &r.scores[..]);
        // Scores: left ones first (side 0), then right ones (side 1). Legs: the left vector,
        // the scores' legs, the right vector.
        let nj = ws.nj;
        debug_assert_eq!(nj, l.scores.len() + right_scores.len());
        let mut atoms = [Atom::default(); MAX_SCORES];
        let mut legs = [(0, Leg::default()); MAX_LEGS];
        legs[0] = (0, l.vector);
        let scores = (l.scores.iter().map(|&s| (0, s))).chain(right_scores.iter().map(|&s| (1, s)));
        for (j, (side, pair)) in scores.enumerate() {
            let ids = [1 + 2 * j, 2 + 2 * j];
            atoms[j] = Atom {
                side,
                legs: pair,
                ids,
            };
            (legs[ids[0]], legs[ids[1]]) = ((side, pair[0]), (side, pair[1]));
        }
        let (atoms, rv_id) = (&atoms[..nj], 1 + 2 * nj);
        let nlegs = match rv {
            Some(v) => {
                legs[rv_id] = (1, v);
                rv_id + 1
            }
            None => rv_id,
        };
        let (nl, full) = (l.scores.len(), (1usize << nj) - 1);
        ws.keep_for(l);
        let rows = dl + 1;
        let size = rows * atoms.iter().map(Atom::h).max().unwrap_or(0);
        let Scratch {
            members,
            containing,
            index,
            cycles,
            states,
            kappa,
            sc,
            walks,
            stack,
            prod,
            pl,
            pr,
            y,
            made,
            made_in,
            entries,
            slots,
            used,
            epoch,
            ..
        } = ws;
        let left = (1 + 2 * nl, *made_in == *epoch);
        *made_in = *epoch;
        let tab = self.table(&legs[..nlegs], Some(rv_id), left, made);
        let to_rv = |id: usize| rv.and_then(|_| tab.get(id, rv_id));
        let slot = |u: usize, j: usize, lg: usize| (index[u * nj + j] * 2 + lg) * size;
        let mean = |j: usize, lg: usize| self.mean(atoms[j].side, atoms[j].legs[lg]);
        // Σ_U |U| = nj·2^(nj−1) states, two leg orientations each.
        let states = sized(states, (nj << nj) * size);

        // Single scores U = {k} entered through leg ¬ℓ: rows C[v_L, leg ¬ℓ of k], then μ.
        for (k, a) in atoms.iter().enumerate() {
            for lk in 0..2 {
                let h = a.h();
                let dst = &mut states[slot(1 << k, k, lk)..][..rows * h];
                match tab.get(0, a.ids[1 - lk]) {
                    Some(b) => dst[..dl * h].copy_from_slice(b),
                    None => dst[..dl * h].fill(T::default()),
                }
                dst[dl * h..].copy_from_slice(mean(k, 1 - lk));
            }
        }
        // Forward over subsets: state (U, j, ℓ) = Σ_{k ∈ U∖j, ℓ'} state(U∖j, k, ℓ') X_{(k,ℓ'),(j,ℓ)}.
        for u in 1..=full {
            if u.count_ones() < 2 {
                continue;
            }
            for &j in &members[u] {
                let rest = u & !(1 << j);
                let h = atoms[j].h();
                // Any score j after left scores only: kept per (entered leg and its side, rest).
                let kept = rest >> nl == 0;
                for lg in 0..2 {
                    let (src, dst) = states.split_at_mut(slot(u, j, lg));
                    let key = if kept {
                        let leg = atoms[j].legs[1 - lg].group << 1 | atoms[j].side;
                        let key = leg << nl | rest;
                        if key >= slots.len() {
                            slots.resize(key + 1, (0, 0));
                        }
                        if slots[key].0 == *epoch {
                            let at = slots[key].1 * size;
                            dst[..rows * h].copy_from_slice(&entries[at..][..rows * h]);
                            continue;
                        }
                        Some(key)
                    } else {
                        None
                    };
                    let mut terms: [(&[T], usize, &[T]); 2 * MAX_SCORES] =
                        [(&[], 0, &[]); 2 * MAX_SCORES];
                    let mut nt = 0;
                    for &k in &members[rest] {
                        for lk in 0..2 {
                            if let Some(x) = tab.step(atoms, (k, lk), (j, lg)) {
                                let hk = atoms[k].h();
                                terms[nt] = (&src[slot(rest, k, lk)..][..rows * hk], hk, x);
                                nt += 1;
                            }
                        }
                    }
                    M::gemm_sum(rows, h, &terms[..nt], &mut dst[..rows * h]);
                    if let Some(key) = key {
                        let e = sized(entries, (*used + 1) * size);
                        e[*used * size..][..rows * h].copy_from_slice(&dst[..rows * h]);
                        slots[key] = (*epoch, *used);
                        *used += 1;
                    }
                }
            }
        }
        let states: &[T] = states;
        let fm = |u: usize, j: usize, lg: usize| {
            &states[slot(u, j, lg) + dl * atoms[j].h()..][..atoms[j].h()]
        };

        // Cumulants κ(B): a score alone E[s] = tr C_ab + μ_a·μ_b; otherwise mean-ended paths
        // ½ Σ_{j,ℓ} μ(j,ℓ)·fm(B,j,ℓ) plus cycles. Then moments Sc(U) = Σ_{B∋min U} κ(B) Sc(U∖B).
        let (zero, half) = (T::default(), T::of(0.5));
        let kappa = sized(kappa, full + 1);
        kappa.fill(zero);
        for (u, kap) in kappa.iter_mut().enumerate().skip(1) {
            if u.count_ones() == 1 {
                let j = u.trailing_zeros() as usize;
                let (a, h) = (atoms[j], atoms[j].h());
                let tr = (tab.get(a.ids[0], a.ids[1]))
                    .map_or(zero, |g| (0..h).map(|e| g[e * h + e]).sum());
                *kap = tr + dot::<M, T>(mean(j, 0), mean(j, 1));
            } else {
                *kap = half
                    * members[u]
                        .iter()
                        .flat_map(|&j| (0..2).map(move |lg| (j, lg)))
                        .map(|(j, lg)| dot::<M, T>(mean(j, lg), fm(u, j, lg)))
                        .sum::<T>();
            }
        }
        Self::cycles::<M>(&tab, cycles, atoms, kappa, walks);
        let sc = sized(sc, full + 1);
        sc.fill(zero);
        sc[0] = T::of(1.0);
        for u in 1..=full {
            let low = u & u.wrapping_neg();
            let rest = u ^ low;
            let mut sub = rest;
            loop {
                let b = low | sub;
                let add = kappa[b] * sc[u & !b];
                sc[u] += add;
                if sub == 0 {
                    break;
                }
                sub = (sub - 1) & rest;
            }
        }

        // Connected: Sc(J)·C_LR + Σ_{j,ℓ} (Σ_{U∋j} Sc(J∖U) am(U,j,ℓ)) · C[leg ℓ of j, v_R];
        // with them P_R(U) = Σ fm(U,j,ℓ)ᵀ C[leg ℓ of j, v_R] and P_L(U) = Σ fm(U,j,ℓ)ᵀ C[leg ℓ
        // of j, v_L] (P(∅): the vectors' means).
        let mut out = vec![zero; dl * dr];
        if let Some(c) = to_rv(0) {
            out.iter_mut().zip(c).for_each(|(o, c)| *o = sc[full] * c);
        }
        let pl = sized(pl, (full + 1) * dl);
        pl.fill(zero);
        pl[..dl].copy_from_slice(self.mean(0, l.vector));
        let pr = sized(pr, (full + 1) * dr);
        pr.fill(zero);
        match rv {
            Some(v) => pr[..dr].copy_from_slice(self.mean(1, v)),
            None => pr[0] = T::of(1.0),
        }
        for (j, a) in atoms.iter().enumerate() {
            let (h, sets) = (a.h(), &containing[j]);
            for lg in 0..2 {
                let to_r = to_rv(a.ids[lg]);
                let to_l = tab.get(a.ids[lg], 0);
                if to_r.is_none() && to_l.is_none() {
                    continue;
                }
                // Rows: Σ_{U∋j} Sc(J∖U) am(U,j,ℓ), then fm(U,j,ℓ) for every U ∋ j.
                let st = sized(stack, (dl + sets.len()) * h);
                st[..dl * h].fill(zero);
                for (i, &u) in sets.iter().enumerate() {
                    let s = &states[slot(u, j, lg)..][..rows * h];
                    let f = sc[full & !u];
                    axpy(&mut st[..dl * h], f, s);
                    st[(dl + i) * h..][..h].copy_from_slice(&s[dl * h..]);
                }
                if let Some(w) = to_r {
                    let p = sized(prod, (dl + sets.len()) * dr);
                    M::gemm_sum(dl + sets.len(), dr, &[(st, h, w)], p);
                    axpy(&mut out, T::of(1.0), &p[..dl * dr]);
                    for (i, &u) in sets.iter().enumerate() {
                        axpy(&mut pr[u * dr..][..dr], T::of(1.0), &p[(dl + i) * dr..]);
                    }
                }
                if let Some(v) = to_l {
                    let p = sized(prod, sets.len() * dl);
                    M::gemm_sum(sets.len(), dl, &[(&st[dl * h..], h, v)], p);
                    for (i, &u) in sets.iter().enumerate() {
                        axpy(&mut pl[u * dl..][..dl], T::of(1.0), &p[i * dl..]);
                    }
                }
            }
        }
        // Disconnected: P_L(U₁) ⊗ Σ_{U₂ ⊆ J∖U₁} P_R(U₂)·Sc(J∖U₁∖U₂).
        let y = sized(y, dr);
        for u1 in 0..=full {
            let free = full & !u1;
            y.fill(zero);
            let mut u2 = free;
            loop {
                axpy(y, sc[free & !u2], &pr[u2 * dr..]);
                if u2 == 0 {
                    break;
                }
                u2 = (u2 - 1) & free;
            }
            for (i, &x) in pl[u1 * dl..][..dl].iter().enumerate() {
                axpy(&mut out[i * dr..][..dr], x, y);
            }
        }
        out
    }

    /// `κ(B) += ` every cycle through `B` (see [`Cycles`]); `tr(P Q) = ⟨P, Qᵀ⟩` throughout.
    #[inline(always)]
    fn cycles<M: Kernel>(
        tab: &Table<'_, T>,
        plan: &Cycles,
        atoms: &[Atom],
        kappa: &mut [T],
        buf: &mut Vec<T>,
    ) {
        let hm = atoms.iter().map(Atom::h).max().unwrap_or(0);
        let block = 4 * hm * hm;
        let dot_opt = |p: &[T], q: Option<&[T]>| q.map_or(T::default(), |q| dot::<M, T>(p, q));
        for &[x, y] in &plan.pairs {
            let mut t = T::default();
            for (lx, ly) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                if let Some(p) = tab.step(atoms, (x, lx), (y, ly)) {
                    t += dot_opt(p, tab.mirror(atoms, (y, ly), (x, lx)));
                }
            }
            kappa[1 << x | 1 << y] += T::of(0.5) * t;
        }
        // Block (ℓ₁, ℓ₂) of walk `w` (its first and last state's legs, swapped if transposed).
        let at = |w: usize, l1: usize, l2: usize| (w * 4 + 2 * l1 + l2) * hm * hm;
        let buf = sized(buf, plan.walks.len() * block);
        for (w, &([x, y, z], transposed)) in plan.walks.iter().enumerate() {
            let (hx, hy, hz) = (atoms[x].h(), atoms[y].h(), atoms[z].h());
            for (lx, lz) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let mut terms: [(&[T], usize, &[T]); 2] = [(&[], 0, &[]); 2];
                let mut nt = 0;
                for ly in 0..2 {
                    let (a, b) = if transposed {
                        (
                            tab.mirror(atoms, (y, ly), (z, lz)),
                            tab.mirror(atoms, (x, lx), (y, ly)),
                        )
                    } else {
                        (
                            tab.step(atoms, (x, lx), (y, ly)),
                            tab.step(atoms, (y, ly), (z, lz)),
                        )
                    };
                    if let (Some(a), Some(b)) = (a, b) {
                        terms[nt] = (a, hy, b);
                        nt += 1;
                    }
                }
                let (o, (m, n)) = if transposed {
                    (at(w, lz, lx), (hz, hx))
                } else {
                    (at(w, lx, lz), (hx, hz))
                };
                M::gemm_sum(m, n, &terms[..nt], &mut buf[o..][..m * n]);
            }
        }
        for &(u, w) in &plan.triangles {
            let ([x, _, z], transposed) = plan.walks[w];
            let size = atoms[x].h() * atoms[z].h();
            let mut t = T::default();
            for (lx, lz) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                // tr(W[ℓx,ℓz] X_{(z,ℓz),(x,ℓx)}).
                t += if transposed {
                    dot_opt(
                        &buf[at(w, lz, lx)..][..size],
                        tab.step(atoms, (z, lz), (x, lx)),
                    )
                } else {
                    dot_opt(
                        &buf[at(w, lx, lz)..][..size],
                        tab.mirror(atoms, (z, lz), (x, lx)),
                    )
                };
            }
            kappa[u] += t;
        }
        for &[w1, w2] in &plan.squares {
            let ([x, _, z], _) = plan.walks[w1];
            let size = atoms[x].h() * atoms[z].h();
            kappa[kappa.len() - 1] += (0..4)
                .map(|l| {
                    dot::<M, T>(
                        &buf[at(w1, l / 2, l % 2)..][..size],
                        &buf[at(w2, l / 2, l % 2)..][..size],
                    )
                })
                .sum::<T>();
        }
    }
}
