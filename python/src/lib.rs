//! Python bindings of tensim: a thin layer over the library. Every long call releases the GIL;
//! errors carry the library's messages (the same text the command-line tool prints).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use numpy::{
    PyArray1, PyArrayMethods, PyReadonlyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError};
use pyo3::prelude::*;

use tensim::distribution::InputDistribution;
use tensim::linalg::{from_row_major, to_row_major, Mat, Par};
use tensim::metrics::{Inputs, Kind, Metric, Options};
use tensim::trajectory::checkpoints::{self, Checkpoint};
use tensim::trajectory::{self, tiles::TileStore, MatrixOptions};

/// mimalloc for the extension's allocations (Python's own are untouched): freed memory is
/// reused within its purge delay instead of being unmapped and faulted in again (the paper's LM
/// shape, `tensim.matrix` of 4 checkpoints: 15.3 s with the system allocator, 12.4–13.5 s with
/// mimalloc). Its default purge delay is kept, so that a notebook's memory goes back after use.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

create_exception!(
    _tensim,
    TensimError,
    PyException,
    "Raised for bad input (files, tensors, shapes, architectures) and undefined results."
);

fn err(e: tensim::Error) -> PyErr {
    match e.root() {
        tensim::Error::Io { err, .. } if err.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        _ => TensimError::new_err(e.to_string()),
    }
}

/// The metric named `name` with its default options.
fn metric(name: &str) -> PyResult<Metric> {
    name.parse::<Kind>().map(Metric::new).map_err(err)
}

/// The metric named `name` with the options of `compare` and `matrix`: `symmetrize`
/// (`"layer"` or `"full"`, tensor metric), `by_degree` (with `"full"`), `mode` (gaussian),
/// `samples` and `seed` (Monte Carlo of `"full"` beyond two bilinear layers).
fn configured(
    name: &str,
    symmetrize: &str,
    by_degree: bool,
    (mode, precision): (Option<&str>, Option<&str>),
    samples: usize,
    seed: u64,
) -> PyResult<Metric> {
    use tensim::metrics::fullsym::FullOptions;
    use tensim::metrics::gaussian::{GaussOptions, Mode, Precision};
    use tensim::metrics::Symmetrize;
    let m = metric(name)?;
    let bad = |msg: String| Err(TensimError::new_err(msg));
    if by_degree && symmetrize != "full" {
        return bad("by_degree=True needs symmetrize=\"full\"".into());
    }
    if mode.is_some() && !matches!(m, Metric::Gaussian(_)) {
        return bad(format!(
            "mode applies to the gaussian metric, not to {name}"
        ));
    }
    if precision.is_some() && !matches!(m, Metric::Gaussian(_)) {
        return bad(format!(
            "precision applies to the gaussian metric, not to {name}"
        ));
    }
    let precision = match precision {
        None => Precision::default(),
        Some("f64") => Precision::F64,
        Some("f32") => Precision::F32,
        Some(other) => {
            return bad(format!(
                "unknown precision \"{other}\" (expected \"f64\" or \"f32\")"
            ))
        }
    };
    Ok(match (symmetrize, m) {
        ("full", Metric::Tensor(_)) => Metric::Tensor(Symmetrize::Full(FullOptions {
            samples,
            seed,
            by_degree,
        })),
        ("full", _) => {
            return bad(format!(
                "symmetrize=\"full\" applies to the tensor metric, not to {name}"
            ))
        }
        ("layer", Metric::Gaussian(_)) => Metric::Gaussian(GaussOptions {
            mode: match mode {
                None => None,
                Some("exact") => Some(Mode::Exact),
                Some("closure") => Some(Mode::Closure),
                Some(other) => {
                    return bad(format!(
                        "unknown gaussian mode \"{other}\" (expected \"exact\" or \"closure\")"
                    ))
                }
            },
            precision,
            ..Default::default()
        }),
        ("layer", m) => m,
        (other, _) => {
            return bad(format!(
                "unknown symmetrize \"{other}\" (expected \"layer\" or \"full\")"
            ))
        }
    })
}

/// A row-major array as a NumPy array of `shape`.
fn array<'py>(py: Python<'py>, shape: &[usize], values: Vec<f64>) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, values).reshape(shape)?.into_any())
}

