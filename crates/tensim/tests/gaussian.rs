//! The gaussian metric `E⟨f_a(x), f_b(x)⟩` (x ~ N(0, I) at every position): closed forms,
//! Monte-Carlo agreement (10⁶ samples, within 4 standard errors), closure vs exact, and the
//! invariance laws.

mod common;

use common::{agrees, monte_carlo, random_attention};
use faer::linalg::solvers::DenseSolveCore;
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use tensim::arch::{Mask, Residual, ResidualMode};
use tensim::layers::{Attention, Bilinear, Layer, Linear};
use tensim::linalg::{Mat, Par};
use tensim::metrics::batch::Batch;
use tensim::metrics::gaussian::{self, GaussOptions, Mode, Precision};
use tensim::metrics::inputs::outputs;
use tensim::metrics::Inputs;
use tensim::metrics::Method;
use tensim::Model;

fn mat(rng: &mut rand::rngs::StdRng, r: usize, c: usize, s: f64) -> Mat<f64> {
    Mat::from_fn(r, c, |_, _| s * rng.random_range(-1.0..1.0))
}

fn vecr(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-0.5..0.5)).collect()
}

fn bilinear(
    rng: &mut rand::rngs::StdRng,
    d: usize,
    h: usize,
    out: usize,
    bias: bool,
    residual: Option<Residual>,
) -> Layer {
    Layer::Bilinear(Bilinear {
        left: mat(rng, h, d, 0.7),
        right: mat(rng, h, d, 0.7),
        down: Some(mat(rng, out, h, 0.7)),
        left_bias: bias.then(|| vecr(rng, h)),
        right_bias: bias.then(|| vecr(rng, h)),
        down_bias: bias.then(|| vecr(rng, out)),
        residual,
    })
}

fn attention(
    rng: &mut rand::rngs::StdRng,
    d: usize,
    heads: usize,
    bias: bool,
    rotary: bool,
    mask: Mask,
    residual: Option<Residual>,
) -> Layer {
    let rotary = rotary.then_some(10.0);
    Layer::Attention(Box::new(random_attention(
        rng, d, heads, bias, rotary, mask, residual,
    )))
}

/// The modes in f64: the checks of the mathematics hold to 1e-10 and below (f32, the default,
/// is checked against f64 in `single_precision_attention_moments_agree_with_double`).
fn exact() -> GaussOptions {
    GaussOptions {
        mode: Some(Mode::Exact),
        precision: Precision::F64,
        ..Default::default()
    }
}

fn closure() -> GaussOptions {
    GaussOptions {
        mode: Some(Mode::Closure),
        precision: Precision::F64,
        ..Default::default()
    }
}

#[test]
fn one_linear_layer_has_the_closed_form() {
    // E[(Wx + b)·(W'x + b')] = tr(W W'ᵀ) + b·b'.
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let lin = |rng: &mut rand::rngs::StdRng| {
        Layer::Linear(Linear {
            weight: mat(rng, 3, 4, 1.0),
            bias: Some(vecr(rng, 3)),
        })
    };
    let (la, lb) = (lin(&mut rng), lin(&mut rng));
    let want = match (&la, &lb) {
        (Layer::Linear(p), Layer::Linear(q)) => {
            (0..3)
                .map(|o| {
                    (0..4)
                        .map(|i| p.weight[(o, i)] * q.weight[(o, i)])
                        .sum::<f64>()
                })
                .sum::<f64>()
                + (0..3)
                    .map(|o| p.bias.as_ref().unwrap()[o] * q.bias.as_ref().unwrap()[o])
                    .sum::<f64>()
        }
        _ => unreachable!(),
    };
    let (a, b) = (
        Model::new(4, 2, vec![la]).unwrap(),
        Model::new(4, 2, vec![lb]).unwrap(),
    );
    let r = gaussian::similarity(&a, &b, &Default::default(), Par::rayon(0)).unwrap();
    assert!(
        (r.inner - 2.0 * want).abs() < 1e-12,
        "{} vs {}",
        r.inner,
        2.0 * want
    ); // two positions
    assert_eq!(r.mode, Some(Method::Exact));
}

