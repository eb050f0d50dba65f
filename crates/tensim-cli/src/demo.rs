//! `tensim demo …`: the built-in examples (re-parametrised models, random models, and the
//! training demos of `tensim-train`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tensim::io;
use tensim::metrics::{self, Inputs, Metric, Options};

#[derive(Subcommand)]
pub enum Demo {
    /// A model next to re-parametrised (same function), perturbed and unrelated versions:
    /// tensor similarity sees through the symmetries, the weight cosine does not.
    Symmetries {
        /// Folder for the example model files.
        #[arg(long, default_value = "tensim-example")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train a bilinear network on modular addition until it groks; checkpoints, training
    /// history, tensor/matrix/behavioral similarity matrices, phases, a figure and a report.
    Grokking(GrokkingArgs),
    /// Train a digit classifier clean, then insert a backdoor (a stamped trigger relabelled to a
    /// target class); similarity matrices per metric show which ones see the change.
    Backdoor(BackdoorArgs),
    /// Train a digit classifier on classes 0–4, then on 5–9 only; similarity matrices show the
    /// first classes' mechanism being overwritten.
    Forgetting(ForgettingArgs),
    /// Train a two-layer bilinear-attention language model on sequences with repeated
    /// segments until induction heads form; checkpoints, history (induction accuracy,
    /// in-context score), gaussian/tensor/matrix/behavioral similarity matrices, a figure and a
    /// report.
    Induction(InductionArgs),
    /// Write randomly initialised `embed → bilinear × n → head` models (PyTorch initialisation),
    /// e.g. to try the tool or time it on a given shape; with `--heads` each block starts with
    /// attention (`--hidden 0`: attention only, as the paper's language model).
    Random(RandomArgs),
}

#[derive(Args)]
pub struct GrokkingArgs {
    /// Output folder.
    #[arg(long, default_value = "tensim-grokking")]
    out: PathBuf,
    /// The paper's full configuration (P 113, 100 000 steps, weight decay 0.3, 100 checkpoints
    /// on a power-5 schedule; the default: 50 000 steps, 60 on a power-3 one); the other flags
    /// still override it.
    #[arg(long)]
    paper: bool,
    /// Modulus P.
    #[arg(long)]
    p: Option<usize>,
    /// Training steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Checkpoints on a power schedule (more of them early).
    #[arg(long)]
    checkpoints: Option<usize>,
    /// Hidden units of the bilinear layer.
    #[arg(long)]
    hidden: Option<usize>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    lr: Option<f64>,
    /// Fraction of the P² pairs used for training.
    #[arg(long)]
    train_fraction: Option<f64>,
    /// Pairs per optimisation step.
    #[arg(long)]
    batch: Option<usize>,
    /// Phases to find in the tensor-similarity matrix.
    #[arg(long, default_value_t = 3)]
    phases: usize,
    #[command(flatten)]
    common: DemoArgs,
}

#[derive(Args)]
pub struct InductionArgs {
    /// Output folder.
    #[arg(long, default_value = "tensim-induction")]
    out: PathBuf,
    /// The paper's LM shape (vocabulary 4096, d_model 256, 8 heads); the other flags still
    /// override it.
    #[arg(long)]
    paper: bool,
    /// Training steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Checkpoints on a log-spaced schedule.
    #[arg(long)]
    checkpoints: Option<usize>,
    #[arg(long)]
    vocab: Option<usize>,
    #[arg(long)]
    d_model: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    /// Training context (positions per sequence).
    #[arg(long)]
    n_ctx: Option<usize>,
    /// Length of the repeated segment.
    #[arg(long)]
    segment: Option<usize>,
    /// Probability that a token is followed by its favourite successor (0: no bigram phase).
    #[arg(long)]
    markov: Option<f64>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    batch: Option<usize>,
    /// Phases to find in the gaussian matrix.
    #[arg(long, default_value_t = 3)]
    phases: usize,
    #[command(flatten)]
    common: DemoArgs,
}

#[derive(Args)]
pub struct BackdoorArgs {
    /// Output folder.
    #[arg(long, default_value = "tensim-backdoor")]
    out: PathBuf,
    #[arg(long)]
    clean_steps: Option<usize>,
    #[arg(long)]
    poison_steps: Option<usize>,
    /// Fraction of each batch stamped and relabelled during poisoning.
    #[arg(long)]
    poison_fraction: Option<f64>,
    /// Target class of the backdoor.
    #[arg(long)]
    target: Option<u32>,
    #[command(flatten)]
    images: ImageArgs,
    #[command(flatten)]
    common: DemoArgs,
}

/// Where the vision demos read their images.
#[derive(Args)]
pub struct ImageArgs {
    /// Images you downloaded: a folder of MNIST-style IDX files (`train-images-idx3-ubyte[.gz]`,
    /// `train-labels-idx1-ubyte[.gz]`, and `t10k-…` if present; MNIST, Fashion-MNIST) or an SVHN
    /// `.mat` file (`train_32x32.mat`). Default: the bundled 8×8 digits.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Use a random subset of at most this many images.
    #[arg(long)]
    max_images: Option<usize>,
}

impl ImageArgs {
    fn source(&self) -> Result<tensim_train::data::Source> {
        Ok(match &self.data {
            Some(p) => tensim_train::data::Source::from_path(p)?,
            None => tensim_train::data::Source::Digits,
        })
    }
}

/// Flags every training demo takes.
#[derive(Args)]
pub struct DemoArgs {
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    quiet: bool,
}

impl DemoArgs {
    /// Size the worker pool and make the progress bar for `total` steps.
    fn start(&self, total: usize) -> indicatif::ProgressBar {
        if let Some(t) = self.threads {
            // Read when the global rayon pool starts (GEMMs, tiles, candle's CPU kernels).
            std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        }
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  {elapsed} elapsed, ETA {eta}",
            )
            .expect("valid template"),
        );
        if self.quiet {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar
    }
}

