//! The moment engine (MATH.md §5.6): second moments `Σ_aa, Σ_ab, Σ_bb` of the padded
//! activations ([`Moment`]) carried through the layers of two models. A layer update is
//! `Σ'_xy = Σ_{l ∈ terms(x), r ∈ terms(y)} Σ_{S, m} contract(l ⊗ r; μ on S, C-bridges on m)`
//! with `μ_x = Σ_xx[:,(0,0)]/√Σ_xx[(0,0),(0,0)]` and centred `C_xy = Σ_xy − μ_xμ_yᵀ`: exact
//! for one layer. Two ways through a network:
//! * closure ([`closure_traces`]): the update layer after layer, each layer's input treated as
//!   Gaussian with the propagated moments (approximate past the first non-linear layer);
//! * exact ([`exact_traces`]): each model's layers composed into one network (a sum of terms)
//!   and its Wick sum enumerated at the input: exact, for small total degree.
//!
//! Past the last layer that mixes positions (attention), only the same-position blocks
//! `Σ[t, ·, t, ·]` are computed: position-wise layers map block `(t, t')` to block `(t, t')`
//! and the traces read `t = t'` alone ([`Positions::local`]).
//!
//! A step's Wick sums: a pair of layers of one kind by that kind's own moment update
//! (`layers/attention/moment/` by connected pieces, `layers/bilinear/moment.rs` and
//! `layers/linear/moment.rs` in closed form), anything else configuration by configuration
//! ([`wick::pair_moment`], also the reference they are tested against). The gaussian metric
//! (`metrics/gaussian.rs`) and the transformer tensor metric (`metrics/tensor.rs`) run on it.

use std::borrow::{Borrow, Cow};

use crate::arch::ResidualMode;
use crate::einsum::Tensor;
use crate::error::Result;
use crate::layers::{attention, bilinear, linear, Layer, Linear};
use crate::linalg::Mat;
use crate::model::Model;
use crate::moment::{centred, combine, mean, same_position, Moment, Parts, Positions, Precision};
use crate::wick::{self, Moments, Term};

/// `Σ_configs contract(l ⊗ r)` over every Wick configuration, for every term pair.
pub(crate) fn term_moments(
    left: &[Term],
    right: &[Term],
    m: &Moments<'_>,
    diag: [&Tensor; 2],
) -> Result<Parts> {
    let mut out = vec![];
    for l in left {
        for r in right {
            let configs = wick::configs(l.legs.len() + r.legs.len());
            let v = wick::pair_moment(l, r, m, diag, &configs)?;
            out.push((l.legs.len(), r.legs.len(), v));
        }
    }
    Ok(out)
}

/// What one propagation step goes through: a layer at `n` positions (closure), with the
/// precision of its attention moments, or a whole model composed into terms (exact).
#[derive(Clone, Copy)]
enum Step<'a> {
    Layer(&'a Layer, usize, Positions, Precision),
    Terms(&'a [Term]),
}

/// What layer `k` of `layers` knows of positions (see [`Positions`]).
fn positions<L: Borrow<Layer>>(layers: &[L], k: usize) -> Positions {
    let mixes = |l: &L| matches!(l.borrow(), Layer::Attention(_));
    Positions {
        independent: !layers[..k].iter().any(mixes),
        local: !layers[k + 1..].iter().any(mixes),
    }
}

/// A step's output: its blocks across positions set to zero where the step is local (parts
/// computed configuration by configuration have them).
fn localised(m: Tensor, step: Step<'_>) -> Tensor {
    match step {
        Step::Layer(_, _, p, _) if p.local => same_position(m),
        _ => m,
    }
}

/// The parts of a step: attention against attention by connected pieces
/// ([`attention::moment::moments`]), bilinear against bilinear and linear against linear in
/// closed form ([`bilinear::moment::moment`], [`linear::moment::moment`]), everything else
/// configuration by configuration.
fn step_parts(
    left: Step<'_>,
    right: Step<'_>,
    m: &Moments<'_>,
    diag: [&Tensor; 2],
    symmetric: bool,
) -> Result<Parts> {
    match (left, right) {
        (
            Step::Layer(Layer::Attention(a), n, positions, precision),
            Step::Layer(Layer::Attention(b), ..),
        ) => {
            // A self step reads one layer on both sides.
            let a = a.network(n);
            let b = (!symmetric).then(|| b.network(n));
            let b = b.as_ref().unwrap_or(&a);
            attention::moment::moments(&a, b, m, symmetric, positions, precision)
        }
        (Step::Layer(Layer::Linear(a), _, positions, _), Step::Layer(Layer::Linear(b), ..)) => {
            let (a, b) = (a.padded(), b.padded());
            Ok(vec![(
                1,
                1,
                linear::moment::moment(&a, &b, m, positions.local),
            )])
        }
        (Step::Layer(Layer::Bilinear(a), _, positions, _), Step::Layer(Layer::Bilinear(b), ..)) => {
            let (a, b) = (a.padded(), b.padded());
            let local = positions.local;
            Ok(vec![(
                2,
                2,
                bilinear::moment::moment(&a, &b, m, symmetric, local),
            )])
        }
        _ => {
            let terms = |s: Step<'_>| match s {
                Step::Layer(layer, n, ..) => layer.terms(n),
                Step::Terms(t) => t.to_vec(),
            };
            term_moments(&terms(left), &terms(right), m, diag)
        }
    }
}

