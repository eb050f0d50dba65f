"""Native module of tensim (Rust, built by maturin). Use the wrappers in `tensim`."""

from os import PathLike
from typing import Callable, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, PathLike[str]]
_F64 = npt.NDArray[np.float64]

class TensimError(Exception):
    """Raised for bad input (files, tensors, shapes, architectures) and undefined results."""

class Model:
    @staticmethod
    def _from_tensors(
        tensors: Sequence[tuple[str, _F64]],
        arch_json: Optional[str] = None,
        arch_path: Optional[_Path] = None,
        origin: str = "state_dict",
    ) -> Model: ...
    def _forward(self, x: _F64) -> _F64: ...
    def save(self, path: _Path, metadata: Optional[dict[str, str]] = None) -> None: ...
    def state_dict(self) -> list[tuple[str, _F64]]: ...
    @property
    def arch_json(self) -> str: ...
    @property
    def in_dim(self) -> int: ...
    @property
    def out_dim(self) -> int: ...
    @property
    def degree(self) -> Optional[int]: ...
    @property
    def n_params(self) -> int: ...
    @property
    def content_hash(self) -> str: ...

def _load(
    path: _Path,
    arch_json: Optional[str] = None,
    arch_path: Optional[_Path] = None,
    key: Optional[str] = None,
    n_ctx: Optional[int] = None,
) -> Model: ...
def _compare(
    a: Model,
    b: Model,
    metric_name: str,
    per_output: bool = False,
    data: Optional[_F64] = None,
    samples: int = 10000,
    seed: int = 0,
    mode: Optional[str] = None,
    symmetrize: str = "layer",
    by_degree: bool = False,
    dist: Optional[Distribution] = None,
    null: Optional[int] = None,
    per_tensor: bool = False,
    precision: str | None = None,
) -> str: ...
def _breakdown(
    a: Model,
    b: Model,
    metric_name: str,
    inner: float,
    per_output: bool = False,
    mode: Optional[str] = None,
    symmetrize: str = "layer",
    dist: Optional[Distribution] = None,
    precision: str | None = None,
) -> tuple[str, _F64, Optional[_F64]]: ...
def _compare_changes(
    a: Model,
    a0: Optional[Model],
    b: Model,
    b0: Optional[Model],
    metric_name: str,
    mode: Optional[str] = None,
    dist: Optional[Distribution] = None,
    breakdown: bool = False,
    per_output: bool = False,
    precision: str | None = None,
) -> tuple[str, Optional[tuple[str, _F64, Optional[_F64]]]]: ...

class Distribution:
    def info_json(self) -> str: ...

def _distribution(
    source: str,
    stats: Optional[_F64] = None,
    mean: Optional[_F64] = None,
    cov: Optional[_F64] = None,
    counts: Optional[_F64] = None,
) -> Distribution: ...
def _null(
    model: Model,
    metric_name: str,
    pairs: int,
    seed: int = 0,
    dist: Optional[Distribution] = None,
    data: Optional[_F64] = None,
    samples: int = 10000,
    mode: Optional[str] = None,
    symmetrize: str = "layer",
    precision: str | None = None,
) -> str: ...
def _verify(a: Model, b: Model, samples: int = 100000, seed: int = 0) -> str: ...
def _matrix(
    models: Sequence[Model],
    names: Sequence[str],
    metric_name: str,
    resume_dir: Optional[_Path] = None,
    per_output: bool = False,
    data: Optional[_F64] = None,
    samples: int = 10000,
    seed: int = 0,
    tile: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
    symmetrize: str = "layer",
    dist: Optional[Distribution] = None,
    minus: Optional[Model] = None,
    per_tensor: bool = False,
    precision: str | None = None,
) -> _F64: ...
def _tile(
    rows: Sequence[_Path],
    cols: Sequence[_Path],
    metric_name: str,
    arch_json: Optional[str] = None,
    arch_path: Optional[_Path] = None,
    key: Optional[str] = None,
    n_ctx: Optional[int] = None,
    data_path: Optional[_Path] = None,
    samples: int = 10000,
    seed: int = 0,
) -> _F64: ...
def _tile_key(
    metric_name: str,
    rows: Sequence[str],
    cols: Sequence[str],
    data_path: Optional[_Path] = None,
    samples: int = 10000,
    seed: int = 0,
) -> str: ...
def _tile_get(folder: _Path, key: str, shape: Sequence[int]) -> _F64 | None: ...
def _tile_put(folder: _Path, key: str, values: _F64) -> None: ...
def _content_hash(
    path: _Path,
    arch_json: str | None = ...,
    arch_path: _Path | None = ...,
    key: str | None = ...,
    n_ctx: int | None = ...,
) -> str: ...
def _expand(paths: Sequence[_Path]) -> list[str]: ...
def _find_description(paths: Sequence[_Path]) -> str | None: ...
def _phases(sim: _F64, k: int) -> tuple[list[int], float]: ...
def _plot(
    sim: _F64,
    path: _Path,
    labels: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
    steps: Optional[Sequence[float]] = None,
    log_steps: bool = False,
    boundaries: Optional[Sequence[int]] = None,
) -> None: ...
