//! Grokking on modular addition (MATH.md §7.1): `(a, b) ↦ (a + b) mod P` from the one-hot pair
//! `[e_a; e_b] ∈ ℝ^{2P}`, a bilinear layer `(Lx) ∘ (Rx)` with `h` hidden units (one fused
//! `Linear(2P, 2h)`, no biases) and a linear head `h → P`, trained with AdamW and strong weight
//! decay on a fraction of all `P²` pairs. Training accuracy reaches 1 long before validation
//! accuracy does (memorisation, then generalisation).

use candle_core::{Device, Tensor};
use candle_nn::Optimizer;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use tensim::linalg::Mat;
use tensim::Model;

use crate::model::{evaluate, select, Params};
use crate::output::block_mean;
use crate::TrainError;

/// Configuration of a grokking run.
#[derive(Clone, Debug, Serialize)]
pub struct GrokkingConfig {
    pub p: usize,
    pub hidden: usize,
    pub train_fraction: f64,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Checkpoint schedule: `checkpoints` steps on a power schedule with this exponent.
    pub checkpoints: usize,
    pub exponent: f64,
}

impl GrokkingConfig {
    /// The paper's run (MATH.md §7.1): P = 113, h = 64, 30 % train, 100 000 steps, batch 512,
    /// AdamW lr 1e-3, weight decay 0.3, 100 checkpoints on a power-5 schedule.
    pub fn paper() -> GrokkingConfig {
        GrokkingConfig {
            p: 113,
            hidden: 64,
            train_fraction: 0.3,
            steps: 100_000,
            batch: 512,
            lr: 1e-3,
            weight_decay: 0.3,
            seed: 1337,
            checkpoints: 100,
            exponent: 5.0,
        }
    }

    /// Refuse what the task or the model cannot take, and a task too large for memory.
    pub fn check(&self) -> Result<(), tensim::Error> {
        let bad = |m: String| Err(tensim::Error::Invalid(m));
        if self.p < 2 || self.hidden == 0 || self.batch == 0 {
            return bad(format!(
                "P {} with {} hidden units and batch {}: need P ≥ 2 and at least one hidden unit \
                 and one pair per batch",
                self.p, self.hidden, self.batch
            ));
        }
        let pairs = self.p * self.p;
        let n_train = (pairs as f64 * self.train_fraction) as usize;
        if !(self.train_fraction > 0.0 && self.train_fraction < 1.0)
            || n_train < self.batch
            || n_train == pairs
        {
            return bad(format!(
                "train fraction {} of the {pairs} pairs gives {n_train} training pairs: need at \
                 least one batch ({}) for training and one pair for validation",
                self.train_fraction, self.batch
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "lr {} and weight decay {}: need lr > 0 and weight decay ≥ 0",
                self.lr, self.weight_decay
            ));
        }
        // The one-hot pairs (P² × 2P) and the 5Ph parameters with their gradients and AdamW's
        // two moments, all f32, in f64 entries.
        let p = self.p as f64;
        tensim::budget::check(
            "the grokking task's inputs and parameters",
            p * p * p + 10.0 * p * self.hidden as f64,
        )
    }
}

/// Metrics of one checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub step: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