fn mat_array<'py>(py: Python<'py>, m: &Mat<f64>) -> PyResult<Bound<'py, PyAny>> {
    let values = (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)]))
        .collect();
    array(py, &[m.nrows(), m.ncols()], values)
}

fn read_mat(x: &PyReadonlyArray2<'_, f64>) -> PyResult<Mat<f64>> {
    let (r, c) = (x.shape()[0], x.shape()[1]);
    Ok(from_row_major(r, c, x.as_slice()?))
}

/// A tensor-network model (a stack of linear and bilinear layers).
#[pyclass(module = "tensim._tensim", frozen)]
struct Model {
    inner: tensim::Model,
    /// blake3 content hash: of the file it was read from, else of its `tensim/1` serialisation.
    hash: String,
}

fn wrap(inner: tensim::Model, hash: Option<String>) -> PyResult<Model> {
    let hash = match hash {
        Some(h) => h,
        None => tensim::io::model_hash(&inner).map_err(err)?,
    };
    Ok(Model { inner, hash })
}

/// The architecture from JSON text or a file.
fn arch(json: Option<&str>, path: Option<PathBuf>, origin: &str) -> PyResult<Option<tensim::Arch>> {
    match (json, path) {
        (Some(text), _) => tensim::Arch::from_json(text, origin).map(Some).map_err(err),
        (None, Some(p)) => tensim::Arch::from_file(&p).map(Some).map_err(err),
        (None, None) => Ok(None),
    }
}

/// `arch` with its positions set to `n_ctx`, if given (`n_ctx=` in Python, `--n-ctx`).
fn positions(arch: Option<tensim::Arch>, n_ctx: Option<usize>) -> PyResult<Option<tensim::Arch>> {
    match (arch, n_ctx) {
        (None, Some(_)) => Err(TensimError::new_err(
            "n_ctx applies to a description given with arch=",
        )),
        (Some(a), Some(n)) => a.with_positions(n).map(Some).map_err(err),
        (a, None) => Ok(a),
    }
}

#[pymethods]
impl Model {
    /// Build a model from named float64 arrays (`name -> (shape, flat values)`) and an
    /// architecture given as JSON text or a file.
    #[staticmethod]
    #[pyo3(signature = (tensors, arch_json=None, arch_path=None, origin="state_dict"))]
    fn _from_tensors(
        py: Python<'_>,
        tensors: Vec<(String, PyReadonlyArrayDyn<'_, f64>)>,
        arch_json: Option<&str>,
        arch_path: Option<PathBuf>,
        origin: &str,
    ) -> PyResult<Model> {
        let a = arch(arch_json, arch_path, "arch")?.ok_or_else(|| {
            TensimError::new_err(format!("{origin}: an architecture description is required"))
        })?;
        let owned = tensors
            .iter()
            .map(|(name, x)| Ok((name.clone(), x.shape().to_vec(), x.as_slice()?.to_vec())))
            .collect::<PyResult<Vec<_>>>()?;
        let model = py
            .detach(|| tensim::io::model_from_tensors(&owned, &a, origin))
            .map_err(err)?;
        wrap(model, None)
    }

    /// Outputs for the rows of `x` (`(rows, in_dim)` → `(rows, out_dim)`).
    fn _forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if x.shape()[1] != self.inner.in_dim() {
            return Err(TensimError::new_err(format!(
                "input has shape {:?}, expected (rows, {})",
                x.shape(),
                self.inner.in_dim()
            )));
        }
        let x = read_mat(&x)?;
        let y = py.detach(|| self.inner.forward(x.as_ref(), Par::rayon(0)));
        mat_array(py, &y)
    }

    /// Write a self-describing `tensim/1` file (float64 tensors, architecture and `metadata`).
    #[pyo3(signature = (path, metadata=None))]
    fn save(
        &self,
        py: Python<'_>,
        path: PathBuf,
        metadata: Option<HashMap<String, String>>,
    ) -> PyResult<()> {
        py.detach(|| {
            let bytes = tensim::io::serialize(&self.inner, metadata.unwrap_or_default())?;
            tensim::io::write_atomic(&path, &bytes)
        })
        .map_err(err)
    }