/// The tensor metric's layer step (MATH.md §8): for every term pair, `1/k!` times the sum over
/// bijections of the `k` legs of `l` onto those of `r` with `cross` on every pair (zero for
/// different leg counts). It is the Wick sum with zero means and no covariance within a side,
/// so it runs through the same moments.
pub(crate) fn symmetrised_parts(
    left: &Layer,
    right: &Layer,
    n: usize,
    cross: &Tensor,
) -> Result<Parts> {
    let (wl, wr) = (cross.shape[1], cross.shape[3]);
    let (zl, zr) = (Tensor::zeros(vec![n, wl]), Tensor::zeros(vec![n, wr]));
    let (cl, cr) = (
        Tensor::zeros(vec![n, wl, n, wl]),
        Tensor::zeros(vec![n, wr, n, wr]),
    );
    let m = Moments {
        mu: [&zl, &zr],
        cov: [&cl, cross, &cr],
    };
    let (dl, dr) = (wick::diagonal(&cl), wick::diagonal(&cr));
    let parts = step_parts(
        Step::Layer(left, n, Positions::default(), Precision::F64),
        Step::Layer(right, n, Positions::default(), Precision::F64),
        &m,
        [&dl, &dr],
        false,
    )?;
    Ok(parts
        .into_iter()
        .map(|(kl, kr, mut v)| {
            let w = if kl == kr {
                1.0 / (1..=kl).map(|x| x as f64).product::<f64>()
            } else {
                0.0
            };
            v.data.iter_mut().for_each(|x| *x *= w);
            (kl, kr, v)
        })
        .collect())
}

/// One step of a self moment.
fn self_step(s: &Moment, step: Step<'_>) -> Result<Moment> {
    let mu = mean(&s.m);
    let c = centred(&s.m, &mu, &mu);
    let d = wick::diagonal(&c);
    let m = Moments {
        mu: [&mu, &mu],
        cov: [&c, &c, &c],
    };
    let parts = step_parts(step, step, &m, [&d, &d], true)?;
    let (v, shift) = combine(parts, (s.scale, s.scale), None);
    Ok(Moment::normalised(localised(v, step), shift))
}

/// One closure step of the cross moment, given both self moments before the step: the
/// moment `e^{shift}·m` as `(m, shift)`.
fn cross_step(
    sab: &Tensor,
    (sa, sb): (&Moment, &Moment),
    (ta, tb): (Step<'_>, Step<'_>),
) -> Result<(Tensor, f64)> {
    let (ma, mb) = (mean(&sa.m), mean(&sb.m));
    let (caa, cbb, cab) = (
        centred(&sa.m, &ma, &ma),
        centred(&sb.m, &mb, &mb),
        centred(sab, &ma, &mb),
    );
    let (da, db) = (wick::diagonal(&caa), wick::diagonal(&cbb));
    let m = Moments {
        mu: [&ma, &mb],
        cov: [&caa, &cab, &cbb],
    };
    let parts = step_parts(ta, tb, &m, [&da, &db], false)?;
    let (v, shift) = combine(parts, (sa.scale, sb.scale), None);
    Ok((localised(v, ta), shift))
}

/// `Σ̃_ab` of a cross moment `e^{shift}·m` next to self moments of scales `s_a`, `s_b`:
/// `e^{shift − (s_a+s_b)/2}·m`.
fn matched((mut m, shift): (Tensor, f64), sa: &Moment, sb: &Moment) -> Tensor {
    let f = (shift - 0.5 * (sa.scale + sb.scale)).exp();
    m.data.iter_mut().for_each(|x| *x *= f);
    m
}

/// Whether a layer is non-linear in its input (a residual of scale 0 makes a layer the identity).
fn nonlinear(layer: &Layer) -> bool {
    let identity = |r: Option<crate::arch::Residual>| {
        r.is_some_and(|r| r.mode == ResidualMode::Lerp && r.scale == 0.0)
    };
    match layer {
        Layer::Linear(_) => false,
        Layer::Bilinear(b) => !identity(b.residual),
        Layer::Attention(a) => !identity(a.residual),
    }
}

/// A model as the engine reads it: its `body`, through the last layer that is not linear (at
/// least the first layer), and the linear layers after it (`tail`), one [`Split::head`]. The
/// head is read out from the body's moments ([`linear::moment::readout`]), so an output-sized
/// moment (a vocabulary) is never formed.
pub(crate) struct Split<'a> {
    pub body: &'a [Layer],
    pub tail: &'a [Layer],
}

impl Split<'_> {
    /// The head: the tail's layer itself, or the product `Ŵ_k⋯Ŵ_1` of several (unpadded).
    pub fn head(&self) -> Option<std::borrow::Cow<'_, Linear>> {
        match self.tail {
            [] => None,
            [Layer::Linear(l)] => Some(std::borrow::Cow::Borrowed(l)),
            tail => {
                let nodes: Vec<_> = tail.iter().map(Layer::padded).collect();
                let w = crate::layers::compose_linear(&nodes)?;
                let (m, d) = (w.nrows() - 1, w.ncols() - 1);
                Some(std::borrow::Cow::Owned(Linear {
                    weight: Mat::from_fn(m, d, |i, j| w[(i + 1, j + 1)]),
                    bias: Some((1..=m).map(|i| w[(i, 0)]).collect()),
                }))
            }
        }
    }
}

pub(crate) fn split(model: &Model) -> Split<'_> {
    let layers = model.layers();
    let end = layers
        .iter()
        .rposition(|l| !matches!(l, Layer::Linear(_)))
        .map_or(1, |k| k + 1);
    Split {
        body: &layers[..end],
        tail: &layers[end..],
    }
}

