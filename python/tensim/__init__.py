"""tensim — are these two networks computing the same thing?

Exact, symmetry-invariant similarity of tensor-network (bilinear) models, computed from their
weights. Every computation runs in the Rust library; this module converts arguments (numpy arrays,
torch tensors, paths, architecture dicts) and results.

>>> import tensim
>>> a = tensim.load("ckpt_0100.safetensors", arch="arch.json")
>>> b = tensim.load("ckpt_0200.safetensors", arch="arch.json")
>>> tensim.similarity(a, b)                       # tensor similarity, a float in [-1, 1]
>>> sim = tensim.matrix("checkpoints/", arch="arch.json")   # N x N numpy array
>>> tensim.plot(sim, "similarity.png")
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from . import _tensim
from ._tensim import TensimError

__all__ = [
    "Model",
    "TensimError",
    "load",
    "similarity",
    "compare",
    "matrix",
    "verify",
    "null",
    "phases",
    "plot",
    "checkpoints",
    "diff",
    "Diff",
]

PathLike = Union[str, "os.PathLike[str]"]
Arch = Union[Mapping[str, Any], str, "os.PathLike[str]"]


def _arch_args(arch: Arch | None) -> dict:
    """An architecture given as a dict, JSON text or a file path → keyword arguments."""
    if arch is None:
        return {}
    if isinstance(arch, Mapping):
        return {"arch_json": json.dumps(arch)}
    if isinstance(arch, str) and arch.lstrip().startswith("{"):
        return {"arch_json": arch}
    if isinstance(arch, (str, os.PathLike)):
        return {"arch_path": os.fspath(arch)}
    raise TypeError(f"arch must be a dict, JSON text or a path, not {type(arch).__name__}")


def _array(x: Any, what: str) -> np.ndarray:
    """A numpy array or torch tensor (any device, any float dtype) → C-ordered float64 array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().double().numpy()  # exact for f16/bf16/f32
    try:
        return np.ascontiguousarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: expected a numpy array or torch tensor, got {type(x).__name__}") from e


class Model:
    """A tensor-network model: a stack of linear and bilinear layers (FORMAT.md).

    Create one with :func:`load` or :meth:`Model.from_state_dict`.
    """

    __slots__ = ("_m",)

    def __init__(self, native: _tensim.Model):
        self._m = native

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], arch: Arch) -> "Model":
        """Build a model from a PyTorch-style ``state_dict`` (names → numpy arrays or torch
        tensors) and an architecture description (a dict, JSON text or a path) naming the tensors.

        Raises :class:`TensimError` naming the tensor and the expected and actual shape when a
        tensor is missing, has the wrong shape or holds NaN/Inf.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of names to arrays, not {type(state_dict).__name__}")
        tensors = [(str(k), _array(v, f"state_dict[{k!r}]")) for k, v in state_dict.items()]
        return cls(_tensim.Model._from_tensors(tensors, **_arch_args(arch)))

    def forward(self, x: Any) -> np.ndarray:
        """Outputs for inputs ``x`` of shape ``(in_dim,)`` or ``(rows, in_dim)``."""
        x = _array(x, "x")
        if x.ndim == 1:
            return self._m._forward(x[None, :])[0]
        if x.ndim != 2:
            raise TensimError(f"x has shape {x.shape}, expected ({self.in_dim},) or (rows, {self.in_dim})")
        return self._m._forward(x)

    __call__ = forward

    def save(self, path: PathLike, metadata: Mapping[str, str] | None = None) -> None:
        """Write a self-describing tensim/1 safetensors file (float64 tensors, the architecture
        under the metadata key ``"tensim"`` and ``metadata``); written atomically."""
        self._m.save(os.fspath(path), None if metadata is None else {str(k): str(v) for k, v in metadata.items()})

    def state_dict(self) -> dict[str, np.ndarray]:
        """The parameters under their canonical names (``layers.{i}.{role}``)."""
        return dict(self._m.state_dict())

    @property
    def arch(self) -> dict:
        """The architecture description (FORMAT.md) as a dict."""
        return json.loads(self._m.arch_json)

    @property
    def in_dim(self) -> int:
        return self._m.in_dim

    @property
    def out_dim(self) -> int:
        return self._m.out_dim

    @property
    def degree(self) -> Optional[int]:
        """Polynomial degree of the model's output in its input (None beyond 2**64)."""
        return self._m.degree

    @property
    def n_params(self) -> int:
        return self._m.n_params

    @property
    def content_hash(self) -> str:
        """blake3 hash of the model's tensim/1 serialisation: equal for equal models, however stored."""
        return self._m.content_hash

    def __repr__(self) -> str:
        return repr(self._m)


