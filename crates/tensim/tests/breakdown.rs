//! Breakdowns of the inner product over units and heads: against the metric's own inner product,
//! against models that keep one unit or head (bilinearity, computed by the metric on other
//! networks), against Monte Carlo on those models' outputs, per output, and the matching of a
//! permuted, rescaled and swapped copy.

mod common;

use common::{agrees, monte_carlo, random_attention, random_model, Spec};
use rand::{RngExt, SeedableRng};
use tensim::arch::Mask;
use tensim::layers::{Bilinear, Layer, Linear};
use tensim::linalg::Mat;
use tensim::metrics::breakdown::{breakdown, matching, Breakdown, Parts};
use tensim::metrics::gaussian::{GaussOptions, Mode, Precision};
use tensim::metrics::{compare, Comparison, Metric, Options};
use tensim::reparam::{permute_hidden, rescale_hidden, swap_left_right};
use tensim::Model;

fn spec(h: usize, depth: usize, residual: bool) -> Spec {
    Spec {
        d_in: 3,
        d: 3,
        h,
        d_out: 2,
        depth,
        residual: if residual { common::lerp(0.4) } else { None },
        bias: true,
        embed: true,
    }
}

/// The tensor metric, the gaussian (exact for these models), and the gaussian closure.
/// The metrics with breakdowns, the gaussian one in f64 (the identities below hold to 1e-10).
fn metrics() -> [Metric; 3] {
    let gaussian = |mode| {
        Metric::Gaussian(GaussOptions {
            mode,
            precision: Precision::F64,
            ..Default::default()
        })
    };
    [
        Metric::TENSOR,
        gaussian(None),
        gaussian(Some(Mode::Closure)),
    ]
}

fn inner(a: &Model, b: &Model, metric: &Metric) -> Comparison {
    compare(a, b, metric, None, &Options::default()).unwrap()
}

fn entries(c: &Mat<f64>) -> f64 {
    (0..c.nrows())
        .flat_map(|i| (0..c.ncols()).map(move |j| (i, j)))
        .map(|(i, j)| c[(i, j)])
        .sum()
}

/// `model` keeping only unit `k` of bilinear layer `layer`'s contribution `c·D[:, k] y_k` (no
/// down bias, residual or later biases): one term of `f = Σ_k unit_k + remainder`.
fn one_unit(model: &Model, layer: usize, k: usize) -> Model {
    let mut layers = model.layers()[..layer].to_vec();
    let Layer::Bilinear(b) = &model.layers()[layer] else {
        panic!("layer {layer} is not bilinear")
    };
    let c = tensim::arch::Residual::weights(b.residual).0;
    let row = |m: &Mat<f64>| Mat::from_fn(1, m.ncols(), |_, j| m[(k, j)]);
    let bias = |v: &Option<Vec<f64>>| v.as_ref().map(|v| vec![v[k]]);
    let down = b.down.as_ref().unwrap();
    layers.push(Layer::Bilinear(Bilinear {
        left: row(&b.left),
        right: row(&b.right),
        down: Some(Mat::from_fn(down.nrows(), 1, |o, _| c * down[(o, k)])),
        left_bias: bias(&b.left_bias),
        right_bias: bias(&b.right_bias),
        down_bias: None,
        residual: None,
    }));
    layers.extend(model.layers()[layer + 1..].iter().map(without_bias));
    Model::new(model.in_dim(), model.input().n_ctx, layers).unwrap()
}

/// `model` keeping only head `h` of attention layer `layer` (`c·O[:, head h] …`, no residual,
/// no later biases).
fn one_head(model: &Model, layer: usize, h: usize) -> Model {
    let mut layers = model.layers()[..layer].to_vec();
    let Layer::Attention(a) = &model.layers()[layer] else {
        panic!("layer {layer} is not attention")
    };
    let c = a.path_weights().0;
    let hs = a.head_size();
    let o = Mat::from_fn(a.dim(), a.dim(), |i, j| {
        if j / hs == h {
            c * a.o[(i, j)]
        } else {
            0.0
        }
    });
    layers.push(Layer::Attention(Box::new(tensim::layers::Attention {
        o,
        residual: None,
        ..(**a).clone()
    })));
    layers.extend(model.layers()[layer + 1..].iter().map(without_bias));
    Model::new(model.in_dim(), model.input().n_ctx, layers).unwrap()
}