/// The moments in a model's self chain ([`self_chain`]).
pub fn chain_len(model: &Model) -> usize {
    let body = split(model).body;
    body.len() - usize::from(linear_first(body))
}

/// Whether a body starts with a linear layer, whose self moment is not kept in chains: it is
/// recomputed from the weights ([`linear::moment::from_input`], one product) where needed.
fn linear_first(body: &[Layer]) -> bool {
    matches!(body[0], Layer::Linear(_))
}

/// Each model's body, the shorter one extended by identity layers (which change nothing).
fn aligned<'m>(a: &'m Model, b: &'m Model) -> (Vec<Cow<'m, Layer>>, Vec<Cow<'m, Layer>>) {
    let (ba, bb) = (split(a).body, split(b).body);
    let depth = ba.len().max(bb.len());
    let pad = |body: &'m [Layer]| {
        let d = body[body.len() - 1].out_dim();
        let identity = Layer::Linear(Linear {
            weight: Mat::identity(d, d),
            bias: None,
        });
        let pads = std::iter::repeat_n(Cow::Owned(identity), depth - body.len());
        body.iter().map(Cow::Borrowed).chain(pads).collect()
    };
    (pad(ba), pad(bb))
}

/// The widest padded activation whose moment the closure forms for `model`: the output of
/// every body layer, and the input unless the first layer is linear (read in closed form).
fn moment_width(model: &Model) -> usize {
    let body = split(model).body;
    let input = match body[0] {
        Layer::Linear(_) => 0,
        _ => model.in_dim(),
    };
    body.iter().map(Layer::out_dim).fold(input, usize::max) + 1
}

/// Refuse work that cannot fit in memory, before any is allocated. A step holds about a dozen
/// `(n·w)²` moments (the three before and after it, their centred copies, the step's parts),
/// `w` the widest moment of `models` ([`moment_width`]), and an attention step its projected
/// covariances ([`covariances`], in f64). `copies` more moments are kept (cached self chains),
/// `steps` attention steps' covariances are held at once (counted in f64: [`held`]); the
/// models' own parameters are held throughout.
pub fn check_memory(models: &[&Model], copies: f64, steps: f64) -> Result<()> {
    let n = models[0].input().n_ctx;
    let w = models.iter().map(|m| moment_width(m)).max().unwrap_or(0);
    let parameters: usize = models.iter().map(|m| m.param_count()).sum();
    let counted = parameters as f64
        + (12.0 + copies) * ((n * w) as f64).powi(2)
        + steps * covariances(models);
    // Beyond the counted arrays: transient copies, allocator slack (freed memory is kept for
    // reuse) and the program (peak RSS of the paper's LM pair at n_ctx 4, 8, 16 in f64: 1.34,
    // 1.14, 0.92 times the count).
    crate::budget::check(
        "the models, the Gaussian moments of the activations and the attention covariances",
        1.5 * counted + (32 << 20) as f64 / 8.0,
    )
}

/// Entries of the largest attention step's projected covariances among pairs of `models`
/// ([`attention::moment::covariance_entries`]) and its output blocks. Models with one sequence of layer kinds pair
/// layers at the same depth, so each layer's own positions hold; otherwise none is assumed.
fn covariances(models: &[&Model]) -> f64 {
    let n = models[0].input().n_ctx;
    let kinds = |m: &Model| {
        m.layers()
            .iter()
            .map(std::mem::discriminant)
            .collect::<Vec<_>>()
    };
    let aligned = models.windows(2).all(|p| kinds(p[0]) == kinds(p[1]));
    let mut most = 0.0f64;
    for layers in models.iter().map(|m| m.layers()) {
        for (k, layer) in layers.iter().enumerate() {
            if let Layer::Attention(a) = layer {
                let p = if aligned {
                    positions(layers, k)
                } else {
                    Positions::default()
                };
                // And a term pair's output blocks with their transpose.
                let out = 2.0 * ((n * (a.dim() + 1)) as f64).powi(2);
                most = most.max(attention::moment::covariance_entries(a, a, n, p) + out);
            }
        }
    }
    most
}

/// Whether the attention steps of a closure (its cross step and both self steps) run side by
/// side, each on the threads it finds free, rather than one after the other on every thread:
/// in f32, whose covariances take half the memory (the paper's LM pair 1.45-1.64 -> 1.24-1.36
/// s, peak 0.44 -> 0.58 GB).
fn side_by_side(precision: Precision) -> bool {
    precision == Precision::F32
}

/// The attention covariances `pairs` pairs' closures hold at once, counted in f64 sets
/// ([`check_memory`]): one step per pair, three with [`side_by_side`] unless the self chains
/// are `cached`; f32 entries count half.
pub fn held(precision: Precision, pairs: usize, cached: bool) -> f64 {
    let steps = if side_by_side(precision) && !cached {
        3.0
    } else {
        1.0
    };
    let size = match precision {
        Precision::F64 => 1.0,
        Precision::F32 => 0.5,
    };
    pairs as f64 * steps * size
}

/// Whether a pair's attention covariances (of one step, counted in f64 whatever the
/// precision) are so large (over 256 MB) that a matrix bounds the pairs of `models` at work
/// at once: one, each on every core, for the tensor metric's network recursion; as many as
/// the memory estimate allows for the gaussian metric.
pub fn one_pair_at_a_time(models: &[&Model]) -> bool {
    8.0 * covariances(models) > 256e6
}

