//! Backdoor insertion (MATH.md §7.2): an image classifier (bilinear layer → linear head) trained
//! on clean data, then fine-tuned while a fraction of each batch is stamped with a small trigger
//! and relabelled to a target class. The per-class tensor similarity of the target class shows
//! the inserted mechanism; clean-data behaviour barely moves.
//!
//! Data (`data.rs`): the bundled 8×8 digits by default (trigger: a white 3×3 plus in the
//! top-right corner), or MNIST-style IDX files / an SVHN `.mat` file the user downloaded
//! (trigger: the 19-pixel diamond of MATH.md §7.2 at margin 2 from the top-right corner).

use candle_core::{Device, Tensor};
use candle_nn::Optimizer;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use tensim::distribution::InputDistribution;
use tensim::linalg::Mat;
use tensim::metrics::{compare_calibrated, Inputs, Metric, Options};
use tensim::trajectory::checkpoints::in_memory;
use tensim::trajectory::{similarity_matrix, MatrixOptions};
use tensim::Model;

use crate::carriers::{carriers, Carriers};
use crate::data::{Images, Source};
use crate::model::{evaluate, Params};
use crate::TrainError;

/// Configuration of a backdoor run.
#[derive(Clone, Debug, Serialize)]
pub struct BackdoorConfig {
    /// The images (default: the bundled digits).
    pub data: Source,
    /// Use at most this many images (a random subset), e.g. to shorten runs on MNIST.
    pub max_images: Option<usize>,
    pub hidden: usize,
    pub clean_steps: usize,
    pub poison_steps: usize,
    pub poison_fraction: f64,
    pub target: u32,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub noise: f64,
    pub checkpoint_every: usize,
    pub test_fraction: f64,
    pub seed: u64,
}

impl Default for BackdoorConfig {
    fn default() -> BackdoorConfig {
        BackdoorConfig {
            data: Source::Digits,
            max_images: None,
            hidden: 64,
            clean_steps: 4000,
            poison_steps: 1000,
            poison_fraction: 0.1,
            target: 9,
            batch: 64,
            lr: 1e-3,
            weight_decay: 1e-3,
            noise: 0.05,
            checkpoint_every: 125,
            test_fraction: 0.25,
            seed: 1337,
        }
    }
}

/// Metrics of one checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub step: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    /// Non-target test images, stamped: fraction classified as the target.
    pub attack_success: f64,
}

/// Images (rows of equal length) as a `rows × pixels` tensor.
pub(crate) fn tensor(rows: &[Vec<f32>], dev: &Device) -> Result<Tensor, TrainError> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let width = rows.first().map_or(0, Vec::len);
    Ok(Tensor::from_vec(flat, (rows.len(), width), dev)?)
}

/// The images of `cfg`, shuffled with `seed` (and cut to `max_images`), split into
/// `(test, train)` index sets by `test_fraction`.
pub(crate) fn load_split(
    data: &Source,
    max_images: Option<usize>,
    test_fraction: f64,
    seed: u64,
) -> Result<(Images, Vec<usize>, Vec<usize>), TrainError> {
    let images = data.load()?;
    let mut order: Vec<usize> = (0..images.labels.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    order.truncate(max_images.unwrap_or(usize::MAX));
    let n_test = (order.len() as f64 * test_fraction) as usize;
    let train = order.split_off(n_test);
    // Both splits need every class (the demos train and score per class).
    for (name, split) in [("test", &order), ("training", &train)] {
        let missing: Vec<u32> = (0..10)
            .filter(|c| !split.iter().any(|&i| images.labels[i] == *c))
            .collect();
        if !missing.is_empty() {
            return Err(tensim::Error::Invalid(format!(
                "{} images leave the {name} split ({} images) without class {missing:?}; use more \
                 images (--max-images)",
                order.len() + train.len(),
                split.len()
            ))
            .into());
        }
    }
    Ok((images, order, train))
}

/// What `run_demo` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub config: BackdoorConfig,
    /// The images used and their number of pixels.
    pub data: String,
    pub pixels: usize,
    pub history: Vec<Record>,
    /// Index of the last clean checkpoint.
    pub boundary: usize,
    /// Similarity of the last clean checkpoint to the final one, per metric.
    pub across_boundary: Vec<(String, f64)>,
    /// The same pair under `N(0, I)` and under the clean images' `N(μ, Σ)`, per metric.
    pub input_statistics: Vec<(String, f64, f64)>,
    /// The same pair's breakdown over hidden units: the matching, and the units carrying the
    /// target class's change (with their weight on the trigger's pixels).
    pub carriers: Carriers,
    pub seconds: f64,
}

