//! Model files (FORMAT.md): every supported layout loads to the same model, and every bad input
//! fails with a message naming the file, the tensor and the expected vs actual shape.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use tensim::linalg::Par;
use tensim::metrics::{self, tensor, Metric, Options};
use tensim::{io, Error, Model};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tensim-loading-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn encode(dtype: Dtype, v: &[f64]) -> Vec<u8> {
    match dtype {
        Dtype::F64 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::F32 => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
        Dtype::F16 => v
            .iter()
            .flat_map(|x| half::f16::from_f64(*x).to_le_bytes())
            .collect(),
        Dtype::BF16 => v
            .iter()
            .flat_map(|x| half::bf16::from_f64(*x).to_le_bytes())
            .collect(),
        Dtype::I32 => v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
        _ => unimplemented!(),
    }
}

type T<'a> = (&'a str, Vec<usize>, Vec<f64>);

fn write(path: &Path, tensors: &[T], dtype: Dtype, meta: Option<&str>) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.to_string(), s.clone(), encode(dtype, v)))
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    let meta = meta.map(|m| HashMap::from([("tensim".to_string(), m.to_string())]));
    std::fs::write(path, safetensors::serialize(views, meta).unwrap()).unwrap();
}

fn vals(n: usize, seed: f64) -> Vec<f64> {
    (0..n)
        .map(|i| ((i as f64 + 1.0) * 0.37 + seed).sin() * 0.5)
        .collect()
}

/// A 4 → bilinear(h 3, lerp) → head 2 model as a state dict (separate L, R).
fn state_dict() -> Vec<T<'static>> {
    vec![
        ("mlp.l.weight", vec![3, 4], vals(12, 0.0)),
        ("mlp.r.weight", vec![3, 4], vals(12, 1.0)),
        ("mlp.d.weight", vec![4, 3], vals(12, 2.0)),
        ("mlp.d.bias", vec![4], vals(4, 3.0)),
        ("head.weight", vec![2, 4], vals(8, 4.0)),
        ("head.bias", vec![2], vals(2, 5.0)),
        ("optimizer.step", vec![1], vec![7.0]),
    ]
}

const ARCH: &str = r#"{"format": "tensim/1", "input": {"dim": 4},
 "layers": [
  {"kind": "bilinear", "left": "mlp.l.weight", "right": "mlp.r.weight", "down": "mlp.d.weight",
   "down_bias": "mlp.d.bias", "residual": {"mode": "lerp", "scale": 0.5}},
  {"kind": "linear", "weight": "head.weight", "bias": "head.bias"}]}"#;

fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = tmpdir(name);
    let (w, a) = (d.join("w.safetensors"), d.join("arch.json"));
    write(&w, &state_dict(), Dtype::F64, None);
    std::fs::write(&a, ARCH).unwrap();
    (d, w, a)
}

fn err_of(r: tensim::Result<Model>) -> String {
    r.expect_err("loading should fail").to_string()
}

#[test]
fn sidecar_embedded_fused_and_saved_forms_give_the_same_model() {
    let (d, w, a) = setup("forms");
    let m = io::load(&w, Some(&a)).unwrap();
    assert_eq!(
        (m.in_dim(), m.out_dim(), m.degree(), m.param_count()),
        (4, 2, Some(2), 12 * 3 + 4 + 8 + 2)
    );
    // Embedded metadata (pack), keeping the unused tensor and the stored dtype.
    let packed = d.join("packed.safetensors");
    io::pack(&a, &w, None, &packed).unwrap();
    assert_eq!(io::load(&packed, None).unwrap(), m);
    let tf = io::TensorFile::open(&packed).unwrap();
    assert!(tf
        .tensors()
        .unwrap()
        .iter()
        .any(|t| t.name == "optimizer.step" && t.dtype == "F64"));
    // Fused left_right: rows 0..h are L, h..2h are R.
    let mut sd = state_dict();
    let mut fused = sd[0].2.clone();
    fused.extend(sd[1].2.clone());
    sd.splice(0..2, [("mlp.w.weight", vec![6, 4], fused)]);
    let fw = d.join("fused.safetensors");
    write(
        &fw,
        &sd,
        Dtype::F64,
        Some(&ARCH.replace(
            r#""left": "mlp.l.weight", "right": "mlp.r.weight""#,
            r#""left_right": "mlp.w.weight""#,
        )),
    );
    assert_eq!(io::load(&fw, None).unwrap(), m);
    // Model::save writes a self-describing file that reloads bit-exactly.
    let saved = d.join("saved.safetensors");
    io::save(&m, &saved).unwrap();
    assert_eq!(io::load(&saved, None).unwrap(), m);
}

