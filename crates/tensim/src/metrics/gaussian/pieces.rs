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

use super::attention::{Combo, Gram, Leg};

/// Scores of a pair of combinations: two per active term, none for an identity term.
const MAX_SCORES: usize = 4;

/// Everything a pair of combinations reads: covariances `G_xy` (`x, y ∈ {L, R}`, indexed
/// `2x + y`) and the rows' means of both sides.
pub(super) struct Pair<'a> {
    pub g: [&'a Gram; 4],
    pub mu: [&'a [f64]; 2],
}

/// A score: its side and its two legs.
#[derive(Clone, Copy, Default)]
struct Atom {
    side: usize,
    legs: [Leg; 2],
}

impl Atom {
    fn h(&self) -> usize {
        self.legs[0].size
    }
}

/// Buffers of one worker, reused from one pair of combinations to the next, and what depends
/// only on the number of scores `nj`.
pub(super) struct Scratch {
    nj: usize,
    /// Members of every subset.
    members: Vec<Vec<usize>>,
    /// Per score, the subsets holding it.
    containing: Vec<Vec<usize>>,
    /// Index of the states `(U, j, ·)` at `U · nj + j`, subsets in increasing order (a
    /// state's sources come before it).
    index: Vec<usize>,
    cycles: Vec<(usize, Vec<usize>, f64)>,
    states: Vec<f64>,
    kappa: Vec<f64>,
    sc: Vec<f64>,
    chain: Vec<f64>,
    next: Vec<f64>,
    stack: Vec<f64>,
    prod: Vec<f64>,
    pl: Vec<f64>,
    pr: Vec<f64>,
    y: Vec<f64>,
}

impl Scratch {
    pub(super) fn new(nj: usize) -> Scratch {
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
            cycles: cycle_orders(nj),
            states: vec![],
            kappa: vec![],
            sc: vec![],
            chain: vec![],
            next: vec![],
            stack: vec![],
            prod: vec![],
            pl: vec![],
            pr: vec![],
            y: vec![],
        }
    }
}

