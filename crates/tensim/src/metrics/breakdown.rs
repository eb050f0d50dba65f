//! Where an inner product comes from: `⟨f_a, f_b⟩` over the parts of each model's last non-linear
//! layer — the hidden units of a bilinear layer, the heads of an attention layer — for the tensor
//! and gaussian metrics.
//!
//! After its last non-linear layer a model is linear: `f = M p` on the padded output (`o ≥ 1`),
//! `p` the layer's parts. A bilinear layer's parts are its padded units `p_k = (L̂x̂)_k (R̂x̂)_k`
//! (data units, residual units, the unit slot; MATH.md §2.2) and `M = (Ŵ_tail D̂)[1.., ·]`; an
//! attention layer's parts are its heads' outputs before `O` and `M = c·W_tail O` (its residual
//! path and the biases after it are the remainder). With `E` the cross Gram (tensor, §3.3: `K`)
//! or cross moment (gaussian) of the parts, computed by the metric itself on the models *opened*
//! at that layer (the parts as outputs),
//!
//! ```text
//! ⟨f_a, f_b⟩ = Σ_{p,q} E[p,q] Γ[p,q],   Γ = M_aᵀ M_b,   per output o: Γ_o[p,q] = M_a[o,p] M_b[o,q]
//! ```
//!
//! exact by bilinearity (the tensor metric's symmetrisation and the expectation are linear in the
//! output leg). Contributions are summed over the parts of each unit or head; the rest (unit slot,
//! residual units or path, biases) is the remainder.

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;
use serde::Serialize;

use crate::budget;
use crate::einsum::Tensor;
use crate::error::{Error, Result};
use crate::layers::{compose_linear, Attention, Bilinear, Layer, PaddedLayer};
use crate::linalg::{mul, Mat, Par};
use crate::metrics::difference::signed;
use crate::metrics::{gaussian, tensor, Metric, Symmetrize};
use crate::model::Model;
use crate::propagate;

/// What the parts of the broken-down layer are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Parts {
    /// Hidden units of a bilinear layer.
    Units,
    /// Heads of an attention layer.
    Heads,
}

/// One matched pair: part `a` of A with part `b` of B, its contribution and its share of the
/// inner product.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Matched {
    pub a: usize,
    pub b: usize,
    pub contribution: f64,
    pub share: f64,
}

/// The breakdown of one output coordinate's inner product.
#[derive(Clone, Debug, Serialize)]
pub struct OutputBreakdown {
    pub output: usize,
    pub inner: Option<f64>,
    pub remainder: Option<f64>,
    /// The matching of this output's contributions, largest first; shares of `inner` (heads:
    /// of the heads' own total).
    pub matching: Vec<Matched>,
    #[serde(skip)]
    pub contributions: Mat<f64>,
}

/// `⟨f_a, f_b⟩` over the parts of the last non-linear layers.
#[derive(Clone, Debug, Serialize)]
pub struct Breakdown {
    pub parts: Parts,
    /// Index of the broken-down layer in each model.
    pub layer_a: usize,
    pub layer_b: usize,
    /// `[parts of A, parts of B]`.
    pub shape: [usize; 2],
    pub inner: f64,
    /// `inner − Σ contributions`: the unit slot, residual units or path, and biases.
    pub remainder: f64,
    /// The maximum-weight assignment of A's parts to B's on `|contribution|`, largest first.
    pub matching: Vec<Matched>,
    /// `contributions[i, j]`: part `i` of A with part `j` of B.
    #[serde(skip)]
    pub contributions: Mat<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_output: Option<Vec<OutputBreakdown>>,
}

/// A model cut after its last non-linear layer, that layer opened so that it outputs its parts.
struct Opened {
    model: Model,
    parts: Parts,
    layer: usize,
    /// `M`: padded output rows `o ≥ 1` by the opened model's outputs.
    map: Mat<f64>,
    /// The part each opened output belongs to (`None`: the rest).
    owner: Vec<Option<usize>>,
    parts_count: usize,
    /// The opened outputs carry the whole function (a bilinear layer's residual units and unit
    /// slot are among them; an attention layer's residual path is not).
    complete: bool,
}

