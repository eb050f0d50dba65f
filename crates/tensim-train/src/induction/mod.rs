//! Induction heads forming in a two-layer bilinear-attention language model (the paper's LM
//! family, MATH.md §7.5–7.6): trained on [`data::Sequences`], checkpoints on a log schedule,
//! `induction_accuracy` (accuracy on the predictable second occurrences) and
//! `in_context_score` (late-position loss minus early-position loss, Olsson et al.) over
//! training, and the checkpoints' similarity matrices read at `analysis_ctx` positions.

pub mod data;
pub mod model;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::Optimizer;
use rand::SeedableRng;
use serde::Serialize;

use tensim::linalg::Mat;

use crate::output::block_mean;
use crate::TrainError;
use data::{Batch, Sequences};
use model::{token_losses, Lm, LmShape};

/// Configuration of an induction run.
#[derive(Clone, Debug, Serialize)]
pub struct InductionConfig {
    pub shape: LmShape,
    /// Training context.
    pub n_ctx: usize,
    /// Length of the repeated segment.
    pub segment: usize,
    /// Probability of a Markov step to the favourite successor.
    pub markov: f64,
    pub steps: usize,
    pub batch: usize,
    /// Peak learning rate: linear warm-up over `warmup` steps, then cosine decay to 0.
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub seed: u64,
    /// Checkpoints on a log-spaced schedule (`schedule::log`).
    pub checkpoints: usize,
    /// Held-out sequences for the metrics and the behavioural matrix.
    pub val_rows: usize,
    /// Positions the checkpoints are compared at (the paper: 4).
    pub analysis_ctx: usize,
}

impl Default for InductionConfig {
    /// The demo: vocabulary 64, d_model 64, 2 heads of size 32, two layers, context 16.
    fn default() -> InductionConfig {
        InductionConfig {
            shape: LmShape {
                vocab: 64,
                d_model: 64,
                heads: 2,
                layers: 2,
                residual: 0.35,
                rotary_base: 10_000.0,
            },
            n_ctx: 16,
            segment: 6,
            markov: 0.5,
            steps: 4000,
            batch: 32,
            lr: 3e-3,
            warmup: 100,
            weight_decay: 0.01,
            seed: 0,
            checkpoints: 25,
            val_rows: 256,
            analysis_ctx: 4,
        }
    }
}

impl InductionConfig {
    /// The paper's LM shape: vocabulary 4096, d_model 256, 8 heads.
    pub fn paper() -> InductionConfig {
        let mut c = InductionConfig::default();
        c.shape.vocab = 4096;
        c.shape.d_model = 256;
        c.shape.heads = 8;
        c
    }
}

impl InductionConfig {
    /// Refuse shapes the model or the sequences cannot take.
    pub fn check(&self) -> Result<(), tensim::Error> {
        let l = &self.shape;
        let bad = |m: String| Err(tensim::Error::Invalid(m));
        if l.vocab < 2
            || l.heads == 0
            || l.d_model < 2 * l.heads
            || !l.d_model.is_multiple_of(2 * l.heads)
        {
            return bad(format!(
                "vocabulary {} with d_model {} and {} heads: need a vocabulary of at least 2 and \
                 heads of even size (d_model divisible by 2·heads)",
                l.vocab, l.d_model, l.heads
            ));
        }
        if self.segment < 2 || 2 * self.segment > self.n_ctx + 1 {
            return bad(format!(
                "a segment of {} tokens twice does not fit a sequence of {} (need 2 ≤ segment ≤ (n_ctx + 1)/2)",
                self.segment,
                self.n_ctx + 1
            ));
        }
        if !(0.0..=1.0).contains(&self.markov) {
            return bad(format!("markov must be a probability, got {}", self.markov));
        }
        if self.steps == 0
            || self.batch == 0
            || self.checkpoints < 2
            || self.lr.is_nan()
            || self.lr <= 0.0
        {
            return bad("steps, batch and lr must be positive and checkpoints at least 2".into());
        }
        // Parameters with their gradients and AdamW's two moments (f32), and one batch's
        // activations (the stream and its projections, scores, logits), in f64 entries.
        let (v, d, n, b) = (
            l.vocab as f64,
            l.d_model as f64,
            self.n_ctx as f64,
            self.batch as f64,
        );
        let layers = l.layers as f64;
        let params = 2.0 * v * d + layers * (6.0 * d * d + 4.0 * d);
        let activations =
            b * n * (v + 32.0 * d * layers) + b * l.heads as f64 * n * n * 8.0 * layers;
        tensim::budget::check(
            "the language model's training state",
            2.0 * params + 0.5 * activations,
        )
    }
}

