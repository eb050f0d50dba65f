//! Catastrophic forgetting (MATH.md §7.3; the bundled 8×8 digits, or IDX / SVHN files as in the
//! backdoor demo): train on one subset of classes,
//! then continue on another only. The old classes' accuracy collapses; their per-class tensor
//! similarity shows the old mechanism being overwritten, from the weights alone.

use candle_core::{Device, Tensor};
use candle_nn::Optimizer;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::backdoor::{
    digit_panels, image_inputs, input_statistics_table, load_split, tensor, under_image_statistics,
    write_panels,
};
use crate::data::Source;
use crate::model::{evaluate, Params};
use crate::TrainError;

/// Configuration of a forgetting run.
#[derive(Clone, Debug, Serialize)]
pub struct ForgettingConfig {
    /// The images (default: the bundled digits).
    pub data: Source,
    /// Use at most this many images (a random subset).
    pub max_images: Option<usize>,
    /// Classes of the first stage; the second stage trains on the others.
    pub first: Vec<u32>,
    pub hidden: usize,
    pub steps_per_stage: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub checkpoint_every: usize,
    pub test_fraction: f64,
    pub seed: u64,
}

impl Default for ForgettingConfig {
    fn default() -> ForgettingConfig {
        ForgettingConfig {
            data: Source::Digits,
            max_images: None,
            first: vec![0, 1, 2, 3, 4],
            hidden: 64,
            steps_per_stage: 1500,
            batch: 64,
            lr: 1e-3,
            weight_decay: 0.05,
            checkpoint_every: 100,
            test_fraction: 0.25,
            seed: 123,
        }
    }
}

/// Metrics of one checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub step: usize,
    /// Test accuracy on the first-stage classes and on the others.
    pub old_accuracy: f64,
    pub new_accuracy: f64,
}

/// What `run_demo` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub config: ForgettingConfig,
    /// The images used.
    pub data: String,
    pub history: Vec<Record>,
    pub boundary: usize,
    pub across_boundary: Vec<(String, f64)>,
    /// Per-class tensor similarity of the end of stage 1 to the final checkpoint.
    pub per_class_across: Vec<f64>,
    /// The same pair under `N(0, I)` and under the test images' `N(μ, Σ)`, per metric.
    pub input_statistics: Vec<(String, f64, f64)>,
    pub seconds: f64,
}