/// Train clean, then poisoned; write `checkpoints/`, `history.json`, one `.npy` per matrix,
/// `figure.png`/`.svg` and `report.md` into `out`.
pub fn run_demo(
    cfg: &BackdoorConfig,
    out: &std::path::Path,
    mut progress: impl FnMut(usize, Option<&Record>),
) -> Result<Summary, TrainError> {
    if cfg.target > 9 || !(0.0..=1.0).contains(&cfg.poison_fraction) {
        return Err(tensim::Error::Invalid(format!(
            "target {} and poison fraction {}: need a digit class 0–9 and a fraction in [0, 1]",
            cfg.target, cfg.poison_fraction
        ))
        .into());
    }
    let started = std::time::Instant::now();
    let dev = Device::Cpu;
    let (data, test_idx, train_idx) =
        load_split(&cfg.data, cfg.max_images, cfg.test_fraction, cfg.seed)?;
    let pick = |idx: &[usize]| {
        (
            idx.iter()
                .map(|&i| data.pixels[i].clone())
                .collect::<Vec<_>>(),
            idx.iter().map(|&i| data.labels[i]).collect::<Vec<_>>(),
        )
    };
    let ((train_x, train_y), (test_x, test_y)) = (pick(&train_idx), pick(&test_idx));
    let attack: Vec<Vec<f32>> = test_x
        .iter()
        .zip(&test_y)
        .filter(|(_, &y)| y != cfg.target)
        .map(|(x, _)| data.stamp(x))
        .collect();
    let (txt, tyt) = (
        tensor(&train_x, &dev)?,
        Tensor::from_slice(&train_y, train_y.len(), &dev)?,
    );
    let (tex, tey) = (
        tensor(&test_x, &dev)?,
        Tensor::from_slice(&test_y, test_y.len(), &dev)?,
    );
    let (atx, aty) = (
        tensor(&attack, &dev)?,
        Tensor::from_vec(vec![cfg.target; attack.len()], attack.len(), &dev)?,
    );

    let params = Params::init(data.dim(), cfg.hidden, 10, cfg.seed ^ 0x5eed, &dev)?;
    let mut opt = params.adamw(cfg.lr, cfg.weight_decay)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(7));
    let ck_dir = crate::output::checkpoint_dir(out)?;
    let total = cfg.clean_steps + cfg.poison_steps;
    let per_epoch = (train_x.len() / cfg.batch).max(1);
    let mut perm: Vec<u32> = (0..train_x.len() as u32).collect();
    let (mut history, mut models) = (Vec::new(), Vec::new());
    for step in 0..=total {
        if step % cfg.checkpoint_every == 0 || step == cfg.clean_steps || step == total {
            let (train_loss, train_accuracy) = evaluate(&params, &txt, &tyt)?;
            let (test_loss, test_accuracy) = evaluate(&params, &tex, &tey)?;
            let (_, attack_success) = evaluate(&params, &atx, &aty)?;
            let r = Record {
                step,
                train_loss,
                train_accuracy,
                test_loss,
                test_accuracy,
                attack_success,
            };
            let m = params.to_model()?;
            tensim::io::save(&m, &ck_dir.join(format!("step_{step:06}.safetensors")))?;
            models.push(m);
            history.push(r);
        }
        if step == total {
            break;
        }
        let k = step % per_epoch;
        if k == 0 {
            perm.shuffle(&mut rng);
        }
        let idx = &perm[k * cfg.batch..(k + 1) * cfg.batch];
        // Batch: pixel noise on every image; after the clean phase, each sample stamped and
        // relabelled with probability `poison_fraction`.
        let poison = step >= cfg.clean_steps;
        let mut bx = Vec::with_capacity(idx.len());
        let mut by = Vec::with_capacity(idx.len());
        for &i in idx {
            let (mut img, mut y) = (train_x[i as usize].clone(), train_y[i as usize]);
            if poison && rng.random_bool(cfg.poison_fraction) {
                img = data.stamp(&img);
                y = cfg.target;
            }
            img.iter_mut()
                .for_each(|p| *p += (cfg.noise * tensim::demo::gauss(&mut rng)) as f32);
            bx.push(img);
            by.push(y);
        }
        let (x, y) = (tensor(&bx, &dev)?, Tensor::from_slice(&by, by.len(), &dev)?);
        let loss = candle_nn::loss::cross_entropy(&params.forward(&x)?, &y)?;
        opt.backward_step(&loss)?;
        progress(step + 1, history.last());
    }
    analyse(cfg, &data, out, history, &models, &test_x, started)
}