    /// The parameters under their canonical names (`layers.{i}.{role}`), as float64 arrays.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
        tensim::io::parameter_tensors(&self.inner)
            .into_iter()
            .map(|(name, shape, values)| Ok((name, array(py, &shape, values)?)))
            .collect()
    }

    /// The architecture description as JSON text.
    #[getter]
    fn arch_json(&self) -> String {
        self.inner.arch().to_json()
    }

    /// Size of one input vector.
    #[getter]
    fn in_dim(&self) -> usize {
        self.inner.in_dim()
    }

    /// Size of the output.
    #[getter]
    fn out_dim(&self) -> usize {
        self.inner.out_dim()
    }

    /// Polynomial degree of the model (2 per bilinear layer, 5 per attention layer,
    /// multiplied); `None` beyond 2^64.
    #[getter]
    fn degree(&self) -> Option<u64> {
        self.inner.degree()
    }

    /// Number of parameters.
    #[getter]
    fn n_params(&self) -> usize {
        self.inner.param_count()
    }

    /// Content hash (blake3, hex) identifying the model in resumable all-pairs runs.
    #[getter]
    fn content_hash(&self) -> &str {
        &self.hash
    }

    fn __repr__(&self) -> String {
        let kinds: Vec<&str> = self
            .inner
            .layers()
            .iter()
            .map(tensim::Layer::kind)
            .collect();
        format!(
            "Model({} → {}, layers [{}], degree {}, {} parameters)",
            self.inner.in_dim(),
            self.inner.out_dim(),
            kinds.join(", "),
            self.inner
                .degree()
                .map_or("> 2^64".into(), |d| d.to_string()),
            self.inner.param_count()
        )
    }
}

/// Load a model file; `arch` is a sidecar description (JSON text or file), else the file's own;
/// `key` names the state dict of a PyTorch checkpoint.
#[pyfunction]
#[pyo3(signature = (path, arch_json=None, arch_path=None, key=None, n_ctx=None))]
fn _load(
    py: Python<'_>,
    path: PathBuf,
    arch_json: Option<&str>,
    arch_path: Option<PathBuf>,
    key: Option<&str>,
    n_ctx: Option<usize>,
) -> PyResult<Model> {
    let sidecar = positions(arch(arch_json, arch_path, "arch")?, n_ctx)?;
    let model = py
        .detach(|| tensim::io::load_with(&path, sidecar.as_ref(), key))
        .map_err(err)?;
    wrap(model, None)
}

/// Inputs of the behavioural metrics: a `(rows, dim)` array, else Gaussian samples.
fn inputs(
    model: &tensim::Model,
    data: Option<PyReadonlyArrayDyn<'_, f64>>,
    samples: usize,
    seed: u64,
) -> PyResult<Inputs> {
    let (n_ctx, dim) = (model.input().n_ctx, model.in_dim());
    match data {
        Some(x) => Inputs::from_array(x.shape(), x.as_slice()?.to_vec(), n_ctx, dim, "inputs"),
        None => Inputs::gaussian(samples, n_ctx, dim, seed),
    }
    .map_err(err)
}

/// Compare two models; the result as JSON text (the fields of `tensim compare --json`).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (a, b, metric_name, per_output=false, data=None, samples=10000, seed=0, mode=None, symmetrize="layer", by_degree=false, dist=None, null=None, per_tensor=false, precision=None))]
fn _compare(
    py: Python<'_>,
    a: &Model,
    b: &Model,
    metric_name: &str,
    per_output: bool,
    data: Option<PyReadonlyArrayDyn<'_, f64>>,
    samples: usize,
    seed: u64,
    mode: Option<&str>,
    symmetrize: &str,
    by_degree: bool,
    dist: Option<PyRef<'_, Distribution>>,
    null: Option<usize>,
    per_tensor: bool,
    precision: Option<&str>,
) -> PyResult<String> {
    let m = configured(
        metric_name,
        symmetrize,
        by_degree,
        (mode, precision),
        samples,
        seed,
    )?;
    let dist = dist.as_ref().map(|d| &d.inner);
    let x = m
        .needs_inputs()
        .then(|| inputs(&a.inner, data, samples, seed))
        .transpose()?;
    let opts = Options {
        per_output,
        per_tensor,
        par: Par::rayon(0),
    };
    let null = null.map(|k| (k, seed));
    let (a, b, x) = (&a.inner, &b.inner, x.as_ref());
    let r = py
        .detach(|| tensim::metrics::compare_calibrated(a, b, &m, x, &opts, dist, null))
        .map_err(err)?;
    Ok(serde_json::to_string(&r).expect("a comparison always serialises"))
}

