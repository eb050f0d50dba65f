//! Gaussian functional similarity (MATH.md §4–5): `E_x[f_a(x)·f_b(x)] / √(E|f_a|² E|f_b|²)` with
//! every input position i.i.d. `N(0, I)`, from the weights, by the moment engine
//! (`propagate.rs`). Modes:
//! * `closure`: layer by layer, each layer's input treated as Gaussian with the propagated
//!   moments (approximate past the first non-linear layer);
//! * `exact`: each model composed into one network and its Wick sum enumerated: exact, for small
//!   total degree.

use crate::error::{Error, Result};
use crate::linalg::{within, Par};

use crate::layers::Layer;
use crate::metrics::batch::{Batch, Pairs, PerPair};
use crate::metrics::{cosine, cosines, Comparison, Kind, Method};
use crate::model::Model;
pub use crate::moment::Precision;
use crate::propagate::{
    closure_is_exact, closure_traces, exact_cost, exact_traces, self_chain, Chain, Traces,
};

/// How the expectation is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Enumerate the Wick sum of the whole network.
    Exact,
    /// Propagate second moments layer by layer (Gaussian closure between layers).
    Closure,
}

/// Options of the gaussian metric.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussOptions {
    /// `None`: exact when affordable, else closure.
    pub mode: Option<Mode>,
    /// Most Wick configurations `--exact` enumerates before refusing.
    pub max_configs: u128,
    /// Of the closure's attention moments ([`Precision`]).
    pub precision: Precision,
}

impl Default for GaussOptions {
    fn default() -> GaussOptions {
        GaussOptions {
            mode: None,
            max_configs: 200_000,
            precision: Precision::default(),
        }
    }
}

/// Which mode a request resolves to, and whether the result is exact.
pub fn resolve(a: &Model, b: &Model, opts: &GaussOptions) -> Result<(Mode, bool)> {
    let cheap_exact = closure_is_exact(a, b);
    let cost = exact_cost(a, b);
    match opts.mode {
        Some(Mode::Closure) => Ok((Mode::Closure, cheap_exact)),
        _ if cheap_exact => Ok((Mode::Closure, true)),
        Some(Mode::Exact) if cost > opts.max_configs => Err(Error::ExactTooLarge {
            configs: (cost != u128::MAX).then_some(cost),
            max: opts.max_configs,
        }),
        Some(Mode::Exact) => Ok((Mode::Exact, true)),
        None if cost <= opts.max_configs => Ok((Mode::Exact, true)),
        None => Ok((Mode::Closure, false)),
    }
}

/// The gaussian similarity of two models, computed on `par`'s threads.
pub fn similarity(a: &Model, b: &Model, opts: &GaussOptions, par: Par) -> Result<Comparison> {
    crate::metrics::check_io(a, b)?;
    let (mode, exact) = resolve(a, b, opts)?;
    let t = within(par, || match mode {
        Mode::Exact => exact_traces(a, b),
        Mode::Closure => closure_traces(a, b, None, opts.precision),
    })?;
    let attention = |m: &Model| m.layers().iter().any(|l| matches!(l, Layer::Attention(_)));
    let mut r = comparison(&t, exact)?;
    if mode == Mode::Closure && (attention(a) || attention(b)) {
        r.precision = Some(opts.precision);
    }
    Ok(r)
}

fn comparison(t: &Traces, exact: bool) -> Result<Comparison> {
    let (ab, aa, bb) = t.scaled();
    let (inner, norm2_a, norm2_b) = t.unscaled();
    Ok(Comparison {
        metric: Kind::Gaussian,
        similarity: cosine(ab, aa, bb, Kind::Gaussian)?,
        inner,
        norm2_a,
        norm2_b,
        mode: Some(if exact {
            Method::Exact
        } else {
            Method::Closure
        }),
        per_output: Some(cosines(&t.ab, &t.aa, &t.bb)),
        ..Default::default()
    })
}

/// Similarity from cached self chains (closure, in their precision), for all-pairs matrices.
pub fn similarity_cached(a: &Model, b: &Model, ca: &Chain, cb: &Chain) -> Result<f64> {
    let (ab, aa, bb) = closure_traces(a, b, Some((ca, cb)), ca.precision())?.scaled();
    cosine(ab, aa, bb, Kind::Gaussian)
}

/// The batch form: one self chain per model, then each pair's cross chain only (exact
/// enumeration where the default mode asks for it).
pub fn batch<'a>(models: &'a [&'a Model], opts: GaussOptions) -> Result<impl Batch + 'a> {
    // Every model's chain is kept (one moment per body layer). A pair per thread at once where
    // the memory estimate allows it (each pair at work beyond the first holds its own dozen
    // moments and covariances), else one at a time on every thread; large pairs (attention
    // covariances over 256 MB) no more than that at once. (The paper's LM in f32, 16
    // checkpoints: 84 s, 1.14 GB one at a time; 65 s, 1.43 GB two at once.)
    let kept: usize = models.iter().map(|m| crate::propagate::chain_len(m)).sum();
    let fits = |pairs: usize| {
        let held = crate::propagate::held(opts.precision, pairs, true);
        let moments = kept as f64 + 12.0 * (pairs - 1) as f64;
        crate::propagate::check_memory(models, moments, held)
    };
    let threads = rayon::current_num_threads();
    let pairs = match fits(threads) {
        Err(_) => {
            fits(1)?;
            Pairs::Serial
        }
        Ok(()) if crate::propagate::one_pair_at_a_time(models) => Pairs::AtMost(threads),
        Ok(()) => Pairs::Parallel,
    };
    let chains = pairs
        .map(models, |m| self_chain(m, opts.precision))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    Ok(PerPair {
        pairs,
        planes: 1,
        pair: move |i: usize, j: usize| {
            let (a, b) = (models[i], models[j]);
            let v = match resolve(a, b, &opts)?.0 {
                Mode::Closure => similarity_cached(a, b, &chains[i], &chains[j])?,
                Mode::Exact => similarity(a, b, &opts, Par::rayon(0))?.similarity,
            };
            Ok(vec![v])
        },
    })
}
