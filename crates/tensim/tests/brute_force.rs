//! The Gram recursion against the materialised unrolled tensors (MATH.md §3.3 theorem, [B1], [B2]).

mod common;

use common::*;
use tensim::layers::{PaddedBilinear, PaddedLayer};
use tensim::linalg::{pad_ones, Mat, Par};
use tensim::metrics::{tensor, Options};
use tensim::montecarlo::eval_symmetrised;

fn opts(per_output: bool) -> Options {
    Options {
        per_output,
        per_tensor: false,
        par: Par::Seq,
    }
}

/// `⟨P_W U_a, P_W U_b⟩` and the cosine from materialised tensors.
fn brute(a: &tensim::Model, b: &tensim::Model) -> (f64, f64) {
    let depth = a.n_bilinear().max(b.n_bilinear());
    let w = tree_group(depth);
    // The model's own padded nodes plus identity nodes `ŷ ∘ ŷ₀` at the output (not the
    // library's lifted/folded node list).
    let nodes = |m: &tensim::Model| {
        let mut v = m.padded();
        v.extend(
            (m.n_bilinear()..depth)
                .map(|_| PaddedLayer::Bilinear(PaddedBilinear::identity(m.out_dim()))),
        );
        v
    };
    let ua = symmetrise(&unrolled(&nodes(a), a.in_dim()), &w);
    let ub = symmetrise(&unrolled(&nodes(b), b.in_dim()), &w);
    let ab = inner(&ua, &ub);
    (ab, ab / (inner(&ua, &ua) * inner(&ub, &ub)).sqrt())
}