/// The task: every pair, its one-hot input and label, and the train/validation split.
pub struct Task {
    pub p: usize,
    /// All `P²` inputs as one-hot rows (`P² × 2P`, f32) and labels.
    pub inputs: Tensor,
    pub labels: Tensor,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl Task {
    pub fn new(p: usize, train_fraction: f64, seed: u64, dev: &Device) -> Result<Task, TrainError> {
        let n = p * p;
        let mut x = vec![0f32; n * 2 * p];
        let mut y = vec![0u32; n];
        for a in 0..p {
            for b in 0..p {
                let i = a * p + b;
                x[i * 2 * p + a] = 1.0;
                x[i * 2 * p + p + b] = 1.0;
                y[i] = ((a + b) % p) as u32;
            }
        }
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let n_train = (n as f64 * train_fraction) as usize;
        Ok(Task {
            p,
            inputs: Tensor::from_vec(x, (n, 2 * p), dev)?,
            labels: Tensor::from_vec(y, n, dev)?,
            train: order[..n_train].to_vec(),
            val: order[n_train..].to_vec(),
        })
    }
}

/// Train, calling `checkpoint(&model, &record)` at every scheduled step and
/// `progress(step, latest record)` after every optimisation step.
pub fn train(
    cfg: &GrokkingConfig,
    schedule: &[usize],
    mut checkpoint: impl FnMut(&Model, &Record) -> Result<(), TrainError>,
    mut progress: impl FnMut(usize, Option<&Record>),
) -> Result<Vec<Record>, TrainError> {
    cfg.check()?;
    let dev = Device::Cpu;
    let task = Task::new(cfg.p, cfg.train_fraction, cfg.seed, &dev)?;
    let params = Params::init(2 * cfg.p, cfg.hidden, cfg.p, cfg.seed ^ 0x9e37_79b9, &dev)?;
    let mut opt = params.adamw(cfg.lr, cfg.weight_decay)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(1));
    let per_epoch = (task.train.len() / cfg.batch).max(1);
    let mut order = task.train.clone();
    let mut history = Vec::new();
    let mut next = schedule.iter().copied().peekable();
    for step in 0..=cfg.steps {
        if next.peek() == Some(&step) {
            next.next();
            let (xt, yt) = select(&task.inputs, &task.labels, &task.train)?;
            let (xv, yv) = select(&task.inputs, &task.labels, &task.val)?;
            let (train_loss, train_accuracy) = evaluate(&params, &xt, &yt)?;
            let (val_loss, val_accuracy) = evaluate(&params, &xv, &yv)?;
            let record = Record {
                step,
                train_loss,
                train_accuracy,
                val_loss,
                val_accuracy,
            };
            checkpoint(&params.to_model()?, &record)?;
            history.push(record);
        }
        if step == cfg.steps {
            break;
        }
        let k = step % per_epoch;
        if k == 0 {
            order.shuffle(&mut rng);
        }
        let batch = &order[k * cfg.batch..(k + 1) * cfg.batch];
        let ids = Tensor::from_slice(batch, batch.len(), &dev)?;
        let (x, y) = (
            task.inputs.index_select(&ids, 0)?,
            task.labels.index_select(&ids, 0)?,
        );
        let loss = candle_nn::loss::cross_entropy(&params.forward(&x)?, &y)?;
        opt.backward_step(&loss)?;
        progress(step + 1, history.last());
    }
    Ok(history)
}

/// What `run_demo` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub config: GrokkingConfig,
    pub history: Vec<Record>,
    /// First checkpoint step with train accuracy ≥ 0.99, and validation accuracy ≥ 0.5 / 0.95 / 0.99.
    pub train_99: Option<usize>,
    pub val_50: Option<usize>,
    pub val_95: Option<usize>,
    pub val_99: Option<usize>,
    /// First step of each phase of the tensor-similarity matrix.
    pub phase_starts: Vec<usize>,
    /// Tensor and behavioural similarity of every checkpoint to the last one.
    pub tensor_to_final: Vec<f64>,
    pub behavioral_to_final: Vec<f64>,
    /// Mean tensor similarity of distinct checkpoints within the last third, and between the
    /// first and last thirds (consolidation: the first high, the second near 0).
    pub last_third: f64,
    pub first_vs_last_third: f64,
    pub seconds_training: f64,
    pub seconds_analysis: f64,
}

fn first(history: &[Record], f: impl Fn(&Record) -> bool) -> Option<usize> {
    history.iter().find(|r| f(r)).map(|r| r.step)
}

