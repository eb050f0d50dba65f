//! All-pairs matrices equal the single-pair metrics (to 1e-12), resume from stored tiles, and
//! recompute only the tiles of a changed checkpoint.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use tensim::linalg::Par;
use tensim::metrics::{self, Inputs, Metric, Options, Symmetrize};
use tensim::trajectory::checkpoints::Checkpoint;
use tensim::trajectory::checkpoints::{expand, natural_sort, step_of};
use tensim::trajectory::tiles::TileStore;
use tensim::trajectory::{similarity_matrix, MatrixOptions};
use tensim::Model;

/// The models as checkpoints `m0, m1, …` keyed by `hashes`.
fn cks(models: &[Model], hashes: &[String]) -> Vec<Checkpoint> {
    models
        .iter()
        .zip(hashes)
        .enumerate()
        .map(|(i, (m, h))| Checkpoint::new(m.clone(), format!("m{i}"), h))
        .collect()
}

fn hashes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("hash{i}")).collect()
}

fn check_against_pairs(models: &[Model], metric: &Metric, inputs: Option<&Inputs>, tile: usize) {
    let hs = hashes(models.len());
    let opts = MatrixOptions {
        tile,
        store: None,
        inputs,
        per_output: false,
        flops: None,
    };
    let sim = similarity_matrix(&cks(models, &hs), metric, &opts, &|_, _| {})
        .unwrap()
        .similarity;
    let pair_opts = Options {
        per_output: false,
        per_tensor: false,
        par: Par::Seq,
    };
    for i in 0..models.len() {
        for j in 0..models.len() {
            let want = metrics::compare(&models[i], &models[j], metric, inputs, &pair_opts)
                .unwrap()
                .similarity;
            assert!(
                (sim[(i, j)] - want).abs() < 1e-12,
                "{metric:?} ({i},{j}): {} vs {want}",
                sim[(i, j)]
            );
        }
    }
}

#[test]
fn stacked_tensor_matrix_equals_single_pairs() {
    // One bilinear layer: widths differ across checkpoints, with and without residual/bias.
    let mut models = vec![];
    for (k, (h, residual, bias)) in [
        (3, None, false),
        (4, lerp(0.5), true),
        (2, add(1.0), true),
        (5, None, true),
        (3, lerp(0.2), false),
    ]
    .into_iter()
    .enumerate()
    {
        models.push(random_model(
            Spec {
                d_in: 4,
                d: 3,
                h,
                d_out: 2,
                depth: 1,
                residual,
                bias,
                embed: k % 2 == 0,
            },
            k as u64,
        ));
    }
    for tile in [1, 2, 0] {
        check_against_pairs(&models, &Metric::TENSOR, None, tile);
    }
}

#[test]
fn deeper_models_pair_by_pair() {
    let s = Spec {
        d_in: 3,
        d: 3,
        h: 3,
        d_out: 2,
        depth: 2,
        residual: lerp(0.5),
        bias: true,
        embed: true,
    };
    let same_depth: Vec<Model> = (0..4).map(|k| random_model(s, 10 + k)).collect();
    check_against_pairs(&same_depth, &Metric::TENSOR, None, 3);
    let mut mixed = same_depth.clone();
    mixed.push(random_model(Spec { depth: 1, ..s }, 20));
    check_against_pairs(&mixed, &Metric::TENSOR, None, 2);
}

#[test]
fn matrix_and_behavioral_matrices_equal_single_pairs() {
    let s = Spec {
        d_in: 3,
        d: 4,
        h: 3,
        d_out: 2,
        depth: 1,
        residual: None,
        bias: true,
        embed: true,
    };
    let models: Vec<Model> = (0..5).map(|k| random_model(s, 30 + k)).collect();
    check_against_pairs(&models, &Metric::Matrix, None, 2);
    let inputs = Inputs::gaussian(50, 1, 3, 0).unwrap();
    check_against_pairs(&models, &Metric::Behavioral, Some(&inputs), 2);
}