/// The breakdown of `⟨a, b⟩` (`inner`, from `_compare`) over the units or heads of the last
/// non-linear layers: its JSON text, the contributions (A's parts × B's) and, with `per_output`,
/// `(outputs, A's parts, B's parts)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (a, b, metric_name, inner, per_output=false, mode=None, symmetrize="layer", dist=None, precision=None))]
fn _breakdown<'py>(
    py: Python<'py>,
    a: &Model,
    b: &Model,
    metric_name: &str,
    inner: f64,
    per_output: bool,
    mode: Option<&str>,
    symmetrize: &str,
    dist: Option<PyRef<'_, Distribution>>,
    precision: Option<&str>,
) -> PyResult<(String, Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
    let m = configured(metric_name, symmetrize, false, (mode, precision), 0, 0)?;
    let dist = dist.as_ref().map(|d| &d.inner);
    let (a, b) = (&a.inner, &b.inner);
    let r = py
        .detach(|| tensim::metrics::breakdown_of(a, b, &m, dist, inner, per_output))
        .map_err(err)?;
    breakdown_arrays(py, &r)
}

/// A breakdown as JSON text, its contributions and its per-output contributions.
fn breakdown_arrays<'py>(
    py: Python<'py>,
    r: &tensim::metrics::breakdown::Breakdown,
) -> PyResult<(String, Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
    let c = &r.contributions;
    let per = match &r.per_output {
        Some(per) => {
            let values = per
                .iter()
                .flat_map(|p| to_row_major(p.contributions.as_ref()))
                .collect();
            Some(array(py, &[per.len(), c.nrows(), c.ncols()], values)?)
        }
        None => None,
    };
    let text = serde_json::to_string(r).expect("a breakdown always serialises");
    Ok((text, mat_array(py, c)?, per))
}

/// `_compare_changes`' JSON text and, if asked for, the breakdown's (as `_breakdown` gives it).
type Changes<'py> = (
    String,
    Option<(String, Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)>,
);

/// The metric between the changes `a − a0` and `b − b0` (either base optional; JSON text), and
/// with `breakdown` the changes' breakdown over units or heads.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (a, a0, b, b0, metric_name, mode=None, dist=None, breakdown=false, per_output=false, precision=None))]
fn _compare_changes<'py>(
    py: Python<'py>,
    a: &Model,
    a0: Option<&Model>,
    b: &Model,
    b0: Option<&Model>,
    metric_name: &str,
    mode: Option<&str>,
    dist: Option<PyRef<'_, Distribution>>,
    breakdown: bool,
    per_output: bool,
    precision: Option<&str>,
) -> PyResult<Changes<'py>> {
    let m = configured(metric_name, "layer", false, (mode, precision), 0, 0)?;
    let dist = dist.as_ref().map(|d| &d.inner);
    let r = py
        .detach(|| {
            tensim::metrics::check_distribution(dist, m.kind())?;
            let read = |x: &tensim::Model| match dist {
                Some(d) => d.apply(x),
                None => Ok(x.clone()),
            };
            let (a, b) = (read(&a.inner)?, read(&b.inner)?);
            let a0 = a0.map(|x| read(&x.inner)).transpose()?;
            let b0 = b0.map(|x| read(&x.inner)).transpose()?;
            let opts = Options::default();
            let (a, b) = ((&a, a0.as_ref()), (&b, b0.as_ref()));
            let mut r = tensim::metrics::difference::similarity(a, b, &m, &opts)?;
            r.input_distribution = dist.map(|d| d.info().clone());
            let parts = breakdown
                .then(|| {
                    tensim::metrics::breakdown::of_changes(a, b, &m, Some(r.inner), per_output)
                })
                .transpose()?;
            Ok((r, parts))
        })
        .map_err(err)?;
    let text = serde_json::to_string(&r.0).expect("a comparison always serialises");
    Ok((text, r.1.map(|b| breakdown_arrays(py, &b)).transpose()?))
}