#[test]
fn quadratic_forms_follow_isserlis() {
    // f(x) = xᵀAx with A = sym(Σ_k D_k L_kᵀ R_k): E[f_a f_b] = trA·trB + 2 tr(AB).
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let (la, lb) = (
        bilinear(&mut rng, 4, 5, 1, false, None),
        bilinear(&mut rng, 4, 5, 1, false, None),
    );
    let form = |l: &Layer| match l {
        Layer::Bilinear(b) => {
            let d = b.down.as_ref().unwrap();
            let m = Mat::from_fn(4, 4, |i, j| {
                (0..5)
                    .map(|k| d[(0, k)] * b.left[(k, i)] * b.right[(k, j)])
                    .sum::<f64>()
            });
            Mat::from_fn(4, 4, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]))
        }
        _ => unreachable!(),
    };
    let (pa, pb) = (form(&la), form(&lb));
    let tr = |m: &Mat<f64>| (0..4).map(|i| m[(i, i)]).sum::<f64>();
    let want = tr(&pa) * tr(&pb)
        + 2.0
            * (0..4)
                .map(|i| (0..4).map(|j| pa[(i, j)] * pb[(j, i)]).sum::<f64>())
                .sum::<f64>();
    let (a, b) = (
        Model::new(4, 1, vec![la]).unwrap(),
        Model::new(4, 1, vec![lb]).unwrap(),
    );
    for opts in [exact(), closure()] {
        let r = gaussian::similarity(&a, &b, &opts, Par::rayon(0)).unwrap();
        assert!(
            (r.inner - want).abs() < 1e-12 * want.abs().max(1.0),
            "{} vs {want}",
            r.inner
        );
    }
}

#[test]
fn one_bilinear_layer_with_biases_and_residual_matches_monte_carlo() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let lerp = Some(Residual {
        mode: ResidualMode::Lerp,
        scale: 0.6,
    });
    let a = Model::new(3, 1, vec![bilinear(&mut rng, 3, 4, 3, true, lerp)]).unwrap();
    let b = Model::new(3, 1, vec![bilinear(&mut rng, 3, 5, 3, true, None)]).unwrap();
    let r = gaussian::similarity(&a, &b, &exact(), Par::rayon(0)).unwrap();
    agrees(&r, &monte_carlo(&a, &b, 4, 3, None), "bilinear");
    let c = gaussian::similarity(&a, &b, &closure(), Par::rayon(0)).unwrap();
    assert!(
        (c.inner - r.inner).abs() < 1e-12 * r.inner.abs().max(1.0),
        "closure = exact on one layer"
    );
}

#[test]
fn one_attention_layer_matches_monte_carlo() {
    // q/k biases, rotary and a causal mask over 2 positions: every part of the Wick sum is used.
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let a = Model::new(
        2,
        2,
        vec![attention(&mut rng, 2, 1, true, true, Mask::Causal, None)],
    )
    .unwrap();
    let b = Model::new(
        2,
        2,
        vec![attention(&mut rng, 2, 1, true, false, Mask::Causal, None)],
    )
    .unwrap();
    let r = gaussian::similarity(&a, &b, &exact(), Par::rayon(0)).unwrap();
    assert_eq!(r.mode, Some(Method::Exact));
    agrees(&r, &monte_carlo(&a, &b, 4, 4, None), "attention");
    let c = gaussian::similarity(&a, &b, &closure(), Par::rayon(0)).unwrap();
    assert!(
        (c.similarity - r.similarity).abs() < 1e-12,
        "closure = exact on one layer"
    );
    let s = gaussian::similarity(&a, &a, &Default::default(), Par::rayon(0)).unwrap();
    assert!(
        (s.similarity - 1.0).abs() < 1e-12,
        "attention self-similarity {}",
        s.similarity
    );
}

#[test]
fn two_layer_stacks_exact_matches_monte_carlo_and_the_closure_error_is_measured() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let stack = |rng: &mut rand::rngs::StdRng| {
        Model::new(
            3,
            1,
            vec![
                bilinear(rng, 3, 4, 3, false, None),
                bilinear(rng, 3, 4, 2, false, None),
            ],
        )
        .unwrap()
    };
    let (a, b) = (stack(&mut rng), stack(&mut rng));
    let r = gaussian::similarity(&a, &b, &Default::default(), Par::rayon(0)).unwrap();
    assert_eq!(
        r.mode,
        Some(Method::Exact),
        "default: exact when affordable"
    );
    agrees(
        &r,
        &monte_carlo(&a, &b, 4, 5, None),
        "2-layer bilinear stack",
    );
    let c = gaussian::similarity(&a, &b, &closure(), Par::rayon(0)).unwrap();
    assert_eq!(c.mode, Some(Method::Closure));
    // Without residuals the closure keeps only the hierarchical pairings (MATH.md §5.5): its
    // norms fall well short of the exact ones.
    assert!(
        c.norm2_a < 0.9 * r.norm2_a,
        "closure {} vs exact {}",
        c.norm2_a,
        r.norm2_a
    );
}

