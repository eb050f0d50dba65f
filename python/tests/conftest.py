"""Shared fixtures: small random bilinear models, checkpoint folders and the command-line tool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import tensim

ROOT = Path(__file__).resolve().parents[2]


def arch(d_in: int = 6, d: int = 5, h: int = 4, d_out: int = 3, depth: int = 1, residual: bool = True) -> dict:
    """embed → `depth` bilinear layers (lerp residual) → head, with PyTorch-style names."""
    layers = [{"kind": "linear", "weight": "embed.weight", "bias": "embed.bias"}]
    for i in range(depth):
        layer = {
            "kind": "bilinear",
            "left": f"blocks.{i}.l.weight",
            "right": f"blocks.{i}.r.weight",
            "down": f"blocks.{i}.d.weight",
        }
        if residual:
            layer["residual"] = {"mode": "lerp", "scale": 0.5}
        layers.append(layer)
    layers.append({"kind": "linear", "weight": "head.weight"})
    return {"format": "tensim/1", "input": {"dim": d_in, "n_ctx": 1}, "layers": layers}


def state_dict(rng: np.random.Generator, d_in=6, d=5, h=4, d_out=3, depth=1, dtype=np.float64) -> dict:
    g = lambda *shape: (rng.normal(size=shape) / np.sqrt(shape[-1])).astype(dtype)  # noqa: E731
    sd = {"embed.weight": g(d, d_in), "embed.bias": g(d), "head.weight": g(d_out, d)}
    for i in range(depth):
        sd[f"blocks.{i}.l.weight"] = g(h, d)
        sd[f"blocks.{i}.r.weight"] = g(h, d)
        sd[f"blocks.{i}.d.weight"] = g(d, h)
    return sd


def trajectory(folder: Path, n: int, seed: int = 0, **shape) -> Path:
    """`n` checkpoints of a random walk saved as plain safetensors (no metadata, as PyTorch users
    save them) with a sidecar `arch.json`; returns the sidecar's path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sd = state_dict(rng, **shape)
    for k in range(n):
        sd = {name: v + 0.15 * rng.normal(size=v.shape) / np.sqrt(v.shape[-1]) for name, v in sd.items()}
        safetensors.numpy.save_file(sd, str(folder / f"ckpt_{100 * k:05d}.safetensors"))
    keys = {"d_in", "d", "h", "d_out", "depth"}
    sidecar = folder.parent / f"{folder.name}-arch.json"
    sidecar.write_text(json.dumps(arch(**{k: v for k, v in shape.items() if k in keys})))
    return sidecar


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def cli() -> str:
    """The `tensim` command-line tool: $TENSIM_CLI, else built from this clone."""
    if os.environ.get("TENSIM_CLI"):
        return os.environ["TENSIM_CLI"]
    if shutil.which("cargo") is None:
        pytest.skip("neither TENSIM_CLI nor cargo is available to provide the command-line tool")
    subprocess.run(["cargo", "build", "-q", "-p", "tensim-cli"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "debug" / "tensim")


__all__ = ["arch", "state_dict", "trajectory", "tensim"]
