//! Bilinear attention: the forward pass against an independent reference (rotary through its
//! relative form), the tensor-network form against the forward pass (every mask, with and without
//! rotary, biases and residual), causality, files, and metrics on transformers.

mod common;

use common::{random_attention, uniform};
use rand::{RngExt, SeedableRng};
use tensim::arch::{Mask, Residual, ResidualMode};
use tensim::einsum::Tensor;
use tensim::layers::{Attention, Bilinear, Layer, Linear};
use tensim::linalg::{Mat, Par};
use tensim::metrics::{self, Inputs, Metric, Options};
use tensim::Model;

fn mat(rng: &mut rand::rngs::StdRng, r: usize, c: usize) -> Mat<f64> {
    uniform(rng, r, c)
}

fn attention(
    seed: u64,
    d: usize,
    heads: usize,
    mask: Mask,
    rotary: bool,
    bias: bool,
    residual: Option<Residual>,
) -> Attention {
    let rng = &mut rand::rngs::StdRng::seed_from_u64(seed);
    random_attention(rng, d, heads, bias, rotary.then_some(100.0), mask, residual)
}

/// The definition, written out: scores through the relative rotary form
/// `(ρ_t a)·(ρ_u b) = Σ_j cos((t−u)θ_j)(a_j b_j + a_{j+h'} b_{j+h'}) + sin((t−u)θ_j)(a_j b_{j+h'} − a_{j+h'} b_j)`.
fn reference(a: &Attention, x: &Mat<f64>) -> Mat<f64> {
    let (n, d, h) = (x.nrows(), a.dim(), a.head_size());
    let proj = |w: &Mat<f64>, b: &Option<Vec<f64>>, t: usize| -> Vec<f64> {
        (0..d)
            .map(|r| {
                b.as_ref().map_or(0.0, |b| b[r])
                    + (0..d).map(|i| w[(r, i)] * x[(t, i)]).sum::<f64>()
            })
            .collect()
    };
    let score = |qa: &[f64], kb: &[f64], head: usize, t: usize, u: usize| -> f64 {
        let c0 = head * h;
        match a.rotary {
            None => (0..h).map(|e| qa[c0 + e] * kb[c0 + e]).sum(),
            Some(base) => {
                let half = h / 2;
                (0..half)
                    .map(|j| {
                        let th = (t as f64 - u as f64) * base.powf(-2.0 * j as f64 / h as f64);
                        let (p, q) = (c0 + j, c0 + j + half);
                        th.cos() * (qa[p] * kb[p] + qa[q] * kb[q])
                            + th.sin() * (qa[p] * kb[q] - qa[q] * kb[p])
                    })
                    .sum()
            }
        }
    };
    let on = |t: usize, u: usize| match a.mask {
        Mask::Causal => u <= t,
        Mask::None => true,
        Mask::Diag => u == t,
    };
    let mut f = Mat::<f64>::zeros(n, d);
    for t in 0..n {
        let (q1, q2) = (proj(&a.q1, &a.q1_bias, t), proj(&a.q2, &a.q2_bias, t));
        let mut z = vec![0.0; d];
        for u in (0..n).filter(|&u| on(t, u)) {
            let (k1, k2, v) = (
                proj(&a.k1, &a.k1_bias, u),
                proj(&a.k2, &a.k2_bias, u),
                proj(&a.v, &None, u),
            );
            for head in 0..a.n_head {
                let s = score(&q1, &k1, head, t, u) * score(&q2, &k2, head, t, u) / (h * h) as f64;
                for e in head * h..(head + 1) * h {
                    z[e] += s * v[e];
                }
            }
        }
        for o in 0..d {
            f[(t, o)] = (0..d).map(|e| a.o[(o, e)] * z[e]).sum();
        }
    }
    let (c, r) = match a.residual {
        None => return f,
        Some(Residual {
            mode: ResidualMode::Lerp,
            scale,
        }) => (scale, 1.0 - scale),
        Some(Residual {
            mode: ResidualMode::Add,
            scale,
        }) => (scale, 1.0),
    };
    Mat::from_fn(n, d, |t, o| r * x[(t, o)] + c * f[(t, o)])
}