def load(path: PathLike, arch: Arch | None = None, *, key: str | None = None, n_ctx: int | None = None) -> Model:
    """Load a model file: safetensors, or a PyTorch checkpoint (``.pt``, ``.pth``, ``.bin``,
    ``.ckpt`` as ``torch.save`` writes them; read without PyTorch and without running anything from
    the file). ``arch`` (a dict, JSON text or a path: a tensim/1 description or a bilinear-attention
    language model's training ``config.json``) describes it; without it the description embedded
    in the file (metadata key ``"tensim"``) is used. ``key`` names the entry of a
    checkpoint's saved dict that holds the state dict (default: the dict itself if it holds
    tensors, else its one entry that does). ``n_ctx`` sets the positions a sequence model is
    analysed at (a language model's config is read at 4 otherwise), as ``--n-ctx``."""
    return Model(_tensim._load(os.fspath(path), key=key, n_ctx=n_ctx, **_arch_args(arch)))


def _model(x: Model | PathLike, arch: Arch | None, key: str | None = None, n_ctx: int | None = None) -> Model:
    if isinstance(x, Model):
        return x
    if isinstance(x, (str, os.PathLike)):
        return load(x, arch, key=key, n_ctx=n_ctx)
    raise TypeError(f"expected a tensim.Model or a path, got {type(x).__name__}")


class Diff:
    """The change ``f_model - f_base`` of a model from a base (see :func:`diff`)."""

    def __init__(self, model: Model | PathLike, base: Model | PathLike):
        self.model, self.base = model, base

    def __repr__(self) -> str:
        return f"tensim.diff({self.model!r}, {self.base!r})"


def diff(model: Model | PathLike, base: Model | PathLike) -> Diff:
    """The change ``f_model - f_base`` as one object, usable as a model by :func:`compare` (for
    ``a`` or ``b``: ``compare(diff(a, a0), diff(b, b0))`` is ``compare(a, b, minus_a=a0,
    minus_b=b0)``) and by :func:`matrix` (a list of changes from one base: ``matrix([diff(m,
    base) for m in ms])`` is ``matrix(ms, minus=base)``). Exact, from the inner products; no
    difference network is built."""
    return Diff(model, base)


def _unpack_diff(x: Any, minus: Any) -> tuple:
    """``(model, base)`` of a :class:`Diff` or of a model with an optional ``minus_*`` base."""
    if isinstance(x, Diff):
        if minus is not None:
            raise ValueError("a tensim.diff already has its base; drop minus_a/minus_b for it")
        return x.model, x.base
    return x, minus


def _distribution(
    input_stats: Any = None, input_mean: Any = None, input_cov: Any = None, token_counts: Any = None
) -> Optional[_tensim.Distribution]:
    """The Gaussian input distribution the keyword arguments give (arrays, tensors or ``.npy``
    paths), or ``None`` for the default ``N(0, I)``."""
    given = {
        k: v
        for k, v in (
            ("input_stats", input_stats),
            ("input_mean", input_mean),
            ("input_cov", input_cov),
            ("token_counts", token_counts),
        )
        if v is not None
    }
    if not given:
        return None
    names, arrays = [], {}
    for k, v in given.items():
        if isinstance(v, (str, os.PathLike)):
            names.append(os.fspath(v))
            v = np.load(v, allow_pickle=False)
        else:
            names.append(k)
        arrays[k] = _array(v, k)
    return _tensim._distribution(
        " and ".join(names),
        stats=arrays.get("input_stats"),
        mean=arrays.get("input_mean"),
        cov=arrays.get("input_cov"),
        counts=arrays.get("token_counts"),
    )


def _inputs(data: Any, samples: int, seed: int) -> dict:
    return {"data": None if data is None else _array(data, "data"), "samples": samples, "seed": seed}


