//! Both metrics under a Gaussian input distribution `N(μ, Σ)`: the closed form of one bilinear
//! layer, Monte Carlo on inputs drawn as `μ + F w` (`Σ = F Fᵀ`, not the root tensim takes) for
//! every way the distribution enters a model, the tensor metric against the materialised tensor
//! contracted with `[[1, 0], [μ, F]]` on every leg, `N(0, I)` giving the default, the null, and
//! per-position statistics (Monte Carlo; equal positions give the shared distribution).

mod common;

use std::cell::RefCell;

use common::{
    agrees, monte_carlo, monte_carlo_positions, random_attention, random_model, symmetrise,
    tree_group, Spec,
};
use rand::{RngExt, SeedableRng};
use tensim::arch::Mask;
use tensim::calibration::{initialise_like, null};
use tensim::distribution::InputDistribution;
use tensim::layers::{Bilinear, Layer, Linear};
use tensim::linalg::{mul_t, Mat, Par};
use tensim::metrics::gaussian::{GaussOptions, Mode};
use tensim::metrics::{compare, compare_calibrated, Comparison, Metric, Options};
use tensim::Model;

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn uniform(rng: &mut rand::rngs::StdRng, r: usize, c: usize) -> Mat<f64> {
    Mat::from_fn(r, c, |_, _| rng.random_range(-1.0..1.0))
}

/// `μ` and a factor `F` (`d × k`, `Σ = F Fᵀ`, singular for `k < d`).
fn law(seed: u64, d: usize, k: usize) -> (Vec<f64>, Mat<f64>) {
    let mut r = rng(seed);
    let mu = (0..d).map(|_| r.random_range(-0.8..0.8)).collect();
    (mu, uniform(&mut r, d, k))
}

fn dist(mu: &[f64], f: &Mat<f64>) -> InputDistribution {
    let cov = mul_t(f.as_ref(), f.as_ref(), Par::Seq);
    InputDistribution::from_moments(mu.to_vec(), cov.as_ref(), "test").unwrap()
}

fn exact() -> Metric {
    Metric::Gaussian(GaussOptions {
        mode: Some(Mode::Exact),
        ..Default::default()
    })
}

fn under(a: &Model, b: &Model, metric: &Metric, d: &InputDistribution) -> Comparison {
    compare_calibrated(a, b, metric, None, &Options::default(), Some(d), None).unwrap()
}

fn rel(x: f64, y: f64) -> f64 {
    (x - y).abs() / y.abs().max(1e-300)
}

