//! Similarity metrics, one file each. Every metric returns a [`Comparison`]:
//! `similarity = inner / √(norm2_a · norm2_b)` for the metric's own inner product.

pub mod batch;
pub mod behavioral;
pub mod breakdown;
pub mod cka;
pub mod difference;
pub mod fullsym;
pub mod gaussian;
pub mod inputs;
pub mod matrix;
pub mod tensor;

use std::borrow::Cow;

use serde::Serialize;

use crate::calibration;
use crate::distribution::{DistributionInfo, InputDistribution};
use crate::error::{Error, Result};
use crate::linalg::Par;
use crate::model::Model;
use crate::scale;

pub use inputs::Inputs;

/// The metrics by name (what a [`Comparison`] reports; `--metric` on the command line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Tensor similarity: exact, from the weights (MATH.md §3).
    #[default]
    Tensor,
    /// Cosine of the concatenated flattened weights (same architecture only).
    Matrix,
    /// Mean over inputs of the per-input cosine of the two output vectors.
    #[cfg_attr(feature = "clap", value(alias = "behavioural"))]
    Behavioral,
    /// Linear CKA of the two models' outputs on the same inputs.
    Cka,
    /// `E⟨f_a(x), f_b(x)⟩` under Gaussian input, normalised, from the weights (MATH.md §4–5).
    Gaussian,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Tensor,
        Kind::Matrix,
        Kind::Behavioral,
        Kind::Cka,
        Kind::Gaussian,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Tensor => "tensor",
            Kind::Matrix => "matrix",
            Kind::Behavioral => "behavioral",
            Kind::Cka => "cka",
            Kind::Gaussian => "gaussian",
        }
    }

    /// Whether the metric evaluates the models on inputs.
    pub fn needs_inputs(self) -> bool {
        matches!(self, Kind::Behavioral | Kind::Cka)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Kind> {
        Kind::ALL
            .into_iter()
            .find(|m| m.name() == s || (s == "behavioural" && *m == Kind::Behavioral))
            .ok_or_else(|| Error::UnknownMetric { name: s.into() })
    }
}

/// How the tensor metric symmetrises the coefficient tensors.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Symmetrize {
    /// Each bilinear node (the paper's metric, MATH.md §3).
    #[default]
    Layer,
    /// Over all permutations of the unrolled tensor's legs (MATH.md §3.6).
    Full(fullsym::FullOptions),
}

/// A metric with its own options.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    Tensor(Symmetrize),
    Matrix,
    Behavioral,
    Cka,
    Gaussian(gaussian::GaussOptions),
}

impl Metric {
    /// The per-layer tensor metric.
    pub const TENSOR: Metric = Metric::Tensor(Symmetrize::Layer);

    /// `kind` with its default options.
    pub fn new(kind: Kind) -> Metric {
        match kind {
            Kind::Tensor => Metric::TENSOR,
            Kind::Matrix => Metric::Matrix,
            Kind::Behavioral => Metric::Behavioral,
            Kind::Cka => Metric::Cka,
            Kind::Gaussian => Metric::Gaussian(Default::default()),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Metric::Tensor(_) => Kind::Tensor,
            Metric::Matrix => Kind::Matrix,
            Metric::Behavioral => Kind::Behavioral,
            Metric::Cka => Kind::Cka,
            Metric::Gaussian(_) => Kind::Gaussian,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Whether the metric evaluates the models on inputs.
    pub fn needs_inputs(&self) -> bool {
        self.kind().needs_inputs()
    }
}

impl From<Kind> for Metric {
    fn from(kind: Kind) -> Metric {
        Metric::new(kind)
    }
}

/// How a reported value was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Exactly (enumeration, closed form, or a closure that involves no approximation).
    Exact,
    /// Layer-by-layer Gaussian closure.
    Closure,
    /// Monte-Carlo estimate (with a standard error).
    MonteCarlo,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Exact => "exact",
            Method::Closure => "closure",
            Method::MonteCarlo => "monte-carlo",
        })
    }
}

/// Which symmetrisation a tensor-metric value used (`--symmetrize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Symmetry {
    /// Each bilinear node (the paper's metric).
    Layer,
    /// All permutations of the unrolled tensor's legs.
    Full,
}

