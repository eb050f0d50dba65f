//! Fixed-weight reference values from `spec/check.py` (section H, weights from the closed form
//! `gw`) and the counterexamples of MATH.md §3.6 ([B4]). Reproduce the numbers with
//! `python3 spec/check.py` (section H prints them).

mod common;

use common::{close, counterexamples};
use tensim::arch::{Residual, ResidualMode};
use tensim::layers::{Bilinear, Layer, Linear};
use tensim::linalg::{Mat, Par};
use tensim::metrics::{tensor, Options};
use tensim::Model;

/// `W[i,j] = 0.5 sin(0.7(i+1) + 1.3(j+1) + off) / √cols` (check.py `gw`).
fn gw(rows: usize, cols: usize, off: f64) -> Mat<f64> {
    Mat::from_fn(rows, cols, |i, j| {
        0.5 * (0.7 * (i + 1) as f64 + 1.3 * (j + 1) as f64 + off).sin() / (cols as f64).sqrt()
    })
}

/// check.py `golden_mlp(off, depth)`: embed 3→4, `depth` × bilinear(h 5, lerp 0.5, down bias), head 4→2.
fn golden_mlp(off: f64, depth: usize) -> Model {
    let (d_in, d, h, d_out) = (3, 4, 5, 2);
    let mut layers = vec![Layer::Linear(Linear {
        weight: gw(d, d_in, off),
        bias: None,
    })];
    for l in 0..depth {
        let o = off + 10.0 * (l + 1) as f64;
        layers.push(Layer::Bilinear(Bilinear {
            left: gw(h, d, o + 1.0),
            right: gw(h, d, o + 2.0),
            down: Some(gw(d, h, o + 3.0)),
            left_bias: None,
            right_bias: None,
            down_bias: Some((0..d).map(|i| 0.1 * (i as f64 + o).cos()).collect()),
            residual: Some(Residual {
                mode: ResidualMode::Lerp,
                scale: 0.5,
            }),
        }));
    }
    layers.push(Layer::Linear(Linear {
        weight: gw(d_out, d, off + 99.0),
        bias: None,
    }));
    Model::new(d_in, 1, layers).unwrap()
}

fn opts() -> Options {
    Options {
        per_output: false,
        par: Par::Seq,
        ..Default::default()
    }
}

#[test]
fn h1_forward_value() {
    let a = golden_mlp(0.0, 2);
    let x = Mat::from_fn(1, 3, |_, j| [0.3, -1.2, 0.8][j]);
    let y = a.forward(x.as_ref(), Par::Seq);
    assert!((y[(0, 0)] - -0.018757174885).abs() < 1e-11, "{}", y[(0, 0)]);
    assert!((y[(0, 1)] - -0.02753856343).abs() < 1e-10, "{}", y[(0, 1)]);
}

#[test]
fn h2_per_layer_tensor_similarity() {
    let r = tensor::similarity(&golden_mlp(0.0, 2), &golden_mlp(0.5, 2), &opts()).unwrap();
    assert!(close(r.inner, 1.128267650248e-03, 1e-11), "{}", r.inner);
    assert!(close(r.norm2_a, 1.082685116372e-03, 1e-11), "{}", r.norm2_a);
    assert!(close(r.norm2_b, 1.243111504310e-03, 1e-11), "{}", r.norm2_b);
    assert!(
        (r.similarity - 0.972536724841).abs() < 1e-11,
        "{}",
        r.similarity
    );
}

#[test]
fn h6_one_bilinear_layer() {
    let r = tensor::similarity(&golden_mlp(0.0, 1), &golden_mlp(0.5, 1), &opts()).unwrap();
    assert!(
        (r.similarity - 0.982041576122).abs() < 1e-11,
        "{}",
        r.similarity
    );
}

#[test]
fn b4_counterexamples_identical_functions_with_per_layer_values_0_0_and_inv_sqrt3() {
    let [(a, b), (c, d), (e, f)] = counterexamples();
    for (x, y, want) in [(&a, &b, 0.0), (&c, &d, 0.0), (&e, &f, 1.0 / 3f64.sqrt())] {
        // Same function …
        let n = x.in_dim();
        let pts = Mat::from_fn(6, n, |i, j| ((i * n + j) as f64 * 0.91).sin() * 1.7);
        let (fx, fy) = (
            x.forward(pts.as_ref(), Par::Seq),
            y.forward(pts.as_ref(), Par::Seq),
        );
        for i in 0..6 {
            assert!((fx[(i, 0)] - fy[(i, 0)]).abs() < 1e-12);
        }
        // … and the per-layer tensor similarity of MATH.md §3.6's table.
        let r = tensor::similarity(x, y, &opts()).unwrap();
        assert!(
            (r.similarity - want).abs() < 1e-12,
            "{} vs {want}",
            r.similarity
        );
    }
}