/// Metrics of one checkpoint (held-out sequences, evaluation mode).
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub step: usize,
    /// Mean training-batch loss since the previous checkpoint (step 0: the first batch).
    pub train_loss: f64,
    pub val_loss: f64,
    /// Accuracy on the targets predictable by induction.
    pub induction_accuracy: f64,
    /// Mean loss at positions `≥ 3n/4` minus at positions `< n/4`.
    pub in_context_score: f64,
    /// Running RMS scale folded into the saved unembedding.
    pub rms: f64,
}

impl InductionConfig {
    /// The sequence distribution.
    fn sequences(&self) -> Sequences {
        Sequences::new(
            self.shape.vocab,
            self.n_ctx,
            self.segment,
            self.markov,
            self.seed,
        )
    }

    /// The held-out sequences (metrics over training and the behavioural matrix).
    fn held_out(&self) -> Batch {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ 0x5eed_da7a);
        self.sequences().batch(self.val_rows, &mut rng)
    }
}

fn tokens(b: &Batch, n: usize, dev: &Device) -> Result<(Tensor, Tensor), TrainError> {
    Ok((
        Tensor::from_slice(&b.tokens, (b.rows, n), dev)?,
        Tensor::from_slice(&b.targets, b.rows * n, dev)?,
    ))
}

/// Held-out metrics of `lm` on `b`: val loss, induction accuracy, in-context score.
pub fn evaluate(lm: &Lm, b: &Batch, n: usize) -> Result<(f64, f64, f64), TrainError> {
    let dev = Device::Cpu;
    let (x, y) = tokens(b, n, &dev)?;
    let logits = lm.forward_eval(&x)?;
    let loss: Vec<f32> = token_losses(&logits, &y)?.to_vec1()?;
    let hit: Vec<u8> = logits.argmax(D::Minus1)?.eq(&y)?.to_vec1()?;
    let mean = |f: &dyn Fn(usize) -> bool, v: &dyn Fn(usize) -> f64| {
        let k: Vec<usize> = (0..loss.len()).filter(|&i| f(i)).collect();
        k.iter().map(|&i| v(i)).sum::<f64>() / k.len().max(1) as f64
    };
    let l = |i: usize| loss[i] as f64;
    Ok((
        mean(&|_| true, &l),
        mean(&|i| b.predictable[i], &|i| hit[i] as f64),
        mean(&|i| i % n >= 3 * n / 4, &l) - mean(&|i| i % n < n / 4, &l),
    ))
}

/// Train, calling `checkpoint(&lm, &record)` at every scheduled step and
/// `progress(step, latest record)` after every step.
pub fn train(
    cfg: &InductionConfig,
    schedule: &[usize],
    mut checkpoint: impl FnMut(&Lm, &Record) -> Result<(), TrainError>,
    mut progress: impl FnMut(usize, Option<&Record>),
) -> Result<Vec<Record>, TrainError> {
    cfg.check()?;
    let dev = Device::Cpu;
    let n = cfg.n_ctx;
    let (seq, val) = (cfg.sequences(), cfg.held_out());
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(1));
    let mut lm = Lm::init(&cfg.shape, cfg.seed ^ 0x9e37_79b9, &dev)?;
    let mut opt = candle_nn::AdamW::new(
        lm.vars(),
        candle_nn::ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let mut history = Vec::new();
    let mut next = schedule.iter().copied().peekable();
    let (mut loss_sum, mut loss_count) = (0.0, 0usize);
    for step in 0..=cfg.steps {
        let batch = seq.batch(cfg.batch, &mut rng);
        let (x, y) = tokens(&batch, n, &dev)?;
        let logits = lm.forward_train(&x)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if next.peek() == Some(&step) {
            next.next();
            if loss_count == 0 {
                (loss_sum, loss_count) = (value, 1);
            }
            let (val_loss, induction_accuracy, in_context_score) = evaluate(&lm, &val, n)?;
            let record = Record {
                step,
                train_loss: loss_sum / loss_count as f64,
                val_loss,
                induction_accuracy,
                in_context_score,
                rms: lm.rms,
            };
            (loss_sum, loss_count) = (0.0, 0);
            checkpoint(&lm, &record)?;
            history.push(record);
        }
        if step == cfg.steps {
            break;
        }
        opt.set_learning_rate(learning_rate(cfg, step));
        opt.backward_step(&loss)?;
        (loss_sum, loss_count) = (loss_sum + value, loss_count + 1);
        progress(step + 1, history.last());
    }
    Ok(history)
}

