//! Argument groups shared by several commands, and what they load or draw.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use tensim::distribution::InputDistribution;
use tensim::metrics::fullsym::FullOptions;
use tensim::metrics::gaussian::{GaussOptions, Mode, Precision};
use tensim::metrics::{Inputs, Kind, Metric, Symmetrize, Symmetry};
use tensim::{io, Model};

#[derive(Args)]
pub struct ArchArgs {
    /// Architecture JSON for both models, or a language model's training config.json (otherwise
    /// each file's embedded metadata).
    #[arg(long, conflicts_with_all = ["arch_a", "arch_b"])]
    pub arch: Option<PathBuf>,
    /// Architecture JSON for model A.
    #[arg(long)]
    pub arch_a: Option<PathBuf>,
    /// Architecture JSON for model B.
    #[arg(long)]
    pub arch_b: Option<PathBuf>,
    #[command(flatten)]
    pub key: KeyArg,
    #[command(flatten)]
    pub n_ctx: NCtxArg,
}

/// The analysed sequence length, overriding the description's.
#[derive(Args)]
pub struct NCtxArg {
    /// Sequence positions the analysis spans (sequence models; a language model's config.json
    /// is analysed at 4 otherwise).
    #[arg(long)]
    pub n_ctx: Option<usize>,
}

/// The description at `path` (none: each file's own), its positions set to `n_ctx` if given.
pub fn description(path: Option<&Path>, n_ctx: Option<usize>) -> Result<Option<tensim::Arch>> {
    let Some(path) = path else {
        if n_ctx.is_some() {
            bail!("--n-ctx applies to a description given with --arch");
        }
        return Ok(None);
    };
    let arch = tensim::Arch::from_file(path)?;
    Ok(Some(match n_ctx {
        Some(n) => arch.with_positions(n)?,
        None => arch,
    }))
}

/// Which state dict of a PyTorch checkpoint to read.
#[derive(Args)]
pub struct KeyArg {
    /// PyTorch checkpoints (.pt, .pth, .bin, .ckpt): the entry of the saved dict holding the
    /// state dict (default: the dict itself if it holds tensors, else its one entry that does).
    #[arg(long)]
    pub key: Option<String>,
}

impl ArchArgs {
    /// Both models, each with its own description or the shared one, the two files read at
    /// once (each on its own thread); A's error comes first, the warnings in order.
    pub fn load_pair(&self, a: &Path, b: &Path) -> Result<(Model, Model)> {
        let (ra, rb) = std::thread::scope(|s| {
            let rb = s.spawn(|| self.read_side(b, false));
            let ra = self.read_side(a, true);
            (
                ra,
                rb.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            )
        });
        let ((ma, ua), (mb, ub)) = (ra?, rb?);
        warn_unused(a, &ua);
        warn_unused(b, &ub);
        Ok((ma, mb))
    }

    /// A model of side A (`--arch-a`) or B (`--arch-b`), else with the shared description.
    pub fn load_side(&self, path: &Path, side_a: bool) -> Result<Model> {
        let (model, unused) = self.read_side(path, side_a)?;
        warn_unused(path, &unused);
        Ok(model)
    }

    /// [`ArchArgs::load_side`] with the stored tensors the description leaves out.
    fn read_side(&self, path: &Path, side_a: bool) -> Result<(Model, Vec<String>)> {
        let own = if side_a { &self.arch_a } else { &self.arch_b };
        let arch = own.as_deref().or(self.arch.as_deref());
        let sidecar = description(arch, self.n_ctx.n_ctx)?;
        Ok(io::load_with_unused(
            path,
            sidecar.as_ref(),
            self.key.key.as_deref(),
        )?)
    }
}

/// A model file with its description (the sidecar, else the embedded one), with a warning on
/// stderr when the file holds tensors the description does not use.
pub fn load(path: &Path, arch: Option<&tensim::Arch>, key: Option<&str>) -> Result<Model> {
    let (model, unused) = io::load_with_unused(path, arch, key)?;
    warn_unused(path, &unused);
    Ok(model)
}