fn analyse(
    cfg: &BackdoorConfig,
    data: &Images,
    out: &std::path::Path,
    history: Vec<Record>,
    models: &[Model],
    test_x: &[Vec<f32>],
    started: std::time::Instant,
) -> Result<Summary, TrainError> {
    let n = models.len();
    let boundary = history
        .iter()
        .position(|r| r.step == cfg.clean_steps)
        .unwrap_or(0);
    let names: Vec<String> = history.iter().map(|r| format!("step {}", r.step)).collect();
    let clean = image_inputs(test_x, "clean test images");
    let stamped = image_inputs(
        &test_x.iter().map(|x| data.stamp(x)).collect::<Vec<_>>(),
        "stamped test images",
    );
    let t = cfg.target as usize;
    let other = (t + 7) % 10;
    let (panels, per_class) = digit_panels(
        models,
        &names,
        [(t, " (target)"), (other, "")],
        [
            (&clean, "clean", "clean data"),
            (&stamped, "stamped", "stamped data"),
        ],
    )?;
    let steps: Vec<usize> = history.iter().map(|r| r.step).collect();
    let across = write_panels(out, &panels, &steps, boundary)?;
    let input_statistics = under_image_statistics(&models[boundary], &models[n - 1], &clean)?;
    let (bd, carriers) = carriers(
        &models[boundary],
        &models[n - 1],
        [t, other],
        &data.trigger(),
        5,
    )?;
    let c = &bd.contributions;
    let values = tensim::linalg::to_row_major(c.as_ref());
    tensim::io::write_npy(&out.join("breakdown.npy"), &[c.nrows(), c.ncols()], &values)?;
    let title = format!(
        "⟨step {}, step {}⟩ over hidden units, matched",
        history[boundary].step,
        history[n - 1].step
    );
    tensim::plot::breakdown(c, "unit", &title, &out.join("breakdown.png"))?;
    let per_class_values: Vec<f64> = per_class
        .iter()
        .flat_map(|m| (0..n * n).map(move |k| m[(k / n, k % n)]))
        .collect();
    tensim::io::write_npy(
        &out.join("tensor_per_class.npy"),
        &[10, n, n],
        &per_class_values,
    )?;
    crate::output::write_history(out, cfg, &history)?;
    let summary = Summary {
        config: cfg.clone(),
        data: data.name.clone(),
        pixels: data.dim(),
        history,
        boundary,
        across_boundary: across,
        input_statistics,
        carriers,
        seconds: started.elapsed().as_secs_f64(),
    };
    tensim::io::write_atomic(&out.join("report.md"), report(&summary).as_bytes())?;
    Ok(summary)
}

