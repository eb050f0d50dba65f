"""`tensim.distributed.matrix` on a Dask LocalCluster of worker processes: equal to the
single-machine matrix, after a worker is killed mid-run, and when a job is resumed."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import tensim
from conftest import trajectory

distributed = pytest.importorskip("dask.distributed")
import tensim.distributed  # noqa: E402

SHAPE = dict(d_in=16, d=48, h=96, d_out=4, depth=2)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist") / "ckpts"
    sidecar = trajectory(folder, 18, seed=3, **SHAPE)
    return folder, sidecar, tensim.matrix(folder, arch=sidecar, progress=False)


def test_equals_the_single_machine_matrix_and_resumes(client, ckpts, tmp_path):
    folder, sidecar, want = ckpts
    tiles = tmp_path / "tiles"
    got = tensim.distributed.matrix(folder, client, arch=str(sidecar), tile=4, resume_dir=tiles, progress=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    stored = {p.name: p.stat().st_mtime_ns for p in tiles.glob("tile-*.npy")}
    assert len(stored) == 15  # 5 blocks: 15 tiles with I ≤ J
    assert (tiles / "manifest.json").exists()

    # A restarted job computes nothing: every tile is read back.
    calls = []
    again = tensim.distributed.matrix(folder, client, arch=str(sidecar), tile=4, resume_dir=tiles, progress=lambda d, t: calls.append((d, t)))
    assert np.array_equal(again, got) and calls == [(15, 15)]
    assert {p.name: p.stat().st_mtime_ns for p in tiles.glob("tile-*.npy")} == stored

    # A lost (or corrupt) tile is recomputed, and only it.
    lost = sorted(stored)[0]
    (tiles / lost).unlink()
    victim = sorted(stored)[1]
    (tiles / victim).write_bytes(b"junk")
    healed = tensim.distributed.matrix(folder, client, arch=str(sidecar), tile=4, resume_dir=tiles, progress=False)
    np.testing.assert_allclose(healed, want, rtol=0, atol=1e-12)
    now = {p.name: p.stat().st_mtime_ns for p in tiles.glob("tile-*.npy")}
    assert {k for k in now if now[k] != stored.get(k)} == {lost, victim}


def test_survives_a_worker_killed_mid_run(client, ckpts, tmp_path):
    folder, sidecar, want = ckpts
    before = client.run(os.getpid)
    killed = []

    def kill_one(done, total):
        # After the first finished tile, SIGKILL one worker process while the others still run.
        if done >= 1 and not killed and done < total:
            pid = sorted(before.values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append((done, total, pid))

    got = tensim.distributed.matrix(folder, client, arch=str(sidecar), tile=2, resume_dir=tmp_path / "t", progress=kill_one)
    assert killed, "the worker was not killed during the run"
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    client.wait_for_workers(2, timeout=60)
    assert killed[0][2] not in client.run(os.getpid).values()


def test_behavioral_and_matrix_metrics(client, ckpts):
    folder, sidecar, _ = ckpts
    for metric in ["matrix", "behavioral"]:
        want = tensim.matrix(folder, metric, arch=sidecar, samples=500, seed=2, progress=False)
        got = tensim.distributed.matrix(folder, client, metric=metric, arch=str(sidecar), tile=5, samples=500, seed=2, progress=False)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
