"""All-pairs similarity matrices on a Dask cluster.

The upper triangle of the ``N x N`` matrix is cut into tiles of ``tile x tile`` checkpoints. Each
tile is one stateless task whose inputs are file paths: the worker loads only the checkpoints of
its tile and returns the block. The client writes every finished tile atomically into
``resume_dir`` (``tile-<key>.npy`` with its checksum ``tile-<key>.b3``, the key a hash of the
metric and the hashes of the tile's models as loaded, as ``tensim matrix`` names them) beside a
``manifest.json``, so a job
that fails or is restarted recomputes only the tiles that are missing, and a changed checkpoint
invalidates only its own tiles. A worker lost mid-run is handled by Dask, which reruns its tasks.

Workers need ``tensim`` installed and the checkpoint files at the same paths (a shared file
system, or one machine).

>>> from dask.distributed import Client, LocalCluster
>>> import tensim.distributed
>>> client = Client(LocalCluster(n_workers=4, threads_per_worker=1))
>>> sim = tensim.distributed.matrix("checkpoints/", client, arch="arch.json", resume_dir="tiles")
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable, Sequence

import numpy as np

from . import _Bar, _arch_args, _tensim, checkpoints

__all__ = ["matrix"]


def _hash(path: str, arch: dict) -> str:
    return _tensim._content_hash(path, **arch)


def _tile(rows: list[str], cols: list[str], metric: str, options: dict) -> np.ndarray:
    return _tensim._tile(rows, cols, metric, **options)


def _write_atomic(path: str, write: Callable[[Any], None]) -> None:
    """``write(file)`` into a temporary file in the same folder, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def matrix(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    client: Any,
    *,
    metric: str = "tensor",
    arch: Any = None,
    key: str | None = None,
    n_ctx: int | None = None,
    tile: int = 16,
    resume_dir: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    samples: int = 10_000,
    seed: int = 0,
    retries: int = 3,
    progress: bool | Callable[[int, int], None] = True,
) -> np.ndarray:
    """``N x N`` similarity matrix of the checkpoints ``paths`` (files, globs or folders, ordered
    by step number), computed tile by tile on the Dask ``client``'s workers.

    ``metric``: ``"tensor"``, ``"matrix"`` or ``"behavioral"`` (on the ``.npy`` file ``data``,
    else ``samples`` Gaussian inputs drawn with ``seed``). ``arch``: sidecar description (dict,
    JSON text or a path every worker can read) for checkpoints without an embedded one; ``key``:
    the state dict's entry in PyTorch checkpoints, ``n_ctx``: the analysed positions (as in
    :func:`tensim.load`).
    ``resume_dir`` keeps finished tiles (default: a temporary folder removed at the end, so no
    resume across jobs). ``retries``: reruns of a tile whose worker failed. ``progress``: a bar on
    stderr or a callable ``progress(done_tiles, total_tiles)``. Equal to :func:`tensim.matrix`.
    """
    from dask.distributed import as_completed

    files = [os.path.abspath(p) for p in checkpoints(paths)]
    if not files:
        raise _tensim.TensimError("no checkpoints given")
    if tile < 1:
        raise ValueError(f"tile must be at least 1, got {tile}")
    n = len(files)
    options = dict(_arch_args(arch), key=key, n_ctx=n_ctx)
    if "arch_path" in options:
        options["arch_path"] = os.path.abspath(options["arch_path"])
    data_path = None if data is None else os.path.abspath(data)
    options.update(data_path=data_path, samples=samples, seed=seed)

    temporary = resume_dir is None
    folder = tempfile.mkdtemp(prefix="tensim-tiles-") if temporary else os.fspath(resume_dir)
    os.makedirs(folder, exist_ok=True)
    try:
        # Content hashes identify the checkpoints; each worker reads its share of the files.
        arch_options = {k: v for k, v in options.items() if k.startswith("arch_") or k in ("key", "n_ctx")}
        hashes = client.gather(
            client.map(_hash, files, arch=arch_options, pure=False, retries=retries)
        )
        manifest = {
            "format": "tensim-tiles/1",
            "metric": metric,
            "tile": tile,
            "checkpoints": [{"path": p, "hash": h} for p, h in zip(files, hashes)],
        }
        text = json.dumps(manifest, indent=2).encode()
        _write_atomic(os.path.join(folder, "manifest.json"), lambda f: f.write(text))

        blocks = [range(s, min(s + tile, n)) for s in range(0, n, tile)]
        sim = np.zeros((n, n))

        def place(bi: range, bj: range, values: np.ndarray) -> None:
            sim[bi.start : bi.stop, bj.start : bj.stop] = values
            sim[bj.start : bj.stop, bi.start : bi.stop] = values.T

        pending = {}
        for a, bi in enumerate(blocks):
            for bj in blocks[a:]:
                key = _tensim._tile_key(
                    metric,
                    [hashes[i] for i in bi],
                    [hashes[j] for j in bj],
                    data_path=data_path,
                    samples=samples,
                    seed=seed,
                )
                values = _tensim._tile_get(folder, key, [1, len(bi), len(bj)])
                if values is not None:
                    place(bi, bj, values[0])
                    continue
                future = client.submit(
                    _tile,
                    [files[i] for i in bi],
                    [files[j] for j in bj],
                    metric,
                    options,
                    key=f"tensim-tile-{key}",
                    retries=retries,
                )
                pending[future] = (bi, bj, key)

        total = len(blocks) * (len(blocks) + 1) // 2
        report = _Bar("tiles") if progress is True else (progress or None)
        done = total - len(pending)
        if report:
            report(done, total)
        for future in as_completed(list(pending)):
            bi, bj, key = pending.pop(future)
            values = np.asarray(future.result(), dtype=np.float64)
            place(bi, bj, values)
            _tensim._tile_put(folder, key, values[None, :, :])
            done += 1
            if report:
                report(done, total)
        return sim
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