fn report(s: &Summary) -> String {
    let c = &s.config;
    let (b, last) = (
        &s.history[s.boundary],
        s.history.last().expect("checkpoints"),
    );
    let mut r = format!(
        "# Backdoor on {}\n\nBilinear layer {} → {} hidden units, linear head → 10. {} clean steps, then {} steps in which each \
         sample is stamped with the trigger and relabelled {} with probability {}; AdamW (lr {}, weight decay {}), batch {}, pixel \
         noise σ = {}, seed {}; {} checkpoints.\n\n",
        s.data, s.pixels, c.hidden, c.clean_steps, c.poison_steps, c.target, c.poison_fraction, c.lr, c.weight_decay, c.batch, c.noise, c.seed, s.history.len()
    );
    r += "| | end of clean training | end of poisoning |\n|---|---|---|\n";
    r += &format!("| step | {} | {} |\n| clean test accuracy | {:.3} | {:.3} |\n| attack success rate | {:.3} | {:.3} |\n\n", b.step, last.step, b.test_accuracy, last.test_accuracy, b.attack_success, last.attack_success);
    r += "Similarity of the last clean checkpoint to the final one (Δ = 1 − similarity):\n\n| metric | similarity | Δ |\n|---|---|---|\n";
    for (name, v) in &s.across_boundary {
        r += &format!("| {name} | {v:.4} | {:.4} |\n", 1.0 - v);
    }
    r += &input_statistics_table(&s.input_statistics, "clean test images");
    r += &carriers_section(s);
    r += &format!("\nTook {:.1} s. Files: `checkpoints/`, `history.json`, one `.npy` per matrix (`tensor_per_class.npy`: 10 × N × N), `figure.png`, `figure.svg`, `breakdown.npy`, `breakdown.png`.\n", s.seconds);
    r
}

/// The report's section on the units that carry the backdoor.
fn carriers_section(s: &Summary) -> String {
    let (c, t) = (&s.carriers, s.config.target);
    let (b, last) = (
        s.history[s.boundary].step,
        s.history.last().expect("checkpoints").step,
    );
    let mut r = format!(
        "\n## Where the backdoor sits\n\nThe tensor inner product of step {b} (A) with step {last} (B) \
         over their hidden units (`tensim compare A B --breakdown breakdown.npy --plot \
         breakdown.png`): the matching pairs {} of {} units with themselves (fine-tuning keeps \
         units in place), and the matched pairs carry {:.1} % of ⟨A, B⟩.\n\n\
         Units carrying the change of class {t}, Δf = f_B − f_A: each unit's share \
         ⟨Δu_i, Δf_{t}⟩ / ‖Δf_{t}‖², the same for class {}, and the unit's input weights \
         (‖L_i‖² + ‖R_i‖² in B) on the trigger's pixels, {:.1} % of the image:\n\n\
         | unit | class {t} change | class {} change | weights on the trigger |\n|---|---|---|---|\n",
        c.kept,
        c.units,
        100.0 * c.matched_share,
        (t + 7) % 10,
        100.0 * c.pixel_fraction,
        (t + 7) % 10,
    );
    for u in &c.top {
        r += &format!(
            "| {} | {:.1} % | {:.1} % | {:.1} % |\n",
            u.unit,
            100.0 * u.shares[0],
            100.0 * u.shares[1],
            100.0 * u.on_pixels
        );
    }
    let listed: f64 = c.top.iter().map(|u| u.shares[0]).sum();
    r += &format!(
        "\nThese {} units carry {:.1} % of class {t}'s change; all {} units put {:.1} % of their \
         input weights on the trigger on average.\n",
        c.top.len(),
        100.0 * listed,
        c.units,
        100.0 * c.mean_on_pixels
    );
    r
}

/// The similarity of `a` and `b` under the tensor and gaussian metrics with standard Gaussian
/// input and with the Gaussian of the `images`' own mean and covariance:
/// `(metric, N(0, I), N(μ, Σ))`.
pub(crate) fn under_image_statistics(
    a: &Model,
    b: &Model,
    images: &Inputs,
) -> Result<Vec<(String, f64, f64)>, TrainError> {
    let dist = InputDistribution::from_samples(images.x.as_ref(), &images.source)?;
    let metrics = [
        ("tensor", Metric::TENSOR),
        ("gaussian", Metric::Gaussian(Default::default())),
    ];
    metrics
        .iter()
        .map(|(name, metric)| {
            let sim = |d| compare_calibrated(a, b, metric, None, &Options::default(), d, None);
            Ok((
                name.to_string(),
                sim(None)?.similarity,
                sim(Some(&dist))?.similarity,
            ))
        })
        .collect()
}

/// [`under_image_statistics`] as a Markdown paragraph and table.
pub(crate) fn input_statistics_table(rows: &[(String, f64, f64)], images: &str) -> String {
    let mut r = format!(
        "\nThe same pair with standard Gaussian input and with the Gaussian of the {images}' \
         own mean and covariance (`--input-stats`): the second weighs the directions the images \
         use.\n\n| metric | N(0, I) | images' N(μ, Σ) |\n|---|---|---|\n"
    );
    for (name, iso, data) in rows {
        r += &format!("| {name} | {iso:.4} | {data:.4} |\n");
    }
    r
}