/// A Gaussian input distribution `N(μ, Σ)` for the tensor and gaussian metrics.
#[pyclass(frozen)]
struct Distribution {
    inner: InputDistribution,
}

#[pymethods]
impl Distribution {
    /// What `--json` reports of it, as JSON text.
    fn info_json(&self) -> String {
        serde_json::to_string(self.inner.info()).expect("the description always serialises")
    }
}

/// `N(μ, Σ)` from data rows (`stats`), a mean and covariance, or token counts; `source` names
/// the arrays in messages.
#[pyfunction]
#[pyo3(signature = (source, stats=None, mean=None, cov=None, counts=None))]
fn _distribution(
    py: Python<'_>,
    source: &str,
    stats: Option<PyReadonlyArrayDyn<'_, f64>>,
    mean: Option<PyReadonlyArrayDyn<'_, f64>>,
    cov: Option<PyReadonlyArrayDyn<'_, f64>>,
    counts: Option<PyReadonlyArrayDyn<'_, f64>>,
) -> PyResult<Distribution> {
    let inner = match (stats, mean, cov, counts) {
        (Some(x), None, None, None) => {
            let (shape, values) = (x.shape().to_vec(), x.as_slice()?);
            py.detach(|| InputDistribution::from_sample_array(&shape, values, source))
        }
        (None, Some(m), Some(c), None) => InputDistribution::from_moment_arrays(
            (m.shape(), m.as_slice()?.to_vec()),
            (c.shape(), c.as_slice()?),
            source,
        ),
        (None, None, None, Some(c)) => {
            InputDistribution::from_count_array(c.shape(), c.as_slice()?, source)
        }
        _ => {
            return Err(TensimError::new_err(
                "give one of input_stats, input_mean with input_cov, or token_counts",
            ))
        }
    }
    .map_err(err)?;
    Ok(Distribution { inner })
}

/// The metric between `pairs` pairs of independent initialisations of `model`'s architecture
/// (JSON text: pairs, seed, mean, std, values).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (model, metric_name, pairs, seed=0, dist=None, data=None, samples=10000, mode=None, symmetrize="layer", precision=None))]
fn _null(
    py: Python<'_>,
    model: &Model,
    metric_name: &str,
    pairs: usize,
    seed: u64,
    dist: Option<PyRef<'_, Distribution>>,
    data: Option<PyReadonlyArrayDyn<'_, f64>>,
    samples: usize,
    mode: Option<&str>,
    symmetrize: &str,
    precision: Option<&str>,
) -> PyResult<String> {
    let m = configured(
        metric_name,
        symmetrize,
        false,
        (mode, precision),
        samples,
        seed,
    )?;
    let x = m
        .needs_inputs()
        .then(|| inputs(&model.inner, data, samples, seed))
        .transpose()?;
    let dist = dist.as_ref().map(|d| &d.inner);
    let n = py
        .detach(|| {
            tensim::metrics::check_distribution(dist, m.kind())?;
            let par = Par::rayon(0);
            tensim::metrics::null_of(&model.inner, &m, x.as_ref(), dist, (pairs, seed), par)
        })
        .map_err(err)?;
    Ok(serde_json::to_string(&n).expect("a null always serialises"))
}

/// The exact tensor inner products against Monte Carlo (`tensim verify --json`).
#[pyfunction]
#[pyo3(signature = (a, b, samples=100000, seed=0))]
fn _verify(py: Python<'_>, a: &Model, b: &Model, samples: usize, seed: u64) -> PyResult<String> {
    let v = py
        .detach(|| tensim::montecarlo::verify(&a.inner, &b.inner, samples, seed, Par::rayon(0)))
        .map_err(err)?;
    Ok(serde_json::to_string(&v).expect("a verification always serialises"))
}

/// Calls a Python `progress(done, total)` at most ten times a second (and at the end).
struct Progress {
    callback: Option<Py<PyAny>>,
    state: Mutex<(u64, Instant)>,
}

impl Progress {
    fn tick(&self, finished: u64, total: u64) {
        let Some(cb) = &self.callback else { return };
        let mut s = self.state.lock().unwrap();
        s.0 += finished;
        if s.0 == total || s.1.elapsed() > Duration::from_millis(100) {
            s.1 = Instant::now();
            let done = s.0;
            Python::attach(|py| {
                if let Err(e) = cb.call1(py, (done, total)) {
                    e.write_unraisable(py, None);
                }
            });
        }
    }
}

