"""examples/compare_checkpoints.py runs as is and gives the command-line tool's numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from conftest import ROOT


def test_example_runs_and_matches_the_cli(cli, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "compare_checkpoints.py"), "--out", str(out)],
        check=True, capture_output=True, text=True,
    )
    assert "phases start at" in run.stdout, run.stdout + run.stderr
    for name in ["tensor.npy", "matrix.npy", "similarity.png", "phases.json"]:
        assert (out / name).stat().st_size > 0, name
    sim = np.load(out / "tensor.npy")
    assert sim.shape == (17, 17) and np.allclose(np.diag(sim), 1.0)
    assert len(json.loads((out / "phases.json").read_text())["starts"]) == 3
    npy = tmp_path / "cli.npy"
    ckpts = out / "checkpoints"
    subprocess.run([cli, "matrix", str(ckpts), "--arch", str(ckpts / "arch.json"), "--out", str(npy), "--quiet"], check=True)
    np.testing.assert_allclose(sim, np.load(npy), rtol=0, atol=1e-12)
