//! End-to-end tests of the `tensim` command, run as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tensim(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tensim"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tensim-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str(&stdout(o)).unwrap()
}

/// `count` small random models in `d/r/` (4 inputs → 4 → 5 hidden → 3 outputs, lerp residual
/// 0.5), and their architecture description.
fn small_models(d: &Path, count: usize) -> serde_json::Value {
    let count = count.to_string();
    let args = [
        "demo",
        "random",
        "--out",
        "r",
        "--d-in",
        "4",
        "--d-model",
        "4",
        "--hidden",
        "5",
        "--layers",
        "1",
        "--d-out",
        "3",
        "--count",
        &count,
        "--residual",
        "0.5",
    ];
    let o = tensim(&args, d);
    assert!(o.status.success(), "{}", stderr(&o));
    json(&tensim(
        &["inspect", "r/random-000.safetensors", "--json"],
        d,
    ))["architecture"]
        .clone()
}

#[test]
fn demo_then_compare_inspect_verify() {
    let d = workdir("demo");
    let o = tensim(&["demo", "symmetries", "--out", "ex"], &d);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("A-B    1.000000") && text.contains("A-C    1.000000"),
        "{text}"
    );

    let r = json(&tensim(
        &["compare", "ex/A.safetensors", "ex/C.safetensors", "--json"],
        &d,
    ));
    assert_eq!(r["metric"], "tensor");
    assert!((r["similarity"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    for key in ["inner", "norm2_a", "norm2_b"] {
        assert!(r[key].as_f64().unwrap() > 0.0);
    }
    let r = json(&tensim(
        &[
            "compare",
            "ex/A.safetensors",
            "ex/D.safetensors",
            "--per-output",
            "--json",
        ],
        &d,
    ));
    assert_eq!(r["per_output"].as_array().unwrap().len(), 4);
    let r = json(&tensim(
        &[
            "compare",
            "ex/A.safetensors",
            "ex/B.safetensors",
            "--metric",
            "behavioral",
            "--samples",
            "300",
            "--json",
        ],
        &d,
    ));
    assert_eq!(r["samples"], 300);
    assert!((r["similarity"].as_f64().unwrap() - 1.0).abs() < 1e-6); // the 1e-8 norm stabiliser
    let r = json(&tensim(
        &[
            "compare",
            "ex/A.safetensors",
            "ex/F.safetensors",
            "--metric",
            "cka",
            "--json",
        ],
        &d,
    ));
    assert!(r["similarity"].as_f64().unwrap() < 1.0);

    // matrix across different shapes: a clear error and a non-zero exit.
    let o = tensim(
        &[
            "compare",
            "ex/A.safetensors",
            "ex/C.safetensors",
            "--metric",
            "matrix",
        ],
        &d,
    );
    assert!(
        !o.status.success() && stderr(&o).contains("identical architectures"),
        "{}",
        stderr(&o)
    );

    let o = tensim(&["inspect", "ex/C.safetensors"], &d);
    let text = stdout(&o);
    assert!(
        o.status.success() && text.contains("degree      4") && text.contains("layers.1.left"),
        "{text}"
    );
    let r = json(&tensim(&["inspect", "ex/A.safetensors", "--json"], &d));
    assert_eq!(r["degree"], 4);

    let o = tensim(
        &[
            "verify",
            "ex/A.safetensors",
            "ex/D.safetensors",
            "--samples",
            "20000",
            "--json",
        ],
        &d,
    );
    let v = json(&o);
    let exact = v["tensor_exact"]["inner"].as_f64().unwrap();
    let (mean, se) = (
        v["tensor_mc"]["inner"]["mean"].as_f64().unwrap(),
        v["tensor_mc"]["inner"]["stderr"].as_f64().unwrap(),
    );
    assert!((mean - exact).abs() < 4.0 * se, "{mean} ± {se} vs {exact}");
}

/// Write a PyTorch-style state dict (no metadata) with the demo's `A` weights renamed.
fn state_dict_and_arch(d: &Path) -> (PathBuf, PathBuf) {
    let o = tensim(&["demo", "symmetries", "--out", "ex"], d);
    assert!(o.status.success());
    let arch = d.join("arch.json");
    let meta = json(&tensim(&["inspect", "ex/A.safetensors", "--json"], d));
    std::fs::write(&arch, serde_json::to_string(&meta["architecture"]).unwrap()).unwrap();
    (d.join("ex/A.safetensors"), arch)
}

#[test]
fn pack_sidecar_and_errors() {
    let d = workdir("pack");
    let (a, arch) = state_dict_and_arch(&d);
    let a = a.to_str().unwrap();
    let arch_s = arch.to_str().unwrap();
    let o = tensim(&["pack", "--arch", arch_s, a, "packed.safetensors"], &d);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&tensim(
        &[
            "compare",
            "packed.safetensors",
            a,
            "--arch-a",
            arch_s,
            "--json",
        ],
        &d,
    ));
    assert!((r["similarity"].as_f64().unwrap() - 1.0).abs() < 1e-12);

    // Bad inputs: non-zero exit, a message naming the culprit.
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["compare", a, "missing.safetensors"],
            "missing.safetensors",
        ),
        (
            vec!["compare", a, a, "--metric", "cosine"],
            "invalid value 'cosine' for '--metric",
        ),
        (
            vec![
                "compare",
                a,
                a,
                "--metric",
                "behavioral",
                "--data",
                "nope.npy",
            ],
            "nope.npy",
        ),
        (vec!["inspect", "arch.json"], "not a valid safetensors file"),
        (
            vec!["pack", "--arch", arch_s, a, "no/such/dir/out.safetensors"],
            "does not exist",
        ),
    ];
    for (args, want) in cases {
        let o = tensim(&args, &d);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    // A wrong shape names file, tensor, expected and actual shape.
    let text = std::fs::read_to_string(&arch)
        .unwrap()
        .replace("layers.1.left", "layers.1.down");
    std::fs::write(&arch, text).unwrap();
    let o = tensim(&["inspect", a, "--arch", arch_s], &d);
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains("A.safetensors")
            && e.contains("\"layers.1.down\"")
            && e.contains("[12, 24]")
            && e.contains("expected [h, 12]"),
        "{e}"
    );
}