#[derive(Args)]
pub struct ForgettingArgs {
    /// Output folder.
    #[arg(long, default_value = "tensim-forgetting")]
    out: PathBuf,
    /// Training steps of each stage.
    #[arg(long)]
    steps_per_stage: Option<usize>,
    #[command(flatten)]
    images: ImageArgs,
    #[command(flatten)]
    common: DemoArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ResidualModeArg {
    Lerp,
    Add,
}

#[derive(Args)]
pub struct RandomArgs {
    /// Folder for the checkpoints (`random-000.safetensors`, …).
    #[arg(long, default_value = "tensim-random")]
    out: PathBuf,
    /// Number of models.
    #[arg(long, default_value_t = 2)]
    count: usize,
    #[arg(long, default_value_t = 784)]
    d_in: usize,
    /// Width of the residual stream (embedding output).
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// Hidden width of each bilinear layer (0 with --heads: attention-only blocks).
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Number of blocks: bilinear layers, each after an attention layer with --heads.
    #[arg(long, default_value_t = 1)]
    layers: usize,
    #[arg(long, default_value_t = 10)]
    d_out: usize,
    /// Attention heads: with N > 0 every bilinear layer is preceded by a causal, rotary
    /// bilinear attention layer (tensor transformer blocks).
    #[arg(long, default_value_t = 0)]
    heads: usize,
    /// Sequence positions of the input (transformers).
    #[arg(long, default_value_t = 1)]
    n_ctx: usize,
    /// Residual scale of the bilinear and attention layers (omit for none).
    #[arg(long)]
    residual: Option<f64>,
    /// How the residual mixes: `lerp` (`(1−s)x + s·f(x)`) or `add` (`x + s·f(x)`).
    #[arg(long, value_enum, default_value = "lerp", requires = "residual")]
    residual_mode: ResidualModeArg,
    /// Random biases on every layer (q/k biases of attention too).
    #[arg(long)]
    bias: bool,
    /// No embedding: the first bilinear layer reads the input.
    #[arg(long)]
    no_embed: bool,
    /// Bilinear layers without `down`: each outputs its hidden product.
    #[arg(long)]
    no_down: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(which: Demo) -> Result<()> {
    match which {
        Demo::Symmetries { out, seed } => demo_symmetries(&out, seed),
        Demo::Random(args) => demo_random(&args),
        Demo::Grokking(args) => demo_grokking(&args),
        Demo::Induction(args) => demo_induction(&args),
        Demo::Backdoor(args) => demo_backdoor(&args),
        Demo::Forgetting(args) => demo_forgetting(&args),
    }
}

fn demo_symmetries(out: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let examples = tensim::demo::symmetries(seed)?;
    println!("Built-in example: is each model computing the same thing as A?\n");
    for e in &examples {
        let path = out.join(format!("{}.safetensors", e.name));
        io::save(&e.model, &path)?;
        println!("  {}  {:<70} {}", e.name, e.description, path.display());
    }
    let a = &examples[0].model;
    let inputs = Inputs::gaussian(10_000, 1, a.in_dim(), seed)?;
    let opts = Options::default();
    println!(
        "\n  {:<4} {:>10} {:>10} {:>12}   (behavioral: mean per-input output cosine on {} Gaussian inputs)",
        "pair", "tensor", "matrix", "behavioral", inputs.rows
    );
    for e in &examples[1..] {
        let cell = |m: Metric| match metrics::compare(a, &e.model, &m, Some(&inputs), &opts) {
            Ok(r) => format!("{:.6}", r.similarity),
            Err(e) if matches!(e.root(), tensim::Error::Incompatible(_)) => "n/a".to_string(),
            Err(err) => format!("error: {err}"),
        };
        println!(
            "  A-{:<2} {:>10} {:>10} {:>12}",
            e.name,
            cell(Metric::TENSOR),
            cell(Metric::Matrix),
            cell(Metric::Behavioral)
        );
    }
    println!(
        "\nB and C compute A's function exactly: tensor similarity is 1 for both, while the weight \
         cosine of B is far from 1 (and undefined for C, whose shapes differ).\nTry: tensim compare \
         {0}/A.safetensors {0}/D.safetensors --per-output   |   tensim inspect {0}/C.safetensors",
        out.display()
    );
    if examples.is_empty() {
        bail!("no examples");
    }
    Ok(())
}

fn demo_random(args: &RandomArgs) -> Result<()> {
    use tensim::arch::{Residual, ResidualMode};
    use tensim::rand::SeedableRng;
    let shape = tensim::demo::StackShape {
        d_in: args.d_in,
        d_model: args.d_model,
        hidden: vec![args.hidden; args.layers],
        d_out: args.d_out,
        residual: args.residual.map(|scale| Residual {
            mode: match args.residual_mode {
                ResidualModeArg::Lerp => ResidualMode::Lerp,
                ResidualModeArg::Add => ResidualMode::Add,
            },
            scale,
        }),
        bias: args.bias,
        embed: !args.no_embed,
        down: !args.no_down,
        heads: args.heads,
        n_ctx: args.n_ctx,
    };
    if args.d_model == 0 || args.d_out == 0 {
        bail!("--d-model and --d-out must be at least 1 (a layer without outputs cannot be saved)");
    }
    if args.hidden == 0 && args.heads == 0 {
        bail!("--hidden 0 (attention-only blocks) needs --heads");
    }
    if args.heads > 0 && (args.no_embed || args.no_down) {
        bail!("--heads (tensor transformer blocks) needs the embedding and down projections");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut rng = tensim::rand::rngs::StdRng::seed_from_u64(args.seed);
    for i in 0..args.count {
        let m = tensim::demo::random_stack(&shape, &mut rng)?;
        let path = args.out.join(format!("random-{i:03}.safetensors"));
        io::save(&m, &path)?;
        println!("wrote {} ({} parameters)", path.display(), m.param_count());
    }
    Ok(())
}

/// The default grokking run: the paper's task, model and optimiser for half its steps (the
/// solution has settled by then), 60 checkpoints on a power-3 schedule, so that the last third
/// of the checkpoints falls after grokking, in consolidation.
fn grokking_config(args: &GrokkingArgs) -> tensim_train::grokking::GrokkingConfig {
    let mut cfg = tensim_train::grokking::GrokkingConfig::paper();
    if !args.paper {
        cfg.steps = 50_000;
        cfg.checkpoints = 60;
        cfg.exponent = 3.0;
    }
    cfg.p = args.p.unwrap_or(cfg.p);
    cfg.steps = args.steps.unwrap_or(cfg.steps);
    cfg.checkpoints = args.checkpoints.unwrap_or(cfg.checkpoints);
    cfg.hidden = args.hidden.unwrap_or(cfg.hidden);
    cfg.weight_decay = args.weight_decay.unwrap_or(cfg.weight_decay);
    cfg.lr = args.lr.unwrap_or(cfg.lr);
    cfg.train_fraction = args.train_fraction.unwrap_or(cfg.train_fraction);
    cfg.batch = args.batch.unwrap_or(cfg.batch);
    cfg.seed = args.common.seed.unwrap_or(cfg.seed);
    cfg
}

fn demo_grokking(args: &GrokkingArgs) -> Result<()> {
    let cfg = grokking_config(args);
    let bar = args.common.start(cfg.steps);
    let progress = every(&bar, 50, |r: &tensim_train::grokking::Record| {
        format!(
            "loss {:.3}/{:.3}  acc {:.3}/{:.3} (train/val)",
            r.train_loss, r.val_loss, r.train_accuracy, r.val_accuracy
        )
    });
    let s = tensim_train::grokking::run_demo(&cfg, args.phases, &args.out, progress)?;
    finish_demo(
        &bar,
        &args.out,
        Some((s.seconds_training, s.seconds_analysis)),
    );
    Ok(())
}

fn demo_induction(args: &InductionArgs) -> Result<()> {
    use tensim_train::induction::InductionConfig;
    let mut cfg = if args.paper {
        InductionConfig::paper()
    } else {
        InductionConfig::default()
    };
    cfg.steps = args.steps.unwrap_or(cfg.steps);
    cfg.checkpoints = args.checkpoints.unwrap_or(cfg.checkpoints);
    cfg.shape.vocab = args.vocab.unwrap_or(cfg.shape.vocab);
    cfg.shape.d_model = args.d_model.unwrap_or(cfg.shape.d_model);
    cfg.shape.heads = args.heads.unwrap_or(cfg.shape.heads);
    cfg.n_ctx = args.n_ctx.unwrap_or(cfg.n_ctx);
    cfg.segment = args.segment.unwrap_or(cfg.segment);
    cfg.markov = args.markov.unwrap_or(cfg.markov);
    cfg.lr = args.lr.unwrap_or(cfg.lr);
    cfg.weight_decay = args.weight_decay.unwrap_or(cfg.weight_decay);
    cfg.batch = args.batch.unwrap_or(cfg.batch);
    cfg.seed = args.common.seed.unwrap_or(cfg.seed);
    let bar = args.common.start(cfg.steps);
    let progress = every(&bar, 20, |r: &tensim_train::induction::Record| {
        format!(
            "val loss {:.3}  induction acc {:.3}",
            r.val_loss, r.induction_accuracy
        )
    });
    let s = tensim_train::induction::run_demo(&cfg, args.phases, &args.out, progress)?;
    finish_demo(
        &bar,
        &args.out,
        Some((s.seconds_training, s.seconds_analysis)),
    );
    Ok(())
}

/// A training demo's progress callback: every `k` steps, the step and the latest record's
/// `message` on the bar.
fn every<'a, R>(
    bar: &'a indicatif::ProgressBar,
    k: usize,
    message: impl Fn(&R) -> String + 'a,
) -> impl FnMut(usize, Option<&R>) + 'a {
    move |step, last| {
        if step % k == 0 {
            bar.set_position(step as u64);
            if let Some(r) = last {
                bar.set_message(message(r));
            }
        }
    }
}

/// Clear a demo's progress bar and print the report it wrote into `out` (and the seconds of
/// training and analysis, if given).
fn finish_demo(bar: &indicatif::ProgressBar, out: &Path, seconds: Option<(f64, f64)>) {
    bar.finish_and_clear();
    println!(
        "{}",
        std::fs::read_to_string(out.join("report.md")).unwrap_or_default()
    );
    if let Some((training, analysis)) = seconds {
        eprintln!(
            "wrote {} (training {training:.0} s, analysis {analysis:.0} s)",
            out.display()
        );
    }
}

fn demo_backdoor(args: &BackdoorArgs) -> Result<()> {
    let mut cfg = tensim_train::backdoor::BackdoorConfig::default();
    cfg.clean_steps = args.clean_steps.unwrap_or(cfg.clean_steps);
    cfg.poison_steps = args.poison_steps.unwrap_or(cfg.poison_steps);
    cfg.poison_fraction = args.poison_fraction.unwrap_or(cfg.poison_fraction);
    cfg.target = args.target.unwrap_or(cfg.target);
    cfg.seed = args.common.seed.unwrap_or(cfg.seed);
    cfg.data = args.images.source()?;
    cfg.max_images = args.images.max_images;
    let bar = args.common.start(cfg.clean_steps + cfg.poison_steps);
    let progress = every(&bar, 50, |r: &tensim_train::backdoor::Record| {
        format!(
            "test acc {:.3}  attack success {:.3}",
            r.test_accuracy, r.attack_success
        )
    });
    tensim_train::backdoor::run_demo(&cfg, &args.out, progress)?;
    finish_demo(&bar, &args.out, None);
    Ok(())
}

fn demo_forgetting(args: &ForgettingArgs) -> Result<()> {
    let mut cfg = tensim_train::forgetting::ForgettingConfig::default();
    cfg.steps_per_stage = args.steps_per_stage.unwrap_or(cfg.steps_per_stage);
    cfg.seed = args.common.seed.unwrap_or(cfg.seed);
    cfg.data = args.images.source()?;
    cfg.max_images = args.images.max_images;
    let bar = args.common.start(2 * cfg.steps_per_stage);
    tensim_train::forgetting::run_demo(&cfg, &args.out, |step| bar.set_position(step as u64))?;
    finish_demo(&bar, &args.out, None);
    Ok(())
}