def compare(
    a: Model | PathLike,
    b: Model | PathLike,
    metric: str = "tensor",
    *,
    per_output: bool = False,
    data: Any = None,
    samples: int = 10_000,
    seed: int = 0,
    arch: Arch | None = None,
    key: str | None = None,
    n_ctx: int | None = None,
    mode: str | None = None,
    symmetrize: str = "layer",
    by_degree: bool = False,
    input_stats: Any = None,
    input_mean: Any = None,
    input_cov: Any = None,
    token_counts: Any = None,
    null: int | None = None,
    per_tensor: bool = False,
    minus_a: Model | PathLike | None = None,
    minus_b: Model | PathLike | None = None,
    breakdown: bool = False,
    precision: str | None = None,
) -> dict:
    """Compare two models; returns the fields of ``tensim compare --json``: ``similarity``,
    ``inner``, ``norm2_a``, ``norm2_b`` and, as they apply, ``per_output``, ``samples``, ``inputs``,
    ``symmetrize``, ``mode``, ``precision``, ``stderr``, ``by_degree``, ``input_distribution``,
    ``null_mean``, ``null_std``, ``null_pairs``, ``z``, ``per_tensor``, ``breakdown``.

    ``metric``: ``"tensor"`` (exact, from the weights), ``"matrix"`` (cosine of flattened weights; ``per_tensor=True`` adds each tensor's cosine),
    ``"behavioral"`` or ``"cka"`` (on ``data``, a ``(rows, in_dim)`` array, else ``samples``
    standard Gaussian inputs drawn with ``seed``), ``"gaussian"`` (``E<f_a(x), f_b(x)>`` under
    Gaussian input, from the weights; ``mode="exact"`` or ``"closure"``, default exact when
    affordable; the result's ``mode`` says which was computed; ``precision`` (``"f32"``, the
    default, or ``"f64"``, as ``--precision``) is the arithmetic of the attention layers' moments:
    f32 runs about twice as fast as f64 in half the memory, the similarity within about 1e-6 of
    f64's).

    ``symmetrize``: ``"layer"`` (the tensor metric as in the paper: each bilinear node
    symmetrised) or ``"full"`` (all leg permutations, so identical functions score 1; exact up to
    two bilinear layers, a Monte-Carlo estimate with ``stderr`` from ``samples`` draws beyond);
    ``by_degree=True`` with ``"full"`` adds the similarity of each degree part.

    Input distribution (``tensor`` and ``gaussian``; default ``N(0, I)`` at every position): the
    Gaussian with the mean and covariance of data rows ``input_stats`` (``(rows, in_dim)``; for
    models with attention ``(rows, n_ctx, in_dim)`` gives each position its own), or
    ``input_mean`` with ``input_cov``, or, for one-hot token inputs, ``token_counts`` (mean ``p``,
    covariance ``diag(p) - pp^T``); arrays, tensors or ``.npy`` paths; as ``--input-stats`` etc.
    ``null=K``: also the metric between ``K`` pairs of independent initialisations of A's
    architecture (PyTorch's default, seeded by ``seed``) and the z-score of the observed value.

    ``minus_a=A0`` / ``minus_b=B0``: compare the changes ``f_A - f_A0`` and ``f_B - f_B0`` (either
    optional) from the inner products, exactly (``tensor``, ``gaussian`` when exact, ``matrix``);
    a change too small to resolve in f64 next to the models raises. As ``--minus-a``/``--minus-b``.

    ``breakdown=True`` (``tensor``, ``gaussian``): where the inner product comes from, as
    ``--breakdown``: ``result["breakdown"]`` has ``parts`` (``"units"`` of the last bilinear
    layers or ``"heads"`` of the last attention layers), ``contributions`` (an array, A's parts x
    B's, that sums with ``remainder`` to ``inner``), ``matching`` (A's parts assigned to B's by
    maximum ``|contribution|``, largest first, each with its ``share`` of ``inner``) and, with
    ``per_output=True``, ``per_output`` and ``per_output_contributions`` ``(outputs, A, B)``. With
    ``minus_a``/``minus_b``, of the changes: which units carry them.

    Paths are read as by :func:`load`, with ``arch``, ``key`` and ``n_ctx``.
    """
    (a, minus_a), (b, minus_b) = _unpack_diff(a, minus_a), _unpack_diff(b, minus_b)
    a, b = _model(a, arch, key, n_ctx), _model(b, arch, key, n_ctx)
    dist = _distribution(input_stats, input_mean, input_cov, token_counts)
    if minus_a is not None or minus_b is not None:
        base = lambda x: None if x is None else _model(x, arch, key, n_ctx)._m  # noqa: E731
        text, parts = _tensim._compare_changes(
            a._m, base(minus_a), b._m, base(minus_b), metric, mode=mode, dist=dist,
            breakdown=breakdown, per_output=per_output, precision=precision,
        )
        r = json.loads(text)
    else:
        r = json.loads(
            _tensim._compare(
                a._m,
                b._m,
                metric,
                per_output,
                mode=mode,
                symmetrize=symmetrize,
                by_degree=by_degree,
                dist=dist,
                null=null,
                per_tensor=per_tensor,
                precision=precision,
                **_inputs(data, samples, seed),
            )
        )
        parts = breakdown and _tensim._breakdown(
            a._m, b._m, metric, r["inner"], per_output, mode=mode, symmetrize=symmetrize, dist=dist,
            precision=precision,
        )
    if parts:
        text, contributions, per = parts
        r["breakdown"] = json.loads(text)
        r["breakdown"]["contributions"] = contributions
        if per is not None:
            r["breakdown"]["per_output_contributions"] = per
    return r


