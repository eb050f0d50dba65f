//! `tensim`: compare tensor-network models from their weights.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tensim::linalg::Par;
use tensim::metrics::{self, Comparison, Inputs, Metric, Options};
use tensim::trajectory::checkpoints;
use tensim::{io, Model};

#[derive(Parser)]
#[command(
    name = "tensim",
    version,
    about = "Are these two networks computing the same thing? \
Exact, symmetry-invariant similarity of bilinear (tensor-network) models from their weights."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare two models.
    ///
    /// Models of different hidden widths or depths are comparable under `tensor` as long as their
    /// input and output sizes agree (a model with fewer bilinear layers is lifted by identity
    /// nodes at its output). `matrix` needs identical architectures; `behavioral` and `cka`
    /// evaluate both models on --data or on --samples Gaussian inputs.
    Compare {
        a: PathBuf,
        b: PathBuf,
        #[command(flatten)]
        arch: ArchArgs,
        /// tensor | matrix | behavioral | cka | gaussian
        #[arg(long, default_value = "tensor")]
        metric: String,
        /// Also report the metric for each output coordinate (per-class slice similarity).
        #[arg(long)]
        per_output: bool,
        #[command(flatten)]
        sym: SymArgs,
        #[command(flatten)]
        gauss: GaussArgs,
        #[command(flatten)]
        inputs: InputArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// All-pairs similarity matrix over checkpoints (files, globs or folders).
    ///
    /// Checkpoints are ordered by the step number in their names unless --no-sort. Finished
    /// tiles are kept in OUT.tiles/ (named by the checkpoints' content hashes): re-running the
    /// same command resumes, and a changed checkpoint recomputes only its own tiles. Tensor
    /// similarity of one-bilinear-layer models runs as stacked GEMMs; deeper models pair by pair.
    Matrix {
        #[arg(required = true)]
        checkpoints: Vec<PathBuf>,
        /// Architecture JSON for every checkpoint (otherwise each file's embedded metadata).
        #[arg(long)]
        arch: Option<PathBuf>,
        /// tensor | matrix | behavioral
        #[arg(long, default_value = "tensor")]
        metric: String,
        /// Also one matrix per output coordinate (per-class similarity, as `compare --per-output`),
        /// written to OUT with `.per-output.npy` as an array (outputs, N, N); NaN where a slice is zero.
        #[arg(long)]
        per_output: bool,
        #[command(flatten)]
        sym: SymArgs,
        /// Labels, one per line, in checkpoint order.
        #[arg(long, conflicts_with = "labels_from_names")]
        labels: Option<PathBuf>,
        /// Label checkpoints by file name (default: by step number where every name has one).
        #[arg(long)]
        labels_from_names: bool,
        /// Keep the order given instead of sorting by step number.
        #[arg(long)]
        no_sort: bool,
        /// The matrix as .npy (default tensim-METRIC.npy).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The matrix as CSV with labelled rows and columns.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Print the labels and matrix as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        plot: PlotArgs,
        /// Checkpoints per tile side (default: about 1024 stacked hidden rows).
        #[arg(long, default_value_t = 0)]
        tile: usize,
        /// Neither read nor write finished tiles.
        #[arg(long)]
        no_resume: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        inputs: InputArgs,
    },
    /// Split a similarity matrix (.npy) into K contiguous phases with the least within-phase
    /// dissimilarity Σ(1 − S) (exact, by dynamic programming), and optionally plot them.
    Phases {
        /// Similarity matrix written by `tensim matrix`.
        matrix: PathBuf,
        /// Number of phases.
        #[arg(short, long)]
        k: usize,
        /// Labels, one per line (default: indices). With --log-steps they must be step numbers.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Heat-map with the phases outlined (.png or .svg).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Place checkpoints on a log(step + 1) axis.
        #[arg(long)]
        log_steps: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print a model's architecture, parameter count, polynomial degree and tensor names.
    Inspect {
        file: PathBuf,
        /// Architecture JSON (otherwise the file's embedded "tensim" metadata).
        #[arg(long)]
        arch: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Embed an architecture description into a safetensors file (checked first).
    Pack {
        /// Architecture JSON to embed.
        #[arg(long)]
        arch: PathBuf,
        input: PathBuf,
        output: PathBuf,
    },
    /// Check the exact tensor inner product against Monte Carlo on your own models.
    ///
    /// Prints (1) the exact tensor similarity beside an independent-legs Monte-Carlo estimate of
    /// the same quantities (MATH.md §4.3 (i): they must agree within a few standard errors) and
    /// (2) a Monte-Carlo estimate of the Gaussian functional inner product E⟨f_a(x), f_b(x)⟩,
    /// x ~ N(0, I), with its standard error.
    Verify {
        a: PathBuf,
        b: PathBuf,
        #[command(flatten)]
        arch: ArchArgs,
        #[arg(long, default_value_t = 100_000)]
        samples: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Time this machine's GEMM and the all-pairs tensor-similarity matrix for the reference
    /// shapes; report pairs/s, achieved GFLOP/s and the ratio to the GEMM throughput.
    Bench {
        /// 16 checkpoints instead of 64 (a smoke test).
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: bool,
    },
    /// Built-in examples.
    Demo {
        #[command(subcommand)]
        which: Demo,
    },
}

#[derive(Subcommand)]
enum Demo {
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
    /// Write randomly initialised `embed → bilinear × n → head` models (PyTorch initialisation),
    /// e.g. to try the tool or time it on a given shape.
    Random(RandomArgs),
}

#[derive(Args)]
struct GrokkingArgs {
    /// Output folder.
    #[arg(long, default_value = "tensim-grokking")]
    out: PathBuf,
    /// The paper's full configuration (P 113, 100 000 steps, weight decay 0.3, 100 checkpoints);
    /// the other flags still override it.
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
    /// Phases to find in the tensor-similarity matrix.
    #[arg(long, default_value_t = 3)]
    phases: usize,
    #[command(flatten)]
    common: DemoArgs,
}

#[derive(Args)]
struct BackdoorArgs {
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

/// Mode of the gaussian metric.
#[derive(Args)]
struct GaussArgs {
    /// gaussian: enumerate the Wick sum of the whole network (exact; refused when too large).
    #[arg(long, conflicts_with = "closure")]
    exact: bool,
    /// gaussian: propagate second moments layer by layer, each layer's input treated as
    /// Gaussian (approximate past the first non-linear layer). Default: exact when affordable.
    #[arg(long)]
    closure: bool,
}

impl GaussArgs {
    fn options(&self) -> tensim::metrics::gaussian::GaussOptions {
        use tensim::metrics::gaussian::Mode;
        tensim::metrics::gaussian::GaussOptions {
            mode: match (self.exact, self.closure) {
                (true, _) => Some(Mode::Exact),
                (_, true) => Some(Mode::Closure),
                _ => None,
            },
            ..Default::default()
        }
    }
}

/// Where the vision demos read their images.
#[derive(Args)]
struct ImageArgs {
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
struct DemoArgs {
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
struct ForgettingArgs {
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

#[derive(Args)]
struct RandomArgs {
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
    /// Hidden width of each bilinear layer.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Number of bilinear layers.
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
    /// Lerp residual scale of the bilinear layers (omit for none).
    #[arg(long)]
    residual: Option<f64>,
    /// No embedding: the first bilinear layer reads the input.
    #[arg(long)]
    no_embed: bool,
    /// Bilinear layers without `down`: each outputs its hidden product.
    #[arg(long)]
    no_down: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct SymArgs {
    /// Tensor metric: `layer` symmetrises each bilinear node (the paper's metric); `full`
    /// symmetrises over all leg permutations, so identical functions score 1 whatever the
    /// architecture. Full is exact up to two bilinear layers (cost ≈ 16·h₂h₁³ flops per pair) and
    /// a complex-Gaussian Monte-Carlo estimate beyond (--samples, reports its standard error).
    #[arg(long, default_value = "layer", value_parser = ["layer", "full"])]
    symmetrize: String,
    /// With --symmetrize full: the similarity of the constant, linear, quadratic, … parts.
    #[arg(long)]
    by_degree: bool,
}

impl SymArgs {
    fn full(&self, inputs: &InputArgs) -> Result<Option<tensim::metrics::fullsym::FullOptions>> {
        if self.by_degree && self.symmetrize != "full" {
            bail!("--by-degree needs --symmetrize full");
        }
        Ok(
            (self.symmetrize == "full").then_some(tensim::metrics::fullsym::FullOptions {
                samples: inputs.samples,
                seed: inputs.seed,
                by_degree: self.by_degree,
            }),
        )
    }
}

#[derive(Args)]
struct PlotArgs {
    /// Heat-map of the matrix (.png or .svg).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Place checkpoints on a log(step + 1) axis (needs step numbers in the names).
    #[arg(long)]
    log_steps: bool,
    /// Outline the K optimal phases (see `tensim phases`) on the heat-map.
    #[arg(long)]
    phases: Option<usize>,
}

#[derive(Args)]
struct ArchArgs {
    /// Architecture JSON for both models (otherwise each file's embedded metadata).
    #[arg(long, conflicts_with_all = ["arch_a", "arch_b"])]
    arch: Option<PathBuf>,
    /// Architecture JSON for model A.
    #[arg(long)]
    arch_a: Option<PathBuf>,
    /// Architecture JSON for model B.
    #[arg(long)]
    arch_b: Option<PathBuf>,
}

#[derive(Args)]
struct InputArgs {
    /// Inputs for behavioral/cka: .npy of shape (rows, dim) or (rows, n_ctx, dim).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Number of Gaussian inputs for behavioral/cka when no --data is given, or of Monte-Carlo
    /// samples for --symmetrize full beyond two bilinear layers.
    #[arg(long, default_value_t = 10_000)]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// mimalloc: large buffers (the attention covariance blocks, moment tensors) are reused
/// from step to step instead of being returned to the system and faulted in again.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`tensim inspect … | head`) like other command-line tools.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compare {
            a,
            b,
            arch,
            metric,
            per_output,
            sym,
            gauss,
            inputs,
            json,
        } => {
            let full = sym.full(&inputs)?;
            let metric: Metric = metric.parse()?;
            let (ma, mb) = load_pair(&a, &b, &arch)?;
            let data = metric
                .needs_inputs()
                .then(|| make_inputs(&ma, &inputs))
                .transpose()?;
            let opts = Options {
                per_output,
                par: Par::rayon(0),
                gaussian: gauss.options(),
            };
            let r = match (&full, metric) {
                (Some(f), Metric::Tensor) => {
                    tensim::metrics::fullsym::similarity(&ma, &mb, &opts, f)
                }
                (Some(_), _) => bail!("--symmetrize full applies to the tensor metric"),
                (None, _) => metrics::compare(&ma, &mb, metric, data.as_ref(), &opts),
            }
            .with_context(|| format!("comparing {} with {}", a.display(), b.display()))?;
            print_comparison(&r, json);
        }
        Command::Inspect { file, arch, json } => inspect(&file, arch.as_deref(), json)?,
        Command::Bench { quick, json } => {
            let r = tensim::bench::run(quick)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let g = &r.gemm;
                println!("GEMM {0}×{0}×{0}: f64 {1:.1} GFLOP/s on one thread, {2:.1} GFLOP/s on {3} cores; f32 {4:.1} GFLOP/s on {3} cores", g.n, g.f64_single_gflops, g.f64_all_cores_gflops, r.threads, g.f32_all_cores_gflops);
                println!("\nall-pairs tensor similarity (stacked GEMMs, f64):");
                println!(
                    "  {:<44} {:>6} {:>9} {:>10} {:>9} {:>9}",
                    "shape", "ckpts", "seconds", "pairs/s", "GFLOP/s", "of GEMM"
                );
                for c in &r.cases {
                    println!(
                        "  {:<44} {:>6} {:>9.3} {:>10.0} {:>9.1} {:>8.0}%",
                        c.name,
                        c.checkpoints,
                        c.seconds,
                        c.pairs_per_second,
                        c.gflops,
                        100.0 * c.ratio_to_gemm
                    );
                }
                println!("\ngaussian similarity of tensor transformers (f64):");
                println!(
                    "  {:<52} {:>8} {:>9} {:>9} {:>6} {:>10}",
                    "shape", "params", "cold s", "warm s", "ckpts", "matrix s"
                );
                for c in &r.transformers {
                    println!(
                        "  {:<52} {:>8} {:>9.3} {:>9.3} {:>6} {:>10.2}",
                        c.name,
                        c.parameters,
                        c.pair_cold_seconds,
                        c.pair_warm_seconds,
                        c.matrix_checkpoints,
                        c.matrix_seconds
                    );
                }
            }
        }
        Command::Phases {
            matrix,
            k,
            labels,
            plot,
            log_steps,
            json,
        } => {
            let (shape, values) = io::read_npy(&matrix)?;
            let n = shape[0];
            if shape.len() != 2 || shape[1] != n {
                bail!(
                    "{}: expected a square matrix, got shape {shape:?}",
                    matrix.display()
                );
            }
            let sim = tensim::linalg::from_row_major(n, n, &values);
            let labels: Vec<String> = match &labels {
                Some(f) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
                None => (0..n).map(|i| i.to_string()).collect(),
            };
            if labels.len() != n {
                bail!("{} labels for a {n}×{n} matrix", labels.len());
            }
            let phases = tensim::phases::segment(&sim, k)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(
                        &json!({"starts": phases.starts, "cost": phases.cost, "labels": labels})
                    )?
                );
            } else {
                println!(
                    "{k} phases (within-phase dissimilarity {:.6}):",
                    phases.cost
                );
                let mut ends: Vec<usize> = phases.starts[1..].to_vec();
                ends.push(n);
                for (p, (&a, &b)) in phases.starts.iter().zip(&ends).enumerate() {
                    println!(
                        "  phase {p}: checkpoints {a}..{} ({} … {})",
                        b - 1,
                        labels[a],
                        labels[b - 1]
                    );
                }
            }
            if let Some(path) = &plot {
                let steps: Option<Vec<f64>> = labels.iter().map(|l| l.parse().ok()).collect();
                let title = format!("similarity, {n} checkpoints, {k} phases");
                draw_heatmap(&sim, path, title, labels, steps, log_steps, Some(k))?;
            }
        }
        Command::Matrix {
            checkpoints,
            arch,
            metric,
            per_output,
            sym,
            labels,
            labels_from_names,
            no_sort,
            out,
            csv,
            json,
            plot,
            tile,
            no_resume,
            quiet,
            inputs,
        } => {
            let metric: Metric = metric.parse()?;
            let full = sym.full(&inputs)?;
            let mut paths = checkpoints::expand(&checkpoints)?;
            if !no_sort {
                checkpoints::natural_sort(&mut paths);
            }
            let (cks, models) = checkpoints::load_all(&paths, arch.as_deref())?;
            let labels = checkpoints::labels(&cks, labels.as_deref(), labels_from_names)?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("tensim-{}.npy", metric.name())));
            let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            let hashes: Vec<String> = cks.iter().map(|c| c.hash.clone()).collect();
            let store = if no_resume {
                None
            } else {
                let dir = PathBuf::from(format!("{}.tiles", out.display()));
                let entries: Vec<(String, String)> =
                    names.iter().cloned().zip(hashes.iter().cloned()).collect();
                Some(tensim::trajectory::tiles::TileStore::open(
                    &dir,
                    metric.name(),
                    &entries,
                )?)
            };
            let data = metric
                .needs_inputs()
                .then(|| make_inputs(&models[0], &inputs))
                .transpose()?;
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {bar:40} {pos}/{len} pairs  {elapsed} elapsed, ETA {eta}",
                )
                .expect("valid template"),
            );
            if quiet {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let started = std::time::Instant::now();
            let result = tensim::trajectory::similarity_matrix(
                &models,
                &names,
                &hashes,
                metric,
                &tensim::trajectory::MatrixOptions {
                    tile,
                    store: store.as_ref(),
                    inputs: data.as_ref(),
                    per_output,
                    full: full.as_ref(),
                    flops: None,
                },
                &|done, total| {
                    bar.set_length(total);
                    bar.inc(done);
                },
            )?;
            bar.finish_and_clear();
            let sim = &result.similarity;
            let n = models.len();
            let values: Vec<f64> = (0..n)
                .flat_map(|i| (0..n).map(move |j| (i, j)))
                .map(|(i, j)| sim[(i, j)])
                .collect();
            io::write_npy(&out, &[n, n], &values)?;
            let per_output_values: Option<Vec<f64>> = result.per_output.as_ref().map(|mats| {
                mats.iter()
                    .flat_map(|m| (0..n).flat_map(move |i| (0..n).map(move |j| m[(i, j)])))
                    .collect()
            });
            if let Some(v) = &per_output_values {
                let path = out.with_extension("per-output.npy");
                io::write_npy(&path, &[v.len() / (n * n), n, n], v)?;
            }
            if let Some(csv) = &csv {
                let mut text = format!("label,{}\n", labels.join(","));
                for (i, l) in labels.iter().enumerate() {
                    let row: Vec<String> = (0..n).map(|j| format!("{:.12}", sim[(i, j)])).collect();
                    text += &format!("{l},{}\n", row.join(","));
                }
                io::write_atomic(csv, text.as_bytes())?;
            }
            if let Some(path) = &plot.plot {
                let steps: Option<Vec<f64>> =
                    cks.iter().map(|c| c.step.map(|s| s as f64)).collect();
                let title = format!("{} similarity, {n} checkpoints", metric.name());
                draw_heatmap(
                    sim,
                    path,
                    title,
                    labels.clone(),
                    steps,
                    plot.log_steps,
                    plot.phases,
                )?;
            }
            if json {
                let rows: Vec<Vec<f64>> = (0..n)
                    .map(|i| (0..n).map(|j| sim[(i, j)]).collect())
                    .collect();
                let mut v = json!({"metric": metric.name(), "labels": labels, "paths": names, "similarity": rows});
                if let Some(mats) = &result.per_output {
                    let nan_null = |x: f64| {
                        if x.is_nan() {
                            serde_json::Value::Null
                        } else {
                            json!(x)
                        }
                    };
                    v["per_output"] = mats
                        .iter()
                        .map(|m| {
                            (0..n)
                                .map(|i| (0..n).map(|j| nan_null(m[(i, j)])).collect::<Vec<_>>())
                                .collect::<Vec<_>>()
                        })
                        .collect();
                }
                println!("{}", serde_json::to_string(&v)?);
            } else if !quiet {
                eprintln!(
                    "{n}×{n} {} similarity matrix in {:.2} s → {}{}",
                    metric.name(),
                    started.elapsed().as_secs_f64(),
                    out.display(),
                    csv.map(|c| format!(", {}", c.display()))
                        .unwrap_or_default()
                );
            }
        }
        Command::Pack {
            arch,
            input,
            output,
        } => {
            let m = io::pack(&arch, &input, &output)?;
            println!(
                "wrote {} ({} layers, {} parameters, architecture embedded)",
                output.display(),
                m.layers().len(),
                m.param_count()
            );
        }
        Command::Verify {
            a,
            b,
            arch,
            samples,
            seed,
            json,
        } => {
            let (ma, mb) = load_pair(&a, &b, &arch)?;
            let v = tensim::montecarlo::verify(&ma, &mb, samples, seed, Par::rayon(0))?;
            print_verification(&v, json);
        }
        Command::Demo {
            which: Demo::Symmetries { out, seed },
        } => demo_symmetries(&out, seed)?,
        Command::Demo {
            which: Demo::Random(args),
        } => demo_random(&args)?,
        Command::Demo {
            which: Demo::Grokking(args),
        } => demo_grokking(&args)?,
        Command::Demo {
            which: Demo::Backdoor(args),
        } => demo_backdoor(&args)?,
        Command::Demo {
            which: Demo::Forgetting(args),
        } => {
            let mut cfg = tensim_train::forgetting::ForgettingConfig::default();
            cfg.steps_per_stage = args.steps_per_stage.unwrap_or(cfg.steps_per_stage);
            cfg.seed = args.common.seed.unwrap_or(cfg.seed);
            cfg.data = args.images.source()?;
            cfg.max_images = args.images.max_images;
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            let bar = args.common.start(2 * cfg.steps_per_stage);
            tensim_train::forgetting::run_demo(&cfg, &args.out, |step| {
                bar.set_position(step as u64)
            })?;
            finish_demo(&bar, &args.out);
        }
    }
    Ok(())
}

