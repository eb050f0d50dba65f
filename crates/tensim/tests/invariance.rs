//! Property tests (proptest) for the laws of tensor similarity (MATH.md §3.5): invariance under
//! every function-preserving re-parametrisation, symmetry, self-similarity 1, range [-1, 1],
//! scale invariance. Each transformation is first checked to preserve the function.

mod common;

use common::*;
use faer::linalg::solvers::DenseSolveCore;
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use tensim::layers::Layer;
use tensim::linalg::{mul, Mat, Par};
use tensim::metrics::{matrix, tensor, Options};
use tensim::{reparam, Model};

fn ts(a: &Model, b: &Model) -> f64 {
    tensor::similarity(
        a,
        b,
        &Options {
            per_output: false,
            per_tensor: false,
            par: Par::Seq,
        },
    )
    .unwrap()
    .similarity
}

fn same_function(a: &Model, b: &Model) {
    let x = Mat::from_fn(5, a.in_dim(), |i, j| {
        ((3 * i + 7 * j) as f64 * 0.61).sin() * 1.3
    });
    let (fa, fb) = (
        a.forward(x.as_ref(), Par::Seq),
        b.forward(x.as_ref(), Par::Seq),
    );
    let scale = fa.norm_max().max(1.0);
    assert!(
        (&fa - &fb).norm_max() <= 1e-9 * scale,
        "transformation changed the function"
    );
}

fn spec_strategy() -> impl Strategy<Value = (Spec, u64)> {
    (
        1usize..4,
        1usize..4,
        1usize..5,
        1usize..4,
        1usize..3,
        0usize..3,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(d_in, d, h, d_out, depth, res, bias, seed)| {
            let residual = [None, lerp(0.4), add(0.6)][res];
            (
                Spec {
                    d_in,
                    d,
                    h,
                    d_out,
                    depth,
                    residual,
                    bias,
                    embed: true,
                },
                seed,
            )
        })
}

