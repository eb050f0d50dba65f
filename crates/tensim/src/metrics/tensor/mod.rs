//! Tensor similarity (MATH.md §3): `TS(a,b) = ⟨P_W U_a, P_W U_b⟩ / √(⟨P_W U_a,P_W U_a⟩⟨P_W U_b,P_W U_b⟩)`
//! where `U` is the unrolled padded coefficient tensor and `P_W` symmetrises every bilinear node.
//!
//! Computed exactly by the Gram recursion (§3.3), starting from `G = I` on the padded input:
//!
//! ```text
//! linear of a:   G ← Ŵ_a G          linear of b:   G ← G Ŵ_bᵀ
//! bilinear pair: K = ½[(L̂_a G L̂_bᵀ)∘(R̂_a G R̂_bᵀ) + (L̂_a G R̂_bᵀ)∘(R̂_a G L̂_bᵀ)],  G ← D̂_a K D̂_bᵀ
//! inner(a,b) = Σ_{o≥1} G[o,o]
//! ```
//!
//! Linear layers act on one side only, so the models may have different numbers of linear
//! layers; bilinear layers are paired in order, and hidden widths may differ. A model with fewer
//! bilinear layers is lifted by identity nodes `ŷ = ŷ ∘ ŷ₀` appended at its output (its function
//! is unchanged; its tensor gains unit legs, which weights the lower-degree parts as the
//! homogenised polynomial does, §3.4).

mod stacked;

use rayon::prelude::*;

use crate::budget;
use crate::einsum::Tensor;
use crate::error::{Error, Result};
use crate::gram::Gram;
use crate::layers::{PaddedBilinear, PaddedLayer};
use crate::linalg::{mul, Par};
use crate::metrics::batch::{Batch, Pairs, PerPair};
use crate::metrics::{cosine, cosines, Comparison, Kind, Options};
use crate::model::Model;

/// The padded nodes of `model`, lifted to `depth` bilinear layers by identity nodes at the output.
/// A linear layer that narrows its input and follows a bilinear node is folded into that node's
/// `D̂ ← Ŵ D̂` (same tensor, smaller Grams: a 10-class head shrinks the last `D̂ K D̂ᵀ`).
pub fn lifted_nodes(model: &Model, depth: usize) -> Vec<PaddedLayer> {
    let mut nodes: Vec<PaddedLayer> = Vec::new();
    for node in model.padded() {
        match (nodes.last_mut(), node) {
            (Some(PaddedLayer::Bilinear(b)), PaddedLayer::Linear(l))
                if l.w.nrows() < l.w.ncols() =>
            {
                b.d = mul(l.w.as_ref(), b.d.as_ref(), Par::Seq);
            }
            (_, node) => nodes.push(node),
        }
    }
    for _ in model.n_bilinear()..depth {
        nodes.push(PaddedLayer::Bilinear(PaddedBilinear::identity(
            model.out_dim(),
        )));
    }
    nodes
}

/// The cross Gram `G_ab` over the padded output spaces after the whole recursion.
/// Both node lists must have the same number of bilinear nodes. `same`: `a` and `b` are the same
/// list (self inner product; one GEMM per bilinear node is saved).
pub fn cross_gram(a: &[PaddedLayer], b: &[PaddedLayer], same: bool, par: Par) -> Gram {
    let (mut ia, mut ib) = (0, 0);
    let mut g = Gram::identity();
    loop {
        while let Some(PaddedLayer::Linear(l)) = a.get(ia) {
            g = l.gram_left(&g, par);
            ia += 1;
        }
        while let Some(PaddedLayer::Linear(l)) = b.get(ib) {
            g = l.gram_right(&g, par);
            ib += 1;
        }
        match (a.get(ia), b.get(ib)) {
            (Some(PaddedLayer::Bilinear(na)), Some(PaddedLayer::Bilinear(nb))) => {
                g = na.gram_update(nb, &g, same, par);
                ia += 1;
                ib += 1;
            }
            (None, None) => return g,
            _ => unreachable!("node lists with different numbers of bilinear nodes"),
        }
    }
}