#[test]
fn resume_reuses_tiles_and_a_changed_checkpoint_recomputes_only_its_tiles() {
    let dir = std::env::temp_dir().join(format!("tensim-tiles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = Spec {
        d_in: 3,
        d: 3,
        h: 3,
        d_out: 2,
        depth: 1,
        residual: None,
        bias: false,
        embed: false,
    };
    let mut models: Vec<Model> = (0..6).map(|k| random_model(s, 40 + k)).collect();
    let mut hs = hashes(6);
    let store = TileStore::open(&dir, "tensor", &cks(&models, &hs)).unwrap();
    let opts = MatrixOptions {
        tile: 2,
        store: Some(&store),
        inputs: None,
        per_output: false,
        flops: None,
    };
    let tiles = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.starts_with("tile-") && name.ends_with(".npy")
            })
            .count()
    };

    let first = similarity_matrix(&cks(&models, &hs), &Metric::TENSOR, &opts, &|_, _| {})
        .unwrap()
        .similarity;
    assert_eq!(tiles(), 6); // 3 blocks: 6 tiles with I ≤ J
    let again = similarity_matrix(&cks(&models, &hs), &Metric::TENSOR, &opts, &|_, _| {})
        .unwrap()
        .similarity;
    assert_eq!(first, again);

    // Change checkpoint 5 (block 2): tiles (0,2), (1,2), (2,2) are recomputed, 3 new files.
    models[5] = random_model(s, 99);
    hs[5] = "changed".into();
    let computed = AtomicU64::new(0);
    let changed = similarity_matrix(&cks(&models, &hs), &Metric::TENSOR, &opts, &|d, _| {
        computed.fetch_add(d, Ordering::Relaxed);
    })
    .unwrap()
    .similarity;
    assert_eq!(tiles(), 9);
    assert_eq!(computed.load(Ordering::Relaxed), 6 * 4); // every tile reports; 3 were recomputed
    for i in 0..5 {
        for j in 0..5 {
            assert_eq!(changed[(i, j)], first[(i, j)]);
        }
    }
    assert!((changed[(5, 5)] - 1.0).abs() < 1e-12 && changed[(0, 5)] != first[(0, 5)]);
    // A corrupt tile is ignored and recomputed.
    let victim = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "npy") && p.to_string_lossy().contains("tile-")
        })
        .unwrap();
    std::fs::write(&victim, b"junk").unwrap();
    let healed = similarity_matrix(&cks(&models, &hs), &Metric::TENSOR, &opts, &|_, _| {})
        .unwrap()
        .similarity;
    assert_eq!(healed, changed);
    // So is a tile still readable as .npy whose values were altered: one flipped bit, a NaN.
    let tiles_now: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .collect();
    for (k, alter) in [
        |b: &mut Vec<u8>| *b.last_mut().unwrap() ^= 1,
        |b: &mut Vec<u8>| {
            let n = b.len();
            b[n - 8..].copy_from_slice(&f64::NAN.to_le_bytes())
        },
    ]
    .into_iter()
    .enumerate()
    {
        let victim = &tiles_now[k];
        let mut bytes = std::fs::read(victim).unwrap();
        alter(&mut bytes);
        std::fs::write(victim, &bytes).unwrap();
        assert!(tensim::io::read_npy(victim).is_ok(), "still a valid .npy");
        let again = similarity_matrix(&cks(&models, &hs), &Metric::TENSOR, &opts, &|_, _| {})
            .unwrap()
            .similarity;
        assert_eq!(again, changed);
        assert_ne!(
            std::fs::read(victim).unwrap(),
            bytes,
            "the altered tile is rewritten"
        );
    }
}