#[test]
fn matrix_over_a_folder_resumes_and_matches_compare() {
    let d = workdir("matrix");
    let o = tensim(
        &[
            "demo",
            "random",
            "--out",
            "runs",
            "--count",
            "5",
            "--d-in",
            "12",
            "--hidden",
            "4",
            "--no-embed",
            "--no-down",
            "--d-out",
            "3",
        ],
        &d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..5 {
        std::fs::rename(
            d.join(format!("runs/random-{i:03}.safetensors")),
            d.join(format!("runs/ckpt_{}.safetensors", (4 - i) * 100)),
        )
        .unwrap();
    }
    let r = json(&tensim(
        &[
            "matrix", "runs", "--json", "--csv", "sim.csv", "--tile", "2",
        ],
        &d,
    ));
    assert_eq!(
        r["labels"],
        serde_json::json!(["0", "100", "200", "300", "400"])
    );
    let sim = r["similarity"].as_array().unwrap();
    let pair = json(&tensim(
        &[
            "compare",
            "runs/ckpt_0.safetensors",
            "runs/ckpt_300.safetensors",
            "--json",
        ],
        &d,
    ));
    assert!((sim[0][3].as_f64().unwrap() - pair["similarity"].as_f64().unwrap()).abs() < 1e-12);
    assert!(
        d.join("tensim-tensor.npy").exists()
            && std::fs::read_to_string(d.join("sim.csv"))
                .unwrap()
                .starts_with("label,0,100")
    );
    let tiles = std::fs::read_dir(d.join("tensim-tensor.npy.tiles"))
        .unwrap()
        .count();
    assert_eq!(tiles, 13); // 6 tiles, their checksums, the manifest
    let again = json(&tensim(&["matrix", "runs", "--json", "--tile", "2"], &d));
    assert_eq!(again["similarity"], r["similarity"]);
    // Per-output matrices: (outputs, N, N) beside the main output, and in the JSON.
    let r = json(&tensim(
        &[
            "matrix",
            "runs",
            "--per-output",
            "--json",
            "--out",
            "po.npy",
            "--quiet",
        ],
        &d,
    ));
    assert_eq!(r["per_output"].as_array().unwrap().len(), 3);
    assert!(d.join("po.per-output.npy").exists());
    // Heat-map with phases, then the phases command on the written matrix.
    let o = tensim(
        &[
            "matrix",
            "runs",
            "--quiet",
            "--plot",
            "sim.png",
            "--log-steps",
            "--phases",
            "2",
        ],
        &d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::metadata(d.join("sim.png")).unwrap().len() > 1000);
    let r = json(&tensim(
        &[
            "phases",
            "tensim-tensor.npy",
            "-k",
            "2",
            "--json",
            "--plot",
            "phases.svg",
        ],
        &d,
    ));
    assert_eq!(r["starts"].as_array().unwrap().len(), 2);
    assert!(std::fs::read_to_string(d.join("phases.svg"))
        .unwrap()
        .contains("<svg"));
    let o = tensim(&["phases", "tensim-tensor.npy", "-k", "9"], &d);
    assert!(
        !o.status.success() && stderr(&o).contains("between 1 and 5"),
        "{}",
        stderr(&o)
    );
    // An output folder that does not exist: a clear error.
    let o = tensim(
        &["matrix", "runs", "--out", "nope/sim.npy", "--no-resume"],
        &d,
    );
    assert!(
        !o.status.success() && stderr(&o).contains("does not exist"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bench_quick_reports_ratios() {
    let d = workdir("bench");
    let r = json(&tensim(&["bench", "--quick", "--json"], &d));
    assert!(r["gemm"]["f64_all_cores_gflops"].as_f64().unwrap() > 0.0);
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    for c in cases {
        let ratio = c["ratio_to_gemm"].as_f64().unwrap();
        assert!(
            ratio > 0.0 && ratio < 2.0 && c["pairs_per_second"].as_f64().unwrap() > 0.0,
            "{c}"
        );
    }
    // Gaussian rows: both transformer shapes, a pair cold and warm, a 4-checkpoint matrix.
    let tf = r["transformers"].as_array().unwrap();
    assert_eq!(tf.len(), 2);
    for c in tf {
        for key in ["pair_cold_seconds", "pair_warm_seconds", "matrix_seconds"] {
            assert!(c[key].as_f64().unwrap() > 0.0, "{c}");
        }
        assert_eq!(c["matrix_checkpoints"], 4, "{c}");
        assert_eq!(c["mode"], "closure", "{c}");
    }
}

/// An attention-only language model with a vocabulary of 2000 (the paper's shape, small):
/// neither metric forms a vocabulary-sized moment (a 50 MB limit is enough; the input's moment
/// alone would take 290 MB), and a limit below the estimate is refused before any work.
#[test]
fn a_language_model_is_compared_without_vocabulary_sized_memory() {
    let d = workdir("vocabulary");
    let o = tensim(
        &[
            "demo",
            "random",
            "--out",
            "lm",
            "--d-in",
            "2000",
            "--d-model",
            "8",
            "--hidden",
            "0",
            "--layers",
            "2",
            "--heads",
            "2",
            "--n-ctx",
            "3",
            "--d-out",
            "2000",
            "--residual",
            "0.35",
            "--residual-mode",
            "add",
            "--bias",
        ],
        &d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let run = |limit: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tensim"))
            .args(args)
            .current_dir(&d)
            .env("TENSIM_MAX_MEMORY_GIB", limit)
            .output()
            .unwrap()
    };
    let files = ["lm/random-000.safetensors", "lm/random-001.safetensors"];
    for metric in ["gaussian", "tensor"] {
        let compare = [&["compare"][..], &files, &["--metric", metric, "--json"]].concat();
        let r = json(&run("0.05", &compare));
        let s = r["similarity"].as_f64().unwrap();
        assert!(s.abs() < 1.0, "{metric}: {r}");
        let o = run("0.0001", &compare);
        assert_eq!(o.status.code(), Some(1), "{metric}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("would need about") && stderr(&o).contains("TENSIM_MAX_MEMORY_GIB"),
            "{metric}: {}",
            stderr(&o)
        );
    }
    let matrix = [
        &["matrix"][..],
        &files,
        &["--metric", "gaussian", "--out", "m.npy"],
    ]
    .concat();
    let o = run("0.0001", &matrix);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("would need about"), "{}", stderr(&o));
    assert!(!d.join("m.npy").exists());
}

#[test]
fn transformers_compare_with_the_gaussian_metric() {
    let d = workdir("transformer");
    let o = tensim(
        &[
            "demo",
            "random",
            "--out",
            "tf",
            "--count",
            "3",
            "--d-in",
            "4",
            "--d-model",
            "4",
            "--hidden",
            "4",
            "--d-out",
            "3",
            "--heads",
            "2",
            "--n-ctx",
            "2",
            "--residual",
            "0.5",
        ],
        &d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tensim(&["inspect", "tf/random-000.safetensors"], &d);
    assert!(
        stdout(&o).contains("attention 4 → 4 2 heads, mask causal, rotary base 10000"),
        "{}",
        stdout(&o)
    );
    let pair = |a: &str, b: &str, extra: &[&str]| {
        let mut args = vec!["compare", a, b, "--metric", "gaussian", "--json"];
        args.extend(extra);
        json(&tensim(&args, &d))
    };
    let (f0, f1) = ("tf/random-000.safetensors", "tf/random-001.safetensors");
    let same = pair(f0, f0, &[]);
    assert!((same["similarity"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    // Attention then a bilinear layer: two non-linear layers, too many legs for --exact.
    assert_eq!(same["mode"], "closure");
    let o = tensim(&["compare", f0, f1, "--metric", "gaussian", "--exact"], &d);
    assert!(
        !o.status.success() && stderr(&o).contains("--closure"),
        "{}",
        stderr(&o)
    );
    let t = json(&tensim(
        &["compare", f0, f1, "--metric", "tensor", "--json"],
        &d,
    ));
    assert!(t["similarity"].as_f64().unwrap().abs() <= 1.0);
    // The all-pairs matrix equals the pairs.
    let m = json(&tensim(
        &["matrix", "tf", "--metric", "gaussian", "--json", "--quiet"],
        &d,
    ));
    let s01 = pair(f0, f1, &[])["similarity"].as_f64().unwrap();
    let got = m["similarity"][0][1].as_f64().unwrap();
    assert!((got - s01).abs() < 1e-12, "{got} vs {s01}");
    // The attention moments in f32 by default, in f64 on request: within 1e-6, and stored
    // tiles of one precision are not reused for the other.
    let r = pair(f0, f1, &["--precision", "f64"]);
    let s64 = r["similarity"].as_f64().unwrap();
    assert!((s64 - s01).abs() < 1e-6 && s64 != s01, "{s64} vs {s01}");
    assert_eq!(r["precision"], "f64", "{r}");
    assert_eq!(pair(f0, f1, &[])["precision"], "f32");
    assert_eq!(pair(f0, f1, &["--precision", "f32"])["similarity"], s01);
    let stored = |extra: &[&str]| {
        let mut args = vec!["matrix", "tf", "--metric", "gaussian", "--json", "--quiet"];
        args.extend([&["--out", "m.npy"][..], extra].concat());
        json(&tensim(&args, &d))["similarity"][0][1]
            .as_f64()
            .unwrap()
    };
    let (m32, m64) = (stored(&[]), stored(&["--precision", "f64"]));
    assert!((m32 - s01).abs() < 1e-12, "{m32} vs {s01}");
    assert!((m64 - s64).abs() < 1e-12, "{m64} vs {s64}");
    let o = tensim(
        &[
            "compare",
            f0,
            f1,
            "--metric",
            "tensor",
            "--precision",
            "f32",
        ],
        &d,
    );
    assert!(
        !o.status.success() && stderr(&o).contains("--precision applies to the gaussian"),
        "{}",
        stderr(&o)
    );
}

/// Stored tiles are keyed by the models as loaded, not by the files: the same checkpoints read
/// with a corrected description recompute their tiles instead of reusing the old ones.
#[test]
fn a_changed_description_does_not_reuse_stored_tiles() {
    let d = workdir("stale");
    let mut arch = small_models(&d, 3);
    std::fs::write(d.join("a1.json"), arch.to_string()).unwrap();
    let layers = arch["layers"].as_array_mut().unwrap();
    let bilinear = layers.iter_mut().find(|l| l["kind"] == "bilinear").unwrap();
    bilinear["residual"]["scale"] = serde_json::json!(0.25);
    std::fs::write(d.join("a2.json"), arch.to_string()).unwrap();
    let run = |a: &str, extra: &[&str]| {
        let mut args = vec!["matrix", "r", "--arch", a, "--json", "--quiet"];
        args.extend(extra);
        json(&tensim(&args, &d))["similarity"].clone()
    };
    let first = run("a1.json", &["--out", "m.npy"]);
    let second = run("a2.json", &["--out", "m.npy"]);
    let fresh = run("a2.json", &["--out", "fresh.npy", "--no-resume"]);
    assert_eq!(second, fresh);
    assert_ne!(second, first);
}

/// Options and inputs that cannot work are refused before any work, with a message naming the
/// option or the file, and nothing is written.
#[test]
fn bad_options_and_files_are_refused_first() {
    let d = workdir("refused");
    let arch = small_models(&d, 2);
    std::fs::copy(d.join("r/random-000.safetensors"), d.join("a.safetensors")).unwrap();
    std::fs::copy(d.join("r/random-001.safetensors"), d.join("b.safetensors")).unwrap();
    let fails = |args: &[&str], want: &str| {
        let o = tensim(args, &d);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    };
    // Checked before the matrix is computed: no output file appears.
    fails(
        &["matrix", "r", "--plot", "x.jpg", "--out", "m1.npy"],
        ".png or .svg",
    );
    fails(
        &[
            "matrix",
            "a.safetensors",
            "b.safetensors",
            "--log-steps",
            "--plot",
            "p.png",
            "--out",
            "m2.npy",
        ],
        "--log-steps needs a step number",
    );
    fails(
        &[
            "matrix", "r", "--phases", "5", "--plot", "p.png", "--out", "m3.npy",
        ],
        "--phases 5",
    );
    for f in ["m1.npy", "m2.npy", "m3.npy", "p.png"] {
        assert!(!d.join(f).exists(), "{f} written");
    }
    fails(
        &["phases", "none.npy", "-k", "2", "--plot", "x.pdf"],
        ".png or .svg",
    );
    // Options a metric would ignore.
    fails(
        &["compare", "a.safetensors", "b.safetensors", "--exact"],
        "apply to the gaussian metric",
    );
    fails(
        &[
            "compare",
            "a.safetensors",
            "b.safetensors",
            "--data",
            "x.npy",
        ],
        "--data is read by",
    );
    // A model that would be refused once written is not written.
    fails(
        &["demo", "random", "--out", "nan", "--residual", "NaN"],
        "not finite",
    );
    assert!(!d.join("nan/random-000.safetensors").exists());
    // Files of the wrong kind.
    fails(
        &[
            "compare",
            "a.safetensors",
            "b.safetensors",
            "--arch",
            "a.safetensors",
        ],
        "not a text file",
    );
    std::fs::write(
        d.join("m.pt"),
        b"PK\x03\x04 a zip archive, as torch.save writes",
    )
    .unwrap();
    fails(&["inspect", "m.pt"], "truncated or corrupt zip archive");
    // A description with a byte-order mark is read.
    std::fs::write(d.join("bom.json"), format!("\u{feff}{arch}")).unwrap();
    let r = json(&tensim(
        &[
            "compare",
            "a.safetensors",
            "b.safetensors",
            "--arch",
            "bom.json",
            "--json",
        ],
        &d,
    ));
    assert!(r["similarity"].is_number());
    // phases: only similarity matrices.
    let npy = |name: &str, v: [f64; 4]| {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        let mut h = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }".to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        v.iter().for_each(|x| b.extend(x.to_le_bytes()));
        std::fs::write(d.join(name), b).unwrap();
    };
    npy("nan.npy", [1.0, f64::NAN, f64::NAN, 1.0]);
    npy("skew.npy", [1.0, 0.5, 0.2, 1.0]);
    npy("dist.npy", [0.0, 3.0, 3.0, 0.0]);
    fails(
        &["phases", "nan.npy", "-k", "1"],
        "similarity for every pair",
    );
    fails(&["phases", "skew.npy", "-k", "1"], "not symmetric");
    fails(
        &["phases", "dist.npy", "-k", "1"],
        "not a similarity matrix",
    );
    // A description covering only part of a checkpoint works, with a warning naming the rest.
    let mut part = arch.clone();
    part["layers"] = serde_json::json!([arch["layers"][0].clone()]);
    std::fs::write(d.join("part.json"), part.to_string()).unwrap();
    let o = tensim(
        &[
            "compare",
            "a.safetensors",
            "b.safetensors",
            "--arch",
            "part.json",
        ],
        &d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("a.safetensors: ")
            && stderr(&o).contains("not used by the architecture"),
        "{}",
        stderr(&o)
    );
    // The command's help says where the model format is described.
    let help = stdout(&tensim(&["compare", "--help"], &d));
    assert!(
        help.contains("Model files") && help.contains("tensim inspect"),
        "{help}"
    );
}

/// Sizes taken from the input (positions, widths, samples) are checked against the memory
/// limit before anything is allocated: a clear refusal with exit 1, never an abort.
#[test]
fn absurd_sizes_are_refused_not_aborted() {
    let d = workdir("sizes");
    let mut arch = small_models(&d, 2);
    arch["input"]["n_ctx"] = serde_json::json!(1_000_000);
    std::fs::write(d.join("long.json"), arch.to_string()).unwrap();
    let (a, b) = ("r/random-000.safetensors", "r/random-001.safetensors");
    for args in [
        vec![
            "compare",
            a,
            b,
            "--arch",
            "long.json",
            "--metric",
            "gaussian",
        ],
        vec![
            "matrix",
            "r",
            "--arch",
            "long.json",
            "--metric",
            "gaussian",
            "--no-resume",
        ],
        vec![
            "compare",
            a,
            b,
            "--arch",
            "long.json",
            "--metric",
            "behavioral",
        ],
        vec![
            "compare",
            a,
            b,
            "--metric",
            "behavioral",
            "--samples",
            "4000000000",
        ],
        vec![
            "demo",
            "random",
            "--out",
            "h",
            "--d-in",
            "100000",
            "--d-model",
            "100000",
        ],
    ] {
        let o = tensim(&args, &d);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("would need about"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

/// The PyTorch fixtures of the library's tests (tests/data/pytorch).
fn pytorch_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tensim/tests/data/pytorch")
        .join(name)
}

#[test]
fn pytorch_checkpoints_work_in_every_command() {
    let d = workdir("pytorch");
    let arch = pytorch_data("arch.json");
    let arch = arch.to_str().unwrap();
    let st = pytorch_data("model.safetensors");
    let st = st.to_str().unwrap();
    let similarity = |a: &str, b: &str, extra: &[&str]| {
        let mut args = vec!["compare", a, b, "--arch", arch, "--json"];
        args.extend_from_slice(extra);
        json(&tensim(&args, &d))
    };
    // The model against its f16 rounding, read from PyTorch checkpoints and from safetensors.
    let f16 = pytorch_data("f16.safetensors");
    let from_st = similarity(st, f16.to_str().unwrap(), &["--metric", "gaussian"]);
    let f16 = pytorch_data("f16.bin");
    let f16 = f16.to_str().unwrap();
    for name in ["plain.pt", "views.pt", "nested.ckpt", "parameters.pth"] {
        let p = pytorch_data(name);
        let r = similarity(p.to_str().unwrap(), f16, &["--metric", "gaussian"]);
        assert_eq!(r, from_st, "{name}");
    }
    // --key picks the state dict of a checkpoint holding two.
    let two = pytorch_data("two.pt");
    let two = two.to_str().unwrap();
    let plain = pytorch_data("plain.pt");
    let key = |k: &str| {
        similarity(plain.to_str().unwrap(), two, &["--key", k])["similarity"]
            .as_f64()
            .unwrap()
    };
    assert!((key("model") - 1.0).abs() < 1e-12);
    assert!(key("ema") < 0.999);
    let o = tensim(&["compare", st, two, "--arch", arch], &d);
    assert!(!o.status.success() && stderr(&o).contains("--key NAME"));

    // A folder of .pt checkpoints, named by step: matrix, inspect, verify and pack.
    let run = d.join("run");
    std::fs::create_dir_all(&run).unwrap();
    for (i, name) in ["plain.pt", "nested.ckpt", "f16.bin"].iter().enumerate() {
        let ext = Path::new(name).extension().unwrap().to_str().unwrap();
        std::fs::copy(pytorch_data(name), run.join(format!("step_{i}.{ext}"))).unwrap();
    }
    let m = json(&tensim(
        &[
            "matrix",
            "run",
            "--arch",
            arch,
            "--json",
            "--quiet",
            "--no-resume",
        ],
        &d,
    ));
    assert_eq!(m["labels"], serde_json::json!(["0", "1", "2"]));
    assert_eq!(m["similarity"][0][1], 1.0);
    let s = m["similarity"][0][2].as_f64().unwrap();
    assert!(s < 1.0 && s > 0.999, "f16 rounding: {s}");
    let o = tensim(&["inspect", "run/step_1.ckpt", "--arch", arch], &d);
    assert!(o.status.success() && stdout(&o).contains("body.0.l.weight"));
    let o = tensim(
        &[
            "verify",
            "run/step_0.pt",
            "run/step_2.bin",
            "--arch",
            arch,
            "--samples",
            "1000",
        ],
        &d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tensim(
        &[
            "pack",
            "--arch",
            arch,
            "run/step_1.ckpt",
            "packed.safetensors",
        ],
        &d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        similarity("packed.safetensors", f16, &["--metric", "gaussian"]),
        from_st
    );
    let o = tensim(
        &["inspect", pytorch_data("global.pt").to_str().unwrap()],
        &d,
    );
    assert!(!o.status.success() && stderr(&o).contains("posix.system"));
}

#[test]
fn a_run_folder_with_a_language_model_config_needs_no_flags() {
    let d = workdir("lm-run");
    std::fs::create_dir_all(d.join("run/checkpoints")).unwrap();
    std::fs::write(
        d.join("run/config.json"),
        r#"{"model": {"vocab_size": 11, "d_model": 4, "n_head": 2, "n_layers": 1,
            "attn_type": "bilinear", "attn_scale": 0.35, "rope_base": 10000,
            "use_bias_qk": false}}"#,
    )
    .unwrap();
    for step in [0usize, 10, 20] {
        let mut x = step as f64;
        let mut values = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| {
                    x += 1.0;
                    (x * 0.731).sin() * 0.5
                })
                .collect()
        };
        let mut t = vec![
            ("embed.weight".to_string(), vec![11, 4], values(44)),
            ("unembed.weight".to_string(), vec![11, 4], values(44)),
            (
                "final_norm.running_mean_energy".to_string(),
                vec![],
                vec![1.5],
            ),
        ];
        for p in ["q1", "k1", "q2", "k2", "v", "o"] {
            t.push((format!("layers.0.{p}.weight"), vec![4, 4], values(16)));
        }
        let bytes = tensim::io::f64_safetensors(&t, Default::default()).unwrap();
        std::fs::write(
            d.join(format!("run/checkpoints/step_{step}.safetensors")),
            bytes,
        )
        .unwrap();
    }
    let o = tensim(&["matrix", "run", "--json", "--quiet", "--no-resume"], &d);
    assert!(stderr(&o).contains("run/config.json"), "{}", stderr(&o));
    let m = json(&o);
    assert_eq!(m["labels"], serde_json::json!(["0", "10", "20"]));
    // The same as naming the config, and n_ctx 4 unless --n-ctx says otherwise.
    let named = json(&tensim(
        &[
            "matrix",
            "run/checkpoints",
            "--arch",
            "run/config.json",
            "--n-ctx",
            "4",
            "--json",
            "--quiet",
            "--no-resume",
        ],
        &d,
    ));
    assert_eq!(named["similarity"], m["similarity"]);
    let two = json(&tensim(
        &[
            "compare",
            "run/checkpoints/step_0.safetensors",
            "run/checkpoints/step_20.safetensors",
            "--arch",
            "run/config.json",
            "--n-ctx",
            "2",
            "--json",
        ],
        &d,
    ));
    assert_ne!(two["similarity"], m["similarity"][0][2]);
}

#[test]
fn input_distributions_and_the_null_from_the_command_line() {
    let d = workdir("distribution");
    small_models(&d, 3);
    let (a, b) = ("r/random-000.safetensors", "r/random-001.safetensors");
    // 40 rows in 4 dimensions, and their mean and covariance (n − 1) computed here.
    let rows: Vec<Vec<f64>> = (0..40)
        .map(|i| {
            (0..4)
                .map(|j| ((i * 7 + j * 3) % 11) as f64 / 5.0 - 1.0 + j as f64)
                .collect()
        })
        .collect();
    let mean: Vec<f64> = (0..4)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / 40.0)
        .collect();
    let cov: Vec<f64> = (0..16)
        .map(|k| {
            let (i, j) = (k / 4, k % 4);
            rows.iter()
                .map(|r| (r[i] - mean[i]) * (r[j] - mean[j]))
                .sum::<f64>()
                / 39.0
        })
        .collect();
    let flat: Vec<f64> = rows.concat();
    let npy = |name: &str, shape: &[usize], v: &[f64]| {
        tensim::io::write_npy(&d.join(name), shape, v).unwrap();
        name.to_string()
    };
    let x = npy("x.npy", &[40, 4], &flat);
    let m = npy("m.npy", &[4], &mean);
    let s = npy("s.npy", &[4, 4], &cov);
    for metric in ["gaussian", "tensor"] {
        let from_rows = json(&tensim(
            &[
                "compare",
                a,
                b,
                "--metric",
                metric,
                "--input-stats",
                &x,
                "--json",
            ],
            &d,
        ));
        let given = json(&tensim(
            &[
                "compare",
                a,
                b,
                "--metric",
                metric,
                "--input-mean",
                &m,
                "--input-cov",
                &s,
                "--json",
            ],
            &d,
        ));
        let plain = json(&tensim(
            &["compare", a, b, "--metric", metric, "--json"],
            &d,
        ));
        let sim = |v: &serde_json::Value| v["similarity"].as_f64().unwrap();
        assert!(
            (sim(&from_rows) - sim(&given)).abs() < 1e-12,
            "{from_rows} {given}"
        );
        assert!(
            (sim(&from_rows) - sim(&plain)).abs() > 1e-6,
            "{from_rows} {plain}"
        );
        let info = &from_rows["input_distribution"];
        assert_eq!(
            (info["kind"].as_str(), info["rows"].as_u64()),
            (Some("samples"), Some(40))
        );
        assert_eq!(given["input_distribution"]["kind"], "moments");
    }
    // The null: in JSON and text, the same under the same seed.
    let args = [
        "compare", a, b, "--metric", "gaussian", "--null", "4", "--seed", "3",
    ];
    let r = json(&tensim(&[&args[..], &["--json"]].concat(), &d));
    let (mean, std) = (
        r["null_mean"].as_f64().unwrap(),
        r["null_std"].as_f64().unwrap(),
    );
    let z = (r["similarity"].as_f64().unwrap() - mean) / std;
    assert!(
        (r["z"].as_f64().unwrap() - z).abs() < 1e-12 && r["null_pairs"] == 4,
        "{r}"
    );
    let text = stdout(&tensim(&args, &d));
    assert!(
        text.contains(&format!("null        {mean:.6} ± {std:.6} (4 pairs")),
        "{text}"
    );
    // Token counts of a one-hot input.
    let c = npy("c.npy", &[4], &[1.0, 2.0, 0.0, 3.0]);
    let r = json(&tensim(
        &[
            "compare",
            a,
            b,
            "--metric",
            "gaussian",
            "--token-counts",
            &c,
            "--json",
        ],
        &d,
    ));
    let info = &r["input_distribution"];
    assert_eq!(
        (info["kind"].as_str(), info["rank"].as_u64()),
        (Some("token-counts"), Some(2))
    );
    // The matrix under the same distribution, with one shared null.
    let o = tensim(
        &[
            "matrix",
            "r",
            "--metric",
            "gaussian",
            "--input-stats",
            &x,
            "--null",
            "3",
            "--json",
            "--no-resume",
            "--quiet",
        ],
        &d,
    );
    let v = json(&o);
    let pair = json(&tensim(
        &[
            "compare",
            a,
            b,
            "--metric",
            "gaussian",
            "--input-stats",
            &x,
            "--json",
        ],
        &d,
    ));
    let entry = v["similarity"][0][1].as_f64().unwrap();
    assert!(
        (entry - pair["similarity"].as_f64().unwrap()).abs() < 1e-12,
        "{v}"
    );
    assert!(
        v["null_mean"].is_f64() && v["null_pairs"] == 3 && v["input_distribution"]["rows"] == 40
    );
    // Changes: A − C against B − C, and a change against itself.
    let c0 = "r/random-002.safetensors";
    let changes = json(&tensim(
        &[
            "compare",
            a,
            b,
            "--minus-a",
            c0,
            "--minus-b",
            c0,
            "--metric",
            "gaussian",
            "--json",
        ],
        &d,
    ));
    let change = changes["similarity"].as_f64().unwrap();
    // The same from the pairs' inner products, expanded by hand.
    let ip = |x: &str, y: &str| {
        let v = json(&tensim(
            &["compare", x, y, "--metric", "gaussian", "--json"],
            &d,
        ));
        v["inner"].as_f64().unwrap()
    };
    let (ab, ac, cb, cc) = (ip(a, b), ip(a, c0), ip(c0, b), ip(c0, c0));
    let (aa, bb) = (ip(a, a), ip(b, b));
    let want = (ab - ac - cb + cc) / ((aa - 2.0 * ac + cc) * (bb - 2.0 * cb + cc)).sqrt();
    assert!((change - want).abs() < 1e-9, "{changes} vs {want}");
    let r = json(&tensim(
        &["compare", a, a, "--minus-a", c0, "--minus-b", c0, "--json"],
        &d,
    ));
    assert!(
        (r["similarity"].as_f64().unwrap() - 1.0).abs() < 1e-12,
        "{r}"
    );
    let o = tensim(&["compare", a, b, "--minus-a", a], &d);
    assert!(!o.status.success() && stderr(&o).contains("zero or too small"));
    // Every checkpoint's change from C: the pair's value, and no value for C itself.
    let v = json(&tensim(
        &[
            "matrix", "r", "--minus", c0, "--metric", "gaussian", "--json", "--quiet",
        ],
        &d,
    ));
    let entry = v["similarity"][0][1].as_f64().unwrap();
    assert!((entry - change).abs() < 1e-12, "{v}");
    assert!(
        v["similarity"][2][2].is_null() && v["similarity"][0][2].is_null(),
        "{v}"
    );
    // Its inner products were kept, a tile and a checksum each, keyed by content: the base is
    // one of the 3 checkpoints, so 6 distinct pairs. A second run reads them, same matrix.
    let tiles = d.join("tensim-gaussian.npy.tiles");
    let count = std::fs::read_dir(&tiles).unwrap().count();
    assert_eq!(count, 2 * 6 + 1, "tiles and the manifest");
    let again = json(&tensim(
        &[
            "matrix", "r", "--minus", c0, "--metric", "gaussian", "--json", "--quiet",
        ],
        &d,
    ));
    assert_eq!(again["similarity"], v["similarity"]);
    // The weight baseline per tensor.
    let r = json(&tensim(
        &[
            "compare",
            a,
            b,
            "--metric",
            "matrix",
            "--per-tensor",
            "--json",
        ],
        &d,
    ));
    let per = r["per_tensor"].as_array().unwrap();
    assert_eq!(per[0]["tensor"], "layers.0.weight", "{r}");
    assert!(per
        .iter()
        .all(|t| t["similarity"].as_f64().unwrap().abs() <= 1.0));
    let o = tensim(&["compare", a, b, "--per-tensor"], &d);
    assert!(!o.status.success() && stderr(&o).contains("matrix metric"));
    // Bad input: refused, naming what is wrong.
    let mut bad_cov = cov.clone();
    bad_cov[1] += 1.0;
    let asym = npy("asym.npy", &[4, 4], &bad_cov);
    let mut nan = flat.clone();
    nan[4 * 7 + 2] = f64::NAN;
    let nan = npy("nan.npy", &[40, 4], &nan);
    let cube = npy("cube.npy", &[10, 4, 4], &flat);
    let one = npy("one.npy", &[1, 4], &flat[..4]);
    let small = npy("small.npy", &[40, 2], &flat[..80]);
    for (args, want) in [
        (
            vec!["--input-stats", &x, "--metric", "matrix"],
            "tensor and gaussian metrics",
        ),
        (
            vec!["--input-mean", &m, "--input-cov", &asym],
            "not symmetric: entry (1, 0)",
        ),
        (vec!["--input-stats", &nan], "row 7"),
        (
            vec!["--input-stats", &cube],
            "per position, but the model has no attention",
        ),
        (vec!["--input-stats", &one], "at least 2 rows, got 1"),
        (
            vec!["--input-stats", &small],
            "dimension 2, but the model takes inputs of size 4",
        ),
        (vec!["--input-mean", &m], "--input-cov"),
        (vec!["--null", "1"], "at least 2 pairs"),
    ] {
        let o = tensim(&[&["compare", a, b][..], &args].concat(), &d);
        assert!(
            !o.status.success() && stderr(&o).contains(want),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // Per-position statistics of an attention model: with every position's rows alike, the
    // shared distribution of those rows.
    let o = tensim(
        &[
            "demo",
            "random",
            "--out",
            "s",
            "--d-in",
            "4",
            "--d-model",
            "4",
            "--hidden",
            "0",
            "--layers",
            "1",
            "--heads",
            "1",
            "--n-ctx",
            "2",
            "--d-out",
            "3",
            "--count",
            "3",
        ],
        &d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let alike: Vec<f64> = rows
        .iter()
        .flat_map(|r| [r.clone(), r.clone()])
        .flatten()
        .collect();
    let alike = npy("alike.npy", &[40, 2, 4], &alike);
    let (sa, sb) = ("s/random-000.safetensors", "s/random-001.safetensors");
    for metric in ["gaussian", "tensor"] {
        let run = |stats: &str| {
            let args = [
                "compare",
                sa,
                sb,
                "--metric",
                metric,
                "--input-stats",
                stats,
                "--json",
            ];
            json(&tensim(&args, &d))
        };
        let (per, shared) = (run(&alike), run(&x));
        let (p, q) = (&per["similarity"], &shared["similarity"]);
        assert!(
            (p.as_f64().unwrap() - q.as_f64().unwrap()).abs() < 1e-12,
            "{per} vs {shared}"
        );
        assert_eq!(per["input_distribution"]["positions"], 2, "{per}");
    }
    let v = json(&tensim(
        &[
            "matrix",
            "s",
            "--metric",
            "gaussian",
            "--input-stats",
            &alike,
            "--json",
            "--quiet",
        ],
        &d,
    ));
    let pair = json(&tensim(
        &[
            "compare",
            sa,
            sb,
            "--metric",
            "gaussian",
            "--input-stats",
            &alike,
            "--json",
        ],
        &d,
    ));
    assert!(
        (v["similarity"][0][1].as_f64().unwrap() - pair["similarity"].as_f64().unwrap()).abs()
            < 1e-12
    );
}

#[test]
fn breakdowns_from_the_command_line() {
    let d = workdir("breakdown");
    small_models(&d, 2);
    let (a, b) = ("r/random-000.safetensors", "r/random-001.safetensors");
    for metric in ["tensor", "gaussian"] {
        let v = json(&tensim(
            &[
                "compare",
                a,
                b,
                "--metric",
                metric,
                "--breakdown",
                "c.npy",
                "--per-output",
                "--plot",
                "c.svg",
                "--json",
            ],
            &d,
        ));
        let bd = &v["breakdown"];
        assert_eq!(bd["parts"], "units");
        assert_eq!(bd["shape"], serde_json::json!([5, 5]));
        let (shape, c) = tensim::io::read_npy(&d.join("c.npy")).unwrap();
        assert_eq!(shape, vec![5, 5]);
        let inner = v["inner"].as_f64().unwrap();
        let total = c.iter().sum::<f64>() + bd["remainder"].as_f64().unwrap();
        assert!(
            (total - inner).abs() <= 1e-12 * inner.abs().max(1.0),
            "{metric}"
        );
        // Per output: (3, 5, 5), each slice with its remainder summing to its inner product.
        let (shape, per) = tensim::io::read_npy(&d.join("c.per-output.npy")).unwrap();
        assert_eq!(shape, vec![3, 5, 5]);
        for (o, p) in bd["per_output"].as_array().unwrap().iter().enumerate() {
            let s: f64 = per[o * 25..(o + 1) * 25].iter().sum();
            let want = p["inner"].as_f64().unwrap();
            assert!((s + p["remainder"].as_f64().unwrap() - want).abs() <= 1e-12);
        }
        assert_eq!(bd["matching"].as_array().unwrap().len(), 5);
        assert!(d.join("c.svg").exists());
    }
    // Of a change: ⟨A − B, B⟩ over units, remainder included, is the change's inner product.
    let v = json(&tensim(
        &[
            "compare",
            a,
            b,
            "--minus-a",
            b,
            "--breakdown",
            "d.npy",
            "--per-output",
            "--json",
        ],
        &d,
    ));
    let (_, c) = tensim::io::read_npy(&d.join("d.npy")).unwrap();
    let inner = v["inner"].as_f64().unwrap();
    let total = c.iter().sum::<f64>() + v["breakdown"]["remainder"].as_f64().unwrap();
    assert!(
        (total - inner).abs() <= 1e-10 * inner.abs(),
        "{total} vs {inner}"
    );
    assert_eq!(v["breakdown"]["per_output"].as_array().unwrap().len(), 3);
    // Text output names the parts and the matching; plot-breakdown draws a written file.
    let o = tensim(&["compare", a, b, "--breakdown", "c.npy"], &d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("breakdown   units: layer 1 of A (5) × layer 1 of B (5)"));
    assert!(stdout(&o).contains("matching    5 pairs"));
    let o = tensim(&["plot-breakdown", "c.npy", "--out", "p.png"], &d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("p.png").exists());
    // Refused before any work, with a reason: a figure that is no figure, the matrix metric,
    // a 3-D file to plot.
    let o = tensim(
        &["compare", a, b, "--breakdown", "x.npy", "--plot", "x.txt"],
        &d,
    );
    assert!(!o.status.success() && stderr(&o).contains(".png or .svg"));
    assert!(!d.join("x.npy").exists());
    let o = tensim(
        &[
            "compare",
            a,
            b,
            "--metric",
            "matrix",
            "--breakdown",
            "x.npy",
        ],
        &d,
    );
    assert!(!o.status.success() && stderr(&o).contains("tensor (per layer) and gaussian"));
    let o = tensim(
        &["plot-breakdown", "c.per-output.npy", "--out", "q.png"],
        &d,
    );
    assert!(
        !o.status.success() && stderr(&o).contains("got shape [3, 5, 5]"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn matrix_per_tensor_equals_compare_per_tensor() {
    let d = workdir("per-tensor");
    small_models(&d, 3);
    let v = json(&tensim(
        &[
            "matrix",
            "r",
            "--metric",
            "matrix",
            "--per-tensor",
            "--out",
            "m.npy",
            "--json",
            "--quiet",
        ],
        &d,
    ));
    let c = json(&tensim(
        &[
            "compare",
            "r/random-000.safetensors",
            "r/random-002.safetensors",
            "--metric",
            "matrix",
            "--per-tensor",
            "--json",
        ],
        &d,
    ));
    let want = c["per_tensor"].as_array().unwrap();
    let names = v["per_tensor"]["tensors"].as_array().unwrap();
    assert_eq!(names.len(), want.len());
    let (shape, values) = tensim::io::read_npy(&d.join("m.per-tensor.npy")).unwrap();
    assert_eq!(shape, vec![want.len(), 3, 3]);
    for (t, w) in want.iter().enumerate() {
        assert_eq!(names[t], w["tensor"]);
        let got = v["per_tensor"]["similarity"][t][0][2].as_f64().unwrap();
        assert!(
            (got - w["similarity"].as_f64().unwrap()).abs() < 1e-12,
            "{t}"
        );
        assert!((values[t * 9 + 2] - got).abs() < 1e-15 && (values[t * 9] - 1.0).abs() < 1e-12);
    }
    let o = tensim(&["matrix", "r", "--per-tensor"], &d);
    assert!(!o.status.success() && stderr(&o).contains("--metric matrix"));
}

#[test]
fn induction_demo_runs_small_and_refuses_impossible_shapes() {
    let d = workdir("induction");
    let small = [
        "demo",
        "induction",
        "--out",
        "ind",
        "--vocab",
        "10",
        "--d-model",
        "8",
        "--heads",
        "2",
        "--n-ctx",
        "6",
        "--segment",
        "3",
        "--steps",
        "30",
        "--checkpoints",
        "4",
        "--quiet",
    ];
    let o = tensim(&small, &d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("| milestone |"), "{}", stdout(&o));
    // The saved checkpoints are what `tensim matrix` reads: it reproduces gaussian.npy.
    let o = tensim(
        &[
            "matrix",
            "ind/checkpoints",
            "--metric",
            "gaussian",
            "--out",
            "g.npy",
            "--quiet",
        ],
        &d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, demo) = tensim::io::read_npy(&d.join("ind/gaussian.npy")).unwrap();
    let (_, cli) = tensim::io::read_npy(&d.join("g.npy")).unwrap();
    assert_eq!(demo.len(), cli.len());
    for (a, b) in demo.iter().zip(&cli) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    // And with the demo's token counts, gaussian_tokens.npy.
    let o = tensim(
        &[
            "matrix",
            "ind/checkpoints",
            "--metric",
            "gaussian",
            "--token-counts",
            "ind/token_counts.npy",
            "--out",
            "t.npy",
            "--quiet",
        ],
        &d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, demo) = tensim::io::read_npy(&d.join("ind/gaussian_tokens.npy")).unwrap();
    let (_, cli) = tensim::io::read_npy(&d.join("t.npy")).unwrap();
    for (a, b) in demo.iter().zip(&cli) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    // A segment that cannot occur twice in the sequence is refused before training.
    let mut bad = small.to_vec();
    bad[13] = "4";
    let o = tensim(&bad, &d);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("segment of 4 tokens"), "{}", stderr(&o));
    // So are heads without an even size and a model too large to train here.
    for (flag, value, message) in [
        ("--d-model", "0", "heads of even size"),
        ("--vocab", "100000000", "would need about"),
    ] {
        let o = tensim(&["demo", "induction", "--out", "big", flag, value], &d);
        assert_eq!(o.status.code(), Some(1), "{flag}: {}", stderr(&o));
        assert!(stderr(&o).contains(message), "{flag}: {}", stderr(&o));
        assert!(!d.join("big/checkpoints").exists());
    }
}
