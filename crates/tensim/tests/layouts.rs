//! Descriptions in other layouts: the bilinear-attention language model's training config reads
//! its checkpoints as the hand-converted tensim/1 file does (embedding transposed, final norm
//! folded into the unembedding), and configs that are not tensor networks are refused.

use std::path::PathBuf;

use tensim::linalg::{Mat, Par};
use tensim::metrics::{self, Metric, Options};
use tensim::{io, Arch};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tensim-layouts-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

const CONFIG: &str = r#"{"model": {"vocab_size": 7, "d_model": 4, "n_head": 2, "n_layers": 2,
  "attn_type": "bilinear", "attn_scale": 0.35, "rope_base": 10000, "use_bias_qk": true,
  "final_norm": "running_energy"}, "train": {"lr": 0.001}}"#;

type Tensors = Vec<(String, Vec<usize>, Vec<f64>)>;

/// A checkpoint in the training code's layout, with seed-dependent values.
fn checkpoint(seed: u64, energy: Vec<f64>) -> Tensors {
    let mut x = seed as f64;
    let mut values = |n: usize| -> Vec<f64> {
        (0..n)
            .map(|_| {
                x += 1.0;
                (x * 12.9898).sin() * 0.7
            })
            .collect()
    };
    let mut t: Tensors = vec![
        ("embed.weight".into(), vec![7, 4], values(28)),
        ("unembed.weight".into(), vec![7, 4], values(28)),
    ];
    for i in 0..2 {
        for p in ["q1", "k1", "q2", "k2", "v", "o"] {
            t.push((format!("layers.{i}.{p}.weight"), vec![4, 4], values(16)));
        }
        for p in ["q1", "k1", "q2", "k2"] {
            t.push((format!("layers.{i}.{p}.bias"), vec![4], values(4)));
        }
    }
    let n = energy.len();
    t.push(("final_norm.running_mean_energy".into(), vec![n], energy));
    t
}

/// The same weights by hand: `embed` transposed, `unembed` columns over √(e + 10⁻⁶), and the
/// tensim/1 description of the layers.
fn hand_converted(t: &Tensors) -> (Tensors, Arch) {
    let get = |n: &str| t.iter().find(|x| x.0 == n).unwrap().2.clone();
    let e = get("final_norm.running_mean_energy");
    let mut out: Tensors = t
        .iter()
        .filter(|x| !x.0.starts_with("embed") && !x.0.starts_with("final_norm"))
        .cloned()
        .collect();
    let embed = get("embed.weight");
    let transposed = (0..28).map(|k| embed[(k % 7) * 4 + k / 7]).collect();
    out.push(("embed.weight".into(), vec![4, 7], transposed));
    let u = out.iter_mut().find(|x| x.0 == "unembed.weight").unwrap();
    for (k, w) in u.2.iter_mut().enumerate() {
        *w *= 1.0 / (e[if e.len() == 1 { 0 } else { k % 4 }] + 1e-6).sqrt();
    }
    let attention = |i: usize| {
        let w = |p: &str| format!("\"{p}\": \"layers.{i}.{p}.weight\"");
        let b = |p: &str| format!("\"{p}_bias\": \"layers.{i}.{p}.bias\"");
        let names: Vec<String> = ["q1", "k1", "q2", "k2", "v", "o"]
            .iter()
            .map(|p| w(p))
            .collect();
        let biases: Vec<String> = ["q1", "k1", "q2", "k2"].iter().map(|p| b(p)).collect();
        format!(
            r#"{{"kind": "attention", "n_head": 2, {}, {}, "mask": "causal",
               "rotary": {{"base": 10000}}, "residual": {{"mode": "add", "scale": 0.35}}}}"#,
            names.join(", "),
            biases.join(", ")
        )
    };
    let json = format!(
        r#"{{"format": "tensim/1", "input": {{"dim": 7, "n_ctx": 4}}, "layers": [
            {{"kind": "linear", "weight": "embed.weight"}}, {}, {},
            {{"kind": "linear", "weight": "unembed.weight"}}]}}"#,
        attention(0),
        attention(1)
    );
    (out, Arch::from_json(&json, "hand-converted").unwrap())
}

fn save(t: &Tensors, name: &str) -> PathBuf {
    let path = tmp(name);
    std::fs::write(&path, io::f64_safetensors(t, Default::default()).unwrap()).unwrap();
    path
}