/// Indices of the set bits of `u`.
fn bits(u: usize) -> impl Iterator<Item = usize> {
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
        let js: Vec<usize> = bits(u).collect();
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

/// `v[..len]`, grown as needed.
fn sized(v: &mut Vec<f64>, len: usize) -> &mut [f64] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

impl Pair<'_> {
    /// Covariances of group `x` (side `sx`) with group `y` (side `sy`), row-major, or `None`
    /// where they are zero.
    fn blk(&self, sx: usize, x: Leg, sy: usize, y: Leg) -> Option<&[f64]> {
        self.g[2 * sx + sy].block(x, y)
    }

    fn mean(&self, side: usize, x: Leg) -> &[f64] {
        &self.mu[side][x.row..][..x.size]
    }

    /// Transfer from state `(k, ℓ')` into state `(j, ℓ)`: `C[leg ℓ' of k, leg ¬ℓ of j]`.
    fn step(
        &self,
        atoms: &[Atom],
        (k, lk): (usize, usize),
        (j, lg): (usize, usize),
    ) -> Option<&[f64]> {
        let (a, b) = (atoms[k], atoms[j]);
        self.blk(a.side, a.legs[lk], b.side, b.legs[1 - lg])
    }

    /// `E[v_L v_Rᵀ Π s]` (`dl × dr`, row-major) for one left and one right combination.
    pub(super) fn moment(
        &self,
        l: &Combo,
        r: &Combo,
        dims: (usize, usize),
        ws: &mut Scratch,
    ) -> Vec<f64> {
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
        r: &Combo,
        dims: (usize, usize),
        ws: &mut Scratch,
    ) -> Vec<f64> {
        self.moment_any::<Avx2>(l, r, dims, ws)
    }

    #[inline(always)]
    fn moment_any<M: Kernel>(
        &self,
        l: &Combo,
        r: &Combo,
        (dl, dr): (usize, usize),
        ws: &mut Scratch,
    ) -> Vec<f64> {
        // Scores: left ones first (side 0), then right ones (side 1).
        let nj = ws.nj;
        debug_assert_eq!(nj, l.scores.len() + r.scores.len());
        let mut atoms = [Atom::default(); MAX_SCORES];
        let scores = (l.scores.iter().map(|&s| (0, s))).chain(r.scores.iter().map(|&s| (1, s)));
        for (j, (side, legs)) in scores.enumerate() {
            atoms[j] = Atom { side, legs };
        }
        let atoms = &atoms[..nj];
        let full = (1usize << nj) - 1;
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
            chain,
            next,
            stack,
            prod,
            pl,
            pr,
            y,
            ..
        } = ws;
        let slot = |u: usize, j: usize, lg: usize| (index[u * nj + j] * 2 + lg) * size;
        let mean = |j: usize, lg: usize| self.mean(atoms[j].side, atoms[j].legs[lg]);
        // Σ_U |U| = nj·2^(nj−1) states, two leg orientations each.
        let states = sized(states, (nj << nj) * size);

        // Single scores U = {k} entered through leg ¬ℓ: rows C[v_L, leg ¬ℓ of k], then μ.
        for (k, a) in atoms.iter().enumerate() {
            for lk in 0..2 {
                let h = a.h();
                let dst = &mut states[slot(1 << k, k, lk)..][..rows * h];
                match self.blk(0, l.vector, a.side, a.legs[1 - lk]) {
                    Some(b) => dst[..dl * h].copy_from_slice(b),
                    None => dst[..dl * h].fill(0.0),
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
                for lg in 0..2 {
                    let (src, dst) = states.split_at_mut(slot(u, j, lg));
                    let mut terms: [(&[f64], usize, &[f64]); 2 * MAX_SCORES] =
                        [(&[], 0, &[]); 2 * MAX_SCORES];
                    let mut nt = 0;
                    for &k in &members[rest] {
                        for lk in 0..2 {
                            if let Some(x) = self.step(atoms, (k, lk), (j, lg)) {
                                let hk = atoms[k].h();
                                terms[nt] = (&src[slot(rest, k, lk)..][..rows * hk], hk, x);
                                nt += 1;
                            }
                        }
                    }
                    M::gemm_sum(rows, h, &terms[..nt], &mut dst[..rows * h]);
                }
            }
        }
        let states: &[f64] = states;
        let fm = |u: usize, j: usize, lg: usize| {
            &states[slot(u, j, lg) + dl * atoms[j].h()..][..atoms[j].h()]
        };

        // Cumulants κ(B): a score alone E[s] = tr C_ab + μ_a·μ_b; otherwise mean-ended paths
        // ½ Σ_{j,ℓ} μ(j,ℓ)·fm(B,j,ℓ) plus cycles. Then moments Sc(U) = Σ_{B∋min U} κ(B) Sc(U∖B).
        let kappa = sized(kappa, full + 1);
        kappa.fill(0.0);
        for (u, kap) in kappa.iter_mut().enumerate().skip(1) {
            if u.count_ones() == 1 {
                let j = u.trailing_zeros() as usize;
                let (a, h) = (atoms[j], atoms[j].h());
                let tr = self
                    .blk(a.side, a.legs[0], a.side, a.legs[1])
                    .map_or(0.0, |g| (0..h).map(|e| g[e * h + e]).sum());
                *kap = tr + dot(mean(j, 0), mean(j, 1));
            } else {
                *kap = 0.5
                    * members[u]
                        .iter()
                        .flat_map(|&j| (0..2).map(move |lg| (j, lg)))
                        .map(|(j, lg)| dot(mean(j, lg), fm(u, j, lg)))
                        .sum::<f64>();
            }
        }
        for (u, order, weight) in cycles.iter() {
            kappa[*u] += weight * self.cycle_trace::<M>(order, atoms, (chain, next));
        }
        let sc = sized(sc, full + 1);
        sc.fill(0.0);
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

        // Connected: Sc(J)·C_LR + Σ_{j,ℓ} (Σ_{U∋j} Sc(J∖U) am(U,j,ℓ)) · C[leg ℓ of j, v_R];
        // with them P_R(U) = Σ fm(U,j,ℓ)ᵀ C[leg ℓ of j, v_R] and P_L(U) = Σ fm(U,j,ℓ)ᵀ C[leg ℓ
        // of j, v_L] (P(∅): the vectors' means).
        let mut out = vec![0.0; dl * dr];
        if let Some(c) = self.blk(0, l.vector, 1, r.vector) {
            out.iter_mut().zip(c).for_each(|(o, c)| *o = sc[full] * c);
        }
        let pl = sized(pl, (full + 1) * dl);
        pl.fill(0.0);
        pl[..dl].copy_from_slice(self.mean(0, l.vector));
        let pr = sized(pr, (full + 1) * dr);
        pr.fill(0.0);
        pr[..dr].copy_from_slice(self.mean(1, r.vector));
        for (j, a) in atoms.iter().enumerate() {
            let (h, sets) = (a.h(), &containing[j]);
            for lg in 0..2 {
                let to_r = self.blk(a.side, a.legs[lg], 1, r.vector);
                let to_l = self.blk(a.side, a.legs[lg], 0, l.vector);
                if to_r.is_none() && to_l.is_none() {
                    continue;
                }
                // Rows: Σ_{U∋j} Sc(J∖U) am(U,j,ℓ), then fm(U,j,ℓ) for every U ∋ j.
                let st = sized(stack, (dl + sets.len()) * h);
                st[..dl * h].fill(0.0);
                for (i, &u) in sets.iter().enumerate() {
                    let s = &states[slot(u, j, lg)..][..rows * h];
                    let f = sc[full & !u];
                    axpy(&mut st[..dl * h], f, s);
                    st[(dl + i) * h..][..h].copy_from_slice(&s[dl * h..]);
                }
                if let Some(w) = to_r {
                    let p = sized(prod, (dl + sets.len()) * dr);
                    M::gemm_sum(dl + sets.len(), dr, &[(st, h, w)], p);
                    axpy(&mut out, 1.0, &p[..dl * dr]);
                    for (i, &u) in sets.iter().enumerate() {
                        axpy(&mut pr[u * dr..][..dr], 1.0, &p[(dl + i) * dr..]);
                    }
                }
                if let Some(v) = to_l {
                    let p = sized(prod, sets.len() * dl);
                    M::gemm_sum(sets.len(), dl, &[(&st[dl * h..], h, v)], p);
                    for (i, &u) in sets.iter().enumerate() {
                        axpy(&mut pl[u * dl..][..dl], 1.0, &p[i * dl..]);
                    }
                }
            }
        }
        // Disconnected: P_L(U₁) ⊗ Σ_{U₂ ⊆ J∖U₁} P_R(U₂)·Sc(J∖U₁∖U₂).
        let y = sized(y, dr);
        for u1 in 0..=full {
            let free = full & !u1;
            y.fill(0.0);
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

    /// `tr(X_{o₀o₁} X_{o₁o₂} ⋯ X_{o_k o₀})` over states (score, leg left through).
    #[inline(always)]
    fn cycle_trace<M: Kernel>(
        &self,
        order: &[usize],
        atoms: &[Atom],
        (chain, next): (&mut Vec<f64>, &mut Vec<f64>),
    ) -> f64 {
        let (first, last) = (order[0], order[order.len() - 1]);
        let hf = atoms[first].h();
        let hmax = atoms.iter().map(Atom::h).max().unwrap_or(0);
        let mut total = 0.0;
        for l0 in 0..2 {
            if order.len() == 2 {
                for l1 in 0..2 {
                    let there = self.step(atoms, (first, l0), (last, l1));
                    let back = self.step(atoms, (last, l1), (first, l0));
                    if let (Some(a), Some(b)) = (there, back) {
                        total += trace_prod(hf, atoms[last].h(), a, b);
                    }
                }
                continue;
            }
            // chain[ℓ]: products from state (first, l0) to state (current score, ℓ).
            let (o1, o2) = (order[1], order[2]);
            let c = sized(chain, 2 * hf * hmax);
            for l2 in 0..2 {
                let mut terms: [(&[f64], usize, &[f64]); 2] = [(&[], 0, &[]); 2];
                let mut nt = 0;
                for l1 in 0..2 {
                    let a = self.step(atoms, (first, l0), (o1, l1));
                    let b = self.step(atoms, (o1, l1), (o2, l2));
                    if let (Some(a), Some(b)) = (a, b) {
                        terms[nt] = (a, atoms[o1].h(), b);
                        nt += 1;
                    }
                }
                M::gemm_sum(
                    hf,
                    atoms[o2].h(),
                    &terms[..nt],
                    &mut c[l2 * hf * hmax..][..hf * atoms[o2].h()],
                );
            }
            for w in order[2..].windows(2) {
                let (cur, nxt) = (w[0], w[1]);
                let (hc, hn) = (atoms[cur].h(), atoms[nxt].h());
                let n = sized(next, 2 * hf * hmax);
                for ln in 0..2 {
                    let mut terms: [(&[f64], usize, &[f64]); 2] = [(&[], 0, &[]); 2];
                    let mut nt = 0;
                    for lc in 0..2 {
                        if let Some(b) = self.step(atoms, (cur, lc), (nxt, ln)) {
                            terms[nt] = (&chain[lc * hf * hmax..][..hf * hc], hc, b);
                            nt += 1;
                        }
                    }
                    M::gemm_sum(hf, hn, &terms[..nt], &mut n[ln * hf * hmax..][..hf * hn]);
                }
                std::mem::swap(chain, next);
            }
            for ll in 0..2 {
                if let Some(b) = self.step(atoms, (last, ll), (first, l0)) {
                    let hl = atoms[last].h();
                    total += trace_prod(hf, hl, &chain[ll * hf * hmax..][..hf * hl], b);
                }
            }
        }
        total
    }
}

/// The small products of [`Pair::moment`]: portable, or AVX2 + FMA.
trait Kernel {
    fn mul_add(acc: f64, x: f64, y: f64) -> f64;

    /// `c (m×n) = Σ_t a_t (m×k_t) · b_t (k_t×n)` over terms `(a_t, k_t, b_t)`, every matrix
    /// contiguous and row-major; zero for no terms.
    fn gemm_sum(m: usize, n: usize, terms: &[(&[f64], usize, &[f64])], c: &mut [f64]);
}

struct Portable;

impl Kernel for Portable {
    #[inline(always)]
    fn mul_add(acc: f64, x: f64, y: f64) -> f64 {
        acc + x * y
    }

    #[inline(always)]
    fn gemm_sum(m: usize, n: usize, terms: &[(&[f64], usize, &[f64])], c: &mut [f64]) {
        columns::<Self>(0, m, n, terms, c);
    }
}

/// Columns `j0..n` of [`Kernel::gemm_sum`], one dot product per entry.
#[inline(always)]
fn columns<K: Kernel>(
    j0: usize,
    m: usize,
    n: usize,
    terms: &[(&[f64], usize, &[f64])],
    c: &mut [f64],
) {
    for j in j0..n {
        for i in 0..m {
            let mut s = 0.0;
            for &(a, k, b) in terms {
                for p in 0..k {
                    s = K::mul_add(s, a[i * k + p], b[p * n + j]);
                }
            }
            c[i * n + j] = s;
        }
    }
}

/// Only used inside [`Pair::moment_avx2`], on a CPU with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx2 {
    #[inline(always)]
    fn mul_add(acc: f64, x: f64, y: f64) -> f64 {
        x.mul_add(y, acc)
    }

    /// Panels of 16 columns in 2-row tiles, of 8 in 4-row tiles (each tile's accumulators
    /// fill the vector registers), then single columns.
    #[inline(always)]
    fn gemm_sum(m: usize, n: usize, terms: &[(&[f64], usize, &[f64])], c: &mut [f64]) {
        let mut j = 0;
        // SAFETY: the CPU has AVX2 and FMA (see the type).
        unsafe {
            while j + 16 <= n {
                avx2::panel::<2, 4>(j, (m, n), terms, c);
                j += 16;
            }
            while j + 8 <= n {
                avx2::panel::<4, 2>(j, (m, n), terms, c);
                j += 8;
            }
        }
        columns::<Self>(j, m, n, terms, c);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{__m256d, _mm256_fmadd_pd, _mm256_loadu_pd, _mm256_set1_pd};
    use std::arch::x86_64::{_mm256_setzero_pd, _mm256_storeu_pd};

    /// Columns `j..j+4Q` of `gemm_sum` in `R × 4Q` tiles (single rows at the end).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn panel<const R: usize, const Q: usize>(
        j: usize,
        (m, n): (usize, usize),
        terms: &[(&[f64], usize, &[f64])],
        c: &mut [f64],
    ) {
        let mut i = 0;
        while i + R <= m {
            tile::<R, Q>(i, j, n, terms, c);
            i += R;
        }
        while i < m {
            tile::<1, Q>(i, j, n, terms, c);
            i += 1;
        }
    }

    /// Rows `i..i+R`, columns `j..j+4Q`, accumulated in registers over every term.
    #[target_feature(enable = "avx2,fma")]
    fn tile<const R: usize, const Q: usize>(
        i: usize,
        j: usize,
        n: usize,
        terms: &[(&[f64], usize, &[f64])],
        c: &mut [f64],
    ) {
        let mut acc = [[_mm256_setzero_pd(); Q]; R];
        for &(a, k, b) in terms {
            assert!(a.len() >= (i + R) * k && b.len() >= k * n && j + 4 * Q <= n);
            for p in 0..k {
                // SAFETY: the reads stay inside `a` and `b` (asserted above).
                let bv: [__m256d; Q] = std::array::from_fn(|q| unsafe {
                    _mm256_loadu_pd(b.as_ptr().add(p * n + j + 4 * q))
                });
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_pd(unsafe { *a.get_unchecked((i + r) * k + p) });
                    for (t, &y) in row.iter_mut().zip(&bv) {
                        *t = _mm256_fmadd_pd(x, y, *t);
                    }
                }
            }
        }
        assert!(c.len() >= (i + R - 1) * n + j + 4 * Q);
        for (r, row) in acc.iter().enumerate() {
            for (q, t) in row.iter().enumerate() {
                // SAFETY: inside `c` (asserted above).
                unsafe { _mm256_storeu_pd(c.as_mut_ptr().add((i + r) * n + j + 4 * q), *t) };
            }
        }
    }
}

