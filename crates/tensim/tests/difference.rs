//! Similarity of changes `f_A − f_A0` vs `f_B − f_B0`: the tensor metric against the
//! materialised difference tensors, the gaussian metric against Monte Carlo on the difference
//! outputs, the weight cosine against the flattened weight differences; unresolvable changes
//! refused.

mod common;

use common::{map_parameters, random_model, symmetrise, tree_group, Spec};
use tensim::linalg::Par;
use tensim::metrics::difference::similarity;
use tensim::metrics::gaussian::{GaussOptions, Mode};
use tensim::metrics::inputs::outputs;
use tensim::metrics::{Inputs, Metric, Options};
use tensim::Model;

fn spec(h: usize, depth: usize) -> Spec {
    Spec {
        d_in: 3,
        d: 3,
        h,
        d_out: 2,
        depth,
        residual: common::lerp(0.5),
        bias: true,
        embed: true,
    }
}

/// A0, A, B0, B: A and B differ from their bases by unrelated changes of 30 %.
fn four(depth: usize) -> [Model; 4] {
    let (a0, b0) = (
        random_model(spec(4, depth), 1),
        random_model(spec(5, depth), 2),
    );
    // A change: a second random model's parameters mixed in, parameter by parameter.
    let change = |m: &Model, seed: u64| {
        let flat: Vec<f64> = tensim::io::parameter_tensors(&random_model(
            spec(if seed.is_multiple_of(2) { 4 } else { 5 }, depth),
            seed,
        ))
        .into_iter()
        .flat_map(|(_, _, v)| v)
        .collect();
        let k = std::cell::Cell::new(0);
        map_parameters(m, |v| {
            let i = k.get();
            k.set(i + 1);
            v + 0.3 * flat[i % flat.len()]
        })
    };
    let (a, b) = (change(&a0, 10), change(&b0, 11));
    [a0, a, b0, b]
}

fn opts() -> Options {
    Options {
        par: Par::Seq,
        ..Default::default()
    }
}

#[test]
fn the_tensor_metric_of_changes_is_the_cosine_of_the_difference_tensors() {
    for depth in [1, 2] {
        let [a0, a, b0, b] = four(depth);
        let sym = |m: &Model| {
            let u = common::unrolled(&m.padded(), m.in_dim());
            symmetrise(&u, &tree_group(depth))
        };
        let minus = |x: &Model, y: &Model| {
            let (ux, uy) = (sym(x), sym(y));
            common::Unrolled {
                data: ux.data.iter().zip(&uy.data).map(|(p, q)| p - q).collect(),
                ..ux
            }
        };
        let (da, db) = (minus(&a, &a0), minus(&b, &b0));
        let want =
            common::inner(&da, &db) / (common::inner(&da, &da) * common::inner(&db, &db)).sqrt();
        let r = similarity((&a, Some(&a0)), (&b, Some(&b0)), &Metric::TENSOR, &opts()).unwrap();
        assert!(
            (r.similarity - want).abs() < 1e-10,
            "depth {depth}: {} vs {want}",
            r.similarity
        );
        // One side only: the change of A against B itself.
        let ub = sym(&b);
        let want =
            common::inner(&da, &ub) / (common::inner(&da, &da) * common::inner(&ub, &ub)).sqrt();
        let r = similarity((&a, Some(&a0)), (&b, None), &Metric::TENSOR, &opts()).unwrap();
        assert!(
            (r.similarity - want).abs() < 1e-10,
            "depth {depth}, one side"
        );
    }
}

#[test]
fn the_gaussian_metric_of_changes_matches_monte_carlo_on_the_difference_outputs() {
    let [a0, a, b0, b] = four(1);
    let exact = Metric::Gaussian(GaussOptions {
        mode: Some(Mode::Exact),
        ..Default::default()
    });
    let r = similarity((&a, Some(&a0)), (&b, Some(&b0)), &exact, &opts()).unwrap();
    let (mut sums, mut count) = ([[0.0f64; 2]; 3], 0.0);
    for k in 0..4 {
        let x = Inputs::gaussian(250_000, 1, 3, 40 + k).unwrap();
        let out = |m: &Model| outputs(m, &x, Par::rayon(0)).unwrap();
        let (ya, ya0, yb, yb0) = (out(&a), out(&a0), out(&b), out(&b0));
        for row in 0..x.rows {
            let d = |p: &tensim::linalg::Mat<f64>, q: &tensim::linalg::Mat<f64>| {
                [0, 1].map(|c| p[(row, c)] - q[(row, c)])
            };
            let (u, v) = (d(&ya, &ya0), d(&yb, &yb0));
            let dot = |x: [f64; 2], y: [f64; 2]| x[0] * y[0] + x[1] * y[1];
            for (s, val) in sums.iter_mut().zip([dot(u, v), dot(u, u), dot(v, v)]) {
                s[0] += val;
                s[1] += val * val;
            }
            count += 1.0;
        }
    }
    for ((got, name), [s, s2]) in [
        (r.inner, "inner"),
        (r.norm2_a, "|ΔA|²"),
        (r.norm2_b, "|ΔB|²"),
    ]
    .into_iter()
    .zip(sums)
    {
        let mean = s / count;
        let se = ((s2 / count - mean * mean) / count).sqrt();
        assert!(
            (got - mean).abs() <= 4.0 * se,
            "{name}: {got} vs {mean} ± {se}"
        );
    }
}