/// Train, then write into `out`: `checkpoints/`, `history.json`, `history.csv`, `tensor.npy`,
/// `matrix.npy`, `behavioral.npy`, `figure.png`, `figure.svg` and `report.md`.
pub fn run_demo(
    cfg: &GrokkingConfig,
    phases: usize,
    out: &std::path::Path,
    mut progress: impl FnMut(usize, Option<&Record>),
) -> Result<Summary, TrainError> {
    use tensim::metrics::{Inputs, Metric};
    use tensim::trajectory::{similarity_matrix, MatrixOptions};
    cfg.check()?;
    let ck_dir = crate::output::checkpoint_dir(out)?;
    let schedule = crate::schedule::power(cfg.steps, cfg.checkpoints, cfg.exponent);
    let started = std::time::Instant::now();
    let mut models = Vec::new();
    let history = train(
        cfg,
        &schedule,
        |m, r| {
            tensim::io::save(m, &ck_dir.join(format!("step_{:06}.safetensors", r.step)))?;
            models.push(m.clone());
            Ok(())
        },
        &mut progress,
    )?;
    let seconds_training = started.elapsed().as_secs_f64();
    let analysis = std::time::Instant::now();

    crate::output::write_history(out, cfg, &history)?;
    let mut csv = String::from("step,train_loss,train_accuracy,val_loss,val_accuracy\n");
    for r in &history {
        csv += &format!(
            "{},{},{},{},{}\n",
            r.step, r.train_loss, r.train_accuracy, r.val_loss, r.val_accuracy
        );
    }
    tensim::io::write_atomic(&out.join("history.csv"), csv.as_bytes())?;

    // Similarity matrices over the checkpoints; behavioural on all P² inputs.
    let n = models.len();
    let names: Vec<String> = history.iter().map(|r| format!("step {}", r.step)).collect();
    let p = cfg.p;
    let all = Mat::from_fn(p * p, 2 * p, |i, j| {
        ((j < p && j == i / p) || (j >= p && j - p == i % p)) as u8 as f64
    });
    let inputs = Inputs {
        x: all,
        rows: p * p,
        n_ctx: 1,
        source: format!("all {} pairs", p * p),
    };
    let checkpoints = tensim::trajectory::checkpoints::in_memory(&models, &names);
    let mut mats = Vec::new();
    for metric in [Metric::TENSOR, Metric::Matrix, Metric::Behavioral] {
        let opts = MatrixOptions {
            inputs: Some(&inputs),
            ..Default::default()
        };
        let sim = similarity_matrix(&checkpoints, &metric, &opts, &|_, _| {})?.similarity;
        crate::output::write(out, metric.name(), &sim)?;
        mats.push(sim);
    }
    let (tensor_sim, behavioral_sim) = (&mats[0], &mats[2]);
    let segmentation = tensim::phases::segment(tensor_sim, phases.min(n))?;
    let third = (n / 3).max(1);
    let steps: Vec<f64> = history.iter().map(|r| r.step as f64).collect();
    let series =
        |name: &str, f: fn(&Record) -> f64| (name.to_string(), history.iter().map(f).collect());
    let curves = tensim::plot::Curves {
        panels: vec![
            tensim::plot::Panel {
                label: "accuracy".into(),
                log_y: false,
                series: vec![
                    series("train", |r| r.train_accuracy),
                    series("validation", |r| r.val_accuracy),
                ],
            },
            tensim::plot::Panel {
                label: "loss".into(),
                log_y: true,
                series: vec![
                    series("train", |r| r.train_loss),
                    series("validation", |r| r.val_loss),
                ],
            },
        ],
    };
    let fig = tensim::plot::HeatmapOptions {
        title: format!("grokking (a + b mod {p}): tensor similarity of {n} checkpoints"),
        labels: history.iter().map(|r| r.step.to_string()).collect(),
        steps: Some(steps),
        log_steps: true,
        boundaries: segmentation.boundaries(),
    };
    for ext in ["png", "svg"] {
        tensim::plot::training_figure(
            tensor_sim,
            &curves,
            &out.join(format!("figure.{ext}")),
            &fig,
        )?;
    }
    let summary = Summary {
        config: cfg.clone(),
        train_99: first(&history, |r| r.train_accuracy >= 0.99),
        val_50: first(&history, |r| r.val_accuracy >= 0.5),
        val_95: first(&history, |r| r.val_accuracy >= 0.95),
        val_99: first(&history, |r| r.val_accuracy >= 0.99),
        phase_starts: segmentation
            .starts
            .iter()
            .map(|&i| history[i].step)
            .collect(),
        tensor_to_final: (0..n).map(|i| tensor_sim[(i, n - 1)]).collect(),
        behavioral_to_final: (0..n).map(|i| behavioral_sim[(i, n - 1)]).collect(),
        last_third: block_mean(tensor_sim, n - third..n, n - third..n),
        first_vs_last_third: block_mean(tensor_sim, 0..third, n - third..n),
        history,
        seconds_training,
        seconds_analysis: analysis.elapsed().as_secs_f64(),
    };
    tensim::io::write_atomic(&out.join("report.md"), report(&summary).as_bytes())?;
    Ok(summary)
}

