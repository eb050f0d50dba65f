//! The baseline metrics on cases whose values are known in closed form (MATH.md §6).

mod common;

use common::*;
use tensim::layers::{Layer, Linear};
use tensim::linalg::{Mat, Par};
use tensim::metrics::{behavioral, cka, matrix, Inputs, Options};
use tensim::Model;

/// A model's behavioural similarity to itself is exactly 1 at any weight scale, in the pair
/// and in the all-pairs form, also with an input on which its output is zero (the outputs
/// agree there), and the similarity of two models does not depend on the scale.
#[test]
fn behavioral_self_similarity_is_exactly_one_at_any_scale() {
    use tensim::metrics::Metric;
    use tensim::trajectory::{checkpoints::in_memory, similarity_matrix, MatrixOptions};
    let w = Mat::from_fn(3, 4, |i, j| ((i * 4 + j) as f64 * 0.7).sin());
    let mut x = Inputs::gaussian(50, 1, 4, 3).unwrap();
    x.x.row_mut(7).fill(0.0);
    for k in [-40, -12, 0, 12, 40] {
        let s = 10f64.powi(k);
        let a = linear(Mat::from_fn(3, 4, |i, j| s * w[(i, j)]));
        let r = behavioral::similarity(&a, &a, &x, &opts()).unwrap();
        assert_eq!(r.similarity, 1.0, "scale 1e{k}");
        // A copy whose output differs on every input but one: scale-invariant too.
        let b = linear(Mat::from_fn(3, 4, |i, j| {
            s * (w[(i, j)] + 0.1 * (i + j) as f64)
        }));
        let (ab, ab1) = (
            behavioral::similarity(&a, &b, &x, &opts())
                .unwrap()
                .similarity,
            behavioral::similarity(
                &linear(w.clone()),
                &linear(Mat::from_fn(3, 4, |i, j| w[(i, j)] + 0.1 * (i + j) as f64)),
                &x,
                &opts(),
            )
            .unwrap()
            .similarity,
        );
        assert!((ab - ab1).abs() < 1e-12, "scale 1e{k}: {ab} vs {ab1}");
        let models = [a.clone(), a.clone(), b];
        let names: Vec<String> = (0..3).map(|i| format!("m{i}")).collect();
        let opts = MatrixOptions {
            inputs: Some(&x),
            ..Default::default()
        };
        let m = similarity_matrix(
            &in_memory(&models, &names),
            &Metric::Behavioral,
            &opts,
            &|_, _| {},
        )
        .unwrap()
        .similarity;
        assert_eq!((m[(0, 0)], m[(2, 2)]), (1.0, 1.0), "scale 1e{k}");
        assert!((m[(0, 1)] - 1.0).abs() < 1e-15 && (m[(0, 2)] - ab).abs() < 1e-12);
    }
}

fn opts() -> Options {
    Options {
        per_output: true,
        per_tensor: false,
        par: Par::Seq,
    }
}

/// A purely linear model `y = W x` (outputs are easy to reason about).
fn linear(w: Mat<f64>) -> Model {
    Model::new(
        w.ncols(),
        1,
        vec![Layer::Linear(Linear {
            weight: w,
            bias: None,
        })],
    )
    .unwrap()
}

#[test]
fn behavioral_is_the_mean_of_per_input_cosines() {
    // Outputs A = x, B = diag(1, -1) x on the inputs e1, 2e1, e2.
    let a = linear(Mat::identity(2, 2));
    let b = linear(Mat::from_fn(2, 2, |i, j| {
        if i == j {
            if i == 0 {
                1.0
            } else {
                -1.0
            }
        } else {
            0.0
        }
    }));
    let x = Mat::from_fn(3, 2, |i, j| [[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]][i][j]);
    let inputs = Inputs {
        x,
        rows: 3,
        n_ctx: 1,
        source: "test".into(),
    };
    let r = behavioral::similarity(&a, &b, &inputs, &opts()).unwrap();
    // per-input cosines 1, 1, -1 → mean 1/3.
    assert!((r.similarity - 1.0 / 3.0).abs() < 1e-15, "{}", r.similarity);
    // inner = mean ⟨a,b⟩ = (1 + 4 - 1)/3; per output: cos over inputs of column o.
    assert!((r.inner - 4.0 / 3.0).abs() < 1e-12);
    let per = r.per_output.unwrap();
    assert!((per[0].unwrap() - 1.0).abs() < 1e-12 && (per[1].unwrap() + 1.0).abs() < 1e-12);
    assert_eq!(r.samples, Some(3));
}

#[test]
fn cka_is_invariant_to_output_rotation_and_scale_but_not_to_mixing_inputs() {
    let s = Spec {
        d_in: 3,
        d: 4,
        h: 5,
        d_out: 3,
        depth: 1,
        residual: None,
        bias: true,
        embed: true,
    };
    let a = random_model(s, 3);
    // b = orthogonal rotation · 7 of a's head: the same representation up to rotation and scale.
    let q = Mat::from_fn(3, 3, |i, j| {
        [[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]][i][j]
    });
    let mut layers = a.layers().to_vec();
    if let Some(Layer::Linear(l)) = layers.last_mut() {
        l.weight = Mat::from_fn(3, 4, |i, j| {
            7.0 * (0..3).map(|k| q[(i, k)] * l.weight[(k, j)]).sum::<f64>()
        });
        l.bias = l.bias.as_ref().map(|b| {
            (0..3)
                .map(|i| 7.0 * (0..3).map(|k| q[(i, k)] * b[k]).sum::<f64>())
                .collect()
        });
    }
    let b = Model::new(3, 1, layers).unwrap();
    let inputs = Inputs::gaussian(500, 1, 3, 1).unwrap();
    let r = cka::similarity(&a, &b, &inputs, &opts()).unwrap();
    assert!((r.similarity - 1.0).abs() < 1e-12, "{}", r.similarity);
    let c = random_model(s, 4);
    let rc = cka::similarity(&a, &c, &inputs, &opts()).unwrap();
    assert!(rc.similarity < 0.99 && rc.similarity >= 0.0);
    // Per output: squared correlation of single columns, in [0, 1].
    assert!(rc
        .per_output
        .unwrap()
        .iter()
        .all(|v| (0.0..=1.0).contains(&v.unwrap())));
}