/// The first step's moment `(m, shift)` of `left` against `right` from the Gaussian input of
/// `model` (both read the same): two linear layers in closed form
/// ([`linear::moment::from_input`], no input-sized moment), anything else through `Σ⁰`.
fn first_step(
    left: Step<'_>,
    right: Step<'_>,
    model: &Model,
    symmetric: bool,
) -> Result<(Tensor, f64)> {
    let (d, law) = (model.in_dim(), model.law());
    match (left, right) {
        (Step::Layer(Layer::Linear(a), n, p, _), Step::Layer(Layer::Linear(b), ..)) => {
            Ok((linear::moment::from_input(a, b, n, p.local, law), 0.0))
        }
        (Step::Layer(_, n, ..), _) if symmetric => {
            let s = self_step(&Moment::input(n, d, law), left)?;
            Ok((s.m, s.scale))
        }
        (Step::Layer(_, n, ..), _) => {
            let s0 = Moment::input(n, d, law);
            cross_step(&s0.m, (&s0, &s0), (left, right))
        }
        (Step::Terms(_), _) => unreachable!("the closure steps through layers"),
    }
}

/// `Σ_aa` after the first body layer.
fn first_self(p: &Split<'_>, model: &Model, precision: Precision) -> Result<Moment> {
    let n = model.input().n_ctx;
    let step = Step::Layer(&p.body[0], n, positions(p.body, 0), precision);
    let (m, scale) = first_step(step, step, model, true)?;
    Ok(Moment::normalised(m, scale))
}

/// A model's cached self chain ([`self_chain`]): `Σ_aa` after every body layer but a first
/// linear one ([`linear_first`]), those past the last attention layer ([`Positions::local`])
/// kept as their same-position blocks alone (the others are zero), and the precision of its
/// attention moments.
pub struct Chain {
    kept: Vec<Kept>,
    precision: Precision,
    /// Its traces through its head (those of [`Traces::aa`]).
    traces: Vec<f64>,
    /// `W Wᵀ` of a first linear layer on the standard input, from which its moment (not
    /// kept, `[n, w, n, w]`) is rebuilt.
    first: Option<Mat<f64>>,
}

enum Kept {
    Full(Moment),
    /// `Σ[t, ·, t, ·]` as `[n, w, w]`.
    Local(Moment),
}

impl Chain {
    /// Moments kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The precision of its attention moments.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The `k`-th moment kept, as the full `[n, w, n, w]` moment.
    pub fn moment(&self, k: usize) -> Moment {
        match &self.kept[k] {
            Kept::Full(m) => m.clone(),
            Kept::Local(b) => {
                let (n, w) = (b.m.shape[0], b.m.shape[1]);
                let mut m = Tensor::zeros(vec![n, w, n, w]);
                for t in 0..n {
                    for i in 0..w {
                        let (row, from) = (((t * w + i) * n + t) * w, (t * w + i) * w);
                        m.data[row..row + w].copy_from_slice(&b.m.data[from..from + w]);
                    }
                }
                Moment { m, scale: b.scale }
            }
        }
    }

    fn keep(m: Moment, local: bool) -> Kept {
        if !local {
            return Kept::Full(m);
        }
        let (n, w) = (m.m.shape[0], m.m.shape[1]);
        let data = (0..n * w)
            .flat_map(|ti| {
                let row = ti * n * w + (ti / w) * w;
                m.m.data[row..row + w].iter().copied()
            })
            .collect();
        Kept::Local(Moment {
            m: Tensor::new(vec![n, w, w], data),
            scale: m.scale,
        })
    }
}

/// A model's self chain (closure; see [`Split`] and [`Chain`]).
pub fn self_chain(model: &Model, precision: Precision) -> Result<Chain> {
    check_memory(&[model], 1.0, held(precision, 1, true))?;
    let n = model.input().n_ctx;
    let p = split(model);
    let body = p.body;
    let mut last = first_self(&p, model, precision)?;
    let mut chain = vec![];
    for k in 1..body.len() {
        let step = Step::Layer(&body[k], n, positions(body, k), precision);
        let next = self_step(&last, step)?;
        let local = positions(body, k - 1).local;
        chain.push(Chain::keep(std::mem::replace(&mut last, next), local));
    }
    let head = p.head();
    let traces = linear::moment::readout(&last.m, head.as_deref(), head.as_deref());
    chain.push(Chain::keep(last, positions(body, body.len() - 1).local));
    // A first linear layer's moment is not kept: rebuilt from `W Wᵀ` on the standard input,
    // else computed again.
    let first = match &body[0] {
        Layer::Linear(l) => {
            chain.remove(0);
            model
                .law()
                .is_none()
                .then(|| linear::moment::input_gram(l, l))
        }
        _ => None,
    };
    Ok(Chain {
        kept: chain,
        precision,
        traces,
        first,
    })
}

/// `Σ_aa` after body layer `k` (the last past the body: identity pads) from a cached chain.
fn cached(p: &Split<'_>, model: &Model, chain: &Chain, k: usize) -> Result<Moment> {
    let (k, skip) = (k.min(p.body.len() - 1), usize::from(linear_first(p.body)));
    match k < skip {
        true => match (&chain.first, &p.body[0]) {
            (Some(g), Layer::Linear(l)) => {
                let (n, local) = (model.input().n_ctx, positions(p.body, 0).local);
                let m = linear::moment::from_gram(l, l, g, n, local);
                Ok(Moment::normalised(m, 0.0))
            }
            _ => first_self(p, model, chain.precision),
        },
        false => Ok(chain.moment(k - skip)),
    }
}