impl std::fmt::Display for Symmetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Symmetry::Layer => "layer",
            Symmetry::Full => "full",
        })
    }
}

/// Result of comparing two models.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Comparison {
    pub metric: Kind,
    pub similarity: f64,
    pub inner: f64,
    pub norm2_a: f64,
    pub norm2_b: f64,
    /// The same metric per output coordinate; `None` where one model's slice is zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_output: Option<Vec<Option<f64>>>,
    /// The matrix metric per parameter tensor (`--per-tensor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_tensor: Option<Vec<matrix::TensorCosine>>,
    /// Number of inputs used (behavioural metrics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// Where the inputs came from (behavioural metrics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<String>,
    /// The symmetrisation (tensor metric with `--symmetrize full`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symmetrize: Option<Symmetry>,
    /// How the value was computed (gaussian and fully symmetrised tensor metrics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Method>,
    /// The arithmetic of the attention moments where it was not f64 (gaussian closure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::moment::Precision>,
    /// Standard error of `inner` (Monte-Carlo modes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<f64>,
    /// Similarity of the degree-0, 1, 2, … parts of the two polynomials (`None` where a part is zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_degree: Option<Vec<Option<f64>>>,
    /// What the value cannot be trusted for (an unresolved Monte-Carlo estimate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The Gaussian input distribution the models were read under (default `N(0, I)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_distribution: Option<DistributionInfo>,
    /// Mean, standard deviation and number of the null pairs' similarities (`--null K`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub null_mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub null_std: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub null_pairs: Option<usize>,
    /// `(similarity − null_mean) / null_std`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub z: Option<f64>,
    /// The inner product over the units or heads of the last non-linear layers (`--breakdown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<breakdown::Breakdown>,
}

/// The text `tensim compare` prints: one `name  value` line per field, then the per-degree and
/// per-output values.
impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "metric      {}", self.metric)?;
        writeln!(f, "similarity  {:.12}", self.similarity)?;
        writeln!(f, "inner       {:.12e}", self.inner)?;
        writeln!(f, "norm2_a     {:.12e}", self.norm2_a)?;
        writeln!(f, "norm2_b     {:.12e}", self.norm2_b)?;
        if let Some(src) = &self.inputs {
            writeln!(f, "inputs      {src} ({} rows)", self.samples.unwrap_or(0))?;
        }
        match (self.symmetrize, self.mode) {
            (Some(sym), Some(mode)) => writeln!(f, "symmetrize  {sym} ({mode})")?,
            (None, Some(mode)) => match self.precision {
                Some(p) => writeln!(f, "mode        {mode} (attention moments in {p})")?,
                None => writeln!(f, "mode        {mode}")?,
            },
            _ => {}
        }
        if let Some(se) = self.stderr {
            let n = self.samples.unwrap_or(0);
            writeln!(f, "std. error  {se:.3e} (of inner, {n} samples)")?;
        }
        if let Some(w) = &self.warning {
            writeln!(f, "warning     {w}")?;
        }
        if let Some(d) = &self.input_distribution {
            writeln!(f, "input       {d}")?;
        }
        if let (Some(m), Some(s), Some(k)) = (self.null_mean, self.null_std, self.null_pairs) {
            let z = self.z.map_or("undefined".into(), |z| format!("{z:.2}"));
            writeln!(
                f,
                "null        {m:.6} ± {s:.6} ({k} pairs of independent initialisations); z = {z}"
            )?;
        }
        let list = |f: &mut std::fmt::Formatter<'_>, title, values: &[Option<f64>], zero| {
            writeln!(f, "{title}:")?;
            for (i, s) in values.iter().enumerate() {
                match s {
                    Some(s) => writeln!(f, "  {i:>4}  {s:.12}")?,
                    None => writeln!(f, "  {i:>4}  undefined ({zero})")?,
                }
            }
            Ok(())
        };
        if let Some(deg) = &self.by_degree {
            list(f, "by degree", deg, "zero part")?;
        }
        if let Some(per) = &self.per_output {
            list(f, "per output", per, "zero slice")?;
        }
        if let Some(b) = &self.breakdown {
            write!(f, "{b}")?;
        }
        if let Some(per) = &self.per_tensor {
            writeln!(f, "per tensor:")?;
            for t in per {
                match t.similarity {
                    Some(s) => writeln!(f, "  {:<24}  {s:.12}", t.tensor)?,
                    None => writeln!(f, "  {:<24}  undefined (zero tensor)", t.tensor)?,
                }
            }
        }
        Ok(())
    }
}