/// Train both stages; write `checkpoints/`, `history.json`, the matrices, `figure.png`/`.svg`
/// and `report.md` into `out`.
pub fn run_demo(
    cfg: &ForgettingConfig,
    out: &std::path::Path,
    mut progress: impl FnMut(usize),
) -> Result<Summary, TrainError> {
    let started = std::time::Instant::now();
    let dev = Device::Cpu;
    let (data, test, train) = load_split(&cfg.data, cfg.max_images, cfg.test_fraction, cfg.seed)?;
    let old = |y: u32| cfg.first.contains(&y);
    let subset = |idx: &[usize], keep: &dyn Fn(u32) -> bool| -> (Vec<Vec<f32>>, Vec<u32>) {
        idx.iter()
            .filter(|&&i| keep(data.labels[i]))
            .map(|&i| (data.pixels[i].clone(), data.labels[i]))
            .unzip()
    };
    let stages = [subset(&train, &|y| old(y)), subset(&train, &|y| !old(y))];
    let (test_old, test_new) = (subset(&test, &|y| old(y)), subset(&test, &|y| !old(y)));
    let as_tensors = |(x, y): &(Vec<Vec<f32>>, Vec<u32>)| -> Result<(Tensor, Tensor), TrainError> {
        Ok((tensor(x, &dev)?, Tensor::from_slice(y, y.len(), &dev)?))
    };
    let ((xo, yo), (xn, yn)) = (as_tensors(&test_old)?, as_tensors(&test_new)?);

    let params = Params::init(data.dim(), cfg.hidden, 10, cfg.seed, &dev)?;
    let ck_dir = crate::output::checkpoint_dir(out)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(3));
    let (mut history, mut models) = (Vec::new(), Vec::new());
    let mut step = 0;
    for (s, (x, y)) in stages.iter().enumerate() {
        // A fresh optimiser per stage, as when training resumes on a new data set.
        let mut opt = params.adamw(cfg.lr, cfg.weight_decay)?;
        let per_epoch = (x.len() / cfg.batch).max(1);
        let mut perm: Vec<usize> = (0..x.len()).collect();
        for k in 0..cfg.steps_per_stage + usize::from(s == 1) {
            if step % cfg.checkpoint_every == 0 {
                let m = params.to_model()?;
                tensim::io::save(&m, &ck_dir.join(format!("step_{step:06}.safetensors")))?;
                models.push(m);
                let (_, old_accuracy) = evaluate(&params, &xo, &yo)?;
                let (_, new_accuracy) = evaluate(&params, &xn, &yn)?;
                history.push(Record {
                    step,
                    old_accuracy,
                    new_accuracy,
                });
            }
            if s == 1 && k == cfg.steps_per_stage {
                break;
            }
            if k % per_epoch == 0 {
                perm.shuffle(&mut rng);
            }
            let b = k % per_epoch;
            let idx = &perm[b * cfg.batch..((b + 1) * cfg.batch).min(x.len())];
            let bx: Vec<Vec<f32>> = idx.iter().map(|&i| x[i].clone()).collect();
            let by: Vec<u32> = idx.iter().map(|&i| y[i]).collect();
            let loss = candle_nn::loss::cross_entropy(
                &params.forward(&tensor(&bx, &dev)?)?,
                &Tensor::from_slice(&by, by.len(), &dev)?,
            )?;
            opt.backward_step(&loss)?;
            step += 1;
            progress(step);
        }
    }

    let boundary = history
        .iter()
        .position(|r| r.step == cfg.steps_per_stage)
        .unwrap_or(0);
    let names: Vec<String> = history.iter().map(|r| format!("step {}", r.step)).collect();
    let (old_in, new_in) = (
        image_inputs(&test_old.0, "old-class test images"),
        image_inputs(&test_new.0, "new-class test images"),
    );
    let (c_old, c_new) = (
        cfg.first[0] as usize,
        (0..10).find(|&c| !old(c as u32)).unwrap_or(9),
    );
    let (panels, per_class) = digit_panels(
        &models,
        &names,
        [(c_old, " (stage 1)"), (c_new, " (stage 2)")],
        [
            (&old_in, "old", "stage-1 classes"),
            (&new_in, "new", "stage-2 classes"),
        ],
    )?;
    let steps: Vec<usize> = history.iter().map(|r| r.step).collect();
    let across = write_panels(out, &panels, &steps, boundary)?;
    let last = history.len() - 1;
    let per_class_across: Vec<f64> = per_class.iter().map(|m| m[(boundary, last)]).collect();
    let all_test: Vec<Vec<f32>> = test.iter().map(|&i| data.pixels[i].clone()).collect();
    let input_statistics = under_image_statistics(
        &models[boundary],
        &models[last],
        &image_inputs(&all_test, "test images"),
    )?;
    crate::output::write_history(out, cfg, &history)?;
    let summary = Summary {
        config: cfg.clone(),
        data: data.name.clone(),
        history,
        boundary,
        across_boundary: across,
        per_class_across,
        input_statistics,
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
        "# Catastrophic forgetting on {}\n\nStage 1: classes {:?} for {} steps; stage 2: the other classes for {} steps \
         (fresh AdamW, lr {}, weight decay {}; batch {}; seed {}); {} checkpoints.\n\n",
        s.data, c.first, c.steps_per_stage, c.steps_per_stage, c.lr, c.weight_decay, c.batch, c.seed, s.history.len()
    );
    r += &format!(
        "| | end of stage 1 (step {}) | end of stage 2 (step {}) |\n|---|---|---|\n| test accuracy, stage-1 classes | {:.3} | {:.3} |\n| test accuracy, stage-2 classes | {:.3} | {:.3} |\n\n",
        b.step, last.step, b.old_accuracy, last.old_accuracy, b.new_accuracy, last.new_accuracy
    );
    r += "Similarity of the end of stage 1 to the final checkpoint (Δ = 1 − similarity):\n\n| metric | similarity | Δ |\n|---|---|---|\n";
    for (name, v) in &s.across_boundary {
        r += &format!("| {name} | {v:.4} | {:.4} |\n", 1.0 - v);
    }
    r += "\nPer-class tensor similarity, end of stage 1 vs final:\n\n| class | similarity |\n|---|---|\n";
    for (k, v) in s.per_class_across.iter().enumerate() {
        r += &format!(
            "| {k}{} | {v:.4} |\n",
            if c.first.contains(&(k as u32)) {
                " (stage 1)"
            } else {
                ""
            }
        );
    }
    r += &input_statistics_table(&s.input_statistics, "test images");
    r += &format!("\nTook {:.1} s.\n", s.seconds);
    r
}