/// A warning on stderr naming (up to four of) the tensors of `path` its description leaves out.
pub fn warn_unused(path: &Path, unused: &[String]) {
    if !unused.is_empty() {
        let shown: Vec<String> = unused.iter().take(4).map(|n| format!("\"{n}\"")).collect();
        let more = match unused.len() {
            n if n > 4 => format!(" and {} more", n - 4),
            _ => String::new(),
        };
        eprintln!(
            "warning: {}: {} stored tensor(s) not used by the architecture description ({}{more}); \
             does it describe the whole checkpoint?",
            path.display(),
            unused.len(),
            shown.join(", ")
        );
    }
}

#[derive(Args)]
pub struct InputArgs {
    /// Inputs for behavioral/cka: .npy of shape (rows, dim) or (rows, n_ctx, dim).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Number of Gaussian inputs for behavioral/cka when no --data is given, or of Monte-Carlo
    /// samples for --symmetrize full beyond two bilinear layers.
    #[arg(long, default_value_t = 10_000)]
    pub samples: usize,
    /// Seed of the Gaussian inputs, the Monte-Carlo samples and the --null initialisations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl InputArgs {
    /// The inputs `model` is evaluated on: `--data`, or `--samples` Gaussian rows.
    pub fn inputs(&self, model: &Model) -> Result<Inputs> {
        let (n_ctx, dim) = (model.input().n_ctx, model.in_dim());
        Ok(match &self.data {
            Some(p) => Inputs::from_npy(p, n_ctx, dim)?,
            None => Inputs::gaussian(self.samples, n_ctx, dim, self.seed)?,
        })
    }
}

#[derive(Args)]
pub struct SymArgs {
    /// Tensor metric: `layer` symmetrises each bilinear node (the paper's metric); `full`
    /// symmetrises over all leg permutations, so identical functions score 1 whatever the
    /// architecture. Full is exact up to two bilinear layers (cost ≈ 16·h₂h₁³ flops per pair) and
    /// a complex-Gaussian Monte-Carlo estimate beyond (--samples, reports its standard error).
    #[arg(long, value_enum, default_value_t = Symmetry::Layer)]
    pub symmetrize: Symmetry,
    /// With --symmetrize full: the similarity of the constant, linear, quadratic, … parts.
    #[arg(long)]
    pub by_degree: bool,
}

/// The metric `kind` with the options the flags give it.
pub fn metric(kind: Kind, sym: &SymArgs, gauss: &GaussArgs, inputs: &InputArgs) -> Result<Metric> {
    if sym.by_degree && sym.symmetrize != Symmetry::Full {
        bail!("--by-degree needs --symmetrize full");
    }
    if (gauss.exact || gauss.closure) && kind != Kind::Gaussian {
        bail!("--exact and --closure apply to the gaussian metric, not to {kind}");
    }
    if gauss.precision.is_some() && kind != Kind::Gaussian {
        bail!("--precision applies to the gaussian metric, not to {kind}");
    }
    if inputs.data.is_some() && !kind.needs_inputs() {
        bail!("--data is read by the behavioral and cka metrics; {kind} reads no inputs");
    }
    Ok(match (kind, sym.symmetrize) {
        (Kind::Tensor, Symmetry::Full) => Metric::Tensor(Symmetrize::Full(FullOptions {
            samples: inputs.samples,
            seed: inputs.seed,
            by_degree: sym.by_degree,
        })),
        (_, Symmetry::Full) => bail!("--symmetrize full applies to the tensor metric"),
        (Kind::Gaussian, _) => Metric::Gaussian(gauss.options()),
        (kind, _) => Metric::new(kind),
    })
}

/// Mode of the gaussian metric.
#[derive(Args)]
pub struct GaussArgs {
    /// gaussian: enumerate the Wick sum of the whole network (exact; refused when too large).
    #[arg(long, conflicts_with = "closure")]
    pub exact: bool,
    /// gaussian: propagate second moments layer by layer, each layer's input treated as
    /// Gaussian (approximate past the first non-linear layer). Default: exact when affordable.
    #[arg(long)]
    pub closure: bool,
    /// gaussian: arithmetic of the attention layers' moments [default: f32]. f32 runs about
    /// twice as fast as f64 in half the memory, the similarity within about 1e-6 of f64's (see
    /// README "Performance"); their sums and everything else stay f64.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    F64,
    F32,
}