fn bilinear_indices(m: &Model) -> Vec<usize> {
    (0..m.layers().len())
        .filter(|&i| matches!(m.layers()[i], Layer::Bilinear(_)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariant_under_hidden_permutation_rescaling_and_swap((spec, seed) in spec_strategy()) {
        let (a, b) = (random_model(spec, seed), random_model(spec, seed ^ 1));
        prop_assume!(well_conditioned(&a) && well_conditioned(&b));
        let base = ts(&a, &b);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for &i in &bilinear_indices(&b) {
            let h = spec.h;
            let mut perm: Vec<usize> = (0..h).collect();
            for k in (1..h).rev() { perm.swap(k, rng.random_range(0..=k)); }
            let alpha: Vec<f64> = (0..h).map(|_| rng.random_range(0.2..5.0)).collect();
            let beta: Vec<f64> = (0..h).map(|_| rng.random_range(0.2..5.0) * if rng.random_bool(0.5) { -1.0 } else { 1.0 }).collect();
            let swap: Vec<bool> = (0..h).map(|_| rng.random_bool(0.5)).collect();
            for b2 in [
                reparam::permute_hidden(&b, i, &perm).unwrap(),
                reparam::rescale_hidden(&b, i, &alpha, &beta).unwrap(),
                reparam::swap_left_right(&b, i, &swap).unwrap(),
            ] {
                same_function(&b, &b2);
                prop_assert!(close(ts(&a, &b2), base, 1e-9), "{} vs {base}", ts(&a, &b2));
            }
        }
    }

    #[test]
    fn invariant_under_residual_stream_change_of_basis((spec, seed) in spec_strategy()) {
        let (a, b) = (random_model(spec, seed), random_model(spec, seed ^ 2));
        prop_assume!(well_conditioned(&a) && well_conditioned(&b));
        let base = ts(&a, &b);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Fold residuals into hidden units (same padded network), then re-base every
        // intermediate space x' = Mx + c (M invertible, c a shift: affine re-parametrisation).
        let mut b2 = b.clone();
        for i in bilinear_indices(&b) { b2 = reparam::fold_residual(&b2, i).unwrap(); }
        same_function(&b, &b2);
        prop_assert!(close(ts(&a, &b2), base, 1e-9));
        for i in 0..b2.layers().len() - 1 {
            let d = b2.layers()[i].out_dim();
            let m = Mat::from_fn(d, d, |p, q| rng.random_range(-0.5..0.5) + if p == q { 2.0 } else { 0.0 });
            let minv = m.partial_piv_lu().inverse();
            // The shift is scaled to the activations' size: an O(1) shift of O(1e-6) signals
            // makes the padded Grams cancel O(1) terms, which only measures rounding.
            let prefix = Model::new(b2.in_dim(), 1, b2.layers()[..=i].to_vec()).unwrap();
            let x = Mat::from_fn(8, b2.in_dim(), |r, j| ((5 * r + 3 * j) as f64 * 0.77).sin());
            let rms = prefix.forward(x.as_ref(), Par::Seq).norm_l2() / (8.0 * d as f64).sqrt();
            let c: Vec<f64> = (0..d).map(|_| rms * rng.random_range(-1.0..1.0)).collect();
            b2 = reparam::change_basis(&b2, i, &m, &minv, &c).unwrap();
        }
        same_function(&b, &b2);
        prop_assert!(close(ts(&a, &b2), base, 1e-8), "{} vs {base}", ts(&a, &b2));
    }

    #[test]
    fn invariant_under_orthogonal_input_and_output_rotations_of_both((spec, seed) in spec_strategy()) {
        let (a, b) = (random_model(spec, seed), random_model(spec, seed ^ 3));
        prop_assume!(well_conditioned(&a) && well_conditioned(&b));
        let base = ts(&a, &b);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let orth = |n: usize, rng: &mut rand::rngs::StdRng| {
            let g = Mat::from_fn(n, n, |_, _| rng.random_range(-1.0..1.0));
            g.qr().compute_Q()
        };
        let (qi, qo) = (orth(spec.d_in, &mut rng), orth(spec.d_out, &mut rng));
        let rotate = |m: &Model| {
            let mut layers = m.layers().to_vec();
            if let Layer::Linear(l) = &mut layers[0] { l.weight = mul(l.weight.as_ref(), qi.as_ref(), Par::Seq); }
            if let Some(Layer::Linear(l)) = layers.last_mut() {
                l.weight = mul(qo.as_ref(), l.weight.as_ref(), Par::Seq);
                l.bias = l.bias.as_ref().map(|b| (0..b.len()).map(|o| (0..b.len()).map(|p| qo[(o, p)] * b[p]).sum()).collect());
            }
            Model::new(m.in_dim(), 1, layers).unwrap()
        };
        prop_assert!(close(ts(&rotate(&a), &rotate(&b)), base, 1e-9));
    }

    #[test]
    fn symmetric_self_one_bounded_and_scale_invariant((spec, seed) in spec_strategy(), scale in 0.01f64..100.0) {
        let (a, b) = (random_model(spec, seed), random_model(spec, seed ^ 4));
        prop_assume!(well_conditioned(&a) && well_conditioned(&b));
        let ab = ts(&a, &b);
        // Rounding grows with the cancellation inside the norms.
        let tol = (1e-14 * cancellation(&a).max(cancellation(&b))).max(1e-12);
        prop_assert!(close(ab, ts(&b, &a), tol));
        prop_assert!(close(ts(&a, &a), 1.0, tol), "{} vs 1 (tolerance {tol:e})", ts(&a, &a));
        prop_assert!((-1.0..=1.0).contains(&ab));
        // Global rescaling of b's output: the head (and its bias) times `scale`.
        let mut layers = b.layers().to_vec();
        if let Some(Layer::Linear(l)) = layers.last_mut() {
            l.weight = Mat::from_fn(l.weight.nrows(), l.weight.ncols(), |i, j| scale * l.weight[(i, j)]);
            l.bias = l.bias.as_ref().map(|v| v.iter().map(|x| scale * x).collect());
        }
        prop_assert!(close(ts(&a, &Model::new(b.in_dim(), 1, layers).unwrap()), ab, 1e-10));
    }
}

#[test]
fn the_weight_cosine_is_not_invariant() {
    // The baseline changes under a hidden permutation, which is what tensor similarity fixes.
    let spec = Spec {
        d_in: 3,
        d: 4,
        h: 5,
        d_out: 2,
        depth: 1,
        residual: None,
        bias: false,
        embed: true,
    };
    let b = random_model(spec, 9);
    let b2 = reparam::permute_hidden(&b, 1, &[4, 3, 2, 1, 0]).unwrap();
    same_function(&b, &b2);
    let opts = Options {
        per_output: false,
        per_tensor: false,
        par: Par::Seq,
    };
    assert!(matrix::similarity(&b, &b2, &opts).unwrap().similarity < 0.99);
    assert!(close(ts(&b, &b2), 1.0, 1e-12));
}