#[test]
fn one_bilinear_layer_has_the_closed_form() {
    // f(x) = xᵀAx with A = Σ_k D_k L_kᵀ R_k (symmetrised):
    // E[xᵀAx·xᵀBx] = 2 tr(AΣBΣ) + (tr AΣ + μᵀAμ)(tr BΣ + μᵀBμ) + 4 μᵀAΣBμ.
    let (d, h) = (4, 3);
    let mut r = rng(1);
    let layer = |r: &mut rand::rngs::StdRng| Bilinear {
        left: uniform(r, h, d),
        right: uniform(r, h, d),
        down: Some(uniform(r, 1, h)),
        left_bias: None,
        right_bias: None,
        down_bias: None,
        residual: None,
    };
    let (la, lb) = (layer(&mut r), layer(&mut r));
    let form = |l: &Bilinear| {
        let down = l.down.as_ref().unwrap();
        let a = Mat::from_fn(d, d, |i, j| {
            (0..h)
                .map(|k| down[(0, k)] * l.left[(k, i)] * l.right[(k, j)])
                .sum::<f64>()
        });
        Mat::from_fn(d, d, |i, j| 0.5 * (a[(i, j)] + a[(j, i)]))
    };
    let model = |l: &Bilinear| Model::new(d, 1, vec![Layer::Bilinear(l.clone())]).unwrap();
    let (a, b) = (model(&la), model(&lb));
    let (fa, fb) = (form(&la), form(&lb));
    for k in [4, 2] {
        let (mu, f) = law(2 + k as u64, d, k);
        let sigma = mul_t(f.as_ref(), f.as_ref(), Par::Seq);
        let tr = |m: &Mat<f64>| (0..d).map(|i| m[(i, i)]).sum::<f64>();
        let quad = |m: &Mat<f64>, x: &[f64], y: &[f64]| {
            (0..d)
                .flat_map(|i| (0..d).map(move |j| (i, j)))
                .map(|(i, j)| x[i] * m[(i, j)] * y[j])
                .sum::<f64>()
        };
        let expect = |p: &Mat<f64>, q: &Mat<f64>| {
            let (ps, qs) = (p * &sigma, q * &sigma);
            let qm: Vec<f64> = (0..d)
                .map(|i| (0..d).map(|j| q[(i, j)] * mu[j]).sum())
                .collect();
            2.0 * tr(&(&ps * &qs))
                + (tr(&ps) + quad(p, &mu, &mu)) * (tr(&qs) + quad(q, &mu, &mu))
                + 4.0 * quad(&ps, &mu, &qm)
        };
        let r = under(
            &a,
            &b,
            &Metric::Gaussian(Default::default()),
            &dist(&mu, &f),
        );
        for (got, want) in [
            (r.inner, expect(&fa, &fb)),
            (r.norm2_a, expect(&fa, &fa)),
            (r.norm2_b, expect(&fb, &fb)),
        ] {
            assert!(rel(got, want) < 1e-10, "rank {k}: {got} vs {want}");
        }
        assert_eq!(r.input_distribution.as_ref().unwrap().rank, k);
    }
}

/// Models in which the distribution is folded into a linear layer, folded into a bilinear
/// layer, or prepended (before a residual bilinear layer, before attention).
fn shapes(seed: u64) -> Vec<(&'static str, Model, Model)> {
    let spec = |embed, residual| Spec {
        d_in: 3,
        d: 3,
        h: 2,
        d_out: 2,
        depth: 2,
        residual,
        bias: true,
        embed,
    };
    let pair = |s: Spec| (random_model(s, seed), random_model(s, seed + 1));
    let (e1, e2) = pair(spec(true, None));
    let (b1, b2) = pair(spec(false, None));
    let (r1, r2) = pair(spec(false, common::lerp(0.6)));
    let attention = |r: &mut rand::rngs::StdRng, embed: bool| {
        let mut layers = vec![];
        if embed {
            layers.push(Layer::Linear(Linear {
                weight: uniform(r, 2, 3),
                bias: Some(vec![0.2, -0.1]),
            }));
        }
        let (d, rotary) = if embed { (2, Some(10.0)) } else { (3, None) };
        let att = random_attention(r, d, 1, true, rotary, Mask::Causal, common::add(0.5));
        layers.push(Layer::Attention(Box::new(att)));
        layers.push(Layer::Linear(Linear {
            weight: uniform(r, 2, d),
            bias: None,
        }));
        Model::new(3, 2, layers).unwrap()
    };
    let mut r = rng(seed);
    let (t1, t2) = (attention(&mut r, true), attention(&mut r, true));
    let (p1, p2) = (attention(&mut r, false), attention(&mut r, false));
    vec![
        ("embed, 2 bilinear", e1, e2),
        ("2 bilinear", b1, b2),
        ("residual bilinear first", r1, r2),
        ("embed, attention", t1, t2),
        ("attention first", p1, p2),
    ]
}

#[test]
fn every_way_in_matches_monte_carlo_on_inputs_drawn_from_the_distribution() {
    let (mu, f) = law(7, 3, 2);
    let d = dist(&mu, &f);
    for (k, (what, a, b)) in shapes(11).into_iter().enumerate() {
        let r = under(&a, &b, &exact(), &d);
        agrees(
            &r,
            &monte_carlo(&a, &b, 4, 20 + k as u64, Some((&mu, &f))),
            what,
        );
    }
}