/// `y += a·x` (over `y`'s length).
#[inline(always)]
fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

#[inline(always)]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `tr(A·B)` for `A (m×k)`, `B (k×m)`, contiguous.
#[inline(always)]
fn trace_prod(m: usize, k: usize, a: &[f64], b: &[f64]) -> f64 {
    (0..m)
        .map(|i| (0..k).map(|c| a[i * k + c] * b[c * m + i]).sum::<f64>())
        .sum()
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// Both kernels against the plain triple loop, on shapes that hit every tile and edge.
    #[test]
    fn kernels_equal_the_plain_sum() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (m, n, ks) in [
            (17, 16, vec![16, 16]),
            (5, 27, vec![3, 8, 1]),
            (2, 8, vec![]),
        ] {
            let mats: Vec<(Vec<f64>, usize, Vec<f64>)> = ks
                .iter()
                .map(|&k| {
                    let mut r =
                        |len: usize| (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
                    (r(m * k), k, r(k * n))
                })
                .collect();
            let terms: Vec<(&[f64], usize, &[f64])> =
                mats.iter().map(|(a, k, b)| (&a[..], *k, &b[..])).collect();
            let want: Vec<f64> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    terms
                        .iter()
                        .map(|&(a, k, b)| (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f64>())
                        .sum()
                })
                .collect();
            let check = |got: &[f64], what: &str| {
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-13, "{what} {m}×{n}: {g} vs {w}");
                }
            };
            let mut c = vec![f64::NAN; m * n];
            Portable::gemm_sum(m, n, &terms, &mut c);
            check(&c, "portable");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let mut c = vec![f64::NAN; m * n];
                Avx2::gemm_sum(m, n, &terms, &mut c);
                check(&c, "avx2");
            }
        }
    }
}