fn bilinear_nodes(v: &[PaddedLayer]) -> impl Iterator<Item = &PaddedBilinear> {
    v.iter().filter_map(|n| match n {
        PaddedLayer::Bilinear(p) => Some(p),
        PaddedLayer::Linear(_) => None,
    })
}

/// Entries of the largest intermediate of the recursion for `(a, b)`.
fn workspace(a: &[PaddedLayer], b: &[PaddedLayer]) -> usize {
    let dims = |v: &[PaddedLayer]| -> usize {
        v.iter()
            .map(|n| match n {
                PaddedLayer::Linear(l) => l.w.nrows(),
                PaddedLayer::Bilinear(p) => p.d.nrows(),
            })
            .max()
            .unwrap_or(0)
    };
    let pairs = bilinear_nodes(a)
        .zip(bilinear_nodes(b))
        .map(|(x, y)| x.gram_workspace(y))
        .max()
        .unwrap_or(0);
    pairs + 2 * dims(a) * dims(b)
}

/// Both models' node lists, lifted to the deeper one's bilinear depth (position-wise models).
fn lifted_pair(a: &Model, b: &Model) -> Result<(Vec<PaddedLayer>, Vec<PaddedLayer>)> {
    a.require_position_wise("the tensor metric")?;
    b.require_position_wise("the tensor metric")?;
    let depth = a.n_bilinear().max(b.n_bilinear());
    Ok((lifted_nodes(a, depth), lifted_nodes(b, depth)))
}

/// `inner(a, b)` alone: the cross recursion only, after a memory check.
pub fn inner(a: &Model, b: &Model, par: Par) -> Result<f64> {
    let (na, nb) = lifted_pair(a, b)?;
    budget::check(
        "the tensor-similarity recursion",
        workspace(&na, &nb) as f64,
    )?;
    let (t, s) = trace(&cross_gram(&na, &nb, false, par));
    Ok(t * s.exp())
}

/// The three Grams `(G_ab, G_aa, G_bb)` of the recursion, after a memory check.
pub fn grams(a: &Model, b: &Model, par: Par) -> Result<(Gram, Gram, Gram)> {
    let (na, nb) = lifted_pair(a, b)?;
    let ws = workspace(&na, &nb)
        .max(workspace(&na, &na))
        .max(workspace(&nb, &nb));
    budget::check("the tensor-similarity recursion", ws as f64)?;
    Ok((
        cross_gram(&na, &nb, false, par),
        cross_gram(&na, &na, true, par),
        cross_gram(&nb, &nb, true, par),
    ))
}

/// `inner(a,b) = Σ_{o≥1} G[o,o]` of a Gram, as `(t, s)` with `inner = t·e^s`.
pub fn trace(g: &Gram) -> (f64, f64) {
    (g.scaled_data_diagonal().iter().sum(), g.log_scale())
}

/// Cosine from the traces `(t, s)` of `G_ab`, `G_aa`, `G_bb`: the scales combine into one factor.
pub fn cosine_of(ab: (f64, f64), aa: (f64, f64), bb: (f64, f64)) -> Result<f64> {
    let factor = (ab.1 - 0.5 * (aa.1 + bb.1)).exp();
    cosine(factor * ab.0, aa.0, bb.0, Kind::Tensor)
}

/// Tensor similarity of `a` and `b` (input and output sizes must agree).
pub fn similarity(a: &Model, b: &Model, opts: &Options) -> Result<Comparison> {
    crate::metrics::check_io(a, b)?;
    if a.first_attention().is_some() || b.first_attention().is_some() {
        let mut r = network_similarity(a, b)?;
        if !opts.per_output {
            r.per_output = None;
        }
        return Ok(r);
    }
    let (gab, gaa, gbb) = grams(a, b, opts.par)?;
    let (dab, daa, dbb) = (
        gab.scaled_data_diagonal(),
        gaa.scaled_data_diagonal(),
        gbb.scaled_data_diagonal(),
    );
    let (sab, saa, sbb) = (gab.log_scale(), gaa.log_scale(), gbb.log_scale());
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let similarity = cosine_of(trace(&gab), trace(&gaa), trace(&gbb))?;
    let factor = (sab - 0.5 * (saa + sbb)).exp();
    let per_output = opts.per_output.then(|| {
        let scaled: Vec<f64> = dab.iter().map(|v| v * factor).collect();
        cosines(&scaled, &daa, &dbb)
    });
    Ok(Comparison {
        metric: Kind::Tensor,
        similarity,
        inner: sab.exp() * sum(&dab),
        norm2_a: saa.exp() * sum(&daa),
        norm2_b: sbb.exp() * sum(&dbb),
        per_output,
        samples: None,
        inputs: None,
        ..Default::default()
    })
}