/// All-pairs similarity matrix; `(1 + out_dim, N, N)` with `per_output`, `(1 + tensors, N, N)`
/// with `per_tensor` (plane 0 the total).
#[pyfunction]
#[pyo3(signature = (models, names, metric_name, resume_dir=None, per_output=false, data=None, samples=10000, seed=0, tile=0, progress=None, symmetrize="layer", dist=None, minus=None, per_tensor=false, precision=None))]
#[allow(clippy::too_many_arguments)]
fn _matrix<'py>(
    py: Python<'py>,
    models: Vec<PyRef<'py, Model>>,
    names: Vec<String>,
    metric_name: &str,
    resume_dir: Option<PathBuf>,
    per_output: bool,
    data: Option<PyReadonlyArrayDyn<'py, f64>>,
    samples: usize,
    seed: u64,
    tile: usize,
    progress: Option<Py<PyAny>>,
    symmetrize: &str,
    dist: Option<PyRef<'py, Distribution>>,
    minus: Option<PyRef<'py, Model>>,
    per_tensor: bool,
    precision: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    if per_tensor && (metric_name != "matrix" || per_output || minus.is_some()) {
        return Err(TensimError::new_err(
            "per_tensor=True is a value of the matrix metric alone (no per_output or minus=)",
        ));
    }
    if minus.is_some() && per_output {
        return Err(TensimError::new_err(
            "minus= gives the total similarity of changes only (no per_output)",
        ));
    }
    let minus = minus.map(|b| b.inner.clone());
    let m = configured(
        metric_name,
        symmetrize,
        false,
        (None, precision),
        samples,
        seed,
    )?;
    let dist = dist.as_ref().map(|d| &d.inner);
    tensim::metrics::check_distribution(dist, m.kind()).map_err(err)?;
    if models.is_empty() {
        return Err(TensimError::new_err("no models given"));
    }
    let x = m
        .needs_inputs()
        .then(|| inputs(&models[0].inner, data, samples, seed))
        .transpose()?;
    let checkpoints: Vec<Checkpoint> = models
        .iter()
        .zip(&names)
        .map(|(p, name)| {
            let c = Checkpoint::new(p.inner.clone(), name, &p.hash);
            match dist {
                Some(d) => c.under(d),
                None => Ok(c),
            }
        })
        .collect::<Result<_, _>>()
        .map_err(err)?;
    drop(models);
    let progress = Progress {
        callback: progress,
        state: Mutex::new((0, Instant::now())),
    };
    let result = py
        .detach(|| {
            let store = resume_dir
                .map(|dir| TileStore::open(&dir, m.name(), &checkpoints))
                .transpose()?;
            if let Some(base) = &minus {
                let base = match dist {
                    Some(d) => d.apply(base)?,
                    None => base.clone(),
                };
                let models: Vec<&tensim::Model> = checkpoints.iter().map(|c| &c.model).collect();
                let base_hash = tensim::io::model_hash(&base)?;
                let hashes: Vec<&str> = std::iter::once(base_hash.as_str())
                    .chain(checkpoints.iter().map(|c| c.hash.as_str()))
                    .collect();
                let store = store.as_ref().map(|s| (s, hashes.as_slice()));
                let k = models.len() as u64 + 1;
                let tick = |done| progress.tick(done, k * (k + 1) / 2);
                let similarity =
                    tensim::metrics::difference::matrix(&models, &base, &m, store, &tick)?;
                return Ok(trajectory::AllPairs {
                    similarity,
                    per_output: None,
                });
            }
            let opts = MatrixOptions {
                tile,
                store: store.as_ref(),
                inputs: x.as_ref(),
                per_output,
                ..Default::default()
            };
            trajectory::similarity_matrix(&checkpoints, &m, &opts, &|d, t| progress.tick(d, t))
        })
        .map_err(err)?;
    let n = checkpoints.len();
    let mut planes = vec![result.similarity];
    planes.extend(result.per_output.unwrap_or_default());
    if per_tensor {
        let models: Vec<&tensim::Model> = checkpoints.iter().map(|c| &c.model).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let per = py
            .detach(|| tensim::metrics::matrix::per_tensor_matrices(&models, &names))
            .map_err(err)?;
        planes.extend(per.into_iter().map(|(_, m)| m));
    }
    let values: Vec<f64> = planes
        .iter()
        .flat_map(|p| (0..n).flat_map(move |i| (0..n).map(move |j| p[(i, j)])))
        .collect();
    if per_output || per_tensor {
        array(py, &[planes.len(), n, n], values)
    } else {
        array(py, &[n, n], values)
    }
}