#[test]
fn half_and_single_precision_storage() {
    let (d, w, a) = setup("dtypes");
    let m64 = io::load(&w, Some(&a)).unwrap();
    for (dtype, tol) in [(Dtype::F32, 1e-6), (Dtype::F16, 2e-3), (Dtype::BF16, 1e-2)] {
        let p = d.join(format!("{dtype:?}.safetensors"));
        write(&p, &state_dict(), dtype, None);
        let m = io::load(&p, Some(&a)).unwrap();
        let r = tensor::similarity(
            &m,
            &m64,
            &Options {
                per_output: false,
                per_tensor: false,
                par: Par::Seq,
            },
        )
        .unwrap();
        assert!((1.0 - r.similarity) < tol, "{dtype:?}: {}", r.similarity);
    }
    write(&d.join("int.safetensors"), &state_dict(), Dtype::I32, None);
    let e = err_of(io::load(&d.join("int.safetensors"), Some(&a)));
    assert!(
        e.contains("mlp.l.weight") && e.contains("I32") && e.contains("supported"),
        "{e}"
    );
}

#[test]
fn missing_tensor_and_wrong_shape_name_the_culprit() {
    let (d, w, a) = setup("names");
    let arch = ARCH.replace("head.weight", "head.wieght");
    std::fs::write(&a, &arch).unwrap();
    let e = err_of(io::load(&w, Some(&a)));
    assert!(
        e.contains("\"head.wieght\"")
            && e.contains("missing")
            && e.contains("w.safetensors")
            && e.contains("head.weight"),
        "{e}"
    );

    let mut sd = state_dict();
    sd[1] = ("mlp.r.weight", vec![3, 5], vals(15, 1.0));
    write(&w, &sd, Dtype::F64, None);
    std::fs::write(&a, ARCH).unwrap();
    let e = err_of(io::load(&w, Some(&a)));
    assert!(
        e.contains("\"mlp.r.weight\"") && e.contains("[3, 5]") && e.contains("expected [3, 4]"),
        "{e}"
    );

    let mut sd = state_dict();
    sd[3] = ("mlp.d.bias", vec![5], vals(5, 3.0));
    write(&w, &sd, Dtype::F64, None);
    let e = err_of(io::load(&w, Some(&a)));
    assert!(
        e.contains("\"mlp.d.bias\"") && e.contains("[5]") && e.contains("expected [4]"),
        "{e}"
    );
    let _ = d;
}

#[test]
fn architecture_errors() {
    let (d, w, a) = setup("arch");
    let cases = [
        (
            ARCH.replace("\"linear\"", "\"dense\""),
            "unknown layer kind \"dense\"",
        ),
        (
            ARCH.replace("\"bias\": \"head.bias\"", "\"bais\": \"head.bias\""),
            "bais",
        ),
        (
            ARCH.replace("\"input\"", "\"inputs\""),
            "unknown key \"inputs\"",
        ),
        (
            ARCH.replace("\"linear\"", "\"relu\""),
            "not a tensor network",
        ),
        (
            ARCH.replace("\"linear\"", "\"layernorm\""),
            "folded into the neighbouring",
        ),
        (
            ARCH.replace("tensim/1", "tensim/2"),
            "\"tensim/2\" is not supported",
        ),
        (
            ARCH.replace("\"left\": \"mlp.l.weight\", ", ""),
            "needs \"left\" and \"right\"",
        ),
        ("{not json".to_string(), "not valid JSON"),
    ];
    for (arch, want) in cases {
        std::fs::write(&a, &arch).unwrap();
        let e = err_of(io::load(&w, Some(&a)));
        assert!(
            e.contains(want) && e.contains("arch.json"),
            "want {want:?} in: {e}"
        );
    }
    // Attention tensors are looked up like any other.
    let attn = r#"{"format": "tensim/1", "input": {"dim": 4}, "layers": [{"kind": "attention", "n_head": 1,
      "q1": "a", "k1": "a", "q2": "a", "k2": "a", "v": "a", "o": "a"}]}"#;
    std::fs::write(&a, attn).unwrap();
    let e = err_of(io::load(&w, Some(&a)));
    assert!(
        e.contains("\"a\"") && e.contains("q1") && e.contains("missing"),
        "{e}"
    );
    let _ = d;
}