fn open(model: &Model) -> Result<Opened> {
    let layers = model.layers();
    let k = layers
        .iter()
        .rposition(|l| !matches!(l, Layer::Linear(_)))
        .ok_or_else(|| {
            Error::Invalid(
                "a breakdown needs a bilinear or attention layer; this model is linear".into(),
            )
        })?;
    let tail: Vec<PaddedLayer> = layers[k + 1..].iter().map(Layer::padded).collect();
    // Ŵ_tail restricted to rows o ≥ 1, times a matrix of padded columns.
    let through_tail = |x: Mat<f64>| -> Mat<f64> {
        let x = match compose_linear(&tail) {
            Some(w) => mul(w.as_ref(), x.as_ref(), Par::Seq),
            None => x,
        };
        x.as_ref().subrows(1, x.nrows() - 1).to_owned()
    };
    let (layer, parts, map, (owner, parts_count), complete) = match &layers[k] {
        Layer::Bilinear(b) => {
            let p = b.padded();
            let units = p.l.nrows();
            // Opened order: padded units 1.. (data, residual), then the unit slot 0.
            let order: Vec<usize> = (1..units).chain([0]).collect();
            let rows =
                |m: &Mat<f64>| Mat::from_fn(units, m.ncols() - 1, |i, j| m[(order[i], j + 1)]);
            let bias = |m: &Mat<f64>| Some(order.iter().map(|&i| m[(i, 0)]).collect());
            let opened = Bilinear {
                left: rows(&p.l),
                right: rows(&p.r),
                down: None,
                left_bias: bias(&p.l),
                right_bias: bias(&p.r),
                down_bias: None,
                residual: None,
            };
            let d = Mat::from_fn(p.d.nrows(), units, |o, i| p.d[(o, order[i])]);
            let owner = (0..units).map(|i| (i < b.hidden()).then_some(i)).collect();
            (
                Layer::Bilinear(opened),
                Parts::Units,
                through_tail(d),
                (owner, b.hidden()),
                true,
            )
        }
        Layer::Attention(a) => {
            let (c, _) = a.path_weights();
            let d = a.dim();
            let opened = Attention {
                o: Mat::identity(d, d),
                residual: None,
                ..(**a).clone()
            };
            // c·O between padded rows and columns: the unit slot maps nowhere.
            let o = Mat::from_fn(
                d + 1,
                d,
                |i, j| if i == 0 { 0.0 } else { c * a.o[(i - 1, j)] },
            );
            let owner = (0..d).map(|i| Some(i / a.head_size())).collect();
            (
                Layer::Attention(Box::new(opened)),
                Parts::Heads,
                through_tail(o),
                (owner, a.n_head),
                false,
            )
        }
        Layer::Linear(_) => unreachable!("the last non-linear layer"),
    };
    let mut kept = layers[..k].to_vec();
    kept.push(layer);
    Ok(Opened {
        model: model.with_layers(kept)?,
        parts,
        layer: k,
        map,
        owner,
        parts_count,
        complete,
    })
}

/// `E = Σ_t E[t, 1.., t, 1..]` of the opened models, scaled: the value is `e^s·E`.
fn part_moments(a: &Model, b: &Model, metric: &Metric) -> Result<(Mat<f64>, f64)> {
    let summed = |m: &Tensor| {
        let (n, wa, wb) = (m.shape[0], m.shape[1], m.shape[3]);
        Mat::from_fn(wa - 1, wb - 1, |i, j| {
            (0..n)
                .map(|t| m.data[((t * wa + i + 1) * n + t) * wb + j + 1])
                .sum()
        })
    };
    let half = |x: &crate::moment::Moment, y: &crate::moment::Moment| 0.5 * (x.scale + y.scale);
    match metric {
        Metric::Tensor(Symmetrize::Layer) if a.first_attention().is_some() => {
            let (gab, ga, gb) = tensor::network_ends(a, b)?;
            Ok((summed(&gab), half(&ga, &gb)))
        }
        Metric::Tensor(Symmetrize::Layer) => {
            let depth = a.n_bilinear();
            let (na, nb) = (
                tensor::lifted_nodes(a, depth),
                tensor::lifted_nodes(b, depth),
            );
            let g = tensor::cross_gram(&na, &nb, false, Par::rayon(0));
            let s = g.scaled().expect("a bilinear node was applied");
            Ok((
                s.subrows(1, s.nrows() - 1)
                    .subcols(1, s.ncols() - 1)
                    .to_owned(),
                g.log_scale(),
            ))
        }
        Metric::Gaussian(g) => {
            let (sab, sa, sb) = match gaussian::resolve(a, b, g)?.0 {
                gaussian::Mode::Exact => propagate::exact_ends(a, b)?,
                gaussian::Mode::Closure => propagate::closure_ends(a, b, None, g.precision)?,
            };
            Ok((summed(&sab), half(&sa, &sb)))
        }
        _ => unreachable!("refused by check_metric"),
    }
}