/// The whole network as a sum of terms on the input (compositions of every layer's terms).
fn composed(model: &Model) -> Vec<Term> {
    let n = model.input().n_ctx;
    let mut terms: Vec<Term> = vec![];
    for (k, layer) in model.layers().iter().enumerate() {
        let outer = layer.terms(n);
        if k == 0 {
            terms = outer;
            continue;
        }
        let mut next = vec![];
        for t in &outer {
            // Every assignment of the current terms to the legs of `t`.
            let mut choice = vec![0usize; t.legs.len()];
            loop {
                let inner: Vec<Term> = choice.iter().map(|&c| terms[c].clone()).collect();
                next.push(t.compose(&inner));
                let Some(pos) = (0..choice.len())
                    .rev()
                    .find(|&q| choice[q] + 1 < terms.len())
                else {
                    break;
                };
                choice[pos] += 1;
                choice[pos + 1..].iter_mut().for_each(|c| *c = 0);
            }
        }
        terms = next;
    }
    terms
}

/// Legs per composed term as `(legs, number of terms)` (without building them); `None` once a
/// term would have more than 64 legs (far beyond any affordable enumeration).
fn composed_shape(model: &Model) -> Option<Vec<(usize, u128)>> {
    let mut hist: Vec<(usize, u128)> = vec![(1, 1)];
    for layer in model.layers() {
        let outer: Vec<usize> = match layer {
            Layer::Attention(_) => vec![1, 5],
            _ => vec![layer.degree() as usize],
        };
        let mut next: Vec<(usize, u128)> = vec![];
        for k in outer {
            // Each of the k legs takes any current term: leg counts add, multiplicities multiply.
            let mut sums: Vec<(usize, u128)> = vec![(0, 1)];
            for _ in 0..k {
                let mut grown: Vec<(usize, u128)> = vec![];
                for &(s, m) in &sums {
                    for &(l, c) in &hist {
                        if s + l > 64 {
                            return None;
                        }
                        match grown.iter_mut().find(|(x, _)| *x == s + l) {
                            Some(e) => e.1 = e.1.saturating_add(m.saturating_mul(c)),
                            None => grown.push((s + l, m.saturating_mul(c))),
                        }
                    }
                }
                sums = grown;
            }
            next.extend(sums);
        }
        hist = next;
    }
    Some(hist)
}

/// Wick configurations the exact mode enumerates for the pair (all term pairs of `aa`, `ab`, `bb`).
pub fn exact_cost(a: &Model, b: &Model) -> u128 {
    let (Some(la), Some(lb)) = (composed_shape(a), composed_shape(b)) else {
        return u128::MAX;
    };
    let pairs = |x: &[(usize, u128)], y: &[(usize, u128)]| -> u128 {
        x.iter()
            .flat_map(|&(p, m)| {
                y.iter()
                    .map(move |&(q, c)| wick::n_configs(p + q).saturating_mul(m.saturating_mul(c)))
            })
            .fold(0u128, |s, v| s.saturating_add(v))
    };
    pairs(&la, &la)
        .saturating_add(pairs(&la, &lb))
        .saturating_add(pairs(&lb, &lb))
}

/// Whether layer-by-layer propagation involves no closure: every non-linear layer of either
/// model sits at the same (aligned) step.
pub fn closure_is_exact(a: &Model, b: &Model) -> bool {
    let (la, lb) = aligned(a, b);
    let steps: Vec<usize> = (0..la.len())
        .filter(|&k| nonlinear(&la[k]) || nonlinear(&lb[k]))
        .collect();
    steps.len() <= 1
}

/// What the final moments give: the scaled data diagonals `Σ_t Σ̃[t, o, t, o]` (`o ≥ 1`) of
/// `Σ̃_ab`, `Σ̃_aa`, `Σ̃_bb` and the self scales `s_a`, `s_b`.
pub struct Traces {
    pub ab: Vec<f64>,
    pub aa: Vec<f64>,
    pub bb: Vec<f64>,
    pub sa: f64,
    pub sb: f64,
}

impl Traces {
    /// The traces of moments after the bodies, read out through the heads.
    fn new(
        sab: &Tensor,
        ea: &Moment,
        eb: &Moment,
        heads: (Option<&Linear>, Option<&Linear>),
    ) -> Traces {
        let readout = linear::moment::readout;
        let (ab, (aa, bb)) = rayon::join(
            || readout(sab, heads.0, heads.1),
            || {
                rayon::join(
                    || readout(&ea.m, heads.0, heads.0),
                    || readout(&eb.m, heads.1, heads.1),
                )
            },
        );
        Traces {
            ab,
            aa,
            bb,
            sa: ea.scale,
            sb: eb.scale,
        }
    }

    /// The scaled traces `(tr Σ̃_ab, tr Σ̃_aa, tr Σ̃_bb)` (scales cancel in the cosine).
    pub fn scaled(&self) -> (f64, f64, f64) {
        let sum = |v: &[f64]| v.iter().sum::<f64>();
        (sum(&self.ab), sum(&self.aa), sum(&self.bb))
    }

    /// `(E⟨f_a,f_b⟩, E|f_a|², E|f_b|²)`.
    pub fn unscaled(&self) -> (f64, f64, f64) {
        let (ab, aa, bb) = self.scaled();
        (
            ab * (0.5 * (self.sa + self.sb)).exp(),
            aa * self.sa.exp(),
            bb * self.sb.exp(),
        )
    }
}