/// Options shared by the metrics.
#[derive(Clone, Debug)]
pub struct Options {
    /// Also compute the metric per output coordinate.
    pub per_output: bool,
    /// Also the matrix metric per parameter tensor.
    pub per_tensor: bool,
    /// Parallelism of the computation (GEMMs and the gaussian moments).
    pub par: Par,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            per_output: false,
            per_tensor: false,
            par: Par::rayon(0),
        }
    }
}

/// Compare two models with `metric`; `inputs` is required by the behavioural metrics.
pub fn compare(
    a: &Model,
    b: &Model,
    metric: &Metric,
    inputs: Option<&Inputs>,
    opts: &Options,
) -> Result<Comparison> {
    check_io(a, b)?;
    if opts.per_tensor && metric.kind() != Kind::Matrix {
        return Err(Error::Invalid(format!(
            "per-tensor values are reported by the matrix metric, not by {}",
            metric.name()
        )));
    }
    let (a, b) = (scale_free(a, metric), scale_free(b, metric));
    let (a, b) = (a.as_ref(), b.as_ref());
    let inputs = inputs.map(|x| scale::rescaled_inputs(x, &[a, b]));
    let need = || {
        inputs.as_deref().ok_or(Error::NeedsInputs {
            metric: metric.kind(),
        })
    };
    let r = match metric {
        Metric::Tensor(Symmetrize::Layer) => tensor::similarity(a, b, opts),
        Metric::Tensor(Symmetrize::Full(full)) => fullsym::similarity(a, b, opts, full),
        Metric::Matrix => matrix::similarity(a, b, opts),
        Metric::Behavioral => behavioral::similarity(a, b, need()?, opts),
        Metric::Cka => cka::similarity(a, b, need()?, opts),
        Metric::Gaussian(g) => gaussian::similarity(a, b, g, opts.par).map(|mut r| {
            if !opts.per_output {
                r.per_output = None;
            }
            r
        }),
    }
    .map_err(|e| scale::explain_zero(e, a, b, metric.kind()))?;
    if !r.similarity.is_finite() {
        return Err(Error::OutOfRange {
            metric: metric.name().into(),
            what: format!("similarity = {}", r.similarity),
        });
    }
    Ok(r)
}

/// [`compare`] with both models read under `dist` (tensor and gaussian metrics) and, with
/// `null = Some((K, seed))`, the value's z-score against `K` pairs of independent
/// initialisations of A's architecture (read under `dist` too).
pub fn compare_calibrated(
    a: &Model,
    b: &Model,
    metric: &Metric,
    inputs: Option<&Inputs>,
    opts: &Options,
    dist: Option<&InputDistribution>,
    null: Option<(usize, u64)>,
) -> Result<Comparison> {
    check_distribution(dist, metric.kind())?;
    let mut r = compare(&*under(a, dist)?, &*under(b, dist)?, metric, inputs, opts)?;
    r.input_distribution = dist.map(|d| d.info().clone());
    if let Some((pairs, seed)) = null {
        let n = null_of(a, metric, inputs, dist, (pairs, seed), opts.par)?;
        r.z = n.z(r.similarity);
        (r.null_mean, r.null_std, r.null_pairs) = (Some(n.mean), Some(n.std), Some(n.pairs));
    }
    Ok(r)
}

/// The breakdown ([`breakdown::breakdown`]) of a pair whose inner product [`compare_calibrated`]
/// gave as `inner`, on the models as the metric read them (under `dist`, rescaled).
pub fn breakdown_of(
    a: &Model,
    b: &Model,
    metric: &Metric,
    dist: Option<&InputDistribution>,
    inner: f64,
    per_output: bool,
) -> Result<breakdown::Breakdown> {
    let (a, b) = (under(a, dist)?, under(b, dist)?);
    let (a, b) = (scale_free(&a, metric), scale_free(&b, metric));
    breakdown::breakdown(&a, &b, metric, Some(inner), per_output)
}