fn without_bias(l: &Layer) -> Layer {
    match l {
        Layer::Linear(l) => Layer::Linear(Linear {
            weight: l.weight.clone(),
            bias: None,
        }),
        _ => panic!("only linear layers after the broken-down one"),
    }
}

/// `model` followed by the selection of output `o`.
fn output(model: &Model, o: usize) -> Model {
    let mut layers = model.layers().to_vec();
    layers.push(Layer::Linear(Linear {
        weight: Mat::from_fn(1, model.out_dim(), |_, j| (j == o) as u8 as f64),
        bias: None,
    }));
    Model::new(model.in_dim(), model.input().n_ctx, layers).unwrap()
}

fn run(a: &Model, b: &Model, metric: &Metric, per_output: bool) -> Breakdown {
    let r = inner(a, b, metric);
    breakdown(a, b, metric, Some(r.inner), per_output).unwrap()
}

#[test]
fn unit_contributions_and_remainder_sum_to_the_inner_product() {
    for metric in metrics() {
        // Different widths, residual or not, one or two bilinear layers.
        for (depth, residual) in [(1, false), (1, true), (2, true)] {
            let (a, b) = (
                random_model(spec(4, depth, residual), 1),
                random_model(spec(6, depth, residual), 2),
            );
            let want = inner(&a, &b, &metric).inner;
            let r = run(&a, &b, &metric, false);
            assert_eq!((r.parts, r.shape), (Parts::Units, [4, 6]));
            assert_eq!((r.layer_a, r.layer_b), (depth, depth));
            let what = format!("{} depth {depth} residual {residual}", metric.name());
            assert!(
                (r.inner - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{what}: breakdown's inner {} vs the metric's {want}",
                r.inner
            );
            let total = entries(&r.contributions) + r.remainder;
            assert!(
                (total - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{what}"
            );
            // Each unit pair: the metric between the one-unit models.
            for (i, j) in [(0, 0), (1, 5), (3, 2)] {
                let v = inner(&one_unit(&a, depth, i), &one_unit(&b, depth, j), &metric).inner;
                let got = r.contributions[(i, j)];
                assert!(
                    (got - v).abs() <= 1e-10 * v.abs().max(1e-3),
                    "{what}: unit pair ({i}, {j}): {got} vs one-unit models {v}"
                );
            }
        }
    }
}

#[test]
fn gaussian_unit_contributions_agree_with_monte_carlo() {
    let (a, b) = (
        random_model(spec(4, 1, true), 3),
        random_model(spec(5, 1, true), 4),
    );
    let metric = Metric::Gaussian(GaussOptions::default());
    let r = run(&a, &b, &metric, false);
    for (i, j) in [(0, 1), (2, 4)] {
        let (x, y) = (one_unit(&a, 1, i), one_unit(&b, 1, j));
        let mc = monte_carlo(&x, &y, 2, 7 + i as u64, None);
        let mut c = inner(&x, &y, &metric);
        c.inner = r.contributions[(i, j)];
        agrees(&c, &mc, &format!("unit pair ({i}, {j})"));
    }
}

#[test]
fn per_output_breakdowns_sum_to_the_per_output_inner_products() {
    for metric in metrics() {
        let (a, b) = (
            random_model(spec(4, 1, true), 5),
            random_model(spec(3, 1, true), 6),
        );
        let r = run(&a, &b, &metric, true);
        let per = r.per_output.as_ref().unwrap();
        assert_eq!(per.len(), 2);
        let mut sum = 0.0;
        for p in per {
            let want = inner(&output(&a, p.output), &output(&b, p.output), &metric).inner;
            let got = entries(&p.contributions) + p.remainder.unwrap();
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{} output {}: {got} vs {want}",
                metric.name(),
                p.output
            );
            assert!((p.inner.unwrap() - want).abs() <= 1e-12 * want.abs().max(1.0));
            sum += entries(&p.contributions);
        }
        assert!((sum - entries(&r.contributions)).abs() <= 1e-12 * sum.abs().max(1.0));
    }
}

#[test]
fn head_contributions_equal_the_one_head_models() {
    let model = |seed: u64| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let att = random_attention(
            &mut rng,
            4,
            2,
            true,
            Some(10.0),
            Mask::Causal,
            common::add(0.5),
        );
        let head = Mat::from_fn(2, 4, |_, _| rng.random_range(-1.0..1.0));
        Model::new(
            4,
            2,
            vec![
                Layer::Attention(Box::new(att)),
                Layer::Linear(Linear {
                    weight: head,
                    bias: Some(vec![0.3, -0.2]),
                }),
            ],
        )
        .unwrap()
    };
    let (a, b) = (model(8), model(9));
    for metric in metrics() {
        let r = run(&a, &b, &metric, false);
        assert_eq!((r.parts, r.shape, r.layer_a), (Parts::Heads, [2, 2], 0));
        for (h, g) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let v = inner(&one_head(&a, 0, h), &one_head(&b, 0, g), &metric).inner;
            let got = r.contributions[(h, g)];
            assert!(
                (got - v).abs() <= 1e-10 * v.abs().max(1e-3),
                "{}: head pair ({h}, {g}): {got} vs one-head models {v}",
                metric.name()
            );
        }
        let want = inner(&a, &b, &metric).inner;
        assert!((entries(&r.contributions) + r.remainder - want).abs() <= 1e-12 * want.abs());
        let e = breakdown(&a, &b, &metric, None, false).unwrap_err();
        assert!(
            e.to_string().contains("needs the pair's inner product"),
            "{e}"
        );
    }
}