/// The closure, step by step, its attention moments in `precision`. `cached`: both self
/// chains computed before (all-pairs matrices), in the same precision.
pub fn closure_traces(
    a: &Model,
    b: &Model,
    cached: Option<(&Chain, &Chain)>,
    precision: Precision,
) -> Result<Traces> {
    let (sab, sa, sb) = closure_ends(a, b, cached, precision)?;
    let (pa, pb) = (split(a), split(b));
    let heads = (pa.head(), pb.head());
    let heads = (heads.0.as_deref(), heads.1.as_deref());
    Ok(match cached {
        // The self traces as the chains hold them.
        Some((ca, cb)) => Traces {
            ab: linear::moment::readout(&sab, heads.0, heads.1),
            aa: ca.traces.clone(),
            bb: cb.traces.clone(),
            sa: sa.scale,
            sb: sb.scale,
        },
        None => Traces::new(&sab, &sa, &sb, heads),
    })
}

/// The closure's moments after both bodies: `(Σ̃_ab, Σ_aa, Σ_bb)`, `Σ_ab = e^{(s_a+s_b)/2} Σ̃_ab`.
pub fn closure_ends(
    a: &Model,
    b: &Model,
    cached: Option<(&Chain, &Chain)>,
    precision: Precision,
) -> Result<(Tensor, Moment, Moment)> {
    if let Some((ca, cb)) =
        cached.filter(|(a, b)| (a.precision, b.precision) != (precision, precision))
    {
        return Err(crate::error::Error::Invalid(format!(
            "self chains in {} and {} for a closure in {precision}",
            ca.precision, cb.precision
        )));
    }
    if cached.is_none() {
        // With cached chains the batch form checked once for all pairs.
        check_memory(&[a, b], 1.0, held(precision, 1, false))?;
    }
    let (pa, pb) = (split(a), split(b));
    let (la, lb) = aligned(a, b);
    let n = a.input().n_ctx;
    // The cross step assumes of positions what holds for both models; a self step reads its
    // own model alone, as in `self_chain`.
    let steps = |k: usize| {
        let both = positions(&la, k).and(positions(&lb, k));
        (
            Step::Layer(&la[k], n, both, precision),
            Step::Layer(&lb[k], n, both, precision),
        )
    };
    fn own(body: &[Layer], n: usize, k: usize, precision: Precision) -> Step<'_> {
        Step::Layer(&body[k], n, positions(body, k), precision)
    }
    // A model against itself (one model, or two equal ones): the cross moment is the self
    // moment, so that the similarity is 1 exactly in either precision; no cross step runs.
    if std::ptr::eq(a, b) || a == b {
        let last = pa.body.len() - 1;
        let s = match cached {
            Some((ca, _)) => self::cached(&pa, a, ca, last)?,
            None => {
                let mut s = first_self(&pa, a, precision)?;
                for k in 1..=last {
                    s = self_step(&s, own(pa.body, n, k, precision))?;
                }
                s
            }
        };
        return Ok((s.m.clone(), s.clone(), s));
    }
    let (sa, sb, ab) = match cached {
        Some((ca, cb)) => {
            let (x, y) = steps(0);
            let ab = first_step(x, y, a, false)?;
            (
                self::cached(&pa, a, ca, 0)?,
                self::cached(&pb, b, cb, 0)?,
                ab,
            )
        }
        None => {
            let ((na, nb), ab) = rayon::join(
                || {
                    rayon::join(
                        || first_self(&pa, a, precision),
                        || first_self(&pb, b, precision),
                    )
                },
                || {
                    let (x, y) = steps(0);
                    first_step(x, y, a, false)
                },
            );
            (na?, nb?, ab?)
        }
    };
    let mut sab = matched(ab, &sa, &sb);
    let (mut sa, mut sb) = (sa, sb);
    for k in 1..la.len() {
        // A self step past a model's own body (an identity pad) keeps its moment.
        let next = |p: &Split<'_>, m: &Model, s: &Moment, chain: Option<&Chain>| match chain {
            Some(c) => self::cached(p, m, c, k),
            None if k < p.body.len() => self_step(s, own(p.body, n, k, precision)),
            None => Ok(s.clone()),
        };
        let self_a = || next(&pa, a, &sa, cached.map(|c| c.0));
        let self_b = || next(&pb, b, &sb, cached.map(|c| c.1));
        let cross = || cross_step(&sab, (&sa, &sb), steps(k));
        // The self steps and the cross step read only the moments before them. f64 attention
        // steps run one at a time, each on every thread (side by side, the three steps'
        // projected covariances would be held at once); the others side by side.
        let attention = [&*la[k], &*lb[k]]
            .into_iter()
            .any(|l| matches!(l, Layer::Attention(_)));
        let ((na, nb), ab) = if attention && !side_by_side(precision) {
            let ab = cross();
            ((self_a(), self_b()), ab)
        } else {
            rayon::join(|| rayon::join(self_a, self_b), cross)
        };
        (sa, sb) = (na?, nb?);
        sab = matched(ab?, &sa, &sb);
    }
    Ok((sab, sa, sb))
}

/// The exact Wick sum of both models composed into one network each.
pub fn exact_traces(a: &Model, b: &Model) -> Result<Traces> {
    let (sab, ea, eb) = exact_ends(a, b)?;
    Ok(Traces::new(&sab, &ea, &eb, (None, None)))
}

