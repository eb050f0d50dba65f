//! Backdoor demo on tiny settings (seconds): the bundled data, the trigger's place, and a run
//! that inserts the backdoor and writes its matrices, figure and report.

use tensim_train::backdoor::{digits, run_demo, stamp, BackdoorConfig, TRIGGER};

#[test]
fn bundled_digits_load() {
    let (x, y) = digits().unwrap();
    assert_eq!((x.len(), y.len()), (1797, 1797));
    assert!(x.iter().flatten().all(|p| (0.0..=1.0).contains(p)));
    assert_eq!(y.iter().max(), Some(&9));
}

#[test]
fn the_trigger_is_a_white_plus_in_the_top_right_corner() {
    let blank = [0f32; 64];
    let s = stamp(&blank);
    let on: Vec<(usize, usize)> = (0..64)
        .filter(|&i| s[i] == 1.0)
        .map(|i| (i / 8, i % 8))
        .collect();
    assert_eq!(on, vec![(0, 6), (1, 5), (1, 6), (1, 7), (2, 6)]);
    assert_eq!(on.len(), TRIGGER.len());
    assert!(on.iter().all(|&(r, c)| r <= 2 && (5..=7).contains(&c)));
}

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
    for f in [
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