#[test]
fn a_permuted_rescaled_swapped_copy_is_matched_exactly() {
    let h = 12;
    let a = random_model(spec(h, 2, true), 11);
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut perm: Vec<usize> = (0..h).collect();
    for k in (1..h).rev() {
        perm.swap(k, rng.random_range(0..=k));
    }
    let alpha: Vec<f64> = (0..h).map(|_| rng.random_range(0.2..3.0)).collect();
    let beta: Vec<f64> = (0..h).map(|_| rng.random_range(-3.0..-0.2)).collect();
    let swap: Vec<bool> = (0..h).map(|k| k % 3 == 0).collect();
    let b = swap_left_right(&rescale_hidden(&a, 2, &alpha, &beta).unwrap(), 2, &swap).unwrap();
    let b = permute_hidden(&b, 2, &perm).unwrap();
    for metric in metrics() {
        let r = run(&a, &b, &metric, false);
        let mut pairs: Vec<(usize, usize)> = r.matching.iter().map(|m| (m.a, m.b)).collect();
        pairs.sort();
        let want: Vec<(usize, usize)> = (0..h).map(|k| (k, perm[k])).collect();
        assert_eq!(pairs, want, "{}", metric.name());
        let shares: f64 = r.matching.iter().map(|m| m.share).sum();
        assert!(shares > 0.0 && shares <= 1.0 + 1e-9);
    }
}