/// Refuse metrics without breakdowns (all but the tensor (per layer) and gaussian metrics).
pub fn check_metric(metric: &Metric) -> Result<()> {
    match metric {
        Metric::Tensor(Symmetrize::Layer) | Metric::Gaussian(_) => Ok(()),
        _ => Err(Error::Invalid(format!(
            "a breakdown is computed for the tensor (per layer) and gaussian metrics, not for {}",
            match metric {
                Metric::Tensor(_) => "the fully symmetrised tensor metric",
                m => m.name(),
            }
        ))),
    }
}

/// The breakdown of `⟨f_a, f_b⟩` under `metric`. `inner`: the metric's own inner product of the
/// pair, which attention layers need (their remainder is taken from it; a bilinear layer's parts
/// give the whole). The models are the ones the metric read (after any input distribution and
/// rescaling).
pub fn breakdown(
    a: &Model,
    b: &Model,
    metric: &Metric,
    inner: Option<f64>,
    per_output: bool,
) -> Result<Breakdown> {
    finish(sums(a, b, metric, per_output)?, inner)
}

/// The breakdown of the changes `⟨f_a − f_a0, f_b − f_b0⟩` (either base optional) over the parts
/// of the models (a base has its model's parts: a fine-tune keeps them in place), by
/// bilinearity `C = C_ab − C_ab0 − C_a0b + C_a0b0`. `inner`: as in [`breakdown`], of the changes.
pub fn of_changes(
    (a, a0): (&Model, Option<&Model>),
    (b, b0): (&Model, Option<&Model>),
    metric: &Metric,
    inner: Option<f64>,
    per_output: bool,
) -> Result<Breakdown> {
    let mut total: Option<Sums> = None;
    for &(x, cx) in &signed(a, a0) {
        for &(y, cy) in &signed(b, b0) {
            let s = sums(x, y, metric, per_output)?;
            total = Some(match total {
                None => s.scaled(cx * cy),
                Some(t) => t.plus(&s, cx * cy)?,
            });
        }
    }
    finish(total.expect("one pair at least"), inner)
}

/// The linear part of a breakdown: contributions and their totals over all opened outputs
/// (with the rest), overall and per output.
#[derive(Clone)]
struct Sums {
    parts: Parts,
    layers: [usize; 2],
    contributions: Mat<f64>,
    total: f64,
    per_output: Option<Vec<(Mat<f64>, f64)>>,
    /// The opened outputs carry the whole function (bilinear layers).
    complete: bool,
}

impl Sums {
    fn scaled(mut self, c: f64) -> Sums {
        self.contributions = Mat::from_fn(
            self.contributions.nrows(),
            self.contributions.ncols(),
            |i, j| c * self.contributions[(i, j)],
        );
        self.total *= c;
        for (m, t) in self.per_output.iter_mut().flatten() {
            *m = Mat::from_fn(m.nrows(), m.ncols(), |i, j| c * m[(i, j)]);
            *t *= c;
        }
        self
    }

    /// `self + c·other`, for breakdowns over the same parts.
    fn plus(mut self, other: &Sums, c: f64) -> Result<Sums> {
        let (x, y) = (&self.contributions, &other.contributions);
        if self.parts != other.parts || (x.nrows(), x.ncols()) != (y.nrows(), y.ncols()) {
            return Err(Error::Incompatible(format!(
                "the breakdown of a change needs each model and its base to have the same parts \
                 (got {}×{} and {}×{} {:?})",
                x.nrows(),
                x.ncols(),
                y.nrows(),
                y.ncols(),
                other.parts
            )));
        }
        let add = |x: &Mat<f64>, y: &Mat<f64>| {
            Mat::from_fn(x.nrows(), x.ncols(), |i, j| x[(i, j)] + c * y[(i, j)])
        };
        self.contributions = add(x, y);
        self.total += c * other.total;
        if let (Some(p), Some(q)) = (&mut self.per_output, &other.per_output) {
            for ((m, t), (n, u)) in p.iter_mut().zip(q) {
                *m = add(m, n);
                *t += c * u;
            }
        }
        self.complete &= other.complete;
        Ok(self)
    }
}