fn report(s: &Summary) -> String {
    let c = &s.config;
    let opt = |v: Option<usize>| v.map_or("not reached".to_string(), |x| format!("step {x}"));
    let last = s.history.last().expect("at least one checkpoint");
    let mut r = format!(
        "# Grokking: a + b mod {}\n\nBilinear layer 2·{} → {} hidden units, linear head → {}; {:.0} % of the {} pairs for training; \
         {} steps of AdamW (lr {}, weight decay {}), batch {}, seed {}; {} checkpoints.\n\n",
        c.p, c.p, c.hidden, c.p, 100.0 * c.train_fraction, c.p * c.p, c.steps, c.lr, c.weight_decay, c.batch, c.seed, s.history.len()
    );
    r += &format!(
        "| milestone | first checkpoint |\n|---|---|\n| train accuracy ≥ 0.99 | {} |\n| validation accuracy ≥ 0.5 | {} |\n| validation accuracy ≥ 0.95 | {} |\n| validation accuracy ≥ 0.99 | {} |\n\n",
        opt(s.train_99), opt(s.val_50), opt(s.val_95), opt(s.val_99)
    );
    r += &format!(
        "Final: train accuracy {:.4}, validation accuracy {:.4}, train loss {:.3e}, validation loss {:.3e}.\n\n",
        last.train_accuracy, last.val_accuracy, last.train_loss, last.val_loss
    );
    r += &format!(
        "Phases of the tensor-similarity matrix start at steps {:?}.\n\n",
        s.phase_starts
    );
    let n = s.history.len();
    r += &format!(
        "Consolidation: mean tensor similarity within the last third of the checkpoints (steps ≥ {}) \
         {:.3}, between the first and last thirds {:.3}.\n\n",
        s.history[n - (n / 3).max(1)].step,
        s.last_third,
        s.first_vs_last_third
    );
    r += "| step | train acc | val acc | tensor sim. to final | behavioural sim. to final |\n|---|---|---|---|---|\n";
    let picks: Vec<usize> = (0..8).map(|k| k * (n - 1) / 7).collect();
    for &i in picks.iter().collect::<std::collections::BTreeSet<_>>() {
        let h = &s.history[i];
        r += &format!(
            "| {} | {:.3} | {:.3} | {:.4} | {:.4} |\n",
            h.step,
            h.train_accuracy,
            h.val_accuracy,
            s.tensor_to_final[i],
            s.behavioral_to_final[i]
        );
    }
    r += &format!(
        "\nTraining took {:.1} s, the similarity matrices, phases and figures {:.1} s. Files: `checkpoints/`, \
         `history.json`, `history.csv`, `tensor.npy`, `matrix.npy`, `behavioral.npy`, `figure.png`, `figure.svg`.\n",
        s.seconds_training, s.seconds_analysis
    );
    r
}
