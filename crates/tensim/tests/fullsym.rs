//! Full symmetrisation (MATH.md §3.7): the depth-2 closed form against brute force over all 4!
//! leg permutations, and the counterexamples of §3.6, which compute identical functions.

mod common;

use common::*;
use tensim::linalg::Par;
use tensim::metrics::fullsym::{self, crossed, inner_depth2, Depth2, FullOptions};
use tensim::metrics::tensor;
use tensim::metrics::{Method, Symmetry};
use tensim::Model;

fn brute_nodes(m: &Model) -> Unrolled {
    unrolled(&tensor::lifted_nodes(m, 2), m.in_dim())
}

#[test]
fn depth2_closed_form_equals_brute_force_symmetrisation() {
    let s4 = all_permutations(4);
    let w2 = tree_group(2);
    for (seed, residual, bias) in [
        (1, None, false),
        (2, lerp(0.5), true),
        (3, add(0.7), true),
        (4, None, true),
    ] {
        let sa = Spec {
            d_in: 2,
            d: 3,
            h: 3,
            d_out: 2,
            depth: 2,
            residual,
            bias,
            embed: true,
        };
        let (a, b) = (
            random_model(sa, seed),
            random_model(Spec { h: 2, d: 2, ..sa }, seed + 50),
        );
        let (ua, ub) = (brute_nodes(&a), brute_nodes(&b));
        let (pwa, pwb) = (symmetrise(&ua, &w2), symmetrise(&ub, &w2));
        let (fa, fb) = (Depth2::new(&a).unwrap(), Depth2::new(&b).unwrap());
        let want_crossed = inner(&pwa, &permute_legs(&pwb, &[0, 2, 1, 3]));
        let got_crossed = crossed(&fa, &fb, 1.0, Par::Seq).unwrap();
        assert!(
            close(got_crossed, want_crossed, 1e-10),
            "seed {seed}: crossed {got_crossed} vs {want_crossed}"
        );
        let want = inner(&symmetrise(&ua, &s4), &symmetrise(&ub, &s4));
        let got = inner_depth2(&fa, &fb, 1.0, Par::Seq).unwrap();
        assert!(close(got, want, 1e-10), "seed {seed}: full {got} vs {want}");
    }
}

fn full(a: &Model, b: &Model) -> tensim::metrics::Comparison {
    let opts = tensim::metrics::Options {
        per_output: false,
        per_tensor: false,
        par: Par::Seq,
    };
    let fo = FullOptions {
        by_degree: true,
        ..Default::default()
    };
    fullsym::similarity(a, b, &opts, &fo).unwrap()
}

#[test]
fn counterexamples_are_identical_functions_under_full_symmetrisation() {
    for (a, b) in counterexamples() {
        let r = full(&a, &b);
        assert!((r.similarity - 1.0).abs() < 1e-12, "{}", r.similarity);
        assert_eq!(
            (r.symmetrize, r.mode),
            (Some(Symmetry::Full), Some(Method::Exact))
        );
        // Only the quartic part is non-zero, and it agrees.
        let deg = r.by_degree.unwrap();
        assert!(
            deg[..4].iter().all(Option::is_none) && (deg[4].unwrap() - 1.0).abs() < 1e-9,
            "{deg:?}"
        );
    }
}

#[test]
fn depth_one_equals_the_per_layer_value() {
    let s = Spec {
        d_in: 3,
        d: 3,
        h: 4,
        d_out: 2,
        depth: 1,
        residual: lerp(0.3),
        bias: true,
        embed: true,
    };
    let (a, b) = (random_model(s, 7), random_model(Spec { h: 2, ..s }, 8));
    let per_layer = tensor::similarity(&a, &b, &Default::default()).unwrap();
    let r = full(&a, &b);
    assert!((r.similarity - per_layer.similarity).abs() < 1e-14 && r.inner == per_layer.inner);
}

