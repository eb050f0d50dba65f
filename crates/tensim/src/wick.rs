//! Terms of a layer as tensor networks with legs, and Gaussian moments of pairs of terms by
//! Isserlis/Wick with a mean (MATH.md §4.1, §5.6).
//!
//! A [`Term`] is a multilinear map `T[(t,o); (p₁,i₁), …, (p_k,i_k)]`: a network of factor
//! tensors over integer labels, an output `(position, coordinate)` label pair and one label pair
//! per leg. For activations `x̂` with mean `μ` and centred covariance `C` (jointly Gaussian across
//! the two models), the second moment of two terms' outputs is
//!
//! ```text
//! E[T_l(x̂_a,…) T_r(x̂_b,…)ᵀ] = Σ_{S ⊆ legs} Σ_{perfect matchings m of legs∖S}
//!                                contract(T_l ⊗ T_r; μ on the legs of S, C on the pairs of m)
//! ```
//!
//! with `C_aa` between two left legs, `C_bb` between two right legs and `C_ab` across.

use std::sync::Arc;

use crate::einsum::{Einsum, Tensor};
use crate::error::Result;

/// A multilinear term: factors over labels `0..n_labels`, an output and legs.
#[derive(Clone, Debug)]
pub struct Term {
    pub factors: Vec<(Vec<u32>, Arc<Tensor>)>,
    /// `(position label, coordinate label)` of the output.
    pub out: (u32, u32),
    /// `(position label, coordinate label)` of each leg.
    pub legs: Vec<(u32, u32)>,
    pub n_labels: u32,
}

impl Term {
    /// The term with every label `l` renamed `map(l)`.
    fn relabel(&self, map: &dyn Fn(u32) -> u32, n_labels: u32) -> Term {
        Term {
            factors: self
                .factors
                .iter()
                .map(|(ls, t)| (ls.iter().map(|&l| map(l)).collect(), t.clone()))
                .collect(),
            out: (map(self.out.0), map(self.out.1)),
            legs: self.legs.iter().map(|&(p, i)| (map(p), map(i))).collect(),
            n_labels,
        }
    }

    /// Substitute `inner[k]` into leg `k` (its output joined to the leg): the composed network
    /// `T(S₁(x̂,…), …, S_k(x̂,…))`, whose legs are the inner terms' legs in order.
    pub fn compose(&self, inner: &[Term]) -> Term {
        assert_eq!(inner.len(), self.legs.len(), "one inner term per leg");
        let mut out = Term {
            factors: self.factors.clone(),
            out: self.out,
            legs: vec![],
            n_labels: self.n_labels,
        };
        for (&(p, i), s) in self.legs.iter().zip(inner) {
            let base = out.n_labels;
            let map = |l: u32| {
                if l == s.out.0 {
                    p
                } else if l == s.out.1 {
                    i
                } else {
                    base + l
                }
            };
            let r = s.relabel(&map, base + s.n_labels);
            out.factors.extend(r.factors);
            out.legs.extend(r.legs);
            out.n_labels = r.n_labels;
        }
        out
    }
}

/// A matrix as a 2-axis tensor.
pub fn matrix(m: &crate::linalg::Mat<f64>) -> Arc<Tensor> {
    Arc::new(Tensor::new(
        vec![m.nrows(), m.ncols()],
        crate::linalg::to_row_major(m.as_ref()),
    ))
}

/// One Wick configuration: legs taking the mean, and pairs of legs (indices into the joint leg
/// list, left legs first).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub means: Vec<usize>,
    pub pairs: Vec<(usize, usize)>,
}

/// Every configuration of `k` legs: each leg takes the mean or is paired (telephone number
/// `T(k)`: 2, 4, 10, 26, 76, 232, 764, … for k = 1, 2, 3, …; `T(2)=2, T(4)=10, T(10)=9496`).
pub fn configs(k: usize) -> Vec<Config> {
    fn rec(free: &[usize], cur: &mut Config, out: &mut Vec<Config>) {
        let Some((&first, rest)) = free.split_first() else {
            out.push(cur.clone());
            return;
        };
        cur.means.push(first);
        rec(rest, cur, out);
        cur.means.pop();
        for (j, &other) in rest.iter().enumerate() {
            let remaining: Vec<usize> = rest
                .iter()
                .enumerate()
                .filter(|&(q, _)| q != j)
                .map(|(_, &l)| l)
                .collect();
            cur.pairs.push((first, other));
            rec(&remaining, cur, out);
            cur.pairs.pop();
        }
    }
    let mut out = vec![];
    rec(
        &(0..k).collect::<Vec<_>>(),
        &mut Config {
            means: vec![],
            pairs: vec![],
        },
        &mut out,
    );
    out
}

/// Telephone number `T(k)` (number of [`configs`]), saturating.
pub fn n_configs(k: usize) -> u128 {
    let (mut a, mut b) = (1u128, 1u128); // T(0), T(1)
    for n in 1..k {
        (a, b) = (b, b.saturating_add((n as u128).saturating_mul(a)));
    }
    if k == 0 {
        1
    } else {
        b
    }
}