/// The Gram of the padded input of `model`: `δ_tt' δ_ij` on `n` positions of padded size `w`,
/// or `δ_tt' Â_t Â_tᵀ` under a law of its positions
/// ([`PositionLaw::moment`](crate::distribution::PositionLaw::moment)).
fn input_gram(model: &Model) -> Tensor {
    let (n, w) = (model.input().n_ctx, model.in_dim() + 1);
    if let Some(law) = model.law() {
        return law.moment(None, None, true);
    }
    let mut g = Tensor::zeros(vec![n, w, n, w]);
    for k in 0..n * w {
        g.data[k * n * w + k] = 1.0;
    }
    g
}

/// Tensor similarity of models with attention layers (MATH.md §8, last paragraph): the
/// hierarchical cross-only inner product, each layer's term symmetrised over all permutations
/// of its legs. Grams `G_xy[t,i,t',i']` start at the identity; a layer maps
/// `G' = Σ_{l,r} (1/k!) Σ_{bijections π of the k legs} contract(l ⊗ r; G on every pair (j, π j))`
/// (terms of different leg counts are orthogonal). Both models need the same layer kinds in the
/// same order and the same `n_ctx`.
pub fn network_similarity(a: &Model, b: &Model) -> Result<Comparison> {
    use crate::layers::linear::moment::readout;
    let (gab, ga, gb) = network_ends(a, b)?;
    let (pa, pb) = (crate::propagate::split(a), crate::propagate::split(b));
    let (ha, hb) = (pa.head(), pb.head());
    let (dab, daa, dbb) = (
        readout(&gab, ha.as_deref(), hb.as_deref()),
        readout(&ga.m, ha.as_deref(), ha.as_deref()),
        readout(&gb.m, hb.as_deref(), hb.as_deref()),
    );
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let (ab, aa, bb) = (sum(&dab), sum(&daa), sum(&dbb));
    Ok(Comparison {
        metric: Kind::Tensor,
        similarity: cosine(ab, aa, bb, Kind::Tensor)?,
        inner: ab * (0.5 * (ga.scale + gb.scale)).exp(),
        norm2_a: aa * ga.scale.exp(),
        norm2_b: bb * gb.scale.exp(),
        per_output: Some(cosines(&dab, &daa, &dbb)),
        ..Default::default()
    })
}

