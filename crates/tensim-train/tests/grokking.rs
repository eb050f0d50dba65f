//! Tiny grokking runs (seconds): training reduces the loss, is deterministic under a seed, and
//! the demo writes checkpoints that reload bit-exactly, matrices, figures and a report.

use tensim_train::grokking::{run_demo, train, GrokkingConfig};
use tensim_train::schedule;

fn tiny() -> GrokkingConfig {
    GrokkingConfig {
        p: 7,
        hidden: 8,
        train_fraction: 0.6,
        steps: 300,
        batch: 8,
        lr: 1e-2,
        weight_decay: 0.1,
        seed: 3,
        checkpoints: 8,
        exponent: 2.0,
    }
}

#[test]
fn training_reduces_loss_and_is_deterministic() {
    let cfg = tiny();
    let steps = schedule::power(cfg.steps, cfg.checkpoints, cfg.exponent);
    let run = || train(&cfg, &steps, |_, _| Ok(()), |_, _| {}).unwrap();
    let (h1, h2) = (run(), run());
    assert_eq!(h1.len(), steps.len());
    let (first, last) = (&h1[0], h1.last().unwrap());
    assert!(
        last.train_loss < 0.5 * first.train_loss,
        "{} → {}",
        first.train_loss,
        last.train_loss
    );
    assert!(last.train_accuracy > first.train_accuracy);
    for (a, b) in h1.iter().zip(&h2) {
        assert_eq!(
            (a.step, a.train_loss, a.val_loss),
            (b.step, b.train_loss, b.val_loss)
        );
    }
}

#[test]
fn demo_writes_reloadable_checkpoints_matrices_figures_and_report() {
    let out = std::env::temp_dir().join(format!("tensim-grok-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut last_step = 0;
    let s = run_demo(&tiny(), 2, &out, |step, _| last_step = step).unwrap();
    assert_eq!(last_step, 300);
    for f in [
        "history.json",
        "history.csv",
        "tensor.npy",
        "matrix.npy",
        "behavioral.npy",
        "figure.png",
        "figure.svg",
        "report.md",
    ] {
        assert!(std::fs::metadata(out.join(f)).unwrap().len() > 100, "{f}");
    }
    let n = s.history.len();
    let (shape, sim) = tensim::io::read_npy(&out.join("tensor.npy")).unwrap();
    assert_eq!(shape, [n, n]);
    assert!((sim[n * n - 1] - 1.0).abs() < 1e-12);
    // Consolidation: means over the last third (distinct pairs) and first × last thirds.
    let k = n / 3;
    let (mut within, mut count) = (0.0, 0.0);
    for i in n - k..n {
        for j in (n - k..n).filter(|&j| j != i) {
            (within, count) = (within + sim[i * n + j], count + 1.0);
        }
    }
    let across: f64 = (0..k)
        .flat_map(|i| (n - k..n).map(move |j| (i, j)))
        .map(|(i, j)| sim[i * n + j])
        .sum::<f64>()
        / (k * k) as f64;
    assert!(k >= 2 && (s.last_third - within / count).abs() < 1e-12);
    assert!((s.first_vs_last_third - across).abs() < 1e-12);
    // The last checkpoint reloads bit-exactly and matches the saved tensor similarity.
    let last = out.join(format!("checkpoints/step_{:06}.safetensors", 300));
    let m = tensim::io::load(&last, None).unwrap();
    tensim::io::save(&m, &out.join("again.safetensors")).unwrap();
    assert_eq!(
        tensim::io::load(&out.join("again.safetensors"), None).unwrap(),
        m
    );
    let first = tensim::io::load(&out.join("checkpoints/step_000000.safetensors"), None).unwrap();
    let r = tensim::metrics::tensor::similarity(&first, &m, &Default::default()).unwrap();
    assert!((r.similarity - sim[n - 1]).abs() < 1e-12);
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("| milestone |"));
}

#[test]
fn impossible_configurations_are_refused_before_training() {
    type Change = fn(&mut GrokkingConfig);
    let cases: [(Change, &str); 5] = [
        (|c| c.p = 1, "P ≥ 2"),
        (|c| c.hidden = 0, "one hidden unit"),
        (|c| c.train_fraction = 1.0, "one pair for validation"),
        (|c| c.batch = 100, "at least one batch"),
        (|c| c.p = 1 << 20, "would need about"),
    ];
    for (change, message) in cases {
        let mut cfg = tiny();
        change(&mut cfg);
        let steps = schedule::power(cfg.steps, cfg.checkpoints, cfg.exponent);
        let e = train(&cfg, &steps, |_, _| Ok(()), |_, _| {}).expect_err("refused");
        assert!(e.to_string().contains(message), "{message}: {e}");
        // The demo refuses before it writes anything.
        let out = std::env::temp_dir().join(format!("tensim-grok-bad-{}", std::process::id()));
        let e = run_demo(&cfg, 2, &out, |_, _| {}).expect_err("refused");
        assert!(e.to_string().contains(message) && !out.exists(), "{e}");
    }
}
