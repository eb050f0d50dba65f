//! Backdoor demo on tiny settings (seconds): a run that inserts the backdoor and writes its
//! matrices, figure and report. (The data and the trigger's place: `tests/data.rs`.)

use tensim_train::backdoor::{run_demo, BackdoorConfig};

#[test]
fn a_short_run_inserts_the_backdoor() {
    let out = std::env::temp_dir().join(format!("tensim-backdoor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let cfg = BackdoorConfig {
        clean_steps: 600,
        poison_steps: 400,
        poison_fraction: 0.3,
        lr: 3e-3,
        checkpoint_every: 200,
        ..Default::default()
    };
    let s = run_demo(&cfg, &out, |_, _| {}).unwrap();
    let (b, last) = (&s.history[s.boundary], s.history.last().unwrap());
    assert_eq!(b.step, 600);
    assert!(b.test_accuracy > 0.8, "clean training: {}", b.test_accuracy);
    assert!(
        last.attack_success > b.attack_success + 0.3,
        "{} → {}",
        b.attack_success,
        last.attack_success
    );
    // The pair under the clean images' own N(μ, Σ), beside N(0, I) (the tensor panel's value).
    let tensor = s
        .across_boundary
        .iter()
        .find(|(n, _)| n == "tensor")
        .unwrap()
        .1;
    let rows = &s.input_statistics;
    assert_eq!(
        (rows[0].0.as_str(), rows[1].0.as_str()),
        ("tensor", "gaussian")
    );
    assert!((rows[0].1 - tensor).abs() < 1e-12, "{rows:?} vs {tensor}");
    assert!(rows
        .iter()
        .all(|(_, iso, data)| data.abs() <= 1.0 && (iso - data).abs() > 1e-6));
    // The breakdown of the same pair: units kept in place by fine-tuning, and the units that
    // carry the target class's change lean on the trigger more than the average unit does.
    let c = &s.carriers;
    eprintln!("{c:?}");
    assert!(c.kept * 2 > c.units, "{c:?}");
    assert_eq!(c.top.len(), 5);
    let top_on_trigger = c.top.iter().map(|u| u.on_pixels).sum::<f64>() / 5.0;
    assert!(top_on_trigger > c.mean_on_pixels, "{c:?}");
    for f in [
        "breakdown.npy",
        "breakdown.png",
        "tensor.npy",
        "tensor_class9.npy",
        "tensor_per_class.npy",
        "matrix.npy",
        "behavioral_clean.npy",
        "behavioral_stamped.npy",
        "figure.png",
        "figure.svg",
        "report.md",
        "history.json",
    ] {
        assert!(std::fs::metadata(out.join(f)).unwrap().len() > 100, "{f}");
    }
}

#[test]
fn too_few_images_for_every_class_are_refused() {
    let out = std::env::temp_dir().join(format!("tensim-backdoor-few-{}", std::process::id()));
    let cfg = BackdoorConfig {
        max_images: Some(12),
        ..Default::default()
    };
    let e = run_demo(&cfg, &out, |_, _| {}).expect_err("refused");
    assert!(e.to_string().contains("without class"), "{e}");
    assert!(!out.join("checkpoints").exists());
    let cfg = tensim_train::forgetting::ForgettingConfig {
        max_images: Some(12),
        ..Default::default()
    };
    let e = tensim_train::forgetting::run_demo(&cfg, &out, |_| {}).expect_err("refused");
    assert!(e.to_string().contains("without class"), "{e}");
}