fn load_pair(a: &Path, b: &Path, arch: &ArchArgs) -> Result<(Model, Model)> {
    let shared = arch.arch.as_deref();
    Ok((
        io::load(a, arch.arch_a.as_deref().or(shared))?,
        io::load(b, arch.arch_b.as_deref().or(shared))?,
    ))
}

fn make_inputs(model: &Model, args: &InputArgs) -> Result<Inputs> {
    let (n_ctx, dim) = (model.input().n_ctx, model.in_dim());
    Ok(match &args.data {
        Some(p) => Inputs::from_npy(p, n_ctx, dim)?,
        None => Inputs::gaussian(args.samples, n_ctx, dim, args.seed)?,
    })
}

fn print_comparison(r: &Comparison, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("serialisable"));
        return;
    }
    println!("metric      {}", r.metric);
    println!("similarity  {:.12}", r.similarity);
    println!("inner       {:.12e}", r.inner);
    println!("norm2_a     {:.12e}", r.norm2_a);
    println!("norm2_b     {:.12e}", r.norm2_b);
    if let Some(src) = &r.inputs {
        println!("inputs      {src} ({} rows)", r.samples.unwrap_or(0));
    }
    match (r.symmetrize, r.mode) {
        (Some(sym), Some(mode)) => println!("symmetrize  {sym} ({mode})"),
        (None, Some(mode)) => println!("mode        {mode}"),
        _ => {}
    }
    if let Some(se) = r.stderr {
        println!(
            "std. error  {se:.3e} (of inner, {} samples)",
            r.samples.unwrap_or(0)
        );
    }
    if let Some(deg) = &r.by_degree {
        println!("by degree:");
        for (m, s) in deg.iter().enumerate() {
            match s {
                Some(s) => println!("  {m:>4}  {s:.12}"),
                None => println!("  {m:>4}  undefined (zero part)"),
            }
        }
    }
    if let Some(per) = &r.per_output {
        println!("per output:");
        for (o, s) in per.iter().enumerate() {
            match s {
                Some(s) => println!("  {o:>4}  {s:.12}"),
                None => println!("  {o:>4}  undefined (zero slice)"),
            }
        }
    }
}