/// `metric` (under `dist`) between `pairs` pairs of independent initialisations of `model`'s
/// architecture drawn from `seed` ([`calibration::null`]).
pub fn null_of(
    model: &Model,
    metric: &Metric,
    inputs: Option<&Inputs>,
    dist: Option<&InputDistribution>,
    (pairs, seed): (usize, u64),
    par: Par,
) -> Result<calibration::Null> {
    let opts = Options {
        par,
        ..Default::default()
    };
    calibration::null(model, pairs, seed, |x, y| {
        let r = compare(&*under(x, dist)?, &*under(y, dist)?, metric, inputs, &opts)?;
        Ok(r.similarity)
    })
}

/// `m` read under `dist` ([`InputDistribution::apply`]), or `m` itself.
fn under<'m>(m: &'m Model, dist: Option<&InputDistribution>) -> Result<Cow<'m, Model>> {
    Ok(match dist {
        Some(d) => Cow::Owned(d.apply(m)?),
        None => Cow::Borrowed(m),
    })
}

/// An input distribution applies to the metrics computed from the weights under Gaussian
/// input: `tensor` and `gaussian`.
pub fn check_distribution(dist: Option<&InputDistribution>, kind: Kind) -> Result<()> {
    match dist {
        Some(_) if !matches!(kind, Kind::Tensor | Kind::Gaussian) => Err(Error::Invalid(format!(
            "an input distribution applies to the tensor and gaussian metrics, not to {kind}"
        ))),
        _ => Ok(()),
    }
}

/// `m`, rescaled where extreme and homogeneous ([`scale::rescaled`]), unless the metric reads
/// the weights themselves (`matrix`).
pub fn scale_free<'a>(m: &'a Model, metric: &Metric) -> Cow<'a, Model> {
    match metric {
        Metric::Matrix => Cow::Borrowed(m),
        _ => scale::rescaled(m),
    }
}

/// Input and output sizes and positions must agree for any comparison.
pub fn check_io(a: &Model, b: &Model) -> Result<()> {
    for (what, x, y) in [
        ("input sizes", a.in_dim(), b.in_dim()),
        ("output sizes", a.out_dim(), b.out_dim()),
        ("positions (n_ctx)", a.input().n_ctx, b.input().n_ctx),
    ] {
        if x != y {
            return Err(Error::Mismatch { what, a: x, b: y });
        }
    }
    if a.law() != b.law() {
        return Err(Error::Incompatible(
            "the two models are read under different per-position input statistics".into(),
        ));
    }
    Ok(())
}

/// `inner / √(n_a n_b)`, clamped to [-1, 1] against rounding; an error if a norm is zero, or if
/// a value is infinite or not a number (overflow: never a number that is not the answer).
pub fn cosine(inner: f64, n_a: f64, n_b: f64, metric: Kind) -> Result<f64> {
    for (v, what) in [
        (inner, "inner product"),
        (n_a, "norm of A"),
        (n_b, "norm of B"),
    ] {
        if !v.is_finite() {
            return Err(Error::OutOfRange {
                metric: metric.name().into(),
                what: format!("{what} = {v}"),
            });
        }
    }
    for (n, which) in [(n_a, "A"), (n_b, "B")] {
        if n <= 0.0 {
            return Err(Error::ZeroNorm {
                which: which.into(),
                metric: metric.name().into(),
            });
        }
    }
    Ok((inner / geometric_mean(n_a, n_b)).clamp(-1.0, 1.0))
}

/// `√(x y)` for `x, y > 0` as `hi √(lo / hi)`: symmetric, without overflow, and exactly `x`
/// where `y = x` (so that equal inner products and norms give a cosine of exactly 1).
fn geometric_mean(x: f64, y: f64) -> f64 {
    let (lo, hi) = if x <= y { (x, y) } else { (y, x) };
    hi * (lo / hi).sqrt()
}

/// Per-coordinate cosines; `None` where a norm is zero.
pub fn cosines(inner: &[f64], n_a: &[f64], n_b: &[f64]) -> Vec<Option<f64>> {
    inner
        .iter()
        .zip(n_a.iter().zip(n_b))
        .map(|(&i, (&x, &y))| {
            (x > 0.0 && y > 0.0).then(|| (i / geometric_mean(x, y)).clamp(-1.0, 1.0))
        })
        .collect()
}
