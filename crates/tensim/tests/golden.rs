//! Fixed-weight reference values from `spec/check.py` (section H, weights from the closed form
//! `gw`) and the counterexamples of MATH.md §3.6 ([B4]). Reproduce the numbers with
//! `python3 spec/check.py` (section H prints them).

mod common;

use common::{close, counterexamples};
use tensim::arch::{Mask, Residual, ResidualMode};
use tensim::layers::{Attention, Bilinear, Layer, Linear};
use tensim::linalg::{Mat, Par};
use tensim::metrics::gaussian::{self, GaussOptions, Mode, Precision};
use tensim::metrics::Method;
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
        per_tensor: false,
        par: Par::Seq,
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

fn gauss(mode: Mode) -> GaussOptions {
    GaussOptions {
        mode: Some(mode),
        ..Default::default()
    }
}

#[test]
fn h4_h5_h6_gaussian_exact_and_closure() {
    let (a, b) = (golden_mlp(0.0, 2), golden_mlp(0.5, 2));
    // [H4] exact (enumerating the Wick sum of the whole network).
    let r = gaussian::similarity(&a, &b, &gauss(Mode::Exact), Par::rayon(0)).unwrap();
    assert_eq!(r.mode, Some(Method::Exact));
    assert!(close(r.inner, 4.291859577262e-03, 1e-11), "{}", r.inner);
    assert!(close(r.norm2_a, 4.184070301205e-03, 1e-11), "{}", r.norm2_a);
    assert!(close(r.norm2_b, 4.578895366386e-03, 1e-11), "{}", r.norm2_b);
    assert!(
        (r.similarity - 0.980540774375).abs() < 1e-11,
        "{}",
        r.similarity
    );
    // [H5] closure (layer by layer; the reference's propagation is exact per MLP layer).
    let c = gaussian::similarity(&a, &b, &gauss(Mode::Closure), Par::rayon(0)).unwrap();
    assert_eq!(c.mode, Some(Method::Closure));
    assert!(close(c.inner, 4.310012734058e-03, 1e-11), "{}", c.inner);
    assert!(close(c.norm2_a, 4.201514923968e-03, 1e-11), "{}", c.norm2_a);
    assert!(close(c.norm2_b, 4.598652850768e-03, 1e-11), "{}", c.norm2_b);
    assert!(
        (c.similarity - 0.980528643509).abs() < 1e-11,
        "{}",
        c.similarity
    );
    // [H6] one bilinear layer: every mode is exact.
    let (a1, b1) = (golden_mlp(0.0, 1), golden_mlp(0.5, 1));
    for mode in [Mode::Exact, Mode::Closure] {
        let r = gaussian::similarity(&a1, &b1, &gauss(mode), Par::rayon(0)).unwrap();
        assert_eq!(r.mode, Some(Method::Exact));
        assert!(close(r.inner, 1.739141022972e-02, 1e-11), "{}", r.inner);
        assert!(
            (r.similarity - 0.982063711441).abs() < 1e-11,
            "{}",
            r.similarity
        );
    }
}

/// check.py `gattn(off)`: d = 2, one head, causal, rotary (base 10 000), lerp scale 1, no bias.
fn gattn(off: f64) -> Layer {
    Layer::Attention(Box::new(Attention {
        n_head: 1,
        q1: gw(2, 2, off),
        k1: gw(2, 2, off + 1.0),
        q2: gw(2, 2, off + 2.0),
        k2: gw(2, 2, off + 3.0),
        v: gw(2, 2, off + 4.0),
        o: gw(2, 2, off + 5.0),
        q1_bias: None,
        k1_bias: None,
        q2_bias: None,
        k2_bias: None,
        mask: Mask::Causal,
        rotary: Some(10_000.0),
        residual: Some(Residual {
            mode: ResidualMode::Lerp,
            scale: 1.0,
        }),
    }))
}

#[test]
fn h7_attention_forward() {
    let m = Model::new(2, 2, vec![gattn(0.0)]).unwrap();
    let x = Mat::from_fn(2, 2, |t, i| [[0.3, -1.2], [0.8, 0.1]][t][i]);
    let y = m.forward(x.as_ref(), Par::Seq);
    let want = [
        [0.000347544171, 0.000315294554],
        [-0.00068082862, -0.000606258395],
    ];
    for t in 0..2 {
        for o in 0..2 {
            assert!(
                (y[(t, o)] - want[t][o]).abs() < 1e-12,
                "{} vs {}",
                y[(t, o)],
                want[t][o]
            );
        }
    }
}

#[test]
fn h8_attention_gaussian_without_the_reference_deduplication() {
    // The reference implementation's orbit deduplication gives −0.636666815795 here.
    let model = |off: f64| {
        let lin = |w: Mat<f64>| {
            Layer::Linear(Linear {
                weight: w,
                bias: None,
            })
        };
        Model::new(
            2,
            2,
            vec![lin(gw(2, 2, 3.0)), gattn(off), lin(gw(2, 2, 4.0))],
        )
        .unwrap()
    };
    let (a, b) = (model(0.0), model(0.5));
    let f64 = GaussOptions {
        precision: Precision::F64,
        ..Default::default()
    };
    let r = gaussian::similarity(&a, &b, &f64, Par::rayon(0)).unwrap();
    // The default's attention moments in f32: within their rounding.
    let r32 = gaussian::similarity(&a, &b, &Default::default(), Par::rayon(0)).unwrap();
    assert!(
        (r32.similarity - r.similarity).abs() < 1e-6,
        "{}",
        r32.similarity
    );
    assert_eq!(r.mode, Some(Method::Exact));
    assert!(close(r.inner, -2.388408413470e-11, 1e-10), "{}", r.inner);
    assert!(close(r.norm2_a, 2.175769862031e-10, 1e-10), "{}", r.norm2_a);
    assert!(
        (r.similarity - -0.091997502052).abs() < 1e-10,
        "{}",
        r.similarity
    );
}