impl GaussArgs {
    pub fn options(&self) -> GaussOptions {
        GaussOptions {
            mode: match (self.exact, self.closure) {
                (true, _) => Some(Mode::Exact),
                (_, true) => Some(Mode::Closure),
                _ => None,
            },
            precision: match self.precision {
                None => Precision::default(),
                Some(PrecisionArg::F64) => Precision::F64,
                Some(PrecisionArg::F32) => Precision::F32,
            },
            ..Default::default()
        }
    }
}

#[derive(Args)]
pub struct PlotArgs {
    /// Heat-map of the matrix (.png or .svg).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Place checkpoints on a log(step + 1) axis (needs step numbers in the names).
    #[arg(long)]
    pub log_steps: bool,
    /// Outline the K optimal phases (see `tensim phases`) on the heat-map.
    #[arg(long)]
    pub phases: Option<usize>,
}

impl PlotArgs {
    /// Refuse, before any work, a figure tensim cannot write or a log step axis without steps
    /// (`steps`: whether every checkpoint has a step number) or a phase count above `n`.
    pub fn check(&self, n: usize, steps: bool) -> Result<()> {
        if let Some(p) = &self.plot {
            tensim::plot::format_of(p)?;
        }
        if self.log_steps && !steps {
            bail!("--log-steps needs a step number in every checkpoint's name");
        }
        if let Some(k) = self.phases.filter(|&k| k == 0 || k > n) {
            bail!("--phases {k}: the number of phases must be between 1 and {n}");
        }
        Ok(())
    }
}

/// A heat-map of `sim` at `path`, the optimal `phases` outlined.
pub fn draw_heatmap(
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

/// The Gaussian input distribution of the tensor and gaussian metrics (default `N(0, I)` at
/// every position).
#[derive(Args)]
pub struct DistArgs {
    /// Data rows (.npy, shape (rows, dim)): read the models under the Gaussian with the rows'
    /// mean and covariance (n − 1), shared by every position; sequences (rows, n_ctx, dim):
    /// each position its own, positions independent (models with attention).
    #[arg(long, conflicts_with_all = ["input_mean", "token_counts"])]
    pub input_stats: Option<PathBuf>,
    /// The input mean (.npy, shape (dim,)); with --input-cov.
    #[arg(long, requires = "input_cov", conflicts_with = "token_counts")]
    pub input_mean: Option<PathBuf>,
    /// The input covariance (.npy, shape (dim, dim), symmetric positive semidefinite; singular
    /// is fine); with --input-mean.
    #[arg(long, requires = "input_mean")]
    pub input_cov: Option<PathBuf>,
    /// Token counts of a one-hot token model (.npy, shape (vocab,)): the Gaussian with the
    /// token distribution's mean p and covariance diag(p) − ppᵀ.
    #[arg(long)]
    pub token_counts: Option<PathBuf>,
}

impl DistArgs {
    /// The distribution the flags give, if any, refused for a metric it does not apply to.
    pub fn load(&self, kind: Kind) -> Result<Option<InputDistribution>> {
        use tensim::metrics::inputs::read_array;
        let name = |p: &Path| p.display().to_string();
        let dist = match (
            &self.input_stats,
            &self.input_mean,
            &self.input_cov,
            &self.token_counts,
        ) {
            (Some(x), ..) => {
                let (shape, values) = read_array(x)?;
                InputDistribution::from_sample_array(&shape, &values, &name(x))?
            }
            (_, Some(m), Some(c), _) => {
                let ((ms, mv), (cs, cv)) = (read_array(m)?, read_array(c)?);
                let source = format!("{} and {}", name(m), name(c));
                InputDistribution::from_moment_arrays((&ms, mv), (&cs, &cv), &source)?
            }
            (.., Some(t)) => {
                let (shape, values) = read_array(t)?;
                InputDistribution::from_count_array(&shape, &values, &name(t))?
            }
            _ => return Ok(None),
        };
        tensim::metrics::check_distribution(Some(&dist), kind)?;
        Ok(Some(dist))
    }
}

/// Calibration against independent initialisations.
#[derive(Args)]
pub struct NullArg {
    /// Also compute the metric for K pairs of independent initialisations of the architecture
    /// (PyTorch's default, U(±1/√fan_in) per weight and bias, seeded by --seed) and report their
    /// mean and standard deviation and the z-score of the observed value.
    #[arg(long, value_name = "K")]
    pub null: Option<usize>,
}