#[test]
fn embed_attention_head_exact_matches_monte_carlo_and_deep_exact_is_refused() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let lerp = Some(Residual {
        mode: ResidualMode::Lerp,
        scale: 0.5,
    });
    let lin = |rng: &mut rand::rngs::StdRng, o: usize, i: usize| {
        Layer::Linear(Linear {
            weight: mat(rng, o, i, 1.0),
            bias: Some(vecr(rng, o)),
        })
    };
    let model = |rng: &mut rand::rngs::StdRng| {
        Model::new(
            3,
            2,
            vec![
                lin(rng, 2, 3),
                attention(rng, 2, 1, false, true, Mask::None, lerp),
                lin(rng, 2, 2),
            ],
        )
        .unwrap()
    };
    let (a, b) = (model(&mut rng), model(&mut rng));
    let r = gaussian::similarity(&a, &b, &exact(), Par::rayon(0)).unwrap();
    agrees(
        &r,
        &monte_carlo(&a, &b, 4, 6, None),
        "embed + attention + head",
    );
    // Attention followed by a bilinear layer has degree 10 per model: 20 legs, far too many.
    let deep = Model::new(
        2,
        2,
        vec![
            attention(&mut rng, 2, 1, false, true, Mask::Causal, lerp),
            bilinear(&mut rng, 2, 2, 2, false, None),
        ],
    )
    .unwrap();
    let e = gaussian::similarity(&deep, &deep, &exact(), Par::rayon(0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Wick configurations") && e.contains("--closure"),
        "{e}"
    );
    let c = gaussian::similarity(&deep, &deep, &Default::default(), Par::rayon(0)).unwrap();
    assert_eq!(c.mode, Some(Method::Closure));
    assert!((c.similarity - 1.0).abs() < 1e-12);
}

fn small_pair(seed: u64) -> (Model, Layer, Layer) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lerp = Some(Residual {
        mode: ResidualMode::Lerp,
        scale: 0.5,
    });
    let att = attention(
        &mut rng,
        4,
        2,
        seed.is_multiple_of(2),
        true,
        Mask::Causal,
        lerp,
    );
    let mlp = bilinear(&mut rng, 4, 3, 4, false, lerp);
    let m = Model::new(4, 2, vec![att.clone(), mlp.clone()]).unwrap();
    (m, att, mlp)
}