#[test]
fn recursion_equals_materialised_tensor_inner_product() {
    let mut checked = 0;
    for depth in 1..=3 {
        for (ri, residual) in [None, lerp(0.3), add(0.7)].into_iter().enumerate() {
            for bias in [false, true] {
                let (d_in, d, h) = if depth == 3 { (2, 2, 2) } else { (2, 3, 3) };
                let sa = Spec {
                    d_in,
                    d,
                    h,
                    d_out: 2,
                    depth,
                    residual,
                    bias,
                    embed: true,
                };
                // b is wider than a: rectangular Grams.
                let sb = Spec {
                    d: d + 1,
                    h: h + 1,
                    ..sa
                };
                let seed = (depth * 100 + ri * 10 + bias as usize) as u64;
                let (a, b) = (random_model(sa, seed), random_model(sb, seed + 1000));
                let r = tensor::similarity(&a, &b, &opts(false)).unwrap();
                let (ab, cos) = brute(&a, &b);
                assert!(
                    close(r.inner, ab, 1e-10),
                    "depth {depth} res {residual:?} bias {bias}: {} vs {ab}",
                    r.inner
                );
                assert!(close(r.similarity, cos, 1e-10));
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 18);
}

#[test]
fn one_layer_without_embedding_and_per_output_slices() {
    // [B1]: per-class slices ⟨Tˢ_a[c], Tˢ_b[c]⟩ sum to the total and match the brute force.
    let s = Spec {
        d_in: 5,
        d: 3,
        h: 4,
        d_out: 3,
        depth: 1,
        residual: None,
        bias: true,
        embed: false,
    };
    let (a, b) = (random_model(s, 1), random_model(s, 2));
    let r = tensor::similarity(&a, &b, &opts(true)).unwrap();
    let w = tree_group(1);
    let ua = symmetrise(&unrolled(&a.padded(), 5), &w);
    let ub = symmetrise(&unrolled(&b.padded(), 5), &w);
    let cols = 36;
    let slice = |u: &Unrolled, v: &Unrolled, o: usize| {
        (0..cols).map(|j| u.at(o, j) * v.at(o, j)).sum::<f64>()
    };
    let per = r.per_output.unwrap();
    for (c, p) in per.iter().enumerate() {
        let o = c + 1;
        let want = slice(&ua, &ub, o) / (slice(&ua, &ua, o) * slice(&ub, &ub, o)).sqrt();
        assert!(close(p.unwrap(), want, 1e-10), "slice {c}: {p:?} vs {want}");
    }
    assert!(close(
        r.inner,
        (1..4).map(|o| slice(&ua, &ub, o)).sum(),
        1e-10
    ));
}

#[test]
fn purely_linear_models_reduce_to_the_cosine_of_augmented_weights() {
    // §3.1: no bilinear layer ⇒ ⟨W_a, W_b⟩_F + b_a·b_b.
    let s = Spec {
        d_in: 4,
        d: 3,
        h: 1,
        d_out: 3,
        depth: 0,
        residual: None,
        bias: true,
        embed: false,
    };
    let (a, b) = (random_model(s, 5), random_model(s, 6));
    let (tensim::Layer::Linear(la), tensim::Layer::Linear(lb)) = (&a.layers()[0], &b.layers()[0])
    else {
        panic!()
    };
    let flat = |l: &tensim::Linear| {
        let mut v = tensim::linalg::to_row_major(l.weight.as_ref());
        v.extend(l.bias.clone().unwrap());
        v
    };
    let (x, y) = (flat(la), flat(lb));
    let dot = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(u, v)| u * v).sum::<f64>();
    let r = tensor::similarity(&a, &b, &opts(false)).unwrap();
    assert!(close(r.inner, dot(&x, &y), 1e-12));
    assert!(close(
        r.similarity,
        dot(&x, &y) / (dot(&x, &x) * dot(&y, &y)).sqrt(),
        1e-12
    ));
}

#[test]
fn different_depths_are_lifted_by_identity_nodes() {
    let s1 = Spec {
        d_in: 2,
        d: 3,
        h: 3,
        d_out: 2,
        depth: 1,
        residual: lerp(0.5),
        bias: true,
        embed: true,
    };
    let s2 = Spec { depth: 2, ..s1 };
    let (a, b) = (random_model(s1, 7), random_model(s2, 8));
    let r = tensor::similarity(&a, &b, &opts(false)).unwrap();
    let (ab, cos) = brute(&a, &b);
    assert!(close(r.inner, ab, 1e-10) && close(r.similarity, cos, 1e-10));
    // Lifting does not change the function.
    let x = Mat::from_fn(5, 2, |i, j| (i as f64 - 2.0) * 0.3 + j as f64);
    let lifted = tensor::lifted_nodes(&a, 2);
    let legs = vec![pad_ones(x.as_ref()); 4];
    let y = eval_symmetrised(&lifted, &legs, Par::Seq);
    let f = a.forward(x.as_ref(), Par::Seq);
    for i in 0..5 {
        for o in 0..2 {
            assert!((y[(i, o + 1)] - f[(i, o)]).abs() < 1e-12);
        }
    }
}

#[test]
fn forward_padded_network_and_unrolled_tensor_agree() {
    // [A2]–[A4]: the padded tensor network computes the layer definitions.
    for (seed, residual) in [(1, None), (2, lerp(0.3)), (3, add(0.7))] {
        let s = Spec {
            d_in: 2,
            d: 3,
            h: 3,
            d_out: 2,
            depth: 2,
            residual,
            bias: true,
            embed: true,
        };
        let m = random_model(s, seed);
        let x = Mat::from_fn(4, 2, |i, j| ((i * 2 + j) as f64 * 0.37).sin());
        let direct = m.forward(x.as_ref(), Par::Seq);
        let padded = m.forward_padded(x.as_ref(), Par::Seq);
        let u = unrolled(&m.padded(), 2);
        for i in 0..4 {
            let xh = [1.0, x[(i, 0)], x[(i, 1)]];
            for o in 0..2 {
                // U(x̂, x̂, x̂, x̂) by explicit summation over the 3^4 leg indices.
                let mut val = 0.0;
                for col in 0..81 {
                    let (a, b, c, d) = (col / 27, (col / 9) % 3, (col / 3) % 3, col % 3);
                    val += u.at(o + 1, col) * xh[a] * xh[b] * xh[c] * xh[d];
                }
                assert!((direct[(i, o)] - padded[(i, o)]).abs() < 1e-12);
                assert!((direct[(i, o)] - val).abs() < 1e-12);
            }
        }
    }
}