def null(
    model: Model | PathLike,
    metric: str = "tensor",
    *,
    pairs: int = 20,
    seed: int = 0,
    arch: Arch | None = None,
    key: str | None = None,
    n_ctx: int | None = None,
    mode: str | None = None,
    symmetrize: str = "layer",
    data: Any = None,
    samples: int = 10_000,
    input_stats: Any = None,
    input_mean: Any = None,
    input_cov: Any = None,
    token_counts: Any = None,
    precision: str | None = None,
) -> dict:
    """What independent initialisations of ``model``'s architecture score: the metric between
    ``pairs`` pairs of them (PyTorch's default ``U(+-1/sqrt(fan_in))`` per weight and bias, drawn
    from ``seed``), under the same options as :func:`compare`. Returns ``{"pairs", "seed",
    "mean", "std", "values"}``; ``(s - mean) / std`` is an observed similarity's z-score."""
    m = _model(model, arch, key, n_ctx)
    dist = _distribution(input_stats, input_mean, input_cov, token_counts)
    x = None if data is None else _array(data, "data")
    return json.loads(
        _tensim._null(
            m._m, metric, pairs, seed, dist=dist, data=x, samples=samples, mode=mode, symmetrize=symmetrize,
            precision=precision,
        )
    )


def verify(
    a: Model | PathLike,
    b: Model | PathLike,
    *,
    samples: int = 100_000,
    seed: int = 0,
    arch: Arch | None = None,
    key: str | None = None,
    n_ctx: int | None = None,
) -> dict:
    """``tensim verify --json``: the exact tensor inner products beside an independent-legs
    Monte-Carlo estimate of the same quantities (they must agree within a few standard errors),
    and a Monte-Carlo estimate of the Gaussian functional inner product ``E<f_a(x), f_b(x)>``."""
    a, b = _model(a, arch, key, n_ctx), _model(b, arch, key, n_ctx)
    return json.loads(_tensim._verify(a._m, b._m, samples=samples, seed=seed))


def similarity(
    a: Model | PathLike,
    b: Model | PathLike,
    metric: str = "tensor",
    per_output: bool = False,
    **kwargs: Any,
) -> float | np.ndarray:
    """Similarity of two models in [-1, 1]; with ``per_output`` an array with one value per output
    coordinate (NaN where a model's output slice is zero). Keyword arguments as :func:`compare`."""
    r = compare(a, b, metric, per_output=per_output, **kwargs)
    if per_output:
        return np.array([np.nan if v is None else v for v in r["per_output"]], dtype=np.float64)
    return float(r["similarity"])