#[test]
fn matching_of_rectangular_matrices_and_refusals() {
    // Rows ≤ columns and rows > columns: the heaviest entries in magnitude.
    let c = Mat::from_fn(2, 3, |i, j| [[0.1, -5.0, 0.2], [3.0, 4.0, 0.0]][i][j]);
    assert_eq!(matching(&c), vec![(0, 1), (1, 0)]);
    let t = c.transpose().to_owned();
    assert_eq!(matching(&t), vec![(0, 1), (1, 0)]);
    assert!(matching(&Mat::<f64>::zeros(0, 3)).is_empty());
    // Refused: the matrix metric, a linear model, different depths under the tensor metric.
    let (a, b) = (
        random_model(spec(3, 1, false), 1),
        random_model(spec(3, 2, false), 2),
    );
    let e = breakdown(&a, &a, &Metric::Matrix, None, false).unwrap_err();
    assert!(e.to_string().contains("tensor"), "{e}");
    let e = breakdown(&a, &b, &Metric::TENSOR, None, false).unwrap_err();
    assert!(e.to_string().contains("same number"), "{e}");
    let r = breakdown(
        &a,
        &b,
        &Metric::Gaussian(GaussOptions::default()),
        None,
        false,
    )
    .unwrap();
    assert_eq!((r.layer_a, r.layer_b), (1, 2));
    let lin = Model::new(
        3,
        1,
        vec![Layer::Linear(Linear {
            weight: Mat::identity(2, 3),
            bias: None,
        })],
    )
    .unwrap();
    let e = breakdown(&lin, &lin, &Metric::TENSOR, None, false).unwrap_err();
    assert!(e.to_string().contains("linear"), "{e}");
}

#[test]
fn breakdowns_of_changes_equal_the_one_unit_changes() {
    use tensim::metrics::breakdown::of_changes;
    use tensim::metrics::difference;
    // A = A0 + a 30 % change (same units), B = B0 + another.
    let (a0, b0) = (
        random_model(spec(4, 1, true), 21),
        random_model(spec(5, 1, true), 22),
    );
    let mix = |m: &Model, seed: u64| {
        let other = random_model(spec(3, 1, true), seed);
        let flat: Vec<f64> = tensim::io::parameter_tensors(&other)
            .into_iter()
            .flat_map(|(_, _, v)| v)
            .collect();
        let k = std::cell::Cell::new(0);
        common::map_parameters(m, |v| {
            k.set(k.get() + 1);
            v + 0.3 * flat[k.get() % flat.len()]
        })
    };
    let (a, b) = (mix(&a0, 24), mix(&b0, 25));
    for metric in [Metric::TENSOR, Metric::Gaussian(GaussOptions::default())] {
        let opts = Options::default();
        let d = difference::similarity((&a, Some(&a0)), (&b, Some(&b0)), &metric, &opts).unwrap();
        let r = of_changes((&a, Some(&a0)), (&b, Some(&b0)), &metric, None, true).unwrap();
        let what = metric.name();
        assert!((r.inner - d.inner).abs() <= 1e-10 * d.inner.abs(), "{what}");
        assert_eq!(r.shape, [4, 5]);
        for (i, j) in [(0, 0), (3, 4)] {
            let (x, x0) = (one_unit(&a, 1, i), one_unit(&a0, 1, i));
            let (y, y0) = (one_unit(&b, 1, j), one_unit(&b0, 1, j));
            let v = difference::similarity((&x, Some(&x0)), (&y, Some(&y0)), &metric, &opts)
                .unwrap()
                .inner;
            let got = r.contributions[(i, j)];
            assert!(
                (got - v).abs() <= 1e-9 * v.abs().max(1e-3),
                "{what} ({i}, {j}): {got} vs {v}"
            );
        }
        // One side only: ⟨A − A0, B⟩.
        let one = of_changes((&a, Some(&a0)), (&b, None), &metric, None, false).unwrap();
        let want = inner(&a, &b, &metric).inner - inner(&a0, &b, &metric).inner;
        assert!(
            (one.inner - want).abs() <= 1e-10 * want.abs().max(1.0),
            "{what}"
        );
    }
    // A base with other units than its model is refused.
    let e = of_changes((&a, Some(&b0)), (&b, None), &Metric::TENSOR, None, false).unwrap_err();
    assert!(e.to_string().contains("same parts"), "{e}");
}