#[test]
fn degree_parts_equal_brute_force() {
    // ⟨P_S U_a, P_S U_b⟩ grouped by the number m of data (non-unit) legs = ⟨P^a_m, P^b_m⟩/C(4, m).
    let s4 = all_permutations(4);
    let sa = Spec {
        d_in: 2,
        d: 2,
        h: 2,
        d_out: 2,
        depth: 2,
        residual: lerp(0.5),
        bias: true,
        embed: true,
    };
    let (a, b) = (random_model(sa, 21), random_model(sa, 22));
    let (ua, ub) = (
        symmetrise(&brute_nodes(&a), &s4),
        symmetrise(&brute_nodes(&b), &s4),
    );
    let by_m = |u: &Unrolled, v: &Unrolled| {
        let mut g = [0.0; 5];
        for o in 1..u.out {
            for col in 0..81 {
                let m = [col / 27, (col / 9) % 3, (col / 3) % 3, col % 3]
                    .iter()
                    .filter(|&&i| i != 0)
                    .count();
                g[m] += u.at(o, col) * v.at(o, col);
            }
        }
        g
    };
    let (ab, aa, bb) = (by_m(&ua, &ub), by_m(&ua, &ua), by_m(&ub, &ub));
    let got = full(&a, &b).by_degree.unwrap();
    for m in 0..5 {
        let want = ab[m] / (aa[m] * bb[m]).sqrt();
        assert!(
            (got[m].unwrap() - want).abs() < 1e-8,
            "degree {m}: {:?} vs {want}",
            got[m]
        );
    }
}