/// One tile of an all-pairs matrix from checkpoint files (a cluster task): rows × columns.
#[pyfunction]
#[pyo3(signature = (rows, cols, metric_name, arch_json=None, arch_path=None, key=None, n_ctx=None, data_path=None, samples=10000, seed=0))]
#[allow(clippy::too_many_arguments)]
fn _tile<'py>(
    py: Python<'py>,
    rows: Vec<PathBuf>,
    cols: Vec<PathBuf>,
    metric_name: &str,
    arch_json: Option<&str>,
    arch_path: Option<PathBuf>,
    key: Option<&str>,
    n_ctx: Option<usize>,
    data_path: Option<PathBuf>,
    samples: usize,
    seed: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let m = metric(metric_name)?;
    let same = rows == cols;
    let sidecar = positions(arch(arch_json, arch_path, "arch")?, n_ctx)?;
    let block = py
        .detach(|| {
            let mut paths = rows.clone();
            if !same {
                paths.extend(cols.iter().cloned());
            }
            let cks = checkpoints::load_with(&paths, sidecar.as_ref(), key)?;
            let x = m
                .needs_inputs()
                .then(|| {
                    let first = &cks[0].model;
                    let (n_ctx, dim) = (first.input().n_ctx, first.in_dim());
                    match &data_path {
                        Some(p) => Inputs::from_npy(p, n_ctx, dim),
                        None => Inputs::gaussian(samples, n_ctx, dim, seed),
                    }
                })
                .transpose()?;
            let cols_at = if same { 0 } else { rows.len() };
            trajectory::block(
                &cks,
                &m,
                x.as_ref(),
                0..rows.len(),
                cols_at..cols_at + cols.len(),
            )
        })
        .map_err(err)?;
    mat_array(py, &block)
}

/// The key and tag of a stored tile (shared with `tensim matrix --resume`): metric, options
/// and the content hashes of its rows and columns.
#[pyfunction]
#[pyo3(signature = (metric_name, rows, cols, data_path=None, samples=10000, seed=0))]
fn _tile_key(
    metric_name: &str,
    rows: Vec<String>,
    cols: Vec<String>,
    data_path: Option<PathBuf>,
    samples: usize,
    seed: u64,
) -> PyResult<String> {
    let m = metric(metric_name)?;
    let source = match &data_path {
        Some(p) => p.display().to_string(),
        None => Inputs::gaussian_source(samples, seed),
    };
    let tag = trajectory::tile_tag(&m, false, Some(&source));
    let (rows, cols): (Vec<&str>, Vec<&str>) = (
        rows.iter().map(String::as_str).collect(),
        cols.iter().map(String::as_str).collect(),
    );
    Ok(TileStore::key(&tag, &rows, &cols))
}

/// A stored tile of `shape` in `folder`, if present and intact (its checksum matches).
#[pyfunction]
fn _tile_get<'py>(
    py: Python<'py>,
    folder: PathBuf,
    key: &str,
    shape: Vec<usize>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let store = TileStore::at(&folder).map_err(err)?;
    match store.get(key, &shape) {
        Some(v) => Ok(Some(array(py, &shape, v)?)),
        None => Ok(None),
    }
}

/// Store a finished tile (a `(1, rows, cols)` array) in `folder`, with its checksum.
#[pyfunction]
fn _tile_put(folder: PathBuf, key: &str, values: PyReadonlyArrayDyn<'_, f64>) -> PyResult<()> {
    let shape = values.shape().to_vec();
    let data: Vec<f64> = values.as_array().iter().copied().collect();
    let store = TileStore::at(&folder).map_err(err)?;
    store.put(key, &shape, &data).map_err(err)
}

