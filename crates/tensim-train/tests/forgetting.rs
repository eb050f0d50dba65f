//! Forgetting demo on a short schedule (seconds): stage 2 erases stage 1's accuracy, and the
//! outputs are written.

use tensim_train::forgetting::{run_demo, ForgettingConfig};

#[test]
fn second_stage_overwrites_the_first() {
    let out = std::env::temp_dir().join(format!("tensim-forgetting-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let cfg = ForgettingConfig {
        steps_per_stage: 300,
        lr: 3e-3,
        ..Default::default()
    };
    let s = run_demo(&cfg, &out, |_| {}).unwrap();
    let (b, last) = (&s.history[s.boundary], s.history.last().unwrap());
    assert_eq!((b.step, last.step), (300, 600));
    assert!(
        b.old_accuracy > 0.9 && last.old_accuracy < 0.5,
        "{} → {}",
        b.old_accuracy,
        last.old_accuracy
    );
    assert!(last.new_accuracy > 0.8 && b.new_accuracy < 0.1);
    assert_eq!(s.per_class_across.len(), 10);
    for f in [
        "tensor.npy",
        "matrix.npy",
        "behavioral_old.npy",
        "figure.png",
        "report.md",
    ] {
        assert!(std::fs::metadata(out.join(f)).unwrap().len() > 100, "{f}");
    }
}
