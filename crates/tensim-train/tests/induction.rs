//! Tiny induction runs (seconds): training lowers the loss and is deterministic; the saved
//! model (normalisation folded into the unembedding) computes the training-time evaluation
//! forward pass; the demo writes checkpoints that reload bit-exactly, matrices, figures and a
//! report.

use candle_core::{DType, Device, Tensor};
use tensim::linalg::{Mat, Par};
use tensim_train::induction::data::Sequences;
use tensim_train::induction::model::{Lm, LmShape};
use tensim_train::induction::{run_demo, train, InductionConfig};
use tensim_train::schedule;

fn tiny() -> InductionConfig {
    InductionConfig {
        shape: LmShape {
            vocab: 12,
            d_model: 16,
            heads: 2,
            layers: 2,
            residual: 0.35,
            rotary_base: 10_000.0,
        },
        n_ctx: 8,
        segment: 3,
        steps: 200,
        batch: 16,
        lr: 1e-2,
        warmup: 10,
        checkpoints: 6,
        val_rows: 32,
        seed: 5,
        ..Default::default()
    }
}

#[test]
fn training_lowers_the_loss_and_is_deterministic() {
    let cfg = tiny();
    let steps = schedule::log(cfg.steps, cfg.checkpoints);
    let run = || train(&cfg, &steps, |_, _| Ok(()), |_, _| {}).unwrap();
    let (h1, h2) = (run(), run());
    assert_eq!(h1.len(), steps.len());
    let (first, last) = (&h1[0], h1.last().unwrap());
    assert!(
        last.val_loss < first.val_loss - 0.1,
        "{} → {}",
        first.val_loss,
        last.val_loss
    );
    for (a, b) in h1.iter().zip(&h2) {
        assert_eq!(
            (a.step, a.train_loss, a.val_loss, a.induction_accuracy),
            (b.step, b.train_loss, b.val_loss, b.induction_accuracy)
        );
    }
}

#[test]
fn the_saved_model_computes_the_evaluation_forward_pass() {
    let cfg = tiny();
    let steps = [cfg.steps];
    let mut saved = None;
    train(
        &cfg,
        &steps,
        |lm, _| {
            // Both in f64: the saved model must equal candle's evaluation pass, whose
            // normalisation is the running RMS scale.
            let lm = lm.to_dtype(DType::F64)?;
            assert!(lm.rms > 0.0 && (lm.rms - 1.0).abs() > 1e-3, "{}", lm.rms);
            let seq = Sequences::new(cfg.shape.vocab, cfg.n_ctx, cfg.segment, cfg.markov, 9);
            let b = seq.batch(
                4,
                &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1),
            );
            let x = Tensor::from_slice(&b.tokens, (b.rows, cfg.n_ctx), &Device::Cpu)?;
            let want: Vec<Vec<f64>> = lm.forward_eval(&x)?.to_vec2()?;
            saved = Some((lm.to_model(cfg.n_ctx)?, b.tokens.clone(), want));
            Ok(())
        },
        |_, _| {},
    )
    .unwrap();
    let (model, tokens, want) = saved.unwrap();
    let v = cfg.shape.vocab;
    let x = Mat::from_fn(tokens.len(), v, |i, j| {
        (tokens[i] as usize == j) as u8 as f64
    });
    let got = model.forward(x.as_ref(), Par::Seq);
    let scale = want.iter().flatten().fold(0f64, |m, x| m.max(x.abs()));
    for (i, row) in want.iter().enumerate() {
        for (j, w) in row.iter().enumerate() {
            assert!(
                (got[(i, j)] - w).abs() <= 1e-6 * scale,
                "logit ({i}, {j}): tensim {} vs candle {w}",
                got[(i, j)]
            );
        }
    }
    assert!(scale > 0.0);
}

#[test]
fn the_f32_evaluation_pass_agrees_with_the_saved_model() {
    let cfg = tiny();
    let lm = Lm::init(&cfg.shape, 1, &Device::Cpu).unwrap();
    assert_eq!(lm.rms, 0.0, "no batch seen yet");
    let mut lm = lm;
    let x = Tensor::from_slice(&[0u32, 3, 5, 7, 1, 2, 3, 4], (1, 8), &Device::Cpu).unwrap();
    lm.forward_train(&x).unwrap();
    let want: Vec<Vec<f32>> = lm.forward_eval(&x).unwrap().to_vec2().unwrap();
    let model = lm.to_model(8).unwrap();
    let one_hot = Mat::from_fn(8, 12, |i, j| {
        ([0, 3, 5, 7, 1, 2, 3, 4][i] == j) as u8 as f64
    });
    let got = model.forward(one_hot.as_ref(), Par::Seq);
    for (i, row) in want.iter().enumerate() {
        for (j, &w) in row.iter().enumerate() {
            assert!((got[(i, j)] - w as f64).abs() < 1e-4 * (1.0 + w.abs() as f64));
        }
    }
}

#[test]
fn demo_writes_reloadable_checkpoints_matrices_figures_and_report() {
    let out = std::env::temp_dir().join(format!("tensim-induction-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let cfg = tiny();
    let mut last_step = 0;
    let s = run_demo(&cfg, 2, &out, |step, _| last_step = step).unwrap();
    assert_eq!(last_step, cfg.steps);
    for f in [
        "history.json",
        "history.csv",
        "gaussian.npy",
        "gaussian_tokens.npy",
        "tensor.npy",
        "matrix.npy",
        "behavioral.npy",
        "figure.png",
        "figure.svg",
        "report.md",
    ] {
        assert!(std::fs::metadata(out.join(f)).unwrap().len() > 100, "{f}");
    }
    let history: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("history.json")).unwrap()).unwrap();
    for key in [
        "step",
        "train_loss",
        "val_loss",
        "induction_accuracy",
        "in_context_score",
    ] {
        assert!(history["history"][0].get(key).is_some(), "{key}");
    }
    let n = s.history.len();
    let (shape, sim) = tensim::io::read_npy(&out.join("gaussian.npy")).unwrap();
    assert_eq!(shape, [n, n]);
    // The saved checkpoints reload bit-exactly, are read at the analysis context, and give the
    // stored gaussian similarity.
    let path = |step: usize| out.join(format!("checkpoints/step_{step:06}.safetensors"));
    let last = tensim::io::load(&path(cfg.steps), None).unwrap();
    assert_eq!(last.input().n_ctx, cfg.analysis_ctx);
    tensim::io::save(&last, &out.join("again.safetensors")).unwrap();
    assert_eq!(
        tensim::io::load(&out.join("again.safetensors"), None).unwrap(),
        last
    );
    let first = tensim::io::load(&path(0), None).unwrap();
    let metric = tensim::metrics::Metric::new(tensim::metrics::Kind::Gaussian);
    let r = tensim::metrics::compare(&first, &last, &metric, None, &Default::default()).unwrap();
    assert!(
        (r.similarity - sim[n - 1]).abs() < 1e-10,
        "{} vs {}",
        r.similarity,
        sim[n - 1]
    );
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("| milestone |"));
    std::fs::remove_dir_all(&out).unwrap();
}