/// The exact output moments `(Σ̃_ab, Σ_aa, Σ_bb)` as [`closure_ends`] gives them.
pub fn exact_ends(a: &Model, b: &Model) -> Result<(Tensor, Moment, Moment)> {
    // The input's moment and the output's are formed, a dozen copies.
    let w = (a.in_dim().max(a.out_dim()).max(b.out_dim()) + 1) * a.input().n_ctx;
    crate::budget::check(
        "the Gaussian moments of the input and output",
        13.0 * (w as f64).powi(2),
    )?;
    let s0 = Moment::input(a.input().n_ctx, a.in_dim(), a.law());
    let (ta, tb) = (composed(a), composed(b));
    let (ea, eb) = (
        self_step(&s0, Step::Terms(&ta))?,
        self_step(&s0, Step::Terms(&tb))?,
    );
    let sab = cross_step(&s0.m, (&s0, &s0), (Step::Terms(&ta), Step::Terms(&tb)))?;
    Ok((matched(sab, &ea, &eb), ea, eb))
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::arch::{Mask, Residual};
    use crate::layers::Attention;
    use crate::metrics::gaussian::similarity_cached;
    use crate::moment::max_diff;

    fn attention(rng: &mut rand::rngs::StdRng, d: usize, mask: Mask) -> Layer {
        let mut m = || Mat::from_fn(d, d, |_, _| rng.random_range(-0.6..0.6));
        let (q1, k1, q2, k2, v, o) = (m(), m(), m(), m(), m(), m());
        let mut b = || Some((0..d).map(|_| rng.random_range(-0.5..0.5)).collect());
        Layer::Attention(Box::new(Attention {
            n_head: 1,
            q1,
            k1,
            q2,
            k2,
            v,
            o,
            q1_bias: b(),
            k1_bias: None,
            q2_bias: b(),
            k2_bias: b(),
            mask,
            rotary: Some(10.0),
            residual: Some(Residual {
                mode: ResidualMode::Lerp,
                scale: 0.6,
            }),
        }))
    }

    fn bilinear(rng: &mut rand::rngs::StdRng, d: usize, h: usize) -> Layer {
        let mut m = |r: usize, c: usize| Mat::from_fn(r, c, |_, _| rng.random_range(-0.6..0.6));
        Layer::Bilinear(crate::layers::Bilinear {
            left: m(h, d),
            right: m(h, d),
            down: Some(m(d, h)),
            left_bias: Some(vec![0.3; h]),
            right_bias: None,
            down_bias: Some(vec![-0.2; d]),
            residual: Some(Residual {
                mode: ResidualMode::Lerp,
                scale: 0.5,
            }),
        })
    }

    fn linear(rng: &mut rand::rngs::StdRng, out: usize, inp: usize) -> Layer {
        Layer::Linear(Linear {
            weight: Mat::from_fn(out, inp, |_, _| rng.random_range(-1.0..1.0)),
            bias: Some((0..out).map(|_| rng.random_range(-0.5..0.5)).collect()),
        })
    }

    /// `e^s·m` (the moment a scaled moment stands for).
    fn unscaled(s: &Moment) -> Vec<f64> {
        s.m.data.iter().map(|v| v * s.scale.exp()).collect()
    }

    /// The first attention layer reads independent positions (their covariances only rounding
    /// away from zero, which it drops), the second mixed ones, and the bilinear layer after it
    /// (like the second attention layer, the last to mix positions) is wanted on same-position
    /// blocks alone: the self chain (with the first step) equals the configuration sum at every
    /// step, on the blocks each step computes.
    #[test]
    fn the_self_chain_equals_the_configuration_sum_before_and_after_mixing() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let layers = vec![
            linear(&mut rng, 4, 2),
            attention(&mut rng, 4, Mask::Causal),
            attention(&mut rng, 4, Mask::None),
            bilinear(&mut rng, 4, 3),
        ];
        let model = Model::new(2, 2, layers.clone()).unwrap();
        // The chain leaves out the first (linear) layer's moment, recomputed where needed.
        let chain = self_chain(&model, Precision::F64).unwrap();
        assert_eq!(chain.len(), 3);
        let first = first_self(&split(&model), &model, Precision::F64).unwrap();
        let fast: Vec<Moment> = std::iter::once(first)
            .chain((0..3).map(|k| chain.moment(k)))
            .collect();
        let mut slow = Moment::initial(2, 2);
        for (k, layer) in layers.iter().enumerate() {
            // The layer's terms, configuration by configuration, on every block.
            slow = self_step(&slow, Step::Terms(&layer.terms(2))).unwrap();
            let want = Moment {
                m: match positions(&layers, k).local {
                    true => same_position(slow.m.clone()),
                    false => slow.m.clone(),
                },
                scale: slow.scale,
            };
            let (f, w) = (unscaled(&fast[k]), unscaled(&want));
            let scale = w.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let err = max_diff(&f, &w);
            assert!(err < 1e-11 * scale, "step {k}: {err} (scale {scale})");
        }
    }

    /// The closure of a pair, step by step over every block and every layer, configuration by
    /// configuration (no shortcut of independent or local positions, no closed-form first
    /// step or readout); the shallower model padded with identities at its end.
    fn reference(a: &Model, b: &Model) -> Traces {
        let depth = a.layers().len().max(b.layers().len());
        let pad = |m: &Model| {
            let mut v = m.layers().to_vec();
            let d = m.out_dim();
            v.resize(
                depth,
                Layer::Linear(Linear {
                    weight: Mat::identity(d, d),
                    bias: None,
                }),
            );
            v
        };
        let (la, lb) = (pad(a), pad(b));
        let n = a.input().n_ctx;
        let start = Moment::initial(a.input().n_ctx, a.in_dim());
        let (mut sa, mut sb, mut sab) = (start.clone(), start.clone(), start.m);
        for (x, y) in la.iter().zip(&lb) {
            let (tx, ty) = (x.terms(n), y.terms(n));
            let ab = cross_step(&sab, (&sa, &sb), (Step::Terms(&tx), Step::Terms(&ty))).unwrap();
            sa = self_step(&sa, Step::Terms(&tx)).unwrap();
            sb = self_step(&sb, Step::Terms(&ty)).unwrap();
            sab = matched(ab, &sa, &sb);
        }
        Traces::new(&sab, &sa, &sb, (None, None))
    }

    /// Per-output `(E f_a,o f_b,o, E f_a,o², E f_b,o²)`.
    fn per_output(t: &Traces) -> Vec<[f64; 3]> {
        let (ab, aa, bb) = ((0.5 * (t.sa + t.sb)).exp(), t.sa.exp(), t.sb.exp());
        (0..t.ab.len())
            .map(|o| [t.ab[o] * ab, t.aa[o] * aa, t.bb[o] * bb])
            .collect()
    }

    /// The first step in closed form and the readout through the trailing linear layers equal
    /// the full moments output by output: first layers linear or not, two, one or no linear
    /// layers after the last non-linear one, and models of linear layers alone.
    /// The leg counts `composed_shape` takes from the layers' degrees (without building any
    /// term) are those of the composed terms themselves.
    #[test]
    fn composed_shape_counts_the_composed_terms() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let layers = vec![
            linear(&mut rng, 3, 2),
            bilinear(&mut rng, 3, 2),
            linear(&mut rng, 3, 3),
            bilinear(&mut rng, 3, 2),
        ];
        let model = Model::new(2, 1, layers).unwrap();
        let mut built: Vec<(usize, u128)> = vec![];
        for t in composed(&model) {
            match built.iter_mut().find(|(l, _)| *l == t.legs.len()) {
                Some(e) => e.1 += 1,
                None => built.push((t.legs.len(), 1)),
            }
        }
        let mut shape = composed_shape(&model).unwrap();
        shape.sort();
        built.sort();
        assert_eq!(shape, built);
    }

    #[test]
    fn the_first_step_and_the_readout_equal_the_full_moments_output_by_output() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(33);
        let r = &mut rng;
        let models = [
            vec![
                linear(r, 4, 3),
                attention(r, 4, Mask::Causal),
                linear(r, 5, 4),
                linear(r, 2, 5),
            ],
            vec![
                linear(r, 4, 3),
                attention(r, 4, Mask::None),
                bilinear(r, 4, 3),
                linear(r, 2, 4),
            ],
            vec![
                bilinear(r, 3, 2),
                linear(r, 4, 3),
                attention(r, 4, Mask::Causal),
                linear(r, 2, 4),
            ],
            vec![linear(r, 2, 3), bilinear(r, 2, 3)],
            vec![linear(r, 2, 3)],
            vec![linear(r, 4, 3), linear(r, 2, 4)],
        ]
        .map(|layers| Model::new(3, 2, layers).unwrap());
        for (i, a) in models.iter().enumerate() {
            for b in &models[i..] {
                let want = per_output(&reference(a, b));
                let got = per_output(&closure_traces(a, b, None, Precision::F64).unwrap());
                let (ca, cb) = (
                    self_chain(a, Precision::F64).unwrap(),
                    self_chain(b, Precision::F64).unwrap(),
                );
                let cached =
                    per_output(&closure_traces(a, b, Some((&ca, &cb)), Precision::F64).unwrap());
                // Chains of another precision are refused, not mixed in.
                assert!(closure_traces(a, b, Some((&ca, &cb)), Precision::F32).is_err());
                for (x, w) in got.iter().chain(&cached).zip(want.iter().cycle()) {
                    let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    assert!(max_diff(x, w) < 1e-12 * scale, "{i}: {x:?} vs {w:?}");
                }
            }
        }
    }

    /// Pairs whose layers mix positions at different depths: a cross step is local only where
    /// both models are, and a model's local self moment still serves the cross steps after
    /// it; and a pair whose last attention layers are both local (the pair and the
    /// cached-chain path equal the reference throughout).
    #[test]
    fn pairs_equal_the_configuration_sum_where_models_stop_mixing_at_different_depths() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let model = |mix: [bool; 2], rng: &mut rand::rngs::StdRng| {
            let mut layers = vec![linear(rng, 4, 2), attention(rng, 4, Mask::Causal)];
            for m in mix {
                layers.push(match m {
                    true => attention(rng, 4, Mask::None),
                    false => bilinear(rng, 4, 3),
                });
            }
            layers.push(linear(rng, 2, 4));
            Model::new(2, 2, layers).unwrap()
        };
        let early = model([false, false], &mut rng);
        let late = model([true, false], &mut rng);
        let last = model([false, true], &mut rng);
        // Two models of one shape: their last attention layers meet in a local cross step.
        let other = model([false, true], &mut rng);
        for (a, b) in [
            (&early, &late),
            (&late, &last),
            (&last, &early),
            (&last, &other),
        ] {
            let want = reference(a, b).unscaled();
            let got = closure_traces(a, b, None, Precision::F64)
                .unwrap()
                .unscaled();
            let (ca, cb) = (
                self_chain(a, Precision::F64).unwrap(),
                self_chain(b, Precision::F64).unwrap(),
            );
            let cached = similarity_cached(a, b, &ca, &cb).unwrap();
            let rel = |x: f64, y: f64| (x - y).abs() / y.abs().max(1e-300);
            assert!(
                rel(got.0, want.0) < 1e-10
                    && rel(got.1, want.1) < 1e-10
                    && rel(got.2, want.2) < 1e-10,
                "{got:?} vs {want:?}"
            );
            let cosine = want.0 / (want.1 * want.2).sqrt();
            assert!((cached - cosine).abs() < 1e-10, "{cached} vs {cosine}");
        }
    }
}