#[test]
fn matrix_is_the_cosine_of_flattened_parameters_and_needs_equal_shapes() {
    let a = linear(Mat::from_fn(2, 2, |i, j| [[1.0, 2.0], [3.0, 4.0]][i][j]));
    let b = linear(Mat::from_fn(2, 2, |i, j| [[1.0, 0.0], [0.0, 1.0]][i][j]));
    let r = matrix::similarity(&a, &b, &opts()).unwrap();
    assert!((r.similarity - 5.0 / (30f64.sqrt() * 2f64.sqrt())).abs() < 1e-15);
    let per = r.per_output.unwrap();
    assert!((per[0].unwrap() - 1.0 / 5f64.sqrt()).abs() < 1e-15);
    let c = linear(Mat::identity(3, 2));
    let e = matrix::similarity(&a, &c, &opts()).unwrap_err().to_string();
    assert!(
        e.contains("identical architectures") && e.contains("--metric tensor"),
        "{e}"
    );
}

/// Per tensor: each stored tensor's cosine (against the tensors `io::parameter_tensors` lists,
/// by name); a tensor changed alone moves only its own value; a zero tensor is undefined.
#[test]
fn matrix_per_tensor_is_the_cosine_of_each_stored_tensor() {
    let spec = Spec {
        d_in: 4,
        d: 3,
        h: 5,
        d_out: 2,
        depth: 2,
        residual: lerp(0.5),
        bias: true,
        embed: true,
    };
    let (a, b) = (random_model(spec, 1), random_model(spec, 2));
    let o = Options {
        per_tensor: true,
        ..opts()
    };
    let per = matrix::similarity(&a, &b, &o).unwrap().per_tensor.unwrap();
    let (ta, tb) = (
        tensim::io::parameter_tensors(&a),
        tensim::io::parameter_tensors(&b),
    );
    assert_eq!(per.len(), ta.len());
    for (t, ((name, _, x), (_, _, y))) in per.iter().zip(ta.iter().zip(&tb)) {
        let dot = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(p, q)| p * q).sum::<f64>();
        let want = dot(x, y) / (dot(x, x) * dot(y, y)).sqrt();
        assert_eq!(&t.tensor, name);
        assert!((t.similarity.unwrap() - want).abs() < 1e-14, "{name}");
    }
    // Change the head alone: every other tensor keeps similarity 1.
    let mut layers = a.layers().to_vec();
    let Layer::Linear(head) = layers.last_mut().unwrap() else {
        unreachable!()
    };
    head.weight = Mat::zeros(2, 3);
    let c = Model::new(4, 1, layers).unwrap();
    let per = matrix::similarity(&a, &c, &o).unwrap().per_tensor.unwrap();
    for t in &per {
        match t.tensor.as_str() {
            "layers.3.weight" => assert_eq!(t.similarity, None),
            _ => assert!((t.similarity.unwrap() - 1.0).abs() < 1e-15, "{}", t.tensor),
        }
    }
    let e = tensim::metrics::compare(&a, &b, &tensim::metrics::Metric::TENSOR, None, &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("matrix metric"), "{e}");
}

#[test]
fn npy_inputs_are_read_and_checked() {
    let dir = std::env::temp_dir().join(format!("tensim-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("x.npy");
    let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
    std::fs::write(&p, npy_f32("(4, 3)", &data)).unwrap();
    let x = Inputs::from_npy(&p, 1, 3).unwrap();
    assert_eq!((x.rows, x.x.nrows(), x.x.ncols()), (4, 4, 3));
    assert_eq!(x.x[(3, 2)], 5.5);
    let e = Inputs::from_npy(&p, 1, 5).unwrap_err().to_string();
    assert!(
        e.contains("x.npy") && e.contains("[4, 3]") && e.contains("(rows, 5)"),
        "{e}"
    );
    // Sequence data (rows, n_ctx, dim): one row of `x` per position.
    std::fs::write(&p, npy_f32("(2, 2, 3)", &data)).unwrap();
    let x = Inputs::from_npy(&p, 2, 3).unwrap();
    assert_eq!((x.rows, x.n_ctx, x.x.nrows()), (2, 2, 4));
    assert!(Inputs::from_npy(&p, 3, 3)
        .unwrap_err()
        .to_string()
        .contains("(rows, 3, 3)"));
    // Half precision (f16 activations saved from mixed-precision training) is read exactly.
    let halves: Vec<u8> = data
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    std::fs::write(&p, npy_bytes("<f2", "(4, 3)", &halves)).unwrap();
    let x = Inputs::from_npy(&p, 1, 3).unwrap();
    assert_eq!((x.rows, x.x[(3, 2)], x.x[(1, 1)]), (4, 5.5, 2.0));
    std::fs::write(&p, b"garbage").unwrap();
    assert!(Inputs::from_npy(&p, 1, 3)
        .unwrap_err()
        .to_string()
        .contains("not a valid .npy"));
}

/// A version-1 `.npy` file of f32 values written by hand.
fn npy_f32(shape: &str, data: &[f32]) -> Vec<u8> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy_bytes("<f4", shape, &bytes)
}

/// A version-1 `.npy` file written by hand (magic, header dict padded to 64 bytes, data).
fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.bytes());
    out.extend(data);
    out
}