fn print_verification(v: &tensim::montecarlo::Verification, json: bool) {
    if json {
        println!("{}", serde_json::to_string(v).expect("serialisable"));
        return;
    }
    let t = &v.tensor_exact;
    let mc = &v.tensor_mc;
    println!("Monte Carlo with {} samples (seed {})", v.samples, v.seed);
    println!();
    println!(
        "tensor inner products: exact vs independent-Gaussian-legs estimate (MATH.md §4.3 (i))"
    );
    println!(
        "  {:<10} {:>18} {:>18} {:>14} {:>8}",
        "", "exact", "monte carlo", "std. error", "z"
    );
    for (name, exact, est) in [
        ("inner", t.inner, mc.inner),
        ("norm2_a", t.norm2_a, mc.norm2_a),
        ("norm2_b", t.norm2_b, mc.norm2_b),
    ] {
        println!(
            "  {name:<10} {exact:>18.10e} {:>18.10e} {:>14.3e} {:>8.2}",
            est.mean,
            est.stderr,
            est.z(exact)
        );
    }
    println!(
        "  {:<10} {:>18.10} {:>18.10}",
        "similarity", t.similarity, mc.similarity
    );
    println!();
    println!("Gaussian functional inner product E<f_a(x), f_b(x)>, x ~ N(0, I) (monte carlo)");
    let f = &v.functional_mc;
    for (name, est) in [
        ("inner", f.inner),
        ("norm2_a", f.norm2_a),
        ("norm2_b", f.norm2_b),
    ] {
        println!("  {name:<10} {:>18.10e} ± {:.3e}", est.mean, est.stderr);
    }
    println!("  {:<10} {:>18.10}", "cosine", f.similarity);
}