#[test]
fn incompatible_checkpoints_are_named() {
    let s = Spec {
        d_in: 3,
        d: 3,
        h: 3,
        d_out: 2,
        depth: 1,
        residual: None,
        bias: false,
        embed: true,
    };
    let models = vec![random_model(s, 1), random_model(Spec { d_out: 3, ..s }, 2)];
    let hs = hashes(2);
    let e = similarity_matrix(
        &cks(&models, &hs),
        &Metric::TENSOR,
        &MatrixOptions::default(),
        &|_, _| {},
    )
    .unwrap_err();
    // The first checkpoint is A, the odd one B, and the reason is stated once.
    assert!(
        matches!(
            e.root(),
            tensim::Error::Mismatch {
                what: "output sizes",
                a: 2,
                b: 3
            }
        ),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(e.starts_with("A = m0, B = m1: "), "{e}");
    assert!(e.contains("A has 2, B has 3"), "{e}");
    assert_eq!(e.matches("not comparable").count(), 1, "{e}");
    let models = vec![random_model(s, 1), random_model(Spec { h: 4, ..s }, 2)];
    let e = similarity_matrix(
        &cks(&models, &hs),
        &Metric::Matrix,
        &MatrixOptions::default(),
        &|_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("m1") && e.contains("identical architectures"),
        "{e}"
    );
    assert_eq!(e.matches("not comparable").count(), 1, "{e}");
}

#[test]
fn checkpoints_sort_by_step_number() {
    let mut p: Vec<PathBuf> = [
        "run/ckpt_1000.safetensors",
        "run/ckpt_20.safetensors",
        "run/final.safetensors",
        "run/ckpt_3.safetensors",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    natural_sort(&mut p);
    let order: Vec<String> = p
        .iter()
        .map(|x| x.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(order, ["ckpt_3", "ckpt_20", "ckpt_1000", "final"]);
    assert_eq!(
        step_of(&PathBuf::from("a/step-00120.safetensors")),
        Some(120)
    );
    assert_eq!(step_of(&PathBuf::from("model.safetensors")), None);
    let dir = std::env::temp_dir().join(format!("tensim-expand-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["b_2.safetensors", "a_10.safetensors", "notes.txt"] {
        std::fs::write(dir.join(name), b"").unwrap();
    }
    assert_eq!(expand(std::slice::from_ref(&dir)).unwrap().len(), 2);
    assert_eq!(expand(&[dir.join("*_1*.safetensors")]).unwrap().len(), 1);
    assert!(expand(&[dir.join("*.nothing")])
        .unwrap_err()
        .to_string()
        .contains("matches no file"));
}

#[test]
fn per_output_matrices_equal_single_pair_slices() {
    for depth in [1, 2] {
        let s = Spec {
            d_in: 3,
            d: 3,
            h: 3,
            d_out: 3,
            depth,
            residual: lerp(0.5),
            bias: true,
            embed: true,
        };
        let models: Vec<Model> = (0..4)
            .map(|k| {
                random_model(
                    Spec {
                        h: 2 + k as usize,
                        ..s
                    },
                    50 + k,
                )
            })
            .collect();
        let hs = hashes(4);
        let opts = MatrixOptions {
            tile: 3,
            per_output: true,
            ..Default::default()
        };
        let r = similarity_matrix(&cks(&models, &hs), &Metric::TENSOR, &opts, &|_, _| {}).unwrap();
        let per = r.per_output.unwrap();
        assert_eq!(per.len(), 3);
        let pair_opts = Options {
            per_output: true,
            per_tensor: false,
            par: Par::Seq,
        };
        for i in 0..4 {
            for j in 0..4 {
                let want =
                    metrics::compare(&models[i], &models[j], &Metric::TENSOR, None, &pair_opts)
                        .unwrap();
                assert!((r.similarity[(i, j)] - want.similarity).abs() < 1e-12);
                for (o, w) in want.per_output.unwrap().into_iter().enumerate() {
                    assert!(
                        (per[o][(i, j)] - w.unwrap()).abs() < 1e-12,
                        "depth {depth} ({i},{j}) output {o}"
                    );
                }
            }
        }
    }
    // Matrix and behavioural per-output matrices equal the single-pair slices too.
    let s = Spec {
        d_in: 3,
        d: 3,
        h: 3,
        d_out: 2,
        depth: 1,
        residual: None,
        bias: true,
        embed: true,
    };
    let models: Vec<Model> = (0..3).map(|k| random_model(s, k)).collect();
    let hs = hashes(3);
    let inputs = Inputs::gaussian(40, 1, 3, 1).unwrap();
    for metric in [&Metric::Matrix, &Metric::Behavioral] {
        let opts = MatrixOptions {
            per_output: true,
            inputs: Some(&inputs),
            tile: 2,
            ..Default::default()
        };
        let per = similarity_matrix(&cks(&models, &hs), metric, &opts, &|_, _| {})
            .unwrap()
            .per_output
            .unwrap();
        let pair_opts = Options {
            per_output: true,
            per_tensor: false,
            par: Par::Seq,
        };
        for i in 0..3 {
            for j in 0..3 {
                let want =
                    metrics::compare(&models[i], &models[j], metric, Some(&inputs), &pair_opts)
                        .unwrap();
                for (o, w) in want.per_output.unwrap().into_iter().enumerate() {
                    assert!(
                        (per[o][(i, j)] - w.unwrap()).abs() < 1e-12,
                        "{metric:?} ({i},{j}) output {o}"
                    );
                }
            }
        }
    }
}

#[test]
fn fully_symmetrised_matrix_equals_single_pairs() {
    use tensim::metrics::fullsym::{self, FullOptions};
    let s = Spec {
        d_in: 2,
        d: 2,
        h: 2,
        d_out: 2,
        depth: 2,
        residual: lerp(0.5),
        bias: true,
        embed: true,
    };
    let mut models: Vec<Model> = (0..3).map(|k| random_model(s, 60 + k)).collect();
    models.push(random_model(Spec { depth: 1, ..s }, 70));
    let hs = hashes(4);
    let fo = FullOptions::default();
    let opts = MatrixOptions {
        tile: 2,
        ..Default::default()
    };
    let full = Metric::Tensor(Symmetrize::Full(fo.clone()));
    let sim = similarity_matrix(&cks(&models, &hs), &full, &opts, &|_, _| {})
        .unwrap()
        .similarity;
    let o = Options {
        per_output: false,
        per_tensor: false,
        par: Par::Seq,
    };
    for i in 0..4 {
        for j in 0..4 {
            let want = fullsym::similarity(&models[i], &models[j], &o, &fo)
                .unwrap()
                .similarity;
            assert!((sim[(i, j)] - want).abs() < 1e-12);
        }
    }
}

#[test]
fn a_block_equals_the_same_entries_of_the_matrix() {
    // One tile as a cluster worker computes it, for the stacked (depth 1) and per-pair (depth 2)
    // plans and the weight and behavioural metrics.
    for depth in [1, 2] {
        let s = Spec {
            d_in: 3,
            d: 3,
            h: 3,
            d_out: 2,
            depth,
            residual: None,
            bias: true,
            embed: false,
        };
        let models: Vec<Model> = (0..5).map(|k| random_model(s, 70 + k)).collect();
        let hs = hashes(5);
        let inputs = Inputs::gaussian(40, 1, 3, 1).unwrap();
        for metric in [&Metric::TENSOR, &Metric::Matrix, &Metric::Behavioral] {
            let opts = MatrixOptions {
                tile: 2,
                inputs: Some(&inputs),
                ..Default::default()
            };
            let all = similarity_matrix(&cks(&models, &hs), metric, &opts, &|_, _| {})
                .unwrap()
                .similarity;
            let b =
                tensim::trajectory::block(&cks(&models, &hs), metric, Some(&inputs), 1..3, 2..5)
                    .unwrap();
            for i in 0..2 {
                for j in 0..3 {
                    assert!(
                        (b[(i, j)] - all[(1 + i, 2 + j)]).abs() < 1e-12,
                        "{metric:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn stored_behavioral_tiles_are_keyed_by_their_inputs() {
    let dir = std::env::temp_dir().join(format!("tensim-tiles-inputs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = Spec {
        d_in: 3,
        d: 3,
        h: 3,
        d_out: 2,
        depth: 1,
        residual: None,
        bias: false,
        embed: false,
    };
    let models: Vec<Model> = (0..3).map(|k| random_model(s, 80 + k)).collect();
    let hs = hashes(3);
    let store = TileStore::open(&dir, "behavioral", &cks(&models, &hs)).unwrap();
    let run = |seed: u64| {
        let inputs = Inputs::gaussian(5, 1, 3, seed).unwrap();
        let opts = MatrixOptions {
            store: Some(&store),
            inputs: Some(&inputs),
            ..Default::default()
        };
        similarity_matrix(&cks(&models, &hs), &Metric::Behavioral, &opts, &|_, _| {})
            .unwrap()
            .similarity
    };
    let (a, b) = (run(0), run(1));
    assert_ne!(a, b, "other inputs must not reuse the stored tile");
    assert_eq!(run(0), a);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint of zero norm (a zero-initialised step 0) does not abort the matrix: its row and
/// column are NaN and every other entry equals the pair's value, for every metric and plan.
#[test]
fn a_checkpoint_of_zero_norm_gets_nan_and_the_rest_is_computed() {
    let s = Spec {
        d_in: 3,
        d: 3,
        h: 3,
        d_out: 2,
        depth: 1,
        residual: None,
        bias: false,
        embed: false,
    };
    let inputs = Inputs::gaussian(20, 1, 3, 1).unwrap();
    for depth in [1, 2] {
        let s = Spec { depth, ..s };
        let mut models: Vec<Model> = (0..4).map(|k| random_model(s, 90 + k)).collect();
        models[1] = map_parameters(&models[1], |_| 0.0);
        let hs = hashes(4);
        for metric in [
            Metric::TENSOR,
            Metric::Matrix,
            Metric::Behavioral,
            Metric::Gaussian(Default::default()),
        ] {
            let opts = MatrixOptions {
                inputs: Some(&inputs),
                ..Default::default()
            };
            let sim = similarity_matrix(&cks(&models, &hs), &metric, &opts, &|_, _| {})
                .unwrap()
                .similarity;
            let pair_opts = Options {
                per_output: false,
                per_tensor: false,
                par: Par::Seq,
            };
            for i in 0..4 {
                for j in 0..4 {
                    if i == 1 || j == 1 {
                        assert!(sim[(i, j)].is_nan(), "{metric:?} depth {depth} ({i},{j})");
                        continue;
                    }
                    let want = metrics::compare(
                        &models[i],
                        &models[j],
                        &metric,
                        Some(&inputs),
                        &pair_opts,
                    )
                    .unwrap()
                    .similarity;
                    assert!((sim[(i, j)] - want).abs() < 1e-12, "{metric:?} ({i},{j})");
                    // A model with itself: exactly 1, computed pair by pair or not.
                    assert!(i != j || sim[(i, j)] == 1.0, "{metric:?} ({i},{i})");
                }
            }
        }
    }
}

/// Metrics computed pair by pair store their work in small tiles by default (a pair can take
/// seconds, and only finished tiles survive an interruption): 9 checkpoints of depth 2 are 6
/// tiles of at most 4 × 4, not one.
#[test]
fn pair_by_pair_matrices_are_stored_in_small_tiles() {
    let dir = std::env::temp_dir().join(format!("tensim-small-tiles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = Spec {
        d_in: 3,
        d: 3,
        h: 3,
        d_out: 2,
        depth: 2,
        residual: None,
        bias: false,
        embed: false,
    };
    let models: Vec<Model> = (0..9).map(|k| random_model(s, 120 + k)).collect();
    let checkpoints = cks(&models, &hashes(9));
    let store = TileStore::open(&dir, "tensor", &checkpoints).unwrap();
    let opts = MatrixOptions {
        store: Some(&store),
        ..Default::default()
    };
    similarity_matrix(&checkpoints, &Metric::TENSOR, &opts, &|_, _| {}).unwrap();
    let tiles = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "npy")
        })
        .count();
    assert_eq!(tiles, 6);
}