#[test]
fn the_standard_normal_reproduces_the_default() {
    let d =
        InputDistribution::from_moments(vec![0.0; 3], Mat::identity(3, 3).as_ref(), "I").unwrap();
    for (what, a, b) in shapes(3) {
        let metrics = match a.first_attention() {
            None => vec![Metric::TENSOR, Metric::Gaussian(Default::default())],
            Some(_) => vec![Metric::Gaussian(Default::default())],
        };
        for metric in metrics {
            let plain = compare(&a, &b, &metric, None, &Options::default()).unwrap();
            let r = under(&a, &b, &metric, &d);
            assert!(
                (r.similarity - plain.similarity).abs() < 1e-14
                    && rel(r.inner, plain.inner) < 1e-13,
                "{what}, {}: {} vs {}",
                metric.name(),
                r.similarity,
                plain.similarity
            );
        }
    }
}

/// `U'[o; a, b, …] = Σ U[o; i, j, …] Â[i, a] Â[j, b] ⋯`.
fn contract_legs(u: &common::Unrolled, hat: &Mat<f64>) -> common::Unrolled {
    let (d, k) = (u.dim, hat.ncols());
    let mut data = u.data.clone();
    let mut dims = vec![d; u.legs];
    for leg in 0..u.legs {
        let before: usize = dims[..leg].iter().product();
        let after: usize = dims[leg + 1..].iter().product();
        let mut next = vec![0.0; u.out * before * k * after];
        for o in 0..u.out * before {
            for i in 0..d {
                for a in 0..k {
                    let w = hat[(i, a)];
                    for t in 0..after {
                        next[(o * k + a) * after + t] += w * data[(o * d + i) * after + t];
                    }
                }
            }
        }
        data = next;
        dims[leg] = k;
    }
    common::Unrolled {
        out: u.out,
        dim: k,
        legs: u.legs,
        data,
    }
}

#[test]
fn the_tensor_metric_contracts_every_input_leg_with_the_padded_affine_map() {
    let (mu, f) = law(5, 3, 2);
    let hat = Mat::from_fn(4, 3, |i, a| match (i, a) {
        (0, 0) => 1.0,
        (0, _) => 0.0,
        (_, 0) => mu[i - 1],
        _ => f[(i - 1, a - 1)],
    });
    let d = dist(&mu, &f);
    for (what, a, b) in shapes(8).into_iter().take(3) {
        let tensor = |m: &Model| {
            let u = common::unrolled(&m.padded(), m.in_dim());
            contract_legs(&symmetrise(&u, &tree_group(m.n_bilinear())), &hat)
        };
        let (ua, ub) = (tensor(&a), tensor(&b));
        let (ab, aa, bb) = (
            common::inner(&ua, &ub),
            common::inner(&ua, &ua),
            common::inner(&ub, &ub),
        );
        let r = under(&a, &b, &Metric::TENSOR, &d);
        let want = ab / (aa * bb).sqrt();
        assert!(
            (r.similarity - want).abs() < 1e-10,
            "{what}: {} vs {want}",
            r.similarity
        );
    }
}