fn inspect(file: &Path, arch: Option<&Path>, json: bool) -> Result<()> {
    let tf = io::TensorFile::open(file)?;
    let stored = tf.tensors()?;
    let description = io::resolve_arch(&tf, arch)?;
    let model = tf.model(&description)?;
    let used = used_names(&description);
    let unused: Vec<&str> = stored
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !used.iter().any(|u| u == n))
        .collect();
    if json {
        let tensors: Vec<_> = stored
            .iter()
            .map(|t| json!({"name": t.name, "dtype": t.dtype, "shape": t.shape, "used": used.contains(&t.name)}))
            .collect();
        let v = json!({
            "file": file.display().to_string(),
            "architecture": serde_json::to_value(&description)?,
            "parameters": model.param_count(),
            "degree": model.degree(),
            "input_dim": model.in_dim(),
            "output_dim": model.out_dim(),
            "tensors": tensors,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("file        {}", file.display());
    println!(
        "input       dim {}, n_ctx {}",
        model.in_dim(),
        model.input().n_ctx
    );
    println!("output      dim {}", model.out_dim());
    println!("parameters  {}", model.param_count());
    println!(
        "degree      {} (polynomial degree in the input)",
        model.degree()
    );
    println!("layers:");
    let residual = |r: Option<tensim::arch::Residual>| {
        r.map(|r| format!(", residual {:?} scale {}", r.mode, r.scale).to_lowercase())
            .unwrap_or_default()
    };
    for (i, layer) in model.layers().iter().enumerate() {
        let extra = match layer {
            tensim::Layer::Bilinear(b) => format!(
                " hidden {}{}{}",
                b.hidden(),
                if b.down.is_none() { ", no down" } else { "" },
                residual(b.residual)
            ),
            tensim::Layer::Attention(a) => format!(
                " {} heads, mask {:?}{}{}",
                a.n_head,
                a.mask,
                a.rotary
                    .map(|b| format!(", rotary base {b}"))
                    .unwrap_or_default(),
                residual(a.residual)
            )
            .to_lowercase(),
            tensim::Layer::Linear(_) => String::new(),
        };
        println!(
            "  {i:>3}  {:<9} {} → {}{extra}",
            layer.kind(),
            layer.in_dim(),
            layer.out_dim()
        );
    }
    println!("tensors:");
    for t in &stored {
        let mark = if used.contains(&t.name) {
            ""
        } else {
            "   (not used by the architecture)"
        };
        println!("  {:<40} {:<5} {:?}{mark}", t.name, t.dtype, t.shape);
    }
    if !unused.is_empty() {
        println!(
            "{} stored tensor(s) are not used by the architecture",
            unused.len()
        );
    }
    Ok(())
}

/// Every tensor name the description refers to.
fn used_names(arch: &tensim::Arch) -> Vec<String> {
    let v = serde_json::to_value(arch).expect("serialisable");
    let mut names = Vec::new();
    for layer in v["layers"].as_array().into_iter().flatten() {
        for (key, val) in layer.as_object().into_iter().flatten() {
            if key != "kind" && key != "mask" {
                if let Some(s) = val.as_str() {
                    names.push(s.to_string());
                }
            }
        }
    }
    names
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
        let cell = |m: Metric| match metrics::compare(a, &e.model, m, Some(&inputs), &opts) {
            Ok(r) => format!("{:.6}", r.similarity),
            Err(tensim::Error::Incompatible(_)) => "n/a".to_string(),
            Err(err) => format!("error: {err}"),
        };
        println!(
            "  A-{:<2} {:>10} {:>10} {:>12}",
            e.name,
            cell(Metric::Tensor),
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
            mode: ResidualMode::Lerp,
            scale,
        }),
        bias: false,
        embed: !args.no_embed,
        down: !args.no_down,
        heads: args.heads,
        n_ctx: args.n_ctx,
    };
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

fn draw_heatmap(
    sim: &tensim::linalg::Mat<f64>,
    path: &Path,
    title: String,
    labels: Vec<String>,
    steps: Option<Vec<f64>>,
    log_steps: bool,
    phases: Option<usize>,
) -> Result<()> {
    let boundaries = match phases {
        Some(k) => tensim::phases::segment(sim, k)?.boundaries(),
        None => vec![],
    };
    let opts = tensim::plot::HeatmapOptions {
        title,
        labels,
        steps,
        log_steps,
        boundaries,
    };
    tensim::plot::heatmap(sim, path, &opts)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The default grokking run: the paper's task and model with stronger weight decay and fewer
/// steps, so that it groks within a few minutes on two cores.
fn grokking_config(args: &GrokkingArgs) -> tensim_train::grokking::GrokkingConfig {
    let mut cfg = tensim_train::grokking::GrokkingConfig::paper();
    if !args.paper {
        cfg.steps = 20_000;
        cfg.weight_decay = 1.0;
        cfg.checkpoints = 60;
    }
    cfg.p = args.p.unwrap_or(cfg.p);
    cfg.steps = args.steps.unwrap_or(cfg.steps);
    cfg.checkpoints = args.checkpoints.unwrap_or(cfg.checkpoints);
    cfg.hidden = args.hidden.unwrap_or(cfg.hidden);
    cfg.weight_decay = args.weight_decay.unwrap_or(cfg.weight_decay);
    cfg.lr = args.lr.unwrap_or(cfg.lr);
    cfg.train_fraction = args.train_fraction.unwrap_or(cfg.train_fraction);
    cfg.seed = args.common.seed.unwrap_or(cfg.seed);
    cfg
}

fn demo_grokking(args: &GrokkingArgs) -> Result<()> {
    let cfg = grokking_config(args);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let bar = args.common.start(cfg.steps);
    let summary = tensim_train::grokking::run_demo(&cfg, args.phases, &args.out, |step, last| {
        if step % 50 == 0 {
            bar.set_position(step as u64);
            if let Some(r) = last {
                bar.set_message(format!(
                    "loss {:.3}/{:.3}  acc {:.3}/{:.3} (train/val)",
                    r.train_loss, r.val_loss, r.train_accuracy, r.val_accuracy
                ));
            }
        }
    })?;
    finish_demo(&bar, &args.out);
    eprintln!(
        "wrote {} (training {:.0} s, analysis {:.0} s)",
        args.out.display(),
        summary.seconds_training,
        summary.seconds_analysis
    );
    Ok(())
}

/// Clear a demo's progress bar and print the report it wrote into `out`.
fn finish_demo(bar: &indicatif::ProgressBar, out: &Path) {
    bar.finish_and_clear();
    println!(
        "{}",
        std::fs::read_to_string(out.join("report.md")).unwrap_or_default()
    );
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
    if cfg.target > 9 {
        bail!("--target must be a digit class 0–9");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let bar = args.common.start(cfg.clean_steps + cfg.poison_steps);
    tensim_train::backdoor::run_demo(&cfg, &args.out, |step, last| {
        if step % 50 == 0 {
            bar.set_position(step as u64);
            if let Some(r) = last {
                bar.set_message(format!(
                    "test acc {:.3}  attack success {:.3}",
                    r.test_accuracy, r.attack_success
                ));
            }
        }
    })?;
    finish_demo(&bar, &args.out);
    Ok(())
}