fn sums(a: &Model, b: &Model, metric: &Metric, per_output: bool) -> Result<Sums> {
    check_metric(metric)?;
    let (oa, ob) = (open(a)?, open(b)?);
    if oa.parts != ob.parts {
        return Err(Error::Incompatible(format!(
            "a breakdown pairs the last non-linear layers, here a {} layer (layer {}) with a {} \
             layer (layer {})",
            a.layers()[oa.layer].kind(),
            oa.layer,
            b.layers()[ob.layer].kind(),
            ob.layer
        )));
    }
    if matches!(metric, Metric::Tensor(_)) && a.n_bilinear() != b.n_bilinear() {
        return Err(Error::Incompatible(format!(
            "a tensor-metric breakdown pairs the last bilinear layers, so both models need the \
             same number of them (got {} and {}); the gaussian metric has no such restriction",
            a.n_bilinear(),
            b.n_bilinear()
        )));
    }
    let outputs = oa.map.nrows();
    let (na, nb) = (oa.parts_count, ob.parts_count);
    let per = if per_output { outputs * na * nb } else { 0 };
    budget::check(
        "the breakdown",
        (3 * oa.map.ncols() * ob.map.ncols() + per) as f64,
    )?;
    // The opened pair under the mode the pair itself resolves to.
    let metric = match metric {
        Metric::Gaussian(g) => Metric::Gaussian(gaussian::GaussOptions {
            mode: Some(gaussian::resolve(a, b, g)?.0),
            ..g.clone()
        }),
        m => m.clone(),
    };
    let (e, s) = part_moments(&oa.model, &ob.model, &metric)?;
    let scale = s.exp();
    // Σ of E[p, q]·w(p, q) over the opened outputs p, q of each pair of parts, and over all.
    let grouped = |w: &dyn Fn(usize, usize) -> f64| -> (Mat<f64>, f64) {
        let mut c = Mat::<f64>::zeros(na, nb);
        let mut total = 0.0;
        for q in 0..e.ncols() {
            for p in 0..e.nrows() {
                let v = scale * e[(p, q)] * w(p, q);
                total += v;
                if let (Some(i), Some(j)) = (oa.owner[p], ob.owner[q]) {
                    c[(i, j)] += v;
                }
            }
        }
        (c, total)
    };
    let gamma = crate::linalg::mul(oa.map.transpose(), ob.map.as_ref(), Par::rayon(0));
    let (contributions, total) = grouped(&|p, q| gamma[(p, q)]);
    let per_output = per_output.then(|| {
        (0..outputs)
            .map(|o| grouped(&|p, q| oa.map[(o, p)] * ob.map[(o, q)]))
            .collect()
    });
    Ok(Sums {
        parts: oa.parts,
        layers: [oa.layer, ob.layer],
        contributions,
        total,
        per_output,
        complete: oa.complete && ob.complete,
    })
}

/// Remainders and matchings of summed contributions. A bilinear layer's parts cover the whole
/// function; an attention layer's leave out the residual path, whose share is read from the
/// metric's own inner product `inner`.
fn finish(s: Sums, inner: Option<f64>) -> Result<Breakdown> {
    let inner = match (s.complete, inner) {
        (true, _) => s.total,
        (false, Some(inner)) => inner,
        (false, None) => {
            return Err(Error::Invalid(
                "the breakdown of an attention layer needs the pair's inner product".into(),
            ))
        }
    };
    let sum = |c: &Mat<f64>| {
        (0..c.ncols())
            .map(|j| (0..c.nrows()).map(|i| c[(i, j)]).sum::<f64>())
            .sum::<f64>()
    };
    let per_output = s.per_output.map(|per| {
        per.into_iter()
            .enumerate()
            .map(|(o, (c, total))| OutputBreakdown {
                output: o,
                inner: s.complete.then_some(total),
                remainder: s.complete.then(|| total - sum(&c)),
                matching: matched(&c, total),
                contributions: c,
            })
            .collect()
    });
    Ok(Breakdown {
        parts: s.parts,
        layer_a: s.layers[0],
        layer_b: s.layers[1],
        shape: [s.contributions.nrows(), s.contributions.ncols()],
        inner,
        remainder: inner - sum(&s.contributions),
        matching: matched(&s.contributions, inner),
        contributions: s.contributions,
        per_output,
    })
}