#[test]
fn the_null_calls_independent_initialisations_unremarkable_and_a_noisy_copy_remarkable() {
    let base = random_model(
        Spec {
            d_in: 24,
            d: 24,
            h: 24,
            d_out: 16,
            depth: 1,
            residual: None,
            bias: false,
            embed: true,
        },
        1,
    );
    let mut r = rng(2);
    let a = initialise_like(&base, &mut r).unwrap();
    for layer in a.layers() {
        for (role, values) in layer.parameters() {
            let fan_in = match (layer, role) {
                (Layer::Bilinear(b), "down" | "down_bias") => b.hidden(),
                _ => layer.in_dim(),
            };
            let bound = 1.0 / (fan_in as f64).sqrt();
            assert!(values.iter().all(|v| v.abs() <= bound), "{role}");
        }
    }
    let b = initialise_like(&base, &mut r).unwrap();
    let noise = RefCell::new(rng(3));
    let noisy = common::map_parameters(&a, |w| {
        w + 0.05 * noise.borrow_mut().random_range(-1.0..1.0) * 3f64.sqrt() * w.abs()
    });
    let metric = Metric::Gaussian(Default::default());
    let calibrated = |x: &Model, y: &Model| {
        compare_calibrated(
            x,
            y,
            &metric,
            None,
            &Options::default(),
            None,
            Some((30, 4)),
        )
        .unwrap()
    };
    let unrelated = calibrated(&a, &b);
    let z = unrelated.z.unwrap();
    assert!(z.abs() < 4.0, "independent initialisations: z = {z}");
    let copy = calibrated(&a, &noisy);
    assert!(copy.z.unwrap() > 10.0, "5% noise copy: z = {:?}", copy.z);
    assert_eq!(
        copy.null_mean, unrelated.null_mean,
        "the null depends on the seed alone"
    );
    let sim = |x: &Model, y: &Model| {
        compare(x, y, &metric, None, &Options::default()).map(|r| r.similarity)
    };
    let n = null(&base, 30, 4, sim).unwrap();
    assert_eq!((Some(n.mean), Some(n.std)), (copy.null_mean, copy.null_std));
    assert!(null(&base, 1, 4, sim).is_err());
}