fn configurations() -> Vec<(Mask, bool, bool, Option<Residual>)> {
    let mut out = vec![];
    for mask in [Mask::Causal, Mask::None, Mask::Diag] {
        for rotary in [false, true] {
            for bias in [false, true] {
                for residual in [
                    None,
                    Some(Residual {
                        mode: ResidualMode::Lerp,
                        scale: 0.3,
                    }),
                    Some(Residual {
                        mode: ResidualMode::Add,
                        scale: 0.7,
                    }),
                ] {
                    out.push((mask, rotary, bias, residual));
                }
            }
        }
    }
    out
}

fn close(a: &Mat<f64>, b: &Mat<f64>, tol: f64) -> bool {
    (0..a.nrows()).all(|i| {
        (0..a.ncols()).all(|j| (a[(i, j)] - b[(i, j)]).abs() <= tol * (1.0 + b[(i, j)].abs()))
    })
}

#[test]
fn the_forward_pass_matches_the_written_out_definition() {
    for (k, (mask, rotary, bias, residual)) in configurations().into_iter().enumerate() {
        let a = attention(k as u64, 4, 2, mask, rotary, bias, residual);
        let (n, rows) = (3, 2);
        let x = mat(
            &mut rand::rngs::StdRng::seed_from_u64(100 + k as u64),
            n * rows,
            4,
        );
        let y = a.forward(x.as_ref(), n, Par::Seq);
        for r in 0..rows {
            let xs = x.subrows(r * n, n).to_owned();
            let want = reference(&a, &xs);
            assert!(
                close(&y.subrows(r * n, n).to_owned(), &want, 1e-12),
                "{mask:?} rotary {rotary} bias {bias} {residual:?}"
            );
        }
    }
}