/// The key of a checkpoint's stored tiles: the hash of the model as loaded (with the sidecar
/// description, if given).
#[pyfunction]
#[pyo3(signature = (path, arch_json=None, arch_path=None, key=None, n_ctx=None))]
fn _content_hash(
    py: Python<'_>,
    path: PathBuf,
    arch_json: Option<&str>,
    arch_path: Option<PathBuf>,
    key: Option<&str>,
    n_ctx: Option<usize>,
) -> PyResult<String> {
    let sidecar = positions(arch(arch_json, arch_path, "arch")?, n_ctx)?;
    py.detach(|| tensim::io::model_hash(&tensim::io::load_with(&path, sidecar.as_ref(), key)?))
        .map_err(err)
}

/// Files, glob patterns and folders → checkpoint paths ordered by step number.
#[pyfunction]
fn _expand(paths: Vec<PathBuf>) -> PyResult<Vec<String>> {
    let mut out = checkpoints::expand(&paths).map_err(err)?;
    checkpoints::natural_sort(&mut out);
    Ok(out.iter().map(|p| p.display().to_string()).collect())
}

/// The description a run keeps beside its checkpoints (`config.json`), if any.
#[pyfunction]
fn _find_description(paths: Vec<PathBuf>) -> Option<String> {
    checkpoints::find_description(&paths).map(|p| p.display().to_string())
}

/// Optimal `k`-phase segmentation of a similarity matrix: `(starts, cost)`.
#[pyfunction]
fn _phases(sim: PyReadonlyArray2<'_, f64>, k: usize) -> PyResult<(Vec<usize>, f64)> {
    let m = read_mat(&sim)?;
    let p = tensim::phases::segment(&m, k).map_err(err)?;
    Ok((p.starts, p.cost))
}

/// Draw a similarity heat-map (PNG or SVG by extension).
#[pyfunction]
#[pyo3(signature = (sim, path, labels=None, title=None, steps=None, log_steps=false, boundaries=None))]
#[allow(clippy::too_many_arguments)]
fn _plot(
    py: Python<'_>,
    sim: PyReadonlyArray2<'_, f64>,
    path: PathBuf,
    labels: Option<Vec<String>>,
    title: Option<String>,
    steps: Option<Vec<f64>>,
    log_steps: bool,
    boundaries: Option<Vec<usize>>,
) -> PyResult<()> {
    let m = read_mat(&sim)?;
    let opts = tensim::plot::HeatmapOptions {
        title: title.unwrap_or_default(),
        labels: labels.unwrap_or_default(),
        steps,
        log_steps,
        boundaries: boundaries.unwrap_or_default(),
    };
    py.detach(|| tensim::plot::heatmap(&m, Path::new(&path), &opts))
        .map_err(err)
}

#[pymodule]
fn _tensim(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("TensimError", m.py().get_type::<TensimError>())?;
    m.add_class::<Model>()?;
    m.add_class::<Distribution>()?;
    m.add_function(wrap_pyfunction!(_distribution, m)?)?;
    m.add_function(wrap_pyfunction!(_null, m)?)?;
    m.add_function(wrap_pyfunction!(_compare_changes, m)?)?;
    m.add_function(wrap_pyfunction!(_load, m)?)?;
    m.add_function(wrap_pyfunction!(_compare, m)?)?;
    m.add_function(wrap_pyfunction!(_breakdown, m)?)?;
    m.add_function(wrap_pyfunction!(_matrix, m)?)?;
    m.add_function(wrap_pyfunction!(_verify, m)?)?;
    m.add_function(wrap_pyfunction!(_tile, m)?)?;
    m.add_function(wrap_pyfunction!(_tile_key, m)?)?;
    m.add_function(wrap_pyfunction!(_tile_get, m)?)?;
    m.add_function(wrap_pyfunction!(_tile_put, m)?)?;
    m.add_function(wrap_pyfunction!(_content_hash, m)?)?;
    m.add_function(wrap_pyfunction!(_expand, m)?)?;
    m.add_function(wrap_pyfunction!(_find_description, m)?)?;
    m.add_function(wrap_pyfunction!(_phases, m)?)?;
    m.add_function(wrap_pyfunction!(_plot, m)?)?;
    Ok(())
}