#[test]
fn residual_size_mismatch_is_refused() {
    let (d, w, a) = setup("residual");
    let mut sd = state_dict();
    sd[2] = ("mlp.d.weight", vec![5, 3], vals(15, 2.0));
    sd[3] = ("mlp.d.bias", vec![5], vals(5, 3.0));
    write(&w, &sd, Dtype::F64, None);
    let e = err_of(io::load(&w, Some(&a)));
    assert!(
        e.contains("residual needs equal input and output sizes")
            && e.contains("input is 4 and output is 5"),
        "{e}"
    );
    let _ = d;
}

#[test]
fn non_finite_weights_are_refused() {
    let (d, w, a) = setup("nan");
    for bad in [f64::NAN, f64::INFINITY] {
        let mut sd = state_dict();
        sd[4].2[5] = bad;
        write(&w, &sd, Dtype::F32, None);
        let e = err_of(io::load(&w, Some(&a)));
        assert!(
            e.contains("\"head.weight\"") && e.contains("non-finite") && e.contains("index 5"),
            "{e}"
        );
    }
    let _ = d;
}

#[test]
fn truncated_corrupt_and_undescribed_files() {
    let (d, w, a) = setup("corrupt");
    let bytes = std::fs::read(&w).unwrap();
    let t = d.join("truncated.safetensors");
    std::fs::write(&t, &bytes[..bytes.len() - 10]).unwrap();
    let e = err_of(io::load(&t, Some(&a)));
    assert!(
        e.contains("truncated.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );
    let g = d.join("garbage.safetensors");
    std::fs::write(&g, b"this is not a model").unwrap();
    assert!(err_of(io::load(&g, Some(&a))).contains("not a valid safetensors file"));
    let e = err_of(io::load(&w, None));
    assert!(
        e.contains("no architecture description") && e.contains("--arch"),
        "{e}"
    );
    let e = err_of(io::load(&d.join("absent.safetensors"), Some(&a)));
    assert!(e.contains("absent.safetensors"), "{e}");
}

/// A header naming one tensor twice (or one metadata key twice) is refused: the safetensors
/// reader would silently keep the last entry, so two entries could swap tensors.
#[test]
fn duplicate_header_keys_are_refused() {
    let d = tmpdir("duplicates");
    let file = |header: &str, data: usize| {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend(header.as_bytes());
        b.extend(vec![0u8; data]);
        b
    };
    let t = |from: usize| {
        format!(
            r#"{{"dtype":"F64","shape":[1],"data_offsets":[{from},{}]}}"#,
            from + 8
        )
    };
    let cases = [
        (
            format!(r#"{{"w":{},"v":{},"w":{}}}"#, t(0), t(8), t(16)),
            "\"w\"",
        ),
        (
            format!(
                r#"{{"__metadata__":{{"tensim":"a","tensim":"b"}},"w":{}}}"#,
                t(0)
            ),
            "\"tensim\"",
        ),
    ];
    for (header, name) in cases {
        let p = d.join("dup.safetensors");
        std::fs::write(&p, file(&header, 24)).unwrap();
        let e = io::TensorFile::open(&p).err().expect("refused").to_string();
        assert!(
            e.contains("dup.safetensors") && e.contains(name) && e.contains("twice"),
            "{e}"
        );
    }
    // The same header without the repetition loads.
    let p = d.join("once.safetensors");
    std::fs::write(&p, file(&format!(r#"{{"w":{},"v":{}}}"#, t(0), t(8)), 16)).unwrap();
    assert!(io::TensorFile::open(&p).is_ok());
}

/// An endless stream given as a model is refused after its header, not read until memory runs
/// out.
#[test]
fn an_endless_stream_is_not_read_to_its_end() {
    let zero = Path::new("/dev/zero");
    if !zero.exists() {
        return;
    }
    let e = io::TensorFile::open(zero)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("/dev/zero") && e.contains("not a valid safetensors file"),
        "{e}"
    );
}

#[test]
fn incomparable_and_zero_norm_models() {
    let (d, w, a) = setup("compare");
    let m = io::load(&w, Some(&a)).unwrap();
    let opts = Options {
        per_output: true,
        per_tensor: false,
        par: Par::Seq,
    };
    // Different output size.
    let mut sd = state_dict();
    sd[4] = ("head.weight", vec![3, 4], vals(12, 4.0));
    sd[5] = ("head.bias", vec![3], vals(3, 5.0));
    let w3 = d.join("three.safetensors");
    write(&w3, &sd, Dtype::F64, None);
    let m3 = io::load(&w3, Some(&a)).unwrap();
    let e = metrics::compare(&m, &m3, &Metric::TENSOR, None, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("output sizes differ") && e.contains("2") && e.contains("3"),
        "{e}"
    );
    // A model whose output is identically zero.
    let mut sd = state_dict();
    sd[4].2 = vec![0.0; 8];
    sd[5].2 = vec![0.0; 2];
    let wz = d.join("zero.safetensors");
    write(&wz, &sd, Dtype::F64, None);
    let z = io::load(&wz, Some(&a)).unwrap();
    let err = metrics::compare(&m, &z, &Metric::TENSOR, None, &opts).unwrap_err();
    assert!(
        matches!(err, Error::ZeroNorm { .. }) && err.to_string().contains("undefined"),
        "{err}"
    );
    // The per-output slices of the matrix metric are undefined (None), not NaN.
    let r = metrics::compare(&m, &z, &Metric::Matrix, None, &opts).unwrap();
    assert_eq!(r.per_output, Some(vec![None, None]));
    // Writing into a missing folder fails without creating anything.
    let e = io::save(&m, &d.join("missing/dir/m.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn bilinear_without_down_outputs_the_hidden_product() {
    let d = tmpdir("nodown");
    let sd: Vec<T> = vec![
        ("l", vec![4, 4], vals(16, 0.0)),
        ("r", vec![4, 4], vals(16, 1.0)),
        ("h", vec![2, 4], vals(8, 2.0)),
    ];
    let w = d.join("w.safetensors");
    write(&w, &sd, Dtype::F32, None);
    let arch = |res: &str| {
        format!(
            r#"{{"format": "tensim/1", "input": {{"dim": 4}}, "layers": [{{"kind": "bilinear", "left": "l", "right": "r"{res}}}, {{"kind": "linear", "weight": "h"}}]}}"#
        )
    };
    let a = d.join("a.json");
    std::fs::write(&a, arch(r#", "residual": {"mode": "add", "scale": 0.5}"#)).unwrap();
    let m = io::load(&w, Some(&a)).unwrap();
    let x = tensim::linalg::Mat::from_fn(1, 4, |_, j| j as f64 - 1.5);
    let (y, l, r, h) = (
        m.forward(x.as_ref(), Par::Seq),
        &sd[0].2,
        &sd[1].2,
        &sd[2].2,
    );
    // y = H (x + 0.5 (Lx ∘ Rx)), with the f32-rounded weights.
    let f32r = |v: f64| v as f32 as f64;
    let z: Vec<f64> = (0..4)
        .map(|k| {
            let (lx, rx): (f64, f64) = (
                (0..4).map(|j| f32r(l[k * 4 + j]) * x[(0, j)]).sum(),
                (0..4).map(|j| f32r(r[k * 4 + j]) * x[(0, j)]).sum(),
            );
            x[(0, k)] + 0.5 * lx * rx
        })
        .collect();
    for o in 0..2 {
        let want: f64 = (0..4).map(|k| f32r(h[o * 4 + k]) * z[k]).sum();
        assert!((y[(0, o)] - want).abs() < 1e-12);
    }
    // Without down, the output is the hidden product: a residual needs h = input size.
    let sd2: Vec<T> = vec![
        ("l", vec![3, 4], vals(12, 0.0)),
        ("r", vec![3, 4], vals(12, 1.0)),
        ("h", vec![2, 3], vals(6, 2.0)),
    ];
    write(&w, &sd2, Dtype::F32, None);
    let e = err_of(io::load(&w, Some(&a)));
    assert!(
        e.contains("input is 4 and output is 3") && e.contains("no \"down\""),
        "{e}"
    );
}

#[test]
fn threads_writing_one_file_atomically_all_succeed() {
    // Equal tiles of a matrix are written by several threads at once.
    let path = tmpdir("atomic").join("tile.npy");
    std::thread::scope(|s| {
        for k in 0..4u8 {
            let path = &path;
            s.spawn(move || {
                for _ in 0..50 {
                    io::write_atomic(path, &[k; 64]).unwrap();
                }
            });
        }
    });
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() == 64 && bytes.iter().all(|&b| b == bytes[0]));
}