#[test]
fn the_tensor_network_form_equals_the_forward_pass() {
    for (k, (mask, rotary, bias, residual)) in configurations().into_iter().enumerate() {
        let a = attention(50 + k as u64, 4, 2, mask, rotary, bias, residual);
        let n = 3;
        let x = mat(&mut rand::rngs::StdRng::seed_from_u64(200 + k as u64), n, 4);
        let xhat = Tensor::new(
            vec![n, 5],
            (0..n * 5)
                .map(|q| {
                    if q % 5 == 0 {
                        1.0
                    } else {
                        x[(q / 5, q % 5 - 1)]
                    }
                })
                .collect(),
        );
        let y = a.network(n).apply([&xhat; 5]);
        let want = a.forward(x.as_ref(), n, Par::Seq);
        for t in 0..n {
            assert!((y.data[t * 5] - 1.0).abs() < 1e-14, "unit slot");
            for o in 0..4 {
                let (g, w) = (y.data[t * 5 + 1 + o], want[(t, o)]);
                assert!(
                    (g - w).abs() < 1e-12 * (1.0 + w.abs()),
                    "{mask:?} rotary {rotary} bias {bias} {residual:?}: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn the_network_is_multilinear_in_its_five_legs() {
    // 𝒜(x̂₀, …, x̂₄) with different inputs per leg: linear in each leg (checked on leg 3).
    let a = attention(7, 4, 2, Mask::None, true, true, None);
    let n = 2;
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let leg = |rng: &mut rand::rngs::StdRng| {
        Tensor::new(
            vec![n, 5],
            (0..n * 5)
                .map(|q| {
                    if q % 5 == 0 {
                        1.0
                    } else {
                        rng.random_range(-1.0..1.0)
                    }
                })
                .collect(),
        )
    };
    let legs: Vec<Tensor> = (0..5).map(|_| leg(&mut rng)).collect();
    let other = leg(&mut rng);
    let net = a.network(n);
    let at = |l3: &Tensor| net.apply([&legs[0], &legs[1], &legs[2], l3, &legs[4]]);
    let mix = Tensor::new(
        vec![n, 5],
        legs[3]
            .data
            .iter()
            .zip(&other.data)
            .map(|(p, q)| 2.0 * p - 3.0 * q)
            .collect(),
    );
    let (y1, y2, y3) = (at(&legs[3]), at(&other), at(&mix));
    // The identity term reads leg 0 only, so the active part is the difference.
    for k in 0..n * 5 {
        let id = net.gamma[k % 5] * legs[0].data[k];
        let want = 2.0 * (y1.data[k] - id) - 3.0 * (y2.data[k] - id) + id;
        assert!(
            (y3.data[k] - want).abs() < 1e-12,
            "{} vs {want}",
            y3.data[k]
        );
    }
}

#[test]
fn causal_outputs_do_not_see_later_positions() {
    let a = attention(9, 4, 2, Mask::Causal, true, true, None);
    let mut x = mat(&mut rand::rngs::StdRng::seed_from_u64(10), 4, 4);
    let y = a.forward(x.as_ref(), 4, Par::Seq);
    x[(3, 1)] += 1.0;
    let y2 = a.forward(x.as_ref(), 4, Par::Seq);
    assert!(close(
        &y.subrows(0, 3).to_owned(),
        &y2.subrows(0, 3).to_owned(),
        0.0
    ));
    assert!((y[(3, 0)] - y2[(3, 0)]).abs() > 1e-9);
}

/// embed → attention (lerp) → bilinear MLP (lerp) → head, at `n_ctx` positions.
pub fn transformer(seed: u64, n_ctx: usize) -> Model {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (d_in, d, hid, d_out) = (5, 4, 6, 3);
    let lerp = Some(Residual {
        mode: ResidualMode::Lerp,
        scale: 0.5,
    });
    let layers = vec![
        Layer::Linear(Linear {
            weight: mat(&mut rng, d, d_in),
            bias: None,
        }),
        Layer::Attention(Box::new(attention(
            seed + 1,
            d,
            2,
            Mask::Causal,
            true,
            true,
            lerp,
        ))),
        Layer::Bilinear(Bilinear {
            left: mat(&mut rng, hid, d),
            right: mat(&mut rng, hid, d),
            down: Some(mat(&mut rng, d, hid)),
            left_bias: None,
            right_bias: None,
            down_bias: None,
            residual: lerp,
        }),
        Layer::Linear(Linear {
            weight: mat(&mut rng, d_out, d),
            bias: None,
        }),
    ];
    Model::new(d_in, n_ctx, layers).unwrap()
}

#[test]
fn transformer_files_round_trip_and_bad_attention_shapes_are_named() {
    let dir = std::env::temp_dir().join(format!("tensim-attn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = transformer(1, 3);
    let path = dir.join("t.safetensors");
    tensim::io::save(&m, &path).unwrap();
    let back = tensim::io::load(&path, None).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.degree(), Some(10));
    // A description whose n_head does not divide d_model, and one with a wrong q2 shape.
    let arch = back.arch();
    let mut text = arch.to_json().replace("\"n_head\": 2", "\"n_head\": 3");
    std::fs::write(dir.join("bad.json"), &text).unwrap();
    let e = tensim::io::load(&path, Some(&dir.join("bad.json")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer 1 (attention)") && e.contains("n_head 3 must divide d_model 4"),
        "{e}"
    );
    text = arch
        .to_json()
        .replace("\"q2\": \"layers.1.q2\"", "\"q2\": \"layers.2.left\"");
    std::fs::write(dir.join("bad.json"), &text).unwrap();
    let e = tensim::io::load(&path, Some(&dir.join("bad.json")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layers.2.left") && e.contains("q2") && e.contains("[6, 4], expected [4, 4]"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_metric_covers_transformers() {
    let (a, b) = (transformer(1, 3), transformer(2, 3));
    let inputs = Inputs::gaussian(200, 3, 5, 0).unwrap();
    let opts = Options {
        per_output: false,
        per_tensor: false,
        par: Par::Seq,
    };
    for metric in [&Metric::Behavioral, &Metric::Matrix] {
        let same = metrics::compare(&a, &a, metric, Some(&inputs), &opts)
            .unwrap()
            .similarity;
        assert!((same - 1.0).abs() < 1e-6, "{metric:?}: {same}");
        let other = metrics::compare(&a, &b, metric, Some(&inputs), &opts)
            .unwrap()
            .similarity;
        assert!(other < 0.99, "{metric:?}: {other}");
    }
    // The tensor metric: the general network recursion.
    let t = metrics::compare(&a, &a, &Metric::TENSOR, None, &opts)
        .unwrap()
        .similarity;
    assert!((t - 1.0).abs() < 1e-12, "{t}");
    let t = metrics::compare(&a, &b, &Metric::TENSOR, None, &opts)
        .unwrap()
        .similarity;
    assert!(t.abs() < 0.99, "{t}");
}