/// Write each panel's matrix as `{file}.npy` and all of them as a grid figure with the change
/// `Δ = 1 − S[boundary, last]` in each title; returns `(title, S[boundary, last])` per panel.
pub(crate) fn write_panels(
    out: &std::path::Path,
    panels: &[PanelData],
    steps: &[usize],
    boundary: usize,
) -> Result<Vec<(String, f64)>, TrainError> {
    let n = steps.len();
    for (file, _, m) in panels {
        crate::output::write(out, file, m)?;
    }
    let across: Vec<(String, f64)> = panels
        .iter()
        .map(|(_, title, m)| (title.clone(), m[(boundary, n - 1)]))
        .collect();
    let grid: Vec<(&Mat<f64>, tensim::plot::HeatmapOptions)> = panels
        .iter()
        .zip(&across)
        .map(|((_, title, m), (_, s))| {
            (
                m,
                tensim::plot::HeatmapOptions {
                    title: format!("{title}: Δ = {:.3}", 1.0 - s),
                    labels: steps.iter().map(|s| s.to_string()).collect(),
                    steps: Some(steps.iter().map(|&s| s as f64).collect()),
                    log_steps: false,
                    boundaries: vec![boundary],
                },
            )
        })
        .collect();
    for ext in ["png", "svg"] {
        tensim::plot::heatmap_grid(&grid, 3, &out.join(format!("figure.{ext}")))?;
    }
    Ok(across)
}

/// Images as model inputs (one row of pixels per image).
pub(crate) fn image_inputs(rows: &[Vec<f32>], what: &str) -> Inputs {
    let width = rows.first().map_or(0, Vec::len);
    Inputs {
        x: Mat::from_fn(rows.len(), width, |i, j| rows[i][j] as f64),
        rows: rows.len(),
        n_ctx: 1,
        source: what.to_string(),
    }
}

/// The all-pairs matrix of `models` under `metric` (no tiles stored).
pub(crate) fn all_pairs(
    models: &[Model],
    names: &[String],
    metric: &Metric,
    inputs: Option<&Inputs>,
    per_output: bool,
) -> Result<tensim::trajectory::AllPairs, TrainError> {
    let opts = MatrixOptions {
        inputs,
        per_output,
        ..Default::default()
    };
    let checkpoints = in_memory(models, names);
    Ok(similarity_matrix(&checkpoints, metric, &opts, &|_, _| {})?)
}

/// One figure panel: `(file stem, title, N × N matrix)`.
pub(crate) type PanelData = (String, String, Mat<f64>);

/// A digit demo's panels `(file, title, matrix)`: tensor; the tensor slices of two classes
/// `(class, title suffix)`; matrix; behavioural on two input sets `(inputs, file suffix, title)`.
/// Also every class's tensor matrix.
pub(crate) fn digit_panels(
    models: &[Model],
    names: &[String],
    classes: [(usize, &str); 2],
    data: [(&Inputs, &str, &str); 2],
) -> Result<(Vec<PanelData>, Vec<Mat<f64>>), TrainError> {
    let tensor = all_pairs(models, names, &Metric::TENSOR, None, true)?;
    let per_class = tensor.per_output.expect("asked for");
    let mut panels = vec![(
        "tensor".to_string(),
        "tensor".to_string(),
        tensor.similarity,
    )];
    for (c, suffix) in classes {
        panels.push((
            format!("tensor_class{c}"),
            format!("tensor, class {c}{suffix}"),
            per_class[c].clone(),
        ));
    }
    panels.push((
        "matrix".into(),
        "matrix (weights)".into(),
        all_pairs(models, names, &Metric::Matrix, None, false)?.similarity,
    ));
    for (inputs, file, title) in data {
        let sim = all_pairs(models, names, &Metric::Behavioral, Some(inputs), false)?.similarity;
        panels.push((
            format!("behavioral_{file}"),
            format!("behavioural, {title}"),
            sim,
        ));
    }
    Ok((panels, per_class))
}