#[test]
fn an_input_distribution_is_refused_by_the_metrics_that_read_inputs_or_weights() {
    let (a, b) = (shapes(1).remove(0).1, shapes(2).remove(0).1);
    let (mu, f) = law(1, 3, 3);
    let d = dist(&mu, &f);
    for metric in [Metric::Matrix, Metric::Behavioral, Metric::Cka] {
        let e = compare_calibrated(&a, &b, &metric, None, &Options::default(), Some(&d), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor and gaussian"), "{e}");
    }
    let wrong = dist(&[0.0; 2], &Mat::identity(2, 2));
    let e = under_err(&a, &b, &wrong);
    assert!(e.contains("dimension 2") && e.contains("size 3"), "{e}");
}

fn under_err(a: &Model, b: &Model, d: &InputDistribution) -> String {
    compare_calibrated(
        a,
        b,
        &Metric::TENSOR,
        None,
        &Options::default(),
        Some(d),
        None,
    )
    .unwrap_err()
    .to_string()
}

/// A position's `(μ, F)`.
type Law = (Vec<f64>, Mat<f64>);

/// Sequences `(rows, n_ctx, dim)` as a C-ordered array, and each position's sample mean and
/// factor `F_t = (X_t − μ_t)ᵀ/√(rows − 1)` (`F_t F_tᵀ` is the sample covariance; not the
/// eigenvector root tensim takes).
fn sequences(seed: u64, rows: usize, n: usize, d: usize) -> (Vec<f64>, Vec<Law>) {
    let mut r = rng(seed);
    let x: Vec<f64> = (0..rows * n * d)
        .map(|k| r.random_range(-1.0..1.0) + (k % (n * d)) as f64 * 0.3)
        .collect();
    let laws = (0..n)
        .map(|t| {
            let at = |i: usize, j: usize| x[(i * n + t) * d + j];
            let mu: Vec<f64> = (0..d)
                .map(|j| (0..rows).map(|i| at(i, j)).sum::<f64>() / rows as f64)
                .collect();
            let f = Mat::from_fn(d, rows, |j, i| {
                (at(i, j) - mu[j]) / ((rows - 1) as f64).sqrt()
            });
            (mu, f)
        })
        .collect();
    (x, laws)
}

#[test]
fn per_position_statistics_match_monte_carlo() {
    let (x, laws) = sequences(4, 3, 2, 3);
    let d = InputDistribution::from_sample_array(&[3, 2, 3], &x, "x").unwrap();
    assert_eq!(d.info().positions, Some(2));
    // Reported: the positions' mean `tr Σ_t = ‖F_t‖²` and mean `|μ_t|`.
    let mean = |f: &dyn Fn(&Law) -> f64| laws.iter().map(f).sum::<f64>() / 2.0;
    let trace = mean(&|(_, f)| f.norm_l2().powi(2));
    let norm = mean(&|(m, _)| m.iter().map(|v| v * v).sum::<f64>().sqrt());
    assert!((d.info().trace - trace).abs() < 1e-12 && (d.info().mean_norm - norm).abs() < 1e-12);
    let laws: Vec<(&[f64], &Mat<f64>)> = laws.iter().map(|(m, f)| (&m[..], f)).collect();
    for (k, (what, a, b)) in shapes(12).into_iter().skip(3).enumerate() {
        for metric in [exact(), Metric::Gaussian(Default::default())] {
            let r = under(&a, &b, &metric, &d);
            let mc = monte_carlo_positions(&a, &b, 4, 40 + k as u64, Some(&laws));
            agrees(&r, &mc, what);
        }
    }
}

#[test]
fn per_position_statistics_equal_to_every_position_give_the_shared_distribution() {
    let (rows, n, dim) = (5, 2, 3);
    let (one, _) = sequences(6, rows, 1, dim);
    let repeated: Vec<f64> = (0..rows * n * dim)
        .map(|k| one[k / (n * dim) * dim + k % dim])
        .collect();
    let per = InputDistribution::from_sample_array(&[rows, n, dim], &repeated, "x").unwrap();
    let shared = InputDistribution::from_sample_array(&[rows, dim], &one, "x").unwrap();
    for (what, a, b) in shapes(9).into_iter().skip(3) {
        for metric in [
            Metric::TENSOR,
            exact(),
            Metric::Gaussian(Default::default()),
        ] {
            let (p, s) = (
                under(&a, &b, &metric, &per),
                under(&a, &b, &metric, &shared),
            );
            assert!(
                (p.similarity - s.similarity).abs() < 1e-12 && rel(p.inner, s.inner) < 1e-10,
                "{what}, {}: {} vs {}",
                metric.name(),
                p.similarity,
                s.similarity
            );
        }
    }
}

#[test]
fn per_position_statistics_are_refused_where_they_cannot_apply() {
    let (x, _) = sequences(1, 4, 2, 3);
    let d = InputDistribution::from_sample_array(&[4, 2, 3], &x, "x.npy").unwrap();
    let (_, mlp, mlp2) = shapes(1).remove(1);
    let e = under_err(&mlp, &mlp2, &d);
    assert!(
        e.contains("no attention") && e.contains("(rows·n_ctx, 3)"),
        "{e}"
    );
    let (_, a, b) = shapes(1).remove(4);
    let d3 = InputDistribution::from_sample_array(&[2, 3, 3], &x[..18], "x.npy").unwrap();
    let e = under_err(&a, &b, &d3);
    assert!(e.contains("3 positions") && e.contains("n_ctx 2"), "{e}");
    let mut bad = x.clone();
    bad[3 * 2 * 3 - 2] = f64::NAN;
    let e = InputDistribution::from_sample_array(&[4, 2, 3], &bad, "x.npy")
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 2, position 1, column 1"), "{e}");
    // Read under the law, a model keys its tiles apart and has no file form.
    let read = d.apply(&a).unwrap();
    let hash = tensim::io::model_hash;
    assert_ne!(hash(&read).unwrap(), hash(&a).unwrap());
    let path = std::env::temp_dir().join("tensim-law-model.safetensors");
    let e = tensim::io::save(&read, &path).unwrap_err().to_string();
    assert!(e.contains("per-position"), "{e}");
}