/// Moments of the activations feeding two terms: means `μ_x[p, i]` and centred covariances
/// `C_xy[p, i, p', i']` (`x, y ∈ {a, b}`).
pub struct Moments<'a> {
    pub mu: [&'a Tensor; 2],
    /// `C_aa`, `C_ab`, `C_bb`.
    pub cov: [&'a Tensor; 3],
}

/// The diagonal `C[p, i, p, j]` of a covariance (two legs at the same position label).
pub fn diagonal(c: &Tensor) -> Tensor {
    let (n, di, dj) = (c.shape[0], c.shape[1], c.shape[3]);
    let mut out = Tensor::zeros(vec![n, di, dj]);
    for p in 0..n {
        for i in 0..di {
            for j in 0..dj {
                out.data[(p * di + i) * dj + j] = c.data[((p * di + i) * n + p) * dj + j];
            }
        }
    }
    out
}

/// `Σ_configs contract(l ⊗ r; config)`: the `[t, o, t', o']` moment of the two terms.
/// `diag` holds the diagonals of `C_aa` and `C_bb` (pairs of legs at one position label).
pub fn pair_moment(
    l: &Term,
    r: &Term,
    m: &Moments<'_>,
    diag: [&Tensor; 2],
    configs: &[Config],
) -> Result<Tensor> {
    let r = r.relabel(&|x| x + l.n_labels, l.n_labels + r.n_labels);
    let kl = l.legs.len();
    let legs: Vec<(u32, u32)> = l.legs.iter().chain(&r.legs).copied().collect();
    let side = |leg: usize| usize::from(leg >= kl);
    let sym = |x: u32| opt_einsum_path::parser::get_symbol(x);
    let word = |ls: &[u32]| ls.iter().map(|&x| sym(x)).collect::<String>();
    let output = word(&[l.out.0, l.out.1, r.out.0, r.out.1]);
    let base: Vec<String> = l
        .factors
        .iter()
        .chain(&r.factors)
        .map(|(ls, _)| word(ls))
        .collect();
    // Legs whose mean contraction vanishes (e.g. value and bias-free query/key legs on a
    // zero-mean input) never take the mean: skip those configurations.
    let any_means = configs.iter().any(|c| !c.means.is_empty());
    let mean_ok: Vec<bool> = (0..legs.len())
        .map(|k| {
            if !any_means {
                return Ok(false);
            }
            let (factors, mu) = if k < kl {
                (&l.factors, m.mu[0])
            } else {
                (&r.factors, m.mu[1])
            };
            mean_contraction_nonzero(factors, legs[k], mu)
        })
        .collect::<Result<_>>()?;
    let mut total: Option<Tensor> = None;
    for c in configs
        .iter()
        .filter(|c| c.means.iter().all(|&k| mean_ok[k]))
    {
        let mut words = base.clone();
        let mut ops: Vec<&Tensor> = l
            .factors
            .iter()
            .chain(&r.factors)
            .map(|(_, t)| t.as_ref())
            .collect();
        for &k in &c.means {
            words.push(word(&[legs[k].0, legs[k].1]));
            ops.push(m.mu[side(k)]);
        }
        for &(x, y) in &c.pairs {
            let ((px, ix), (py, iy)) = (legs[x], legs[y]);
            let (sx, sy) = (side(x), side(y));
            if px == py {
                // Same side, same position: C[p, i, p, j].
                words.push(word(&[px, ix, iy]));
                ops.push(diag[sx]);
            } else {
                words.push(word(&[px, ix, py, iy]));
                ops.push(m.cov[sx + sy]);
            }
        }
        let expr = format!("{}->{output}", words.join(","));
        let v = Einsum::parse(&expr)?.contract(&ops)?;
        match &mut total {
            None => total = Some(v),
            Some(t) => t.data.iter_mut().zip(&v.data).for_each(|(a, b)| *a += b),
        }
    }
    Ok(total.unwrap_or_else(|| {
        let n = |x: u32, t: &Term| -> usize { size_of(t, x, m) };
        Tensor::zeros(vec![
            n(l.out.0, l),
            n(l.out.1, l),
            n(r.out.0, &r),
            n(r.out.1, &r),
        ])
    }))
}

/// Size of a label of `t` (from the factor carrying it, else the moments' position axis).
fn size_of(t: &Term, label: u32, m: &Moments<'_>) -> usize {
    t.factors
        .iter()
        .find_map(|(ls, f)| ls.iter().position(|&x| x == label).map(|k| f.shape[k]))
        .unwrap_or(m.mu[0].shape[0])
}

/// Whether contracting the factor that carries a leg's coordinate with the mean can be non-zero.
fn mean_contraction_nonzero(
    factors: &[(Vec<u32>, Arc<Tensor>)],
    (pos, coord): (u32, u32),
    mu: &Tensor,
) -> Result<bool> {
    let Some((labels, f)) = factors.iter().find(|(ls, _)| ls.contains(&coord)) else {
        return Ok(true);
    };
    let sym = |x: u32| opt_einsum_path::parser::get_symbol(x);
    let mut out: Vec<u32> = labels.iter().copied().filter(|&x| x != coord).collect();
    if !out.contains(&pos) {
        out.push(pos);
    }
    let word = |ls: &[u32]| ls.iter().map(|&x| sym(x)).collect::<String>();
    let expr = format!("{},{}->{}", word(labels), word(&[pos, coord]), word(&out));
    let v = Einsum::parse(&expr)?.contract(&[f.as_ref(), mu])?;
    Ok(v.data.iter().any(|&x| x != 0.0))
}