/// `lr · min(1, (t+1)/warmup) · ½(1 + cos(π t/T))`.
fn learning_rate(cfg: &InductionConfig, step: usize) -> f64 {
    let warm = ((step + 1) as f64 / cfg.warmup.max(1) as f64).min(1.0);
    let decay = 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / cfg.steps as f64).cos());
    cfg.lr * warm * decay
}

/// What `run_demo` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub config: InductionConfig,
    pub history: Vec<Record>,
    /// First checkpoint step with induction accuracy ≥ 0.2 / 0.5 / 0.8.
    pub induction_20: Option<usize>,
    pub induction_50: Option<usize>,
    pub induction_80: Option<usize>,
    /// The transition: the first checkpoint whose induction accuracy is past the midpoint of
    /// the first and last ones.
    pub transition: usize,
    /// The blocks of the gaussian matrix under N(0, I) and under the tokens' statistics.
    pub gaussian: Blocks,
    pub gaussian_tokens: Blocks,
    /// First step of each phase of the gaussian matrix under the tokens' statistics.
    pub phase_starts: Vec<usize>,
    /// Similarity of every checkpoint to the last one: gaussian under N(0, I) and under the
    /// tokens' statistics, behavioural.
    pub gaussian_to_final: Vec<f64>,
    pub tokens_to_final: Vec<f64>,
    pub behavioral_to_final: Vec<f64>,
    pub seconds_training: f64,
    pub seconds_analysis: f64,
}

/// Mean similarity of distinct checkpoints within the blocks before and from the transition,
/// and between the two.
#[derive(Clone, Debug, Serialize)]
pub struct Blocks {
    pub within_pre: f64,
    pub within_post: f64,
    pub across: f64,
}

impl Blocks {
    fn of(m: &Mat<f64>, transition: usize) -> Blocks {
        let n = m.nrows();
        Blocks {
            within_pre: block_mean(m, 0..transition, 0..transition),
            within_post: block_mean(m, transition..n, transition..n),
            across: block_mean(m, 0..transition, transition..n),
        }
    }
}

/// One-hot rows of `tokens` (`rows·n × vocab`).
fn one_hot(tokens: &[u32], vocab: usize) -> Mat<f64> {
    Mat::from_fn(tokens.len(), vocab, |i, j| {
        (tokens[i] as usize == j) as u8 as f64
    })
}