fn closure_sim(a: &Model, b: &Model) -> f64 {
    gaussian::similarity(a, b, &closure(), Par::rayon(0))
        .unwrap()
        .similarity
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]
    #[test]
    fn laws_self_symmetry_heads_hidden_units_and_score_pairs(seed in 0u64..1000) {
        let (m, att, mlp) = small_pair(seed);
        let (other, _, _) = small_pair(seed + 1);
        prop_assert!((closure_sim(&m, &m) - 1.0).abs() < 1e-10);
        let (s1, s2) = (closure_sim(&m, &other), closure_sim(&other, &m));
        prop_assert!((s1 - s2).abs() < 1e-10 && s1.abs() <= 1.0 + 1e-12);
        let Layer::Attention(a) = att else { unreachable!() };
        // Heads swapped (rows of Q, K, V blocks and columns of O), and q1/k1 ↔ q2/k2 swapped.
        let swap_heads = |w: &Mat<f64>| Mat::from_fn(4, 4, |i, j| w[((i + 2) % 4, j)]);
        let swap_bias = |b: &Option<Vec<f64>>| b.as_ref().map(|v| (0..4).map(|i| v[(i + 2) % 4]).collect());
        let heads = Attention {
            q1: swap_heads(&a.q2), k1: swap_heads(&a.k2), q2: swap_heads(&a.q1), k2: swap_heads(&a.k1),
            q1_bias: swap_bias(&a.q2_bias), k1_bias: swap_bias(&a.k2_bias),
            q2_bias: swap_bias(&a.q1_bias), k2_bias: swap_bias(&a.k1_bias),
            v: swap_heads(&a.v), o: Mat::from_fn(4, 4, |i, j| a.o[(i, (j + 2) % 4)]),
            ..(*a).clone()
        };
        // Hidden units of the MLP permuted.
        let Layer::Bilinear(b) = mlp else { unreachable!() };
        let perm = [2usize, 0, 1];
        let hid = Bilinear {
            left: Mat::from_fn(3, 4, |k, i| b.left[(perm[k], i)]),
            right: Mat::from_fn(3, 4, |k, i| b.right[(perm[k], i)]),
            down: b.down.as_ref().map(|d| Mat::from_fn(4, 3, |o, k| d[(o, perm[k])])),
            ..b.clone()
        };
        let same = Model::new(4, 2, vec![Layer::Attention(Box::new(heads)), Layer::Bilinear(hid)]).unwrap();
        let x = Inputs::gaussian(3, 2, 4, seed).unwrap();
        let (y1, y2) = (outputs(&m, &x, Par::Seq).unwrap(), outputs(&same, &x, Par::Seq).unwrap());
        prop_assert!((0..3).all(|r| (0..8).all(|c| (y1[(r, c)] - y2[(r, c)]).abs() < 1e-10)), "same function");
        prop_assert!((closure_sim(&m, &same) - 1.0).abs() < 1e-10);
        prop_assert!((closure_sim(&other, &same) - s1).abs() < 1e-10);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]
    #[test]
    fn a_change_of_basis_between_layers_keeps_both_modes(seed in 0u64..1000) {
        // embed 3→4 → bilinear 4→5→4 → bilinear 4→3→4 → head 4→2, two positions; bases of the
        // spaces after the embedding and after the first bilinear layer changed, x' = M x + c.
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let model = |rng: &mut rand::rngs::StdRng| {
            let embed = Layer::Linear(Linear { weight: mat(rng, 4, 3, 0.6), bias: Some(vecr(rng, 4)) });
            let head = Layer::Linear(Linear { weight: mat(rng, 2, 4, 0.6), bias: None });
            let layers = vec![embed, bilinear(rng, 4, 5, 4, true, None), bilinear(rng, 4, 3, 4, true, None), head];
            Model::new(3, 2, layers).unwrap()
        };
        let (a, b) = (model(&mut rng), model(&mut rng));
        let mut b2 = b.clone();
        for i in 0..2 {
            let m = Mat::from_fn(4, 4, |p, q| rng.random_range(-0.4..0.4) + if p == q { 1.5 } else { 0.0 });
            let minv = m.partial_piv_lu().inverse();
            b2 = tensim::reparam::change_basis(&b2, i, &m, &minv, &vecr(&mut rng, 4)).unwrap();
        }
        let x = Inputs::gaussian(5, 2, 3, seed).unwrap();
        let (y1, y2) = (outputs(&b, &x, Par::Seq).unwrap(), outputs(&b2, &x, Par::Seq).unwrap());
        prop_assert!((0..5).all(|r| (0..4).all(|c| (y1[(r, c)] - y2[(r, c)]).abs() < 1e-9)), "same function");
        for opts in [exact(), closure()] {
            let base = gaussian::similarity(&a, &b, &opts, Par::rayon(0)).unwrap().similarity;
            let moved = gaussian::similarity(&a, &b2, &opts, Par::rayon(0)).unwrap().similarity;
            prop_assert!((base - moved).abs() < 1e-9, "{:?}: {base} vs {moved}", opts.mode);
            prop_assert!((gaussian::similarity(&b, &b2, &opts, Par::rayon(0)).unwrap().similarity - 1.0).abs() < 1e-9);
        }
    }
}

#[test]
fn position_wise_models_give_the_same_similarity_at_any_number_of_positions() {
    // MATH.md §5.5 (b): the unit slot is 1 at every position (the reference's δ_tt' init breaks this).
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let layers = |rng: &mut rand::rngs::StdRng| {
        vec![
            bilinear(rng, 3, 4, 3, true, None),
            bilinear(rng, 3, 4, 2, true, None),
        ]
    };
    let (la, lb) = (layers(&mut rng), layers(&mut rng));
    let at = |n: usize| {
        let (a, b) = (
            Model::new(3, n, la.clone()).unwrap(),
            Model::new(3, n, lb.clone()).unwrap(),
        );
        [exact(), closure()].map(|o| gaussian::similarity(&a, &b, &o, Par::rayon(0)).unwrap())
    };
    let (one, three) = (at(1), at(3));
    for (x, y) in one.iter().zip(&three) {
        assert!(
            (x.similarity - y.similarity).abs() < 1e-12,
            "{} vs {}",
            x.similarity,
            y.similarity
        );
        assert!((3.0 * x.inner - y.inner).abs() < 1e-12 * x.inner.abs().max(1.0));
    }
}

