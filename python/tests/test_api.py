"""The Python API: models from state_dicts (numpy or torch), files, metrics, matrices, phases,
plots, error messages, and the GIL released during long calls."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import numpy as np
import pytest

import tensim
from conftest import arch, state_dict, trajectory


def reference_forward(sd: dict, x: np.ndarray, depth: int = 1) -> np.ndarray:
    """embed → lerp-residual bilinear layers → head, written out in numpy (independent of tensim)."""
    z = x @ sd["embed.weight"].T + sd["embed.bias"]
    for i in range(depth):
        l, r, d = (sd[f"blocks.{i}.{k}.weight"] for k in "lrd")
        z = 0.5 * z + 0.5 * (((z @ l.T) * (z @ r.T)) @ d.T)
    return z @ sd["head.weight"].T


def test_state_dict_model_computes_the_network(rng):
    sd = state_dict(rng, depth=2)
    m = tensim.Model.from_state_dict(sd, arch(depth=2))
    x = rng.normal(size=(7, 6))
    np.testing.assert_allclose(m.forward(x), reference_forward(sd, x, depth=2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m(x[0]), reference_forward(sd, x[:1], depth=2)[0], rtol=1e-12, atol=1e-12)
    assert (m.in_dim, m.out_dim, m.degree) == (6, 3, 4)
    assert m.n_params == sum(v.size for v in sd.values())


def test_numpy_and_torch_inputs_give_identical_results(rng):
    torch = pytest.importorskip("torch")
    sd32 = state_dict(rng, dtype=np.float32)
    other = state_dict(rng)
    a_np = tensim.Model.from_state_dict(sd32, arch())
    a_t = tensim.Model.from_state_dict({k: torch.from_numpy(v) for k, v in sd32.items()}, arch())
    assert a_np.content_hash == a_t.content_hash
    b = tensim.Model.from_state_dict(other, arch())
    for metric in ["tensor", "matrix", "behavioral"]:
        assert tensim.similarity(a_np, b, metric) == tensim.similarity(a_t, b, metric)
    x = rng.normal(size=(5, 6))
    assert np.array_equal(a_np.forward(x), a_t.forward(torch.from_numpy(x)))
    # bf16 and half tensors (as trained in mixed precision) convert exactly.
    half = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in sd32.items()}
    as_f64 = {k: v.double().numpy() for k, v in half.items()}
    assert (
        tensim.Model.from_state_dict(half, arch()).content_hash
        == tensim.Model.from_state_dict(as_f64, arch()).content_hash
    )
    # A real torch module's state_dict.
    layer = torch.nn.Linear(6, 3, bias=True)
    lin = tensim.Model.from_state_dict(
        layer.state_dict(),
        {"format": "tensim/1", "input": {"dim": 6, "n_ctx": 1}, "layers": [{"kind": "linear", "weight": "weight", "bias": "bias"}]},
    )
    xt = torch.randn(4, 6)
    np.testing.assert_allclose(lin.forward(xt), layer(xt).detach().double().numpy(), rtol=1e-6, atol=1e-6)


def test_self_similarity_symmetry_and_a_function_preserving_permutation(rng):
    sd = state_dict(rng, depth=2, h=6)
    a = tensim.Model.from_state_dict(sd, arch(depth=2, h=6))
    b = tensim.Model.from_state_dict(state_dict(rng, depth=2, h=6), arch(depth=2, h=6))
    assert tensim.similarity(a, a) == pytest.approx(1.0, abs=1e-12)
    assert tensim.similarity(a, b) == pytest.approx(tensim.similarity(b, a), abs=1e-12)
    assert -1.0 <= tensim.similarity(a, b) < 0.999
    # Permute and rescale hidden units of layer 0, swap L and R of layer 1: the same function.
    perm, s = rng.permutation(6), rng.uniform(0.5, 2.0, size=6)
    q = dict(sd)
    q["blocks.0.l.weight"] = sd["blocks.0.l.weight"][perm] * s[:, None]
    q["blocks.0.r.weight"] = sd["blocks.0.r.weight"][perm]
    q["blocks.0.d.weight"] = sd["blocks.0.d.weight"][:, perm] / s[None, :]
    q["blocks.1.l.weight"], q["blocks.1.r.weight"] = sd["blocks.1.r.weight"], sd["blocks.1.l.weight"]
    c = tensim.Model.from_state_dict(q, arch(depth=2, h=6))
    x = rng.normal(size=(4, 6))
    np.testing.assert_allclose(c.forward(x), a.forward(x), rtol=1e-10, atol=1e-10)
    assert tensim.similarity(a, c) == pytest.approx(1.0, abs=1e-10)
    assert tensim.similarity(a, c, "matrix") < 0.99  # the weight baseline is fooled
    per = tensim.similarity(a, b, per_output=True)
    assert per.shape == (3,) and np.all(np.abs(per) <= 1)


def test_save_and_load_round_trip_bit_exactly(rng, tmp_path):
    sd = state_dict(rng, depth=2)
    m = tensim.Model.from_state_dict(sd, arch(depth=2))
    m.save(tmp_path / "plain.safetensors")
    assert tensim.load(tmp_path / "plain.safetensors").content_hash == m.content_hash
    path = tmp_path / "m.safetensors"
    m.save(path, metadata={"step": 300})
    back = tensim.load(path)  # self-describing: no arch needed
    for name, v in back.state_dict().items():
        assert np.array_equal(v, m.state_dict()[name])
    assert back.arch == m.arch
    x = rng.normal(size=(3, 6))
    assert np.array_equal(back.forward(x), m.forward(x))


def test_python_equals_the_command_line_tool(cli, tmp_path):
    sidecar = trajectory(tmp_path / "ckpts", 5, depth=1)
    files = tensim.checkpoints(tmp_path / "ckpts")
    assert [f.rsplit("/", 1)[1] for f in files] == [f"ckpt_{100 * k:05d}.safetensors" for k in range(5)]
    for metric in ["tensor", "matrix", "behavioral"]:
        out = subprocess.run(
            [cli, "compare", files[0], files[3], "--arch", str(sidecar), "--metric", metric, "--json", "--per-output"],
            check=True, capture_output=True, text=True,
        ).stdout
        want = json.loads(out)
        got = tensim.compare(files[0], files[3], metric, per_output=True, arch=sidecar)
        assert got["similarity"] == pytest.approx(want["similarity"], abs=1e-12), metric
        assert got["per_output"] == pytest.approx(want["per_output"], abs=1e-12), metric
    npy = tmp_path / "cli.npy"
    subprocess.run([cli, "matrix", str(tmp_path / "ckpts"), "--arch", str(sidecar), "--out", str(npy), "--quiet"], check=True)
    sim = tensim.matrix(tmp_path / "ckpts", arch=str(sidecar), progress=False)
    np.testing.assert_allclose(sim, np.load(npy), rtol=0, atol=1e-12)
    # Models in memory and files give the same matrix.
    models = [tensim.load(f, arch=sidecar) for f in files]
    np.testing.assert_allclose(tensim.matrix(models, progress=False), sim, rtol=0, atol=1e-12)


def test_full_symmetrisation_degrees_and_verify_equal_the_command_line_tool(cli, tmp_path):
    sidecar = trajectory(tmp_path / "ckpts", 3, depth=2)
    files = tensim.checkpoints(tmp_path / "ckpts")

    def run(*args: str) -> dict:
        out = subprocess.run([cli, *args, "--arch", str(sidecar), "--json"], check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    want = run("compare", files[0], files[2], "--symmetrize", "full", "--by-degree")
    got = tensim.compare(files[0], files[2], symmetrize="full", by_degree=True, arch=sidecar)
    assert got["symmetrize"] == "full" and got["mode"] == want["mode"]
    assert got["similarity"] == pytest.approx(want["similarity"], abs=1e-12)
    assert got["by_degree"] == pytest.approx(want["by_degree"], abs=1e-12)
    # Full symmetrisation differs from the per-layer metric at depth 2, and a matrix agrees.
    layer = tensim.similarity(files[0], files[2], arch=sidecar)
    assert abs(layer - got["similarity"]) > 1e-6
    sim = tensim.matrix(tmp_path / "ckpts", arch=str(sidecar), symmetrize="full", progress=False)
    assert sim[0, 2] == pytest.approx(got["similarity"], abs=1e-12)
    want = run("verify", files[0], files[1], "--samples", "2000", "--seed", "3")
    got = tensim.verify(files[0], files[1], samples=2000, seed=3, arch=sidecar)

    def close(x, y) -> bool:
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(close(x[k], y[k]) for k in x)
        if isinstance(x, float):
            return x == pytest.approx(y, rel=1e-9, abs=1e-15)
        return x == y

    assert got["tensor_mc"]["inner"]["stderr"] > 0 and close(got, want), (got, want)
    with pytest.raises(tensim.TensimError, match="by_degree=True needs"):
        tensim.compare(files[0], files[1], by_degree=True, arch=sidecar)
    with pytest.raises(tensim.TensimError, match="applies to the tensor metric"):
        tensim.compare(files[0], files[1], "matrix", symmetrize="full", arch=sidecar)


def test_matrix_resumes_and_reports_progress(tmp_path, rng):
    models = [tensim.Model.from_state_dict(state_dict(rng), arch()) for _ in range(6)]
    seen = []
    first = tensim.matrix(models, resume_dir=tmp_path / "tiles", tile=2, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1] == (24, 24)  # 3 diagonal and 3 upper tiles of 2 x 2 pairs
    tiles = sorted(p.name for p in (tmp_path / "tiles").glob("tile-*.npy"))
    assert len(tiles) == 6
    again = tensim.matrix(models, resume_dir=tmp_path / "tiles", tile=2, progress=False)
    assert np.array_equal(first, again)
    per = tensim.matrix(models, per_output=True, progress=False)
    assert per.shape == (4, 6, 6) and np.allclose(per[0], first, atol=1e-12)


def test_phases_and_plot(tmp_path):
    sim = np.full((6, 6), 0.1)
    sim[:3, :3] = sim[3:, 3:] = 0.9
    np.fill_diagonal(sim, 1.0)
    p = tensim.phases(sim, 2)
    assert p["starts"] == [0, 3] and p["boundaries"] == [3]
    for name in ["h.png", "h.svg"]:
        tensim.plot(sim, tmp_path / name, labels=[str(i) for i in range(6)], title="t", boundaries=p["boundaries"])
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") if name.endswith("png") else b"<svg" in data[:500]


def test_bad_input_raises_with_a_clear_message(rng, tmp_path):
    sd = state_dict(rng)
    missing = {k: v for k, v in sd.items() if k != "head.weight"}
    with pytest.raises(tensim.TensimError, match=r'"head.weight".*missing'):
        tensim.Model.from_state_dict(missing, arch())
    wrong = dict(sd, **{"blocks.0.l.weight": np.zeros((4, 7))})
    with pytest.raises(tensim.TensimError, match=r'"blocks.0.l.weight".*shape \[4, 7\], expected'):
        tensim.Model.from_state_dict(wrong, arch())
    nan = dict(sd, **{"embed.bias": np.array([0, 0, np.nan, 0, 0])})
    with pytest.raises(tensim.TensimError, match=r'"embed.bias".*non-finite value \(NaN\) at flat index 2'):
        tensim.Model.from_state_dict(nan, arch())
    with pytest.raises(tensim.TensimError, match=r"unknown|typo|not allowed|unexpected"):
        tensim.Model.from_state_dict(sd, dict(arch(), colour="red"))
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        tensim.load(tmp_path / "nothere.safetensors", arch=arch())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(tensim.TensimError, match="bad.safetensors: not a valid safetensors file"):
        tensim.load(bad, arch=arch())
    m = tensim.Model.from_state_dict(sd, arch())
    with pytest.raises(tensim.TensimError, match="no architecture description"):
        tensim.load(_plain(tmp_path, sd))
    zero = tensim.Model.from_state_dict({k: np.zeros_like(v) for k, v in sd.items()}, arch())
    with pytest.raises(tensim.TensimError, match="zero norm"):
        tensim.similarity(m, zero)
    with pytest.raises(tensim.TensimError, match="unknown metric"):
        tensim.similarity(m, m, "cosine")
    with pytest.raises(tensim.TensimError, match=r"expected \(rows, 6\)"):
        m.forward(np.zeros((2, 5)))
    other = tensim.Model.from_state_dict(state_dict(rng, d_out=2), arch(d_out=2))
    with pytest.raises(tensim.TensimError, match="not comparable"):
        tensim.similarity(m, other)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        tensim.Model.from_state_dict(dict(sd, **{"embed.bias": "abc"}), arch())


def _plain(tmp_path, sd):
    import safetensors.numpy

    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file(sd, str(path))
    return path


def test_the_gil_is_released_during_a_long_matrix(rng):
    shape = dict(d_in=16, d=64, h=256, d_out=4, depth=2)
    a = arch(**shape)
    models = [tensim.Model.from_state_dict(state_dict(rng, **shape), a) for _ in range(24)]
    done = threading.Event()
    result = {}

    def work():
        t = time.perf_counter()
        result["sim"] = tensim.matrix(models, progress=False)
        result["seconds"] = time.perf_counter() - t
        done.set()

    thread = threading.Thread(target=work)
    ticks = []
    thread.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    thread.join()
    gaps = np.diff(ticks)
    assert result["seconds"] > 0.2, "the matrix must take long enough to observe"
    assert len(ticks) > 20 and gaps.max() < 0.5 * result["seconds"], (len(ticks), gaps.max(), result["seconds"])


def test_transformers_from_a_state_dict_and_the_gaussian_metric(rng):
    d = 4
    arch = {
        "format": "tensim/1",
        "input": {"dim": d, "n_ctx": 2},
        "layers": [
            {"kind": "attention", "n_head": 2, "q1": "attn.q1.weight", "k1": "attn.k1.weight",
             "q2": "attn.q2.weight", "k2": "attn.k2.weight", "v": "attn.v.weight", "o": "attn.o.weight",
             "mask": "causal", "rotary": {"base": 10000}, "residual": {"mode": "lerp", "scale": 0.5}},
            {"kind": "linear", "weight": "head.weight"},
        ],
    }
    def sd():
        w = {f"attn.{k}.weight": rng.normal(size=(d, d)) / 2 for k in ["q1", "k1", "q2", "k2", "v", "o"]}
        w["head.weight"] = rng.normal(size=(3, d))
        return w
    a, b = (tensim.Model.from_state_dict(sd(), arch) for _ in range(2))
    assert a.forward(np.zeros((2, d))).shape == (2, 3)  # two positions of one sequence
    assert tensim.similarity(a, a, "gaussian") == pytest.approx(1.0, abs=1e-12)
    exact = tensim.compare(a, b, "gaussian", mode="exact")
    closure = tensim.compare(a, b, "gaussian", mode="closure")
    assert exact["mode"] == closure["mode"] == "exact"  # one non-linear layer: no closure involved
    assert closure["similarity"] == pytest.approx(exact["similarity"], abs=1e-12)
    assert tensim.similarity(a, a, "tensor") == pytest.approx(1.0, abs=1e-12)
    assert abs(tensim.similarity(a, b, "tensor")) <= 1.0
    with pytest.raises(tensim.TensimError, match="unknown gaussian mode"):
        tensim.compare(a, b, "gaussian", mode="approximate")
    # Attention moments in f32 by default, in f64 on request: close, in compare and matrix alike.
    wide = tensim.compare(a, b, "gaussian", mode="closure", precision="f64")
    assert (closure["precision"], wide["precision"]) == ("f32", "f64")
    assert wide["similarity"] == pytest.approx(closure["similarity"], abs=1e-6)
    single = tensim.similarity(a, b, "gaussian", mode="closure", precision="f32")
    assert single == closure["similarity"]
    m = tensim.matrix([a, b], "gaussian", progress=False, precision="f64")
    assert m[0, 1] == pytest.approx(wide["similarity"], abs=1e-12)
    with pytest.raises(tensim.TensimError, match="precision applies to the gaussian metric"):
        tensim.compare(a, b, "tensor", precision="f32")
    with pytest.raises(tensim.TensimError, match="unknown precision"):
        tensim.compare(a, b, "gaussian", precision="f16")


def test_pytorch_checkpoints_equal_the_same_weights_as_safetensors(cli, tmp_path, rng):
    """`torch.save` files (plain, nested, f16/bf16, non-contiguous views) read without PyTorch's
    help give the results of the same tensors stored as safetensors, in Python and the CLI."""
    torch = pytest.importorskip("torch")
    import safetensors.torch

    sidecar = tmp_path / "arch.json"
    sidecar.write_text(json.dumps(arch(depth=2)))
    sd = {k: torch.from_numpy(v) for k, v in state_dict(rng, depth=2).items()}
    other = {k: v + 0.3 * torch.randn(v.shape, dtype=v.dtype) for k, v in sd.items()}
    safetensors.torch.save_file(other, str(tmp_path / "other.safetensors"))
    torch.save(other, tmp_path / "other.pt")

    def views(d: dict) -> dict:
        """Each tensor as a transposed view of a wider storage (non-contiguous, offset)."""
        out = {}
        for k, v in d.items():
            wide = torch.cat([torch.zeros_like(v), v], dim=0)[v.shape[0]:]
            out[k] = wide.t().contiguous().t() if v.dim() == 2 else wide
        return out

    cases = {
        "plain": (sd, sd),
        "nested": (sd, {"model_state_dict": sd, "step": 100, "optimizer": {"lr": 0.1}}),
        "views": (sd, views(sd)),
        "f16": ({k: v.half() for k, v in sd.items()}, {k: v.half() for k, v in sd.items()}),
        "bf16": ({k: v.bfloat16() for k, v in sd.items()}, {k: v.bfloat16() for k, v in sd.items()}),
    }
    for name, (weights, saved) in cases.items():
        st, pt = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.pt"
        safetensors.torch.save_file({k: v.contiguous() for k, v in weights.items()}, str(st))
        torch.save(saved, pt)
        assert tensim.load(pt, sidecar).content_hash == tensim.load(st, sidecar).content_hash, name
        for metric in ["tensor", "gaussian"]:
            want = tensim.compare(st, tmp_path / "other.safetensors", metric, arch=sidecar)
            got = tensim.compare(pt, tmp_path / "other.pt", metric, arch=sidecar)
            assert got["similarity"] == pytest.approx(want["similarity"], abs=1e-12), (name, metric)
            out = subprocess.run(
                [cli, "compare", str(pt), str(tmp_path / "other.pt"), "--arch", str(sidecar), "--metric", metric, "--json"],
                check=True, capture_output=True, text=True,
            ).stdout
            assert json.loads(out)["similarity"] == pytest.approx(want["similarity"], abs=1e-12), (name, metric)

    # Several state dicts: key= picks one, without it the error lists them.
    torch.save({"model": sd, "ema": other}, tmp_path / "two.pt")
    with pytest.raises(tensim.TensimError, match=r'"ema", "model".*--key'):
        tensim.load(tmp_path / "two.pt", sidecar)
    assert tensim.load(tmp_path / "two.pt", sidecar, key="ema").content_hash == tensim.load(
        tmp_path / "other.pt", sidecar
    ).content_hash
    sim = tensim.matrix([tmp_path / "plain.pt", tmp_path / "two.pt"], arch=sidecar, key="model", progress=False)
    assert sim[0, 1] == pytest.approx(1.0, abs=1e-12)

    # A pickle that would run code when unpickled is refused, and nothing runs.
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": sd, "hook": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(tensim.TensimError, match=r"refused.*system"):
        tensim.load(tmp_path / "evil.pt", sidecar)
    assert not marker.exists()


def test_a_language_model_run_folder_reads_as_its_hand_converted_files(cli, tmp_path):
    """`run/config.json` beside `run/checkpoints/step_*.pt` (the bilinear-attention LM's layout)
    gives the matrix of the same weights converted by hand to tensim/1, with no flags."""
    torch = pytest.importorskip("torch")
    import safetensors.torch

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    vocab, d, layers = 13, 8, 2
    (run / "config.json").write_text(json.dumps({"model": {
        "vocab_size": vocab, "d_model": d, "n_head": 2, "n_layers": layers, "attn_type": "bilinear",
        "attn_scale": 0.35, "rope_base": 10000, "use_bias_qk": True}}))
    hand_arch = {"format": "tensim/1", "input": {"dim": vocab, "n_ctx": 4}, "layers": [
        {"kind": "linear", "weight": "embed"},
        *[{"kind": "attention", "n_head": 2, "mask": "causal", "rotary": {"base": 10000},
           "residual": {"mode": "add", "scale": 0.35},
           **{p: f"layers.{i}.{p}.weight" for p in ["q1", "k1", "q2", "k2", "v", "o"]},
           **{f"{p}_bias": f"layers.{i}.{p}.bias" for p in ["q1", "k1", "q2", "k2"]}}
          for i in range(layers)],
        {"kind": "linear", "weight": "unembed"}]}
    g = torch.Generator().manual_seed(0)
    hand = tmp_path / "hand"
    hand.mkdir()
    for step in range(3):
        sd = {"embed.weight": torch.randn(vocab, d, generator=g, dtype=torch.float64),
              "unembed.weight": torch.randn(vocab, d, generator=g, dtype=torch.float64) / 3,
              "final_norm.running_mean_energy": torch.rand(d, generator=g, dtype=torch.float64) + 0.5}
        for i in range(layers):
            for p in ["q1", "k1", "q2", "k2", "v", "o"]:
                sd[f"layers.{i}.{p}.weight"] = torch.randn(d, d, generator=g, dtype=torch.float64) / 3
            for p in ["q1", "k1", "q2", "k2"]:
                sd[f"layers.{i}.{p}.bias"] = torch.randn(d, generator=g, dtype=torch.float64) / 3
        torch.save(sd, run / "checkpoints" / f"step_{step * 100:05d}.pt")
        converted = {k: v for k, v in sd.items() if k.startswith("layers.")}
        converted["embed"] = sd["embed.weight"].t().contiguous()
        converted["unembed"] = sd["unembed.weight"] / torch.sqrt(sd["final_norm.running_mean_energy"] + 1e-6)
        safetensors.torch.save_file(converted, str(hand / f"step_{step * 100:05d}.safetensors"))
    (tmp_path / "hand.json").write_text(json.dumps(hand_arch))

    for metric in ["tensor", "gaussian"]:
        want = tensim.matrix(hand, metric, arch=tmp_path / "hand.json", progress=False)
        got = tensim.matrix(run, metric, progress=False)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        npy = tmp_path / f"{metric}.npy"
        subprocess.run([cli, "matrix", str(run), "--metric", metric, "--out", str(npy), "--quiet"], check=True)
        np.testing.assert_allclose(np.load(npy), want, rtol=0, atol=1e-12)
    first = run / "checkpoints" / "step_00000.pt"
    # n_ctx= as --n-ctx.
    last = run / "checkpoints" / "step_00200.pt"
    short = tensim.compare(first, last, "gaussian", arch=run / "config.json", n_ctx=2)
    out = subprocess.run(
        [cli, "compare", str(first), str(last), "--arch", str(run / "config.json"), "--n-ctx", "2",
         "--metric", "gaussian", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert short["similarity"] == pytest.approx(json.loads(out)["similarity"], abs=1e-12)
    four = tensim.compare(first, last, "gaussian", arch=run / "config.json")["similarity"]
    assert four == pytest.approx(got[0, 2], abs=1e-12)
    assert abs(short["similarity"] - four) > 1e-9
    assert tensim.load(first, run / "config.json").n_params == tensim.load(
        hand / "step_00000.safetensors", tmp_path / "hand.json"
    ).n_params
    with pytest.raises(tensim.TensimError, match="attn_type \"softmax\""):
        tensim.load(first, {"model": {"vocab_size": vocab, "d_model": d, "n_head": 2, "n_layers": layers,
                                      "attn_type": "softmax", "attn_scale": 0.35}})


def test_the_deepmlp_layout_needs_no_description(tmp_path, rng):
    """`arch="deepmlp:lerp=0.5"` reads embed → body.{i}.{l,r,d} → head from the names alone."""
    sd = state_dict(rng, depth=2)
    renamed = {k.replace("blocks.", "body."): v for k, v in sd.items()}
    import safetensors.numpy

    safetensors.numpy.save_file(renamed, str(tmp_path / "m.safetensors"))
    want = tensim.Model.from_state_dict(sd, arch(depth=2))
    got = tensim.load(tmp_path / "m.safetensors", "deepmlp:lerp=0.5")
    x = rng.normal(size=(4, 6))
    np.testing.assert_allclose(got.forward(x), want.forward(x), rtol=0, atol=1e-12)
    with pytest.raises(tensim.TensimError, match="deepmlp:lerp=S"):
        tensim.load(tmp_path / "m.safetensors", "deepmlp")


def test_input_distributions_and_the_null_equal_the_command_line_tool(cli, tmp_path, rng):
    sidecar = trajectory(tmp_path / "ckpts", 3, depth=1)
    files = tensim.checkpoints(tmp_path / "ckpts")
    x = rng.normal(size=(30, 6)) @ rng.normal(size=(6, 6)) + np.arange(6.0)
    np.save(tmp_path / "x.npy", x)

    def run(*args):
        out = subprocess.run(
            [cli, "compare", files[0], files[2], "--arch", str(sidecar), "--json", *args],
            check=True, capture_output=True, text=True,
        ).stdout
        return json.loads(out)

    for metric in ["gaussian", "tensor"]:
        want = run("--metric", metric, "--input-stats", str(tmp_path / "x.npy"))
        for given in [x, str(tmp_path / "x.npy")]:
            got = tensim.compare(files[0], files[2], metric, arch=sidecar, input_stats=given)
            assert got["similarity"] == pytest.approx(want["similarity"], abs=1e-12), metric
        assert got["input_distribution"] == want["input_distribution"]
        moments = tensim.compare(
            files[0], files[2], metric, arch=sidecar, input_mean=x.mean(0), input_cov=np.cov(x, rowvar=False)
        )
        assert moments["similarity"] == pytest.approx(want["similarity"], abs=1e-10)
        assert moments["input_distribution"]["kind"] == "moments"
    models = [tensim.load(f, arch=sidecar) for f in files]
    gauss = run("--metric", "gaussian", "--input-stats", str(tmp_path / "x.npy"))
    sim = tensim.matrix(models, "gaussian", input_stats=x, progress=False)
    assert sim[0, 2] == pytest.approx(gauss["similarity"], abs=1e-12)
    # The null: compare(null=K) and null() agree with the command line under the same seed.
    want = run("--metric", "gaussian", "--null", "5", "--seed", "2")
    got = tensim.compare(models[0], models[2], "gaussian", null=5, seed=2)
    for k in ["null_mean", "null_std", "null_pairs", "z"]:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    n = tensim.null(models[0], "gaussian", pairs=5, seed=2)
    assert (n["mean"], n["std"], len(n["values"])) == (got["null_mean"], got["null_std"], 5)
    per = tensim.compare(models[0], models[1], "matrix", per_tensor=True)["per_tensor"]
    assert [t["tensor"] for t in per] == [t["tensor"] for t in run("--metric", "matrix", "--per-tensor")["per_tensor"]]
    changes = run("--metric", "gaussian", "--minus-a", files[1], "--minus-b", files[1])
    got = tensim.compare(models[0], models[2], "gaussian", minus_a=models[1], minus_b=files[1], arch=sidecar)
    assert got["similarity"] == pytest.approx(changes["similarity"], abs=1e-12)
    changes = tensim.matrix(models, "gaussian", minus=files[1], arch=sidecar, progress=False)
    assert changes[0, 2] == pytest.approx(got["similarity"], abs=1e-12) and np.isnan(changes[1, 1])
    with pytest.raises(tensim.TensimError, match="zero or too small"):
        tensim.compare(models[0], models[2], minus_a=models[0])
    counts = tensim.compare(models[0], models[1], "gaussian", token_counts=np.array([1, 2, 0, 3, 1, 1]))
    assert counts["input_distribution"]["rank"] == 4
    # Per-position statistics of a sequence model: as the command line reads them, and with every
    # position's rows alike, the shared statistics of those rows.
    subprocess.run(
        [cli, "demo", "random", "--out", str(tmp_path / "s"), "--d-in", "6", "--d-model", "4", "--hidden", "0",
         "--layers", "1", "--heads", "2", "--n-ctx", "3", "--d-out", "2", "--count", "2"],
        check=True, capture_output=True,
    )
    s0, s1 = (str(tmp_path / "s" / f"random-00{i}.safetensors") for i in range(2))
    alike = np.repeat(x[:, None, :], 3, axis=1)
    shared = tensim.compare(s0, s1, "gaussian", input_stats=x)
    assert tensim.compare(s0, s1, "gaussian", input_stats=alike)["similarity"] == pytest.approx(shared["similarity"], abs=1e-12)
    np.save(tmp_path / "seqs.npy", alike + np.arange(3.0)[None, :, None])
    out = subprocess.run(
        [cli, "compare", s0, s1, "--metric", "gaussian", "--json", "--input-stats", str(tmp_path / "seqs.npy")],
        check=True, capture_output=True, text=True,
    ).stdout
    want = json.loads(out)
    got = tensim.compare(s0, s1, "gaussian", input_stats=str(tmp_path / "seqs.npy"))
    assert got["similarity"] == pytest.approx(want["similarity"], abs=1e-12) and got["similarity"] != shared["similarity"]
    assert got["input_distribution"] == want["input_distribution"] and want["input_distribution"]["positions"] == 3
    # Refused: other metrics, bad covariances, per-position statistics.
    with pytest.raises(tensim.TensimError, match="tensor and gaussian"):
        tensim.compare(models[0], models[1], "matrix", input_stats=x)
    with pytest.raises(tensim.TensimError, match="not positive semidefinite"):
        tensim.compare(models[0], models[1], "gaussian", input_mean=np.zeros(6), input_cov=-np.eye(6))
    with pytest.raises(tensim.TensimError, match="per position, but the model has no attention"):
        tensim.compare(models[0], models[1], "gaussian", input_stats=x.reshape(5, 6, 6))


def test_breakdowns_and_diffs_equal_the_command_line_tool(cli, tmp_path):
    sidecar = trajectory(tmp_path / "ckpts", 3, depth=1)
    files = tensim.checkpoints(tmp_path / "ckpts")
    models = [tensim.load(f, arch=sidecar) for f in files]
    for metric in ["tensor", "gaussian"]:
        out = subprocess.run(
            [cli, "compare", files[0], files[2], "--arch", str(sidecar), "--metric", metric, "--json",
             "--per-output", "--breakdown", str(tmp_path / "c.npy")],
            check=True, capture_output=True, text=True,
        ).stdout
        want = json.loads(out)["breakdown"]
        got = tensim.compare(models[0], models[2], metric, breakdown=True, per_output=True)
        b = got["breakdown"]
        c = b["contributions"]
        np.testing.assert_allclose(c, np.load(tmp_path / "c.npy"), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(b["per_output_contributions"], np.load(tmp_path / "c.per-output.npy"), rtol=1e-12, atol=1e-15)
        assert [(m["a"], m["b"]) for m in b["matching"]] == [(m["a"], m["b"]) for m in want["matching"]]
        assert c.sum() + b["remainder"] == pytest.approx(got["inner"], rel=1e-12)
        assert b["parts"] == "units" and b["per_output"][0]["inner"] == pytest.approx(want["per_output"][0]["inner"])
    with pytest.raises(tensim.TensimError, match="tensor \\(per layer\\) and gaussian"):
        tensim.compare(models[0], models[2], "matrix", breakdown=True)
    # tensim.diff: the change as one object, in compare and matrix.
    d = tensim.compare(tensim.diff(models[0], models[1]), tensim.diff(models[2], files[1]), arch=sidecar)
    want = tensim.compare(models[0], models[2], minus_a=models[1], minus_b=models[1])
    assert d["similarity"] == pytest.approx(want["similarity"], abs=1e-12)
    got = tensim.matrix([tensim.diff(f, files[1]) for f in files], arch=sidecar, progress=False)
    want = tensim.matrix(models, minus=files[1], arch=sidecar, progress=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # Resumable: the inner products are kept as tiles, and a second run reads them.
    for _ in range(2):
        kept = tensim.matrix(models, minus=files[1], arch=sidecar, progress=False, resume_dir=tmp_path / "t")
        np.testing.assert_allclose(kept, want, rtol=0, atol=1e-12)
    assert len(list((tmp_path / "t").glob("tile-*.npy"))) == 6
    # The breakdown of changes: contributions and remainder sum to the changes' inner product.
    ch = tensim.compare(models[0], models[2], "gaussian", minus_a=models[1], minus_b=models[1], breakdown=True, per_output=True)
    b = ch["breakdown"]
    assert b["contributions"].sum() + b["remainder"] == pytest.approx(ch["inner"], rel=1e-10)
    assert b["per_output_contributions"].shape[0] == len(b["per_output"])
    # The weight cosine per parameter tensor, all pairs: planes in compare's per_tensor order.
    per = tensim.matrix(models, "matrix", per_tensor=True, progress=False)
    want = tensim.compare(models[0], models[2], "matrix", per_tensor=True)["per_tensor"]
    assert per.shape == (1 + len(want), 3, 3)
    assert per[0, 0, 2] == pytest.approx(tensim.compare(models[0], models[2], "matrix")["similarity"], abs=1e-12)
    for t, w in enumerate(want):
        assert per[1 + t, 0, 2] == pytest.approx(w["similarity"], abs=1e-12), w["tensor"]
    with pytest.raises(tensim.TensimError, match="matrix metric alone"):
        tensim.matrix(models, "tensor", per_tensor=True, progress=False)
    with pytest.raises(ValueError, match="share one base"):
        tensim.matrix([tensim.diff(models[0], models[1]), tensim.diff(models[2], models[0])], progress=False)
    with pytest.raises(ValueError, match="already has its base"):
        tensim.compare(tensim.diff(models[0], models[1]), models[2], minus_a=models[1])