/// Train, then write into `out`: `checkpoints/` (read at `analysis_ctx` positions),
/// `history.json`, `history.csv`, `gaussian.npy` (N(0, I)), `gaussian_tokens.npy` (each
/// position N(p, diag(p) − ppᵀ), p the frequencies of the held-out tokens, whose counts are
/// `token_counts.npy`), `tensor.npy`,
/// `matrix.npy`, `behavioral.npy` (held-out sequences at the training context), `figure.png`, `figure.svg` and `report.md`.
pub fn run_demo(
    cfg: &InductionConfig,
    phases: usize,
    out: &std::path::Path,
    mut progress: impl FnMut(usize, Option<&Record>),
) -> Result<Summary, TrainError> {
    use tensim::metrics::{Inputs, Kind, Metric};
    use tensim::trajectory::{checkpoints::in_memory, similarity_matrix, MatrixOptions};
    cfg.check()?;
    let ck_dir = crate::output::checkpoint_dir(out)?;
    let schedule = crate::schedule::log(cfg.steps, cfg.checkpoints);
    let started = std::time::Instant::now();
    let mut models = Vec::new();
    let history = train(
        cfg,
        &schedule,
        |lm, r| {
            let m = lm.to_model(cfg.analysis_ctx)?;
            tensim::io::save(&m, &ck_dir.join(format!("step_{:06}.safetensors", r.step)))?;
            models.push(m);
            Ok(())
        },
        &mut progress,
    )?;
    let seconds_training = started.elapsed().as_secs_f64();
    let analysis = std::time::Instant::now();

    crate::output::write_history(out, cfg, &history)?;
    let mut csv =
        String::from("step,train_loss,val_loss,induction_accuracy,in_context_score,rms\n");
    for r in &history {
        csv += &format!(
            "{},{},{},{},{},{}\n",
            r.step, r.train_loss, r.val_loss, r.induction_accuracy, r.in_context_score, r.rms
        );
    }
    tensim::io::write_atomic(&out.join("history.csv"), csv.as_bytes())?;

    // Matrices: weights-only ones at `analysis_ctx`, behavioural on held-out sequences.
    let n = models.len();
    let names: Vec<String> = history.iter().map(|r| format!("step {}", r.step)).collect();
    let val = cfg.held_out();
    let inputs = Inputs {
        x: one_hot(&val.tokens, cfg.shape.vocab),
        rows: val.rows,
        n_ctx: cfg.n_ctx,
        source: format!("{} held-out sequences", val.rows),
    };
    // The Gaussian with the held-out tokens' mean p and covariance diag(p) − ppᵀ per position.
    let mut counts = vec![0.0; cfg.shape.vocab];
    for &t in &val.tokens {
        counts[t as usize] += 1.0;
    }
    tensim::io::write_npy(&out.join("token_counts.npy"), &[counts.len()], &counts)?;
    let tokens =
        tensim::distribution::InputDistribution::from_token_counts(&counts, "held-out tokens")?;
    let checkpoints = in_memory(&models, &names);
    // The behavioural matrix reads the same layers at the training context.
    let full = models
        .iter()
        .map(|m| tensim::Model::new(m.in_dim(), cfg.n_ctx, m.layers().to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let under_tokens = checkpoints
        .iter()
        .cloned()
        .map(|c| c.under(&tokens))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = MatrixOptions {
        inputs: Some(&inputs),
        ..Default::default()
    };
    let gaussian = Metric::new(Kind::Gaussian);
    let jobs = [
        ("gaussian", gaussian.clone(), checkpoints.clone()),
        ("gaussian_tokens", gaussian, under_tokens),
        ("tensor", Metric::TENSOR, checkpoints.clone()),
        ("matrix", Metric::Matrix, checkpoints),
        ("behavioral", Metric::Behavioral, in_memory(&full, &names)),
    ];
    let mut mats = Vec::new();
    for (name, metric, checkpoints) in jobs {
        let sim = similarity_matrix(&checkpoints, &metric, &opts, &|_, _| {})?.similarity;
        crate::output::write(out, name, &sim)?;
        mats.push(sim);
    }
    let (gaussian, tokens, behavioral) = (&mats[0], &mats[1], &mats[4]);
    let segmentation = tensim::phases::segment(tokens, phases.min(n))?;
    let (a0, a1) = (
        history[0].induction_accuracy,
        history[n - 1].induction_accuracy,
    );
    let transition = history
        .iter()
        .position(|r| r.induction_accuracy > 0.5 * (a0 + a1))
        .unwrap_or(n - 1);
    let steps: Vec<f64> = history.iter().map(|r| r.step as f64).collect();
    let series =
        |name: &str, f: fn(&Record) -> f64| (name.to_string(), history.iter().map(f).collect());
    let panel = |label: &str, log_y: bool, series| tensim::plot::Panel {
        label: label.into(),
        log_y,
        series,
    };
    let curves = tensim::plot::Curves {
        panels: vec![
            panel(
                "loss",
                false,
                vec![
                    series("train", |r| r.train_loss),
                    series("validation", |r| r.val_loss),
                ],
            ),
            panel(
                "induction accuracy",
                false,
                vec![series("induction accuracy", |r| r.induction_accuracy)],
            ),
            panel(
                "in-context score",
                false,
                vec![series("late − early loss", |r| r.in_context_score)],
            ),
        ],
    };
    let fig = tensim::plot::HeatmapOptions {
        title: format!("induction: gaussian similarity of {n} checkpoints (tokens' statistics)"),
        labels: history.iter().map(|r| r.step.to_string()).collect(),
        steps: Some(steps),
        log_steps: true,
        boundaries: segmentation.boundaries(),
    };
    for ext in ["png", "svg"] {
        tensim::plot::training_figure(tokens, &curves, &out.join(format!("figure.{ext}")), &fig)?;
    }
    let first = |t: f64| {
        history
            .iter()
            .find(|r| r.induction_accuracy >= t)
            .map(|r| r.step)
    };
    let summary = Summary {
        config: cfg.clone(),
        induction_20: first(0.2),
        induction_50: first(0.5),
        induction_80: first(0.8),
        transition: history[transition].step,
        gaussian: Blocks::of(gaussian, transition),
        gaussian_tokens: Blocks::of(tokens, transition),
        phase_starts: segmentation
            .starts
            .iter()
            .map(|&i| history[i].step)
            .collect(),
        gaussian_to_final: (0..n).map(|i| gaussian[(i, n - 1)]).collect(),
        tokens_to_final: (0..n).map(|i| tokens[(i, n - 1)]).collect(),
        behavioral_to_final: (0..n).map(|i| behavioral[(i, n - 1)]).collect(),
        history,
        seconds_training,
        seconds_analysis: analysis.elapsed().as_secs_f64(),
    };
    tensim::io::write_atomic(&out.join("report.md"), report(&summary).as_bytes())?;
    Ok(summary)
}

fn report(s: &Summary) -> String {
    let c = &s.config;
    let l = &c.shape;
    let opt = |v: Option<usize>| v.map_or("not reached".to_string(), |x| format!("step {x}"));
    let last = s.history.last().expect("at least one checkpoint");
    let mut r = format!(
        "# Induction heads in a bilinear-attention language model\n\n\
         Embedding {} → {}, {} bilinear attention layers ({} heads, causal, rotary base {}, q/k \
         biases, residual X + {}·f(X)), RMS-scaled unembedding → {}. Sequences of {} tokens: a \
         Markov chain (favourite successor with probability {}) with a segment of {} uniform tokens \
         written twice. {} steps of AdamW (peak lr {}, {} warm-up steps, cosine decay, weight \
         decay {}), batch {}, seed {}; {} checkpoints, compared at {} positions.\n\n",
        l.vocab, l.d_model, l.layers, l.heads, l.rotary_base, l.residual, l.vocab, c.n_ctx,
        c.markov, c.segment, c.steps, c.lr, c.warmup, c.weight_decay, c.batch, c.seed,
        s.history.len(), c.analysis_ctx
    );
    r += &format!(
        "| milestone | first checkpoint |\n|---|---|\n| induction accuracy ≥ 0.2 | {} |\n\
         | induction accuracy ≥ 0.5 | {} |\n| induction accuracy ≥ 0.8 | {} |\n\n",
        opt(s.induction_20),
        opt(s.induction_50),
        opt(s.induction_80)
    );
    r += &format!(
        "Final: validation loss {:.3}, induction accuracy {:.3} (first checkpoint {:.3}), \
         in-context score {:.3}.\n\n",
        last.val_loss,
        last.induction_accuracy,
        s.history[0].induction_accuracy,
        last.in_context_score
    );
    let g = |b: &Blocks| {
        format!(
            "{:.3} | {:.3} | {:.3} | {:.3} |",
            b.within_pre,
            b.within_post,
            b.across,
            b.within_post - b.across
        )
    };
    r += &format!(
        "Transition at step {} (induction accuracy past the midpoint of its first and last \
         values). Mean gaussian similarity of distinct checkpoints, before the transition, from \
         it on, and between the two:\n\n\
         | inputs | before | from it on | between | from it on − between |\n|---|---|---|---|---|\n\
         | tokens' mean and covariance per position (`gaussian_tokens.npy`, figure) | {}\n\
         | N(0, I) (`gaussian.npy`, the paper's setting) | {}\n\n\
         Under N(0, I) an input has √{} times the norm of a one-hot token, so the terms of \
         degree {} (every layer on the one before) outweigh the rest by far more than on tokens; under \
         the tokens' own mean and covariance the phases stand out. Phases of the tokens' \
         gaussian matrix start at steps {:?}.\n\n",
        s.transition,
        g(&s.gaussian_tokens),
        g(&s.gaussian),
        c.shape.vocab,
        5u64.saturating_pow(c.shape.layers as u32),
        s.phase_starts
    );
    r += "| step | val loss | induction acc. | in-context score | gaussian (tokens) to final | gaussian N(0, I) to final | behavioural to final |\n|---|---|---|---|---|---|---|\n";
    let n = s.history.len();
    let picks: std::collections::BTreeSet<usize> = (0..8).map(|k| k * (n - 1) / 7).collect();
    for i in picks {
        let h = &s.history[i];
        r += &format!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.4} | {:.4} | {:.4} |\n",
            h.step,
            h.val_loss,
            h.induction_accuracy,
            h.in_context_score,
            s.tokens_to_final[i],
            s.gaussian_to_final[i],
            s.behavioral_to_final[i]
        );
    }
    r += &format!(
        "\nTraining took {:.1} s, the similarity matrices, phases and figures {:.1} s. Files: \
         `checkpoints/`, `history.json`, `history.csv`, `gaussian.npy`, `gaussian_tokens.npy` (with \
         `token_counts.npy`), \
         `tensor.npy`, `matrix.npy`, `behavioral.npy`, `figure.png`, `figure.svg`.\n",
        s.seconds_training, s.seconds_analysis
    );
    r
}