/// The matched pairs of `c` with their shares of `inner`, largest `|contribution|` first.
fn matched(c: &Mat<f64>, inner: f64) -> Vec<Matched> {
    let mut pairs: Vec<Matched> = matching(c)
        .into_iter()
        .map(|(a, b)| Matched {
            a,
            b,
            contribution: c[(a, b)],
            share: c[(a, b)] / inner,
        })
        .collect();
    pairs.sort_by(|x, y| y.contribution.abs().total_cmp(&x.contribution.abs()));
    pairs
}

/// The maximum-weight assignment of rows to columns on `|c|` (Kuhn–Munkres), `min(rows, cols)`
/// pairs `(row, col)` in row order. Weights are `|c|/max|c|` in units of `2⁻⁴⁰`, integers so
/// that the solver's comparisons are exact.
pub fn matching(c: &Mat<f64>) -> Vec<(usize, usize)> {
    let (r, k) = (c.nrows(), c.ncols());
    if r == 0 || k == 0 {
        return vec![];
    }
    let max = crate::linalg::max_abs(c.as_ref());
    let w = |i: usize, j: usize| {
        if max > 0.0 {
            (c[(i, j)].abs() / max * (1u64 << 40) as f64).round() as i64
        } else {
            0
        }
    };
    if r <= k {
        let (_, cols) = kuhn_munkres(&Matrix::from_fn(r, k, |(i, j)| w(i, j)));
        cols.into_iter().enumerate().collect()
    } else {
        let (_, rows) = kuhn_munkres(&Matrix::from_fn(k, r, |(j, i)| w(i, j)));
        let mut pairs: Vec<(usize, usize)> =
            rows.into_iter().enumerate().map(|(j, i)| (i, j)).collect();
        pairs.sort();
        pairs
    }
}

/// Rows and columns of `c` ordered by its matching, heaviest pair first (the matched pairs on
/// the diagonal), the unmatched ones after them in their own order.
pub fn matched_order(c: &Mat<f64>) -> (Vec<usize>, Vec<usize>) {
    let pairs = matched(c, 1.0);
    let fill = |mut v: Vec<usize>, n: usize| {
        v.extend((0..n).filter(|k| !v.contains(k)).collect::<Vec<_>>());
        v
    };
    (
        fill(pairs.iter().map(|m| m.a).collect(), c.nrows()),
        fill(pairs.iter().map(|m| m.b).collect(), c.ncols()),
    )
}

/// Largest matched pairs listed in text; all of them are in the JSON.
const LISTED: usize = 10;

/// `  a  b  contribution  share` rows of the largest pairs.
fn list(f: &mut std::fmt::Formatter<'_>, pairs: &[Matched], indent: &str) -> std::fmt::Result {
    for m in pairs.iter().take(LISTED) {
        writeln!(
            f,
            "{indent}{:>5} {:>5}  {:>13.6e}  {:>7.2} %",
            m.a,
            m.b,
            m.contribution,
            100.0 * m.share
        )?;
    }
    Ok(())
}

impl std::fmt::Display for Breakdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.parts {
            Parts::Units => "units",
            Parts::Heads => "heads",
        };
        writeln!(
            f,
            "breakdown   {what}: layer {} of A ({}) × layer {} of B ({})",
            self.layer_a, self.shape[0], self.layer_b, self.shape[1]
        )?;
        writeln!(
            f,
            "remainder   {:.6e} ({:.2} % of inner: unit slot, residual, biases)",
            self.remainder,
            100.0 * self.remainder / self.inner
        )?;
        let matched: f64 = self.matching.iter().map(|m| m.share).sum();
        writeln!(
            f,
            "matching    {} pairs carry {:.2} % of inner; the largest (A {what}, B {what}, \
             contribution, share):",
            self.matching.len(),
            100.0 * matched
        )?;
        list(f, &self.matching, "  ")?;
        if let Some(per) = &self.per_output {
            writeln!(f, "breakdown per output (largest matched pairs):")?;
            for p in per.iter().take(32) {
                writeln!(f, "  output {}", p.output)?;
                list(f, &p.matching[..p.matching.len().min(3)], "    ")?;
            }
            if per.len() > 32 {
                writeln!(f, "  … {} more outputs in the JSON", per.len() - 32)?;
            }
        }
        Ok(())
    }
}
