//! Monte-Carlo agreement with exact values, within 4 standard errors.
//!
//! * MATH.md §4.3 (i): independent Gaussian inputs on every leg reproduce the weight-space
//!   (tensor) inner product exactly, at any depth.
//! * §4.3 (iii) special case: for quadratic forms `E[xᵀAx · xᵀBx] = trA·trB + 2tr(AB)`, which pins
//!   the shared-input functional estimator.

mod common;

use common::*;
use tensim::layers::Layer;
use tensim::linalg::Par;
use tensim::montecarlo::verify;

#[test]
fn independent_legs_reproduce_the_tensor_inner_product() {
    for (depth, residual, seed) in [(1, None, 11), (2, lerp(0.5), 12), (3, add(0.5), 13)] {
        let s = Spec {
            d_in: 2,
            d: 3,
            h: 3,
            d_out: 2,
            depth,
            residual,
            bias: true,
            embed: true,
        };
        let (a, b) = (
            random_model(s, seed),
            random_model(Spec { h: 4, ..s }, seed + 1),
        );
        let v = verify(&a, &b, 200_000, seed, Par::Seq).unwrap();
        let t = &v.tensor_exact;
        for (exact, est) in [
            (t.inner, v.tensor_mc.inner),
            (t.norm2_a, v.tensor_mc.norm2_a),
            (t.norm2_b, v.tensor_mc.norm2_b),
        ] {
            assert!(
                est.stderr > 0.0 && est.stderr < 0.05 * exact.abs().max(1e-3),
                "depth {depth}: s.e. {}",
                est.stderr
            );
            assert!(
                est.z(exact).abs() < 4.0,
                "depth {depth}: exact {exact}, MC {} ± {}",
                est.mean,
                est.stderr
            );
        }
    }
}

#[test]
fn shared_input_estimator_matches_the_quadratic_form_identity() {
    // One bilinear layer, no bias, no residual, no embedding: f_o(x) = xᵀA_o x with
    // A_o = Σ_k D[o,k] ½(L_k R_kᵀ + R_k L_kᵀ).
    let s = Spec {
        d_in: 4,
        d: 3,
        h: 5,
        d_out: 3,
        depth: 1,
        residual: None,
        bias: false,
        embed: false,
    };
    let (a, b) = (random_model(s, 21), random_model(s, 22));
    let forms = |m: &tensim::Model| -> Vec<Vec<Vec<f64>>> {
        let Layer::Bilinear(bl) = &m.layers()[0] else {
            panic!()
        };
        let Layer::Linear(head) = &m.layers()[1] else {
            panic!()
        };
        let d = tensim::linalg::mul(
            head.weight.as_ref(),
            bl.down.as_ref().unwrap().as_ref(),
            Par::Seq,
        );
        (0..d.nrows())
            .map(|o| {
                (0..4)
                    .map(|i| {
                        (0..4)
                            .map(|j| {
                                (0..5)
                                    .map(|k| {
                                        d[(o, k)]
                                            * 0.5
                                            * (bl.left[(k, i)] * bl.right[(k, j)]
                                                + bl.right[(k, i)] * bl.left[(k, j)])
                                    })
                                    .sum()
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    };
    let (fa, fb) = (forms(&a), forms(&b));
    let tr = |m: &Vec<Vec<f64>>| (0..4).map(|i| m[i][i]).sum::<f64>();
    let tr_prod = |p: &Vec<Vec<f64>>, q: &Vec<Vec<f64>>| {
        (0..4)
            .flat_map(|i| (0..4).map(move |j| (i, j)))
            .map(|(i, j)| p[i][j] * q[j][i])
            .sum::<f64>()
    };
    let exact = |p: &[Vec<Vec<f64>>], q: &[Vec<Vec<f64>>]| {
        p.iter()
            .zip(q)
            .map(|(x, y)| tr(x) * tr(y) + 2.0 * tr_prod(x, y))
            .sum::<f64>()
    };
    let v = verify(&a, &b, 400_000, 5, Par::Seq).unwrap();
    let f = &v.functional_mc;
    for (want, est) in [
        (exact(&fa, &fb), f.inner),
        (exact(&fa, &fa), f.norm2_a),
        (exact(&fb, &fb), f.norm2_b),
    ] {
        assert!(
            est.z(want).abs() < 4.0,
            "exact {want}, MC {} ± {}",
            est.mean,
            est.stderr
        );
    }
    // The real-Gaussian functional product is not the tensor product (§4.3 (iii)).
    assert!((f.inner.mean - v.tensor_exact.inner).abs() > 10.0 * f.inner.stderr);
}