#[test]
fn the_exact_cost_of_deep_transformers_is_estimated_without_enumerating() {
    // Three attention layers: composed terms would number in the millions; the estimate saturates.
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let lerp = Some(Residual {
        mode: ResidualMode::Lerp,
        scale: 0.5,
    });
    let layers = (0..3)
        .map(|_| attention(&mut rng, 2, 1, false, true, Mask::Causal, lerp))
        .collect();
    let m = Model::new(2, 2, layers).unwrap();
    let t = std::time::Instant::now();
    assert_eq!(tensim::propagate::exact_cost(&m, &m), u128::MAX);
    assert!(t.elapsed().as_secs_f64() < 1.0);
    let e = gaussian::similarity(&m, &m, &exact(), Par::rayon(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Wick configurations"), "{e}");
}

#[test]
fn per_output_values_are_the_similarities_of_the_single_output_models() {
    // A transformer with a 3-output head: output o's value equals the metric of the two models
    // with the head cut to its row o (gaussian, both modes, and the tensor metric).
    let head = |rng: &mut rand::rngs::StdRng| Linear {
        weight: mat(rng, 3, 4, 0.7),
        bias: Some(vecr(rng, 3)),
    };
    let with = |m: &Model, h: &Linear| {
        let mut layers = m.layers().to_vec();
        layers.push(Layer::Linear(h.clone()));
        Model::new(4, 2, layers).unwrap()
    };
    let row = |h: &Linear, o: usize| Linear {
        weight: Mat::from_fn(1, 4, |_, j| h.weight[(o, j)]),
        bias: h.bias.as_ref().map(|b| vec![b[o]]),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (ha, hb) = (head(&mut rng), head(&mut rng));
    let ((a, att_a, _), (b, att_b, _)) = (small_pair(3), small_pair(4));
    let single = |l: Layer| Model::new(4, 2, vec![l]).unwrap();
    // Attention + bilinear (closure) and attention alone (exact: one non-linear layer).
    let cases = [
        (a.clone(), b.clone(), closure()),
        (single(att_a), single(att_b), GaussOptions::default()),
    ];
    for (a, b, opts) in cases {
        let (fa, fb) = (with(&a, &ha), with(&b, &hb));
        let o = tensim::metrics::Options {
            per_output: true,
            per_tensor: false,
            ..Default::default()
        };
        let metric = tensim::metrics::Metric::Gaussian(opts.clone());
        let r = tensim::metrics::compare(&fa, &fb, &metric, None, &o).unwrap();
        let per = r.per_output.unwrap();
        assert_eq!(per.len(), 3);
        for (k, v) in per.iter().enumerate() {
            let (sa, sb) = (with(&a, &row(&ha, k)), with(&b, &row(&hb, k)));
            let one = gaussian::similarity(&sa, &sb, &opts, Par::rayon(0))
                .unwrap()
                .similarity;
            assert!(
                (v.unwrap() - one).abs() < 1e-10,
                "output {k}: {v:?} vs {one}"
            );
        }
    }
    let (fa, fb) = (with(&a, &ha), with(&b, &hb));
    let o = tensim::metrics::Options {
        per_output: true,
        per_tensor: false,
        ..Default::default()
    };
    let r = tensim::metrics::compare(&fa, &fb, &tensim::metrics::Metric::TENSOR, None, &o).unwrap();
    for (k, v) in r.per_output.unwrap().iter().enumerate() {
        let (sa, sb) = (with(&a, &row(&ha, k)), with(&b, &row(&hb, k)));
        let one = tensim::metrics::tensor::similarity(&sa, &sb, &Default::default())
            .unwrap()
            .similarity;
        assert!(
            (v.unwrap() - one).abs() < 1e-10,
            "tensor output {k}: {v:?} vs {one}"
        );
    }
}

/// Unused vocabulary entries (zero embedding columns, zero unembedding rows) change neither the
/// gaussian nor the tensor similarity of transformers, nor the outputs that were there.
#[test]
fn a_vocabulary_padded_with_zeros_leaves_the_similarity_unchanged() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let add = Some(Residual {
        mode: ResidualMode::Add,
        scale: 0.35,
    });
    let mut layers = || {
        vec![
            Layer::Linear(Linear {
                weight: mat(&mut rng, 4, 5, 1.0),
                bias: None,
            }),
            attention(&mut rng, 4, 2, true, true, Mask::Causal, add),
            attention(&mut rng, 4, 2, true, true, Mask::Causal, add),
            Layer::Linear(Linear {
                weight: mat(&mut rng, 5, 4, 1.0),
                bias: None,
            }),
        ]
    };
    let (la, lb) = (layers(), layers());
    // Vocabulary 5 → 8: three more input columns and output rows, all zero.
    let padded = |layers: &[Layer]| {
        let mut v = layers.to_vec();
        let last = v.len() - 1;
        if let Layer::Linear(e) = &mut v[0] {
            e.weight = Mat::from_fn(4, 8, |i, j| if j < 5 { e.weight[(i, j)] } else { 0.0 });
        }
        if let Layer::Linear(u) = &mut v[last] {
            u.weight = Mat::from_fn(8, 4, |i, j| if i < 5 { u.weight[(i, j)] } else { 0.0 });
        }
        Model::new(8, 3, v).unwrap()
    };
    let (a, b) = (
        Model::new(5, 3, la.clone()).unwrap(),
        Model::new(5, 3, lb.clone()).unwrap(),
    );
    let (pa, pb) = (padded(&la), padded(&lb));
    let g = |x: &Model, y: &Model| gaussian::similarity(x, y, &closure(), Par::Seq).unwrap();
    let t = |x: &Model, y: &Model| tensim::metrics::tensor::network_similarity(x, y).unwrap();
    for (small, big) in [(g(&a, &b), g(&pa, &pb)), (t(&a, &b), t(&pa, &pb))] {
        assert!(
            (small.similarity - big.similarity).abs() < 1e-12,
            "{} vs {}",
            small.similarity,
            big.similarity
        );
        let (s, p) = (small.per_output.unwrap(), big.per_output.unwrap());
        let same = s
            .iter()
            .zip(&p)
            .all(|(x, y)| (x.unwrap() - y.unwrap()).abs() < 1e-12);
        // The padded outputs are zero for both models: no similarity.
        assert!(same && p[5..].iter().all(Option::is_none), "{s:?} vs {p:?}");
    }
}

/// The attention moments in single precision against double on a 2-layer attention LM (head
/// size 16: every f32 register panel), for one pair and for a matrix from cached self chains:
/// within 1e-5, f32 rounding (≈ 6e-8 per product) summed over the Wick pieces.
#[test]
fn single_precision_attention_moments_agree_with_double() {
    use tensim::demo::{random_stack, StackShape};
    let shape = StackShape {
        d_in: 24,
        d_model: 32,
        hidden: vec![0, 0],
        d_out: 20,
        residual: Some(Residual {
            mode: ResidualMode::Add,
            scale: 0.35,
        }),
        bias: true,
        embed: true,
        down: true,
        heads: 2,
        n_ctx: 3,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let models: Vec<Model> = (0..3)
        .map(|_| random_stack(&shape, &mut rng).unwrap())
        .collect();
    let refs: Vec<&Model> = models.iter().collect();
    let opts = |precision| GaussOptions {
        mode: Some(Mode::Closure),
        precision,
        ..Default::default()
    };
    let (o64, o32) = (opts(Precision::F64), opts(Precision::F32));
    let pair = |o: &GaussOptions| {
        gaussian::similarity(&models[0], &models[1], o, Par::rayon(0))
            .unwrap()
            .similarity
    };
    let (s64, s32) = (pair(&o64), pair(&o32));
    assert!((s64 - s32).abs() < 1e-6, "pair: {s64} vs {s32}");
    assert!(s64 != s32, "the f32 path ran in f64");
    // f32 is the default; a model against an equal copy scores 1 exactly in it.
    assert_eq!(pair(&GaussOptions::default()), s32);
    let copy = models[0].clone();
    let same = gaussian::similarity(&models[0], &copy, &o32, Par::rayon(0)).unwrap();
    assert_eq!(same.similarity, 1.0);
    // Also where f32 rounding would put a cross step below its self steps (not clamped to 1).
    for seed in 0..4 {
        let (m, _, _) = small_pair(seed);
        let s = gaussian::similarity(&m, &m.clone(), &o32, Par::rayon(0)).unwrap();
        assert_eq!(s.similarity, 1.0, "seed {seed}");
    }
    let batch = gaussian::batch(&refs, o32).unwrap();
    let tile = batch.tile(0..3, 0..3).unwrap();
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let cached = tile[i * 3 + j];
        let single = gaussian::similarity(&models[i], &models[j], &o64, Par::rayon(0))
            .unwrap()
            .similarity;
        assert!(
            (cached - single).abs() < 1e-5,
            "({i}, {j}): {cached} vs {single}"
        );
    }
}