#[test]
fn complex_gaussian_monte_carlo_is_unbiased() {
    // Depth 2: within 4 standard errors of the closed form.
    let sa = Spec {
        d_in: 2,
        d: 2,
        h: 3,
        d_out: 2,
        depth: 2,
        residual: lerp(0.5),
        bias: true,
        embed: true,
    };
    let (a, b) = (random_model(sa, 31), random_model(sa, 32));
    let exact = full(&a, &b);
    let mc = tensim::montecarlo::full_symmetric(&a, &b, 200_000, 3, Par::Seq).unwrap();
    for (e, m) in [
        (exact.inner, mc.inner),
        (exact.norm2_a, mc.norm2_a),
        (exact.norm2_b, mc.norm2_b),
    ] {
        assert!(
            m.z(e).abs() < 4.0,
            "exact {e}, MC {} ± {}",
            m.mean,
            m.stderr
        );
    }
    // Depth 3 (Monte-Carlo mode): the same quartic split two ways, then squared — identical
    // functions of degree 8, so the estimate is 1 up to its noise.
    let [(p, q), _, _] = counterexamples();
    let square = |m: &Model| {
        let mut layers = m.layers().to_vec();
        let head = layers.pop().unwrap();
        let one = tensim::linalg::Mat::from_fn(1, 1, |_, _| 1.0);
        layers.push(tensim::Layer::Bilinear(tensim::Bilinear {
            left: one.clone(),
            right: one.clone(),
            down: Some(one),
            left_bias: None,
            right_bias: None,
            down_bias: None,
            residual: None,
        }));
        layers.push(head);
        Model::new(m.in_dim(), 1, layers).unwrap()
    };
    let opts = tensim::metrics::Options {
        per_output: false,
        per_tensor: false,
        par: Par::Seq,
    };
    let r = fullsym::similarity(
        &square(&p),
        &square(&q),
        &opts,
        &FullOptions {
            samples: 100_000,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.mode, Some(Method::MonteCarlo));
    assert!(
        (r.similarity - 1.0).abs() < 1e-9,
        "identical functions: {}",
        r.similarity
    );
    assert!(r.stderr.unwrap() > 0.0);
    assert_eq!(r.warning, None, "a resolved estimate");
    // Unrelated depth-3 models with few samples: the estimate has no signal, and says so.
    let s = Spec {
        d_in: 3,
        d: 3,
        h: 3,
        d_out: 2,
        depth: 3,
        residual: None,
        bias: false,
        embed: false,
    };
    let (a, b) = (random_model(s, 51), random_model(s, 52));
    let r = fullsym::similarity(
        &a,
        &b,
        &opts,
        &FullOptions {
            samples: 8,
            ..Default::default()
        },
    )
    .unwrap();
    let w = r.warning.expect("unresolved");
    assert!(w.contains("not resolved") && w.contains("--samples"), "{w}");
}

#[test]
fn different_depths_computing_the_same_polynomial_score_one() {
    // b = a followed by an identity bilinear layer (lerp scale 0): same function, one layer deeper.
    let s = Spec {
        d_in: 2,
        d: 3,
        h: 3,
        d_out: 2,
        depth: 1,
        residual: lerp(0.5),
        bias: true,
        embed: true,
    };
    let a = random_model(s, 41);
    let mut layers = a.layers().to_vec();
    let head = layers.pop().unwrap();
    let z = |r, c| tensim::linalg::Mat::zeros(r, c);
    layers.push(tensim::Layer::Bilinear(tensim::Bilinear {
        left: z(2, 3),
        right: z(2, 3),
        down: Some(z(3, 2)),
        left_bias: None,
        right_bias: None,
        down_bias: None,
        residual: lerp(0.0),
    }));
    layers.push(head);
    let b = Model::new(2, 1, layers).unwrap();
    assert_eq!((a.n_bilinear(), b.n_bilinear()), (1, 2));
    assert!((full(&a, &b).similarity - 1.0).abs() < 1e-12);
}

mod laws {
    use super::*;
    use proptest::prelude::*;
    use rand::{RngExt, SeedableRng};
    use tensim::reparam;

    fn fs(a: &Model, b: &Model) -> f64 {
        let opts = tensim::metrics::Options {
            per_output: false,
            per_tensor: false,
            par: Par::Seq,
        };
        fullsym::similarity(a, b, &opts, &FullOptions::default())
            .unwrap()
            .similarity
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn full_symmetrisation_obeys_the_laws(d_in in 1usize..3, d in 1usize..3, h in 1usize..4, res in 0usize..3, seed in any::<u64>()) {
            let residual = [None, lerp(0.4), add(0.6)][res];
            let s = Spec { d_in, d, h, d_out: 2, depth: 2, residual, bias: true, embed: true };
            let (a, b) = (random_model(s, seed), random_model(s, seed ^ 9));
            prop_assume!(well_conditioned(&a) && well_conditioned(&b));
            let base = fs(&a, &b);
            prop_assert!((-1.0..=1.0).contains(&base));
            prop_assert!(close(fs(&b, &a), base, 1e-12) && close(fs(&a, &a), 1.0, 1e-12));
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut perm: Vec<usize> = (0..h).collect();
            for k in (1..h).rev() { perm.swap(k, rng.random_range(0..=k)); }
            let alpha: Vec<f64> = (0..h).map(|_| rng.random_range(0.3..3.0)).collect();
            let swap: Vec<bool> = (0..h).map(|_| rng.random_bool(0.5)).collect();
            let mut b2 = reparam::permute_hidden(&b, 1, &perm).unwrap();
            b2 = reparam::rescale_hidden(&b2, 2, &alpha, &alpha).unwrap();
            b2 = reparam::swap_left_right(&b2, 2, &swap).unwrap();
            b2 = reparam::fold_residual(&reparam::fold_residual(&b2, 1).unwrap(), 2).unwrap();
            prop_assert!(close(fs(&a, &b2), base, 1e-8), "{} vs {base}", fs(&a, &b2));
        }
    }
}

#[test]
fn very_deep_networks_are_refused_not_overflowed() {
    // 70 bilinear layers: degree 2^70 (beyond u64), (2^70)! leg orders.
    let s = Spec {
        d_in: 2,
        d: 2,
        h: 2,
        d_out: 1,
        depth: 70,
        residual: None,
        bias: false,
        embed: false,
    };
    let (a, b) = (random_model(s, 1), random_model(s, 2));
    assert_eq!(a.degree(), None);
    let e = fullsym::similarity(&a, &b, &Default::default(), &FullOptions::default()).unwrap_err();
    assert!(e.to_string().contains("at most 20 bilinear layers"), "{e}");
    let e = tensim::montecarlo::verify(&a, &b, 100, 0, Par::Seq).unwrap_err();
    assert!(matches!(e.root(), tensim::Error::TooLarge { .. }), "{e}");
}