#[test]
fn a_language_model_config_reads_checkpoints_as_the_hand_converted_file() {
    let config = tmp("config.json");
    std::fs::write(&config, CONFIG).unwrap();
    let arch = Arch::from_file(&config).unwrap();
    for (seed, energy) in [(1, vec![2.5]), (2, vec![0.5, 1.5, 3.0, 0.25])] {
        let t = checkpoint(seed, energy);
        let from_config = io::load_with(&save(&t, "ckpt.safetensors"), Some(&arch), None).unwrap();
        let (hand, hand_arch) = hand_converted(&t);
        let by_hand =
            io::load_with(&save(&hand, "hand.safetensors"), Some(&hand_arch), None).unwrap();
        // The same function: equal outputs on a batch of one-hot-free inputs …
        let x = Mat::from_fn(8, 7, |i, j| ((i * 7 + j) as f64 * 0.37).cos());
        let (ya, yb) = (
            from_config.forward(x.as_ref(), Par::Seq),
            by_hand.forward(x.as_ref(), Par::Seq),
        );
        assert!((&ya - &yb).norm_max() < 1e-12 * yb.norm_max());
        // … and equal metrics against another checkpoint.
        let other = io::load_with(
            &save(&checkpoint(9, vec![1.0]), "other.safetensors"),
            Some(&arch),
            None,
        )
        .unwrap();
        for metric in [
            Metric::new(metrics::Kind::Tensor),
            Metric::new(metrics::Kind::Gaussian),
        ] {
            let opts = Options::default();
            let a = metrics::compare(&from_config, &other, &metric, None, &opts).unwrap();
            let b = metrics::compare(&by_hand, &other, &metric, None, &opts).unwrap();
            assert!((a.similarity - b.similarity).abs() < 1e-12, "{a:?} {b:?}");
        }
    }
    // Packing writes the hand-converted tensors with the tensim/1 description.
    let packed = tmp("packed.safetensors");
    let t = checkpoint(3, vec![2.0]);
    io::pack(&config, &save(&t, "c3.safetensors"), None, &packed).unwrap();
    let (hand, hand_arch) = hand_converted(&t);
    let by_hand = io::load_with(&save(&hand, "h3.safetensors"), Some(&hand_arch), None).unwrap();
    let packed = io::load(&packed, None).unwrap();
    assert_eq!(packed.arch(), by_hand.arch());
}

#[test]
fn configs_that_are_not_tensor_networks_or_checkpoints_that_do_not_fit_are_refused() {
    let refuse = |edit: (&str, &str), want: &str| {
        let text = CONFIG.replace(edit.0, edit.1);
        let e = Arch::from_json(&text, "config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
    };
    refuse(
        ("\"bilinear\"", "\"softmax\""),
        "attn_type \"softmax\" is not a tensor network",
    );
    refuse(("\"running_energy\"", "\"layernorm\""), "model.final_norm");
    refuse(
        ("\"n_head\": 2", "\"n_head\": 3"),
        "not a multiple of n_head 3",
    );
    refuse(
        ("\"vocab_size\": 7", "\"vocab_size\": 0"),
        "model.vocab_size",
    );
    let config = tmp("config-refused.json");
    std::fs::write(&config, CONFIG).unwrap();
    let arch = Arch::from_file(&config).unwrap();
    let mut t = checkpoint(1, vec![1.0]);
    t.retain(|x| !x.0.starts_with("final_norm"));
    let e = io::load_with(&save(&t, "no-norm.safetensors"), Some(&arch), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("final_norm.running_mean_energy") && e.contains("missing"),
        "{e}"
    );
    let e = io::load_with(
        &save(&checkpoint(1, vec![-1.0]), "neg.safetensors"),
        Some(&arch),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("must be positive"), "{e}");
}

#[test]
fn a_draft_reads_fused_bilinear_layers_attention_blocks_and_the_layer_order() {
    use tensim::arch::LayerSpec;
    use tensim::io::TensorInfo;
    let t = |name: &str, shape: &[usize]| TensorInfo {
        name: name.into(),
        dtype: "F32".into(),
        shape: shape.to_vec(),
    };
    // Names sorted as a file lists them: head before embed, block 10 before block 2.
    let tensors = [
        t("blocks.10.mlp.p.weight", &[6, 8]),
        t("blocks.10.mlp.w.weight", &[16, 6]),
        t("blocks.2.attn.k1.weight", &[6, 6]),
        t("blocks.2.attn.k2.weight", &[6, 6]),
        t("blocks.2.attn.o.weight", &[6, 6]),
        t("blocks.2.attn.q1.bias", &[6]),
        t("blocks.2.attn.q1.weight", &[6, 6]),
        t("blocks.2.attn.q2.weight", &[6, 6]),
        t("blocks.2.attn.v.weight", &[6, 6]),
        t("embed.weight", &[6, 5]),
        t("head.bias", &[3]),
        t("head.weight", &[3, 6]),
    ];
    let (arch, notes) = tensim::layouts::draft(&tensors);
    let kinds: Vec<&str> = arch
        .layers
        .iter()
        .map(|l| match l {
            LayerSpec::Linear(_) => "linear",
            LayerSpec::Bilinear(_) => "bilinear",
            LayerSpec::Attention(_) => "attention",
        })
        .collect();
    assert_eq!(kinds, ["linear", "attention", "bilinear", "linear"]);
    assert_eq!(arch.input.dim, 5);
    let LayerSpec::Attention(a) = &arch.layers[1] else {
        unreachable!()
    };
    assert_eq!(a.q1_bias.as_deref(), Some("blocks.2.attn.q1.bias"));
    let LayerSpec::Bilinear(b) = &arch.layers[2] else {
        unreachable!()
    };
    assert_eq!(b.left_right.as_deref(), Some("blocks.10.mlp.w.weight"));
    assert_eq!(b.down.as_deref(), Some("blocks.10.mlp.p.weight"));
    let LayerSpec::Linear(h) = &arch.layers[3] else {
        unreachable!()
    };
    assert_eq!(h.bias.as_deref(), Some("head.bias"));
    assert!(notes.iter().any(|n| n.contains("n_head")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("residual")), "{notes:?}");
}