/// The Grams after both bodies of [`network_similarity`]: `(G̃_ab, G_aa, G_bb)` with
/// `G_ab = e^{(s_a+s_b)/2} G̃_ab`.
pub fn network_ends(
    a: &Model,
    b: &Model,
) -> Result<(Tensor, crate::moment::Moment, crate::moment::Moment)> {
    use crate::layers::linear::moment::from_input;
    use crate::layers::Layer;
    use crate::moment::{combine, Moment};
    use crate::propagate::{split, symmetrised_parts};
    let kinds = |m: &Model| m.layers().iter().map(|l| l.kind()).collect::<Vec<_>>();
    if kinds(a) != kinds(b) || a.input().n_ctx != b.input().n_ctx {
        return Err(Error::Incompatible(format!(
            "the tensor metric with attention layers needs the same layer kinds in the same \
             order and the same n_ctx (got [{}] at n_ctx {} vs [{}] at n_ctx {}; the gaussian \
             metric has no such restriction)",
            kinds(a).join(", "),
            a.input().n_ctx,
            kinds(b).join(", "),
            b.input().n_ctx
        )));
    }
    crate::propagate::check_memory(&[a, b], 1.0, 1.0)?;
    let (n, pa, pb) = (a.input().n_ctx, split(a), split(b));
    let (la, lb) = (pa.body, pb.body);
    // The first step from the identity Gram: `δ_tt' Ŵ_a Ŵ_bᵀ` for two linear layers.
    let first = |x: &Layer, y: &Layer| -> Result<Tensor> {
        Ok(match (x, y) {
            (Layer::Linear(x), Layer::Linear(y)) => from_input(x, y, n, true, a.law()),
            _ => {
                let g = input_gram(a);
                combine(symmetrised_parts(x, y, n, &g)?, (0.0, 0.0), None).0
            }
        })
    };
    let (mut ga, mut gb, mut gab) = (
        Moment::normalised(first(&la[0], &la[0])?, 0.0),
        Moment::normalised(first(&lb[0], &lb[0])?, 0.0),
        first(&la[0], &lb[0])?,
    );
    let f = (-0.5 * (ga.scale + gb.scale)).exp();
    gab.data.iter_mut().for_each(|x| *x *= f);
    for (la, lb) in la.iter().zip(lb).skip(1) {
        let (va, sa) = combine(
            symmetrised_parts(la, la, n, &ga.m)?,
            (ga.scale, ga.scale),
            None,
        );
        let (vb, sb) = combine(
            symmetrised_parts(lb, lb, n, &gb.m)?,
            (gb.scale, gb.scale),
            None,
        );
        let (na, nb) = (Moment::normalised(va, sa), Moment::normalised(vb, sb));
        let shift = Some(0.5 * (na.scale + nb.scale));
        gab = combine(
            symmetrised_parts(la, lb, n, &gab)?,
            (ga.scale, gb.scale),
            shift,
        )
        .0;
        (ga, gb) = (na, nb);
    }
    Ok((gab, ga, gb))
}

/// The batch form: stacked GEMMs for one-bilinear-layer models (`stacked.rs`), otherwise pair by
/// pair (the recursion, each model's self trace computed once where all have the same depth;
/// the network recursion with attention).
pub fn batch<'a>(models: &'a [&'a Model], per_output: bool) -> Result<Box<dyn Batch + 'a>> {
    if models.iter().any(|m| m.first_attention().is_some()) {
        if per_output {
            return Err(Error::Invalid(
                "--per-output of the tensor metric covers models without attention".into(),
            ));
        }
        return Ok(Box::new(PerPair {
            planes: 1,
            pair: |i: usize, j: usize| {
                Ok(vec![network_similarity(models[i], models[j])?.similarity])
            },
            pairs: Pairs::serial_if(crate::propagate::one_pair_at_a_time(models)),
        }));
    }
    if let Some(s) = stacked::Stacked::new(models, per_output) {
        return Ok(Box::new(s));
    }
    let depth = models[0].n_bilinear();
    let same = models.iter().all(|m| m.n_bilinear() == depth) && !per_output;
    let norms = same.then(|| {
        models
            .par_iter()
            .map(|m| {
                let nodes = lifted_nodes(m, depth);
                trace(&cross_gram(&nodes, &nodes, true, Par::Seq))
            })
            .collect::<Vec<_>>()
    });
    let planes = if per_output {
        1 + models[0].out_dim()
    } else {
        1
    };
    Ok(Box::new(PerPair {
        planes,
        pair: move |i: usize, j: usize| match &norms {
            Some(n) => {
                let na = lifted_nodes(models[i], depth);
                let nb = lifted_nodes(models[j], depth);
                let ab = trace(&cross_gram(&na, &nb, false, Par::Seq));
                Ok(vec![cosine_of(ab, n[i], n[j])?])
            }
            None => {
                let opts = Options {
                    per_output,
                    per_tensor: false,
                    par: Par::Seq,
                };
                let r = similarity(models[i], models[j], &opts)?;
                let mut v = vec![r.similarity];
                v.extend(
                    r.per_output
                        .unwrap_or_default()
                        .into_iter()
                        .map(|x| x.unwrap_or(f64::NAN)),
                );
                Ok(v)
            }
        },
        pairs: Pairs::Parallel,
    }))
}