#[test]
fn the_weight_cosine_of_changes_is_that_of_the_weight_differences() {
    let [a0, a, _, _] = four(1);
    let flat = |m: &Model| -> Vec<f64> {
        tensim::io::parameter_tensors(m)
            .into_iter()
            .flat_map(|(_, _, v)| v)
            .collect()
    };
    // B's change on A's architecture.
    let (b0, b) = (
        map_parameters(&a0, |v| v * v),
        map_parameters(&a, |v| v.sin()),
    );
    let d = |x: &Model, y: &Model| -> Vec<f64> {
        flat(x).iter().zip(flat(y)).map(|(p, q)| p - q).collect()
    };
    let (u, v) = (d(&a, &a0), d(&b, &b0));
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
    let want = dot(&u, &v) / (dot(&u, &u) * dot(&v, &v)).sqrt();
    let r = similarity((&a, Some(&a0)), (&b, Some(&b0)), &Metric::Matrix, &opts()).unwrap();
    assert!((r.similarity - want).abs() < 1e-12);
}

#[test]
fn changes_too_small_to_resolve_and_other_metrics_are_refused() {
    let [a0, _, b0, b] = four(1);
    let same = similarity((&a0, Some(&a0)), (&b, Some(&b0)), &Metric::TENSOR, &opts())
        .unwrap_err()
        .to_string();
    assert!(
        same.contains("change of model A is zero or too small"),
        "{same}"
    );
    let tiny = map_parameters(&a0, |v| v * (1.0 + 1e-9));
    let e = similarity(
        (&tiny, Some(&a0)),
        (&b, Some(&b0)),
        &Metric::TENSOR,
        &opts(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("too small"), "{e}");
    // The README's threshold: a change of about 2·10⁻² is resolved, one of about 2·10⁻⁴ is not.
    let near = |eps: f64| map_parameters(&a0, |v| v + eps * v.cos());
    let resolved = |eps| {
        similarity(
            (&near(eps), Some(&a0)),
            (&b, Some(&b0)),
            &Metric::TENSOR,
            &opts(),
        )
    };
    assert!(resolved(1e-2).is_ok());
    assert!(resolved(1e-4)
        .unwrap_err()
        .to_string()
        .contains("not resolved"));
    let e = similarity((&a0, None), (&b, Some(&b0)), &Metric::Behavioral, &opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not to behavioral"), "{e}");
}

#[test]
fn the_matrix_of_changes_holds_the_pairwise_values_and_nan_for_no_change() {
    let [a0, a, _, _] = four(1);
    let b = map_parameters(&a, |v| v + 0.2 * v.cos());
    let models = [&a, &a0, &b];
    let count = std::sync::atomic::AtomicU64::new(0);
    let progress = |k| {
        count.fetch_add(k, std::sync::atomic::Ordering::Relaxed);
    };
    let m = tensim::metrics::difference::matrix(&models, &a0, &Metric::TENSOR, None, &progress)
        .unwrap();
    assert_eq!(count.into_inner(), 10);
    let pair = |x: &Model, y: &Model| {
        similarity((x, Some(&a0)), (y, Some(&a0)), &Metric::TENSOR, &opts())
            .unwrap()
            .similarity
    };
    assert!((m[(0, 2)] - pair(&a, &b)).abs() < 1e-12 && (m[(2, 0)] - m[(0, 2)]).abs() == 0.0);
    assert!((m[(0, 0)] - 1.0).abs() < 1e-12);
    assert!(
        (0..3).all(|k| m[(1, k)].is_nan() && m[(k, 1)].is_nan()),
        "the base's own row"
    );
}

#[test]
fn the_matrix_of_changes_resumes_from_stored_inner_products() {
    use tensim::metrics::difference::matrix;
    use tensim::trajectory::tiles::TileStore;
    let [a0, a, _, _] = four(1);
    let b = map_parameters(&a, |v| v + 0.2 * v.cos());
    let models = [&a, &b];
    let dir = std::env::temp_dir().join(format!("tensim-minus-tiles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = TileStore::at(&dir).unwrap();
    let hashes = ["base", "a", "b"];
    let run = || {
        matrix(
            &models,
            &a0,
            &Metric::TENSOR,
            Some((&store, &hashes)),
            &|_| {},
        )
        .unwrap()
    };
    let first = run();
    // One tile (and its checksum) per inner product of [base, a, b].
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2 * 6);
    assert!((run()[(0, 1)] - first[(0, 1)]).abs() == 0.0);
    // A second run reads the stored values: change ⟨a, b⟩ on disk, and the result follows.
    let key = TileStore::key(
        &format!(
            "inner {}",
            tensim::trajectory::tile_tag(&Metric::TENSOR, false, None)
        ),
        &["a"],
        &["b"],
    );
    let ab = store.get(&key, &[1]).unwrap()[0];
    store.put(&key, &[1], &[ab * 0.5]).unwrap();
    assert!((run()[(0, 1)] - first[(0, 1)]).abs() > 1e-3);
    let _ = std::fs::remove_dir_all(&dir);
}