def checkpoints(paths: PathLike | Sequence[PathLike]) -> list[str]:
    """Files, glob patterns and folders (their ``.safetensors``, ``.pt``, ``.pth``, ``.bin`` and
    ``.ckpt`` files) → paths ordered by the step number in their names."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return [os.fspath(p) for p in _tensim._expand([os.fspath(p) for p in paths])]


class _Bar:
    """A text progress bar on stderr: ``progress(done, total)``."""

    def __init__(self, what: str):
        self.what = what

    def __call__(self, done: int, total: int) -> None:
        width = 40
        filled = width * done // max(total, 1)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {self.what}{end}")
        sys.stderr.flush()


def matrix(
    models_or_paths: Sequence[Model | PathLike] | PathLike,
    metric: str = "tensor",
    *,
    arch: Arch | None = None,
    key: str | None = None,
    n_ctx: int | None = None,
    resume_dir: PathLike | None = None,
    progress: bool | Callable[[int, int], None] = True,
    per_output: bool = False,
    data: Any = None,
    samples: int = 10_000,
    seed: int = 0,
    tile: int = 0,
    symmetrize: str = "layer",
    input_stats: Any = None,
    input_mean: Any = None,
    input_cov: Any = None,
    token_counts: Any = None,
    minus: Model | PathLike | None = None,
    per_tensor: bool = False,
    precision: str | None = None,
) -> np.ndarray:
    """All-pairs similarity matrix (``N x N``; with ``per_output`` ``(1 + out_dim, N, N)``, with
    ``per_tensor`` (``"matrix"`` metric) ``(1 + tensors, N, N)`` in the order of
    ``compare(..., per_tensor=True)["per_tensor"]``; plane 0 the total) of models, model files,
    glob patterns or folders of checkpoints (ordered by step).

    ``resume_dir`` keeps finished tiles (keyed by the hashes of the checkpoints' models) so that an
    interrupted run resumes and a changed checkpoint recomputes only its tiles; the same tiles
    as ``tensim matrix --resume``. ``progress``: a bar on stderr, or a callable
    ``progress(done_pairs, total_pairs)``. ``symmetrize``, ``precision`` and the input distribution
    (``input_stats`` …): as in :func:`compare`; :func:`null` calibrates the values.
    ``minus=BASE`` (or a list of :func:`diff` objects sharing one base): the matrix of every
    model's change from ``BASE`` (as ``--minus``; with ``resume_dir`` each inner product is kept,
    ``NaN`` where a change is zero or too small to resolve). Paths are read
    as by :func:`load`, with ``arch``, ``key`` and ``n_ctx``; without ``arch``, a training run's folder
    (``run/`` holding ``checkpoints/`` and ``config.json``) is described by its ``config.json``. The GIL is released while the matrix is
    computed.
    """
    if isinstance(models_or_paths, (str, os.PathLike)):
        models_or_paths = [models_or_paths]
    if any(isinstance(x, Diff) for x in models_or_paths):
        base = getattr(models_or_paths[0], "base", None)
        path = lambda x: os.fspath(x) if isinstance(x, (str, os.PathLike)) else None  # noqa: E731
        shared = lambda x: isinstance(x, Diff) and (x.base is base or path(x.base) == path(base) is not None)  # noqa: E731
        if minus is not None or not all(shared(x) for x in models_or_paths):
            raise ValueError("a matrix of tensim.diff objects needs them all to share one base (and no minus=)")
        minus, models_or_paths = base, [x.model for x in models_or_paths]
    if arch is None and all(isinstance(x, (str, os.PathLike)) for x in models_or_paths):
        arch = _tensim._find_description([os.fspath(x) for x in models_or_paths])
        if arch is not None:
            sys.stderr.write(f"description: {arch} (beside the checkpoints)\n")
    items: list[Model | str] = []
    for x in models_or_paths:
        items.extend(checkpoints(x) if isinstance(x, (str, os.PathLike)) else [x])
    models = [_model(x, arch, key, n_ctx) for x in items]
    names = [x if isinstance(x, str) else f"model {i}" for i, x in enumerate(items)]
    callback = _Bar("pairs") if progress is True else (progress or None)
    return _tensim._matrix(
        [m._m for m in models],
        names,
        metric,
        resume_dir=None if resume_dir is None else os.fspath(resume_dir),
        per_output=per_output,
        tile=tile,
        progress=callback,
        symmetrize=symmetrize,
        dist=_distribution(input_stats, input_mean, input_cov, token_counts),
        minus=None if minus is None else _model(minus, arch, key, n_ctx)._m,
        per_tensor=per_tensor,
        precision=precision,
        **_inputs(data, samples, seed),
    )


def phases(sim: Any, k: int) -> dict:
    """The ``k`` contiguous phases of a similarity matrix with the least within-phase
    dissimilarity: ``{"starts": [...], "boundaries": [...], "cost": float}``."""
    starts, cost = _tensim._phases(_array(sim, "sim"), int(k))
    return {"starts": starts, "boundaries": starts[1:], "cost": cost}


def plot(
    sim: Any,
    path: PathLike,
    labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
    steps: Sequence[float] | None = None,
    log_steps: bool = False,
    boundaries: Sequence[int] | None = None,
) -> None:
    """Draw a similarity heat-map to ``path`` (``.png`` or ``.svg``). ``steps`` with ``log_steps``
    places checkpoints on a log-step axis; ``boundaries`` outlines phases (see :func:`phases`)."""
    _tensim._plot(
        _array(sim, "sim"),
        os.fspath(path),
        labels=None if labels is None else [str(x) for x in labels],
        title=title,
        steps=None if steps is None else [float(s) for s in steps],
        log_steps=log_steps,
        boundaries=None if boundaries is None else [int(b) for b in boundaries],
    )
