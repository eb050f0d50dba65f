//! Extreme scales never produce a wrong number: a homogeneous network (no residual, no bias) has
//! a scale-invariant similarity under every metric, so scaling all its weights, or the inputs,
//! by 10^k must give the unscaled value, or a range error where f64 truly cannot hold the
//! answer (the matrix metric's squared norm past 1e308) — never another number, never NaN, never
//! a false "zero norm".

mod common;

use common::*;
use rand::SeedableRng;
use tensim::arch::Mask;
use tensim::layers::{Layer, Linear};
use tensim::linalg::{Mat, Par};
use tensim::metrics::{self, Inputs, Metric, Options};
use tensim::trajectory::{self, checkpoints};
use tensim::Model;

const OPTS: Options = Options {
    per_output: false,
    per_tensor: false,
    par: Par::Seq,
};

/// Embed → bilinear^depth → head, no residual or bias (two models per depth), and embed →
/// attention → head over two positions.
fn homogeneous_pairs() -> Vec<(String, Model, Model)> {
    let mut out: Vec<(String, Model, Model)> = [1, 2]
        .into_iter()
        .map(|depth| {
            let s = Spec {
                d_in: 3,
                d: 4,
                h: 3,
                d_out: 2,
                depth,
                residual: None,
                bias: false,
                embed: true,
            };
            let name = format!("bilinear depth {depth}");
            (name, random_model(s, 11), random_model(s, 12))
        })
        .collect();
    let attention = |seed| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let linear = |rng: &mut _, r, c| {
            Layer::Linear(Linear {
                weight: uniform(rng, r, c),
                bias: None,
            })
        };
        let layers = vec![
            linear(&mut rng, 4, 3),
            Layer::Attention(Box::new(random_attention(
                &mut rng,
                4,
                2,
                false,
                Some(10.0),
                Mask::Causal,
                None,
            ))),
            linear(&mut rng, 2, 4),
        ];
        Model::new(3, 2, layers).unwrap()
    };
    out.push(("attention".into(), attention(21), attention(22)));
    out
}

fn metrics_for(m: &Model) -> Vec<Metric> {
    let mut all = vec![
        Metric::Matrix,
        Metric::Behavioral,
        Metric::Cka,
        Metric::Gaussian(Default::default()),
    ];
    if m.first_attention().is_none() {
        all.push(Metric::TENSOR);
    }
    all
}

/// `got` equals `base`, or is a range error (the only error allowed: a zero norm is false here).
fn same_or_range_error(got: tensim::Result<f64>, base: f64, what: &str) {
    match got {
        Ok(v) => assert!(
            (v - base).abs() < 1e-9 * base.abs().max(1.0),
            "{what}: {v} instead of {base}"
        ),
        Err(e) => assert!(
            matches!(e.root(), tensim::Error::OutOfRange { .. }),
            "{what}: {e}"
        ),
    }
}

#[test]
fn scaled_weights_give_the_same_value_or_a_range_error() {
    for (name, a, b) in homogeneous_pairs() {
        let inputs = Inputs::gaussian(200, a.input().n_ctx, 3, 7).unwrap();
        for metric in metrics_for(&a) {
            let compare = |a: &Model, b: &Model| {
                metrics::compare(a, b, &metric, Some(&inputs), &OPTS).map(|r| r.similarity)
            };
            let base = compare(&a, &b).unwrap();
            for k in (-40..=40).step_by(5) {
                let f = 10f64.powi(k);
                let (sa, sb) = (map_parameters(&a, |x| x * f), map_parameters(&b, |x| x * f));
                let what = format!("{name}, {metric:?}, weights x 1e{k}");
                same_or_range_error(compare(&sa, &sb), base, &what);
                // Only the matrix metric's squared norms may truly leave f64 at these scales.
                if !matches!(metric, Metric::Matrix) {
                    assert!(compare(&sa, &sb).is_ok(), "{what}: an error");
                }
            }
        }
    }
}

#[test]
fn scaled_inputs_give_the_same_value() {
    for (name, a, b) in homogeneous_pairs() {
        let inputs = Inputs::gaussian(200, a.input().n_ctx, 3, 7).unwrap();
        for metric in [Metric::Behavioral, Metric::Cka] {
            let base = metrics::compare(&a, &b, &metric, Some(&inputs), &OPTS)
                .unwrap()
                .similarity;
            for k in (-100..=100).step_by(20) {
                let f = 10f64.powi(k);
                let x = Inputs {
                    x: Mat::from_fn(inputs.x.nrows(), 3, |i, j| inputs.x[(i, j)] * f),
                    ..inputs.clone()
                };
                let got = metrics::compare(&a, &b, &metric, Some(&x), &OPTS).map(|r| r.similarity);
                let what = format!("{name}, {metric:?}, inputs x 1e{k}");
                assert!(got.is_ok(), "{what}: {got:?}");
                same_or_range_error(got, base, &what);
            }
        }
    }
}

#[test]
fn a_matrix_of_scaled_checkpoints_equals_the_unscaled_one() {
    let (_, a, b) = homogeneous_pairs().swap_remove(1);
    let scaled = |f: f64| [map_parameters(&a, |x| x * f), map_parameters(&b, |x| x * f)];
    let names: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    let models: Vec<Model> = [1.0, 1e-30, 1e30].into_iter().flat_map(scaled).collect();
    let cps = checkpoints::in_memory(&models, &names);
    for metric in [Metric::TENSOR, Metric::Gaussian(Default::default())] {
        let m = trajectory::block(&cps, &metric, None, 0..6, 0..6).unwrap();
        for i in 0..6 {
            for j in 0..6 {
                // Checkpoints 0, 2, 4 are model a at three scales; 1, 3, 5 model b.
                let want = m[(i % 2, j % 2)];
                assert!(
                    (m[(i, j)] - want).abs() < 1e-9,
                    "{metric:?} ({i}, {j}): {} instead of {want}",
                    m[(i, j)]
                );
            }
        }
    }
}

#[test]
fn an_underflowing_model_that_is_not_homogeneous_is_a_range_error_not_a_zero_model() {
    let s = Spec {
        d_in: 3,
        d: 4,
        h: 3,
        d_out: 2,
        depth: 2,
        residual: None,
        bias: true,
        embed: true,
    };
    let (a, b) = (random_model(s, 1), random_model(s, 2));
    let tiny = map_parameters(&a, |x| x * 1e-200);
    let e = metrics::compare(&tiny, &b, &Metric::TENSOR, None, &OPTS).unwrap_err();
    assert!(
        matches!(e.root(), tensim::Error::OutOfRange { .. }),
        "tiny biased model: {e}"
    );
    let zero = map_parameters(&a, |_| 0.0);
    let e = metrics::compare(&zero, &b, &Metric::TENSOR, None, &OPTS).unwrap_err();
    assert!(
        matches!(e.root(), tensim::Error::ZeroNorm { .. }),
        "zero model: {e}"
    );
}
