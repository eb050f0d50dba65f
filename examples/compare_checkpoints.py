"""Compare the checkpoints of a training run: tensor similarity between every pair, the phases it
reveals, and the weight-cosine baseline beside it.

    python examples/compare_checkpoints.py CHECKPOINT_FOLDER --arch arch.json [--out DIR]

CHECKPOINT_FOLDER holds checkpoints saved from PyTorch, e.g. with
``torch.save(model.state_dict(), f"ckpts/step_{step:06d}.pt")`` (or as safetensors); files are
ordered by the number in their names. ``arch.json`` names the tensors of each layer (see
FORMAT.md). Without a folder, the script first trains a small bilinear network with PyTorch (or,
without PyTorch, writes a random walk of weights with numpy) so it runs as is; adapt
``make_checkpoints`` or point it at your own run.

Writes into --out: tensor.npy, matrix.npy, similarity.png and phases.json. The same numbers come
from the command line: ``tensim matrix CHECKPOINT_FOLDER --arch arch.json --out tensor.npy``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import tensim

D_IN, HIDDEN, D_OUT = 16, 32, 4

# A bilinear layer without `down` (it outputs (Lx)∘(Rx)) followed by a linear head, with the
# tensor names of the PyTorch module below.
ARCH = {
    "format": "tensim/1",
    "input": {"dim": D_IN, "n_ctx": 1},
    "layers": [
        {"kind": "bilinear", "left": "left.weight", "right": "right.weight"},
        {"kind": "linear", "weight": "head.weight", "bias": "head.bias"},
    ],
}


def make_checkpoints(folder: Path, steps: int = 400, every: int = 25) -> Path:
    """Train (or simulate) a run and save its checkpoints with a sidecar arch.json."""
    folder.mkdir(parents=True, exist_ok=True)
    arch_path = folder / "arch.json"
    arch_path.write_text(json.dumps(ARCH, indent=2))
    rng = np.random.default_rng(0)
    # Task: the class is the largest of four fixed quadratic forms of a Gaussian input.
    teacher = rng.normal(size=(D_OUT, D_IN, D_IN))
    x = rng.normal(size=(4096, D_IN))
    y = np.einsum("ni,cij,nj->nc", x, teacher, x).argmax(axis=1)
    try:
        import torch
    except ImportError:
        from safetensors.numpy import save_file

        w = {
            "left.weight": rng.normal(size=(HIDDEN, D_IN)) / 4,
            "right.weight": rng.normal(size=(HIDDEN, D_IN)) / 4,
            "head.weight": rng.normal(size=(D_OUT, HIDDEN)) / 6,
            "head.bias": np.zeros(D_OUT),
        }
        for step in range(0, steps + 1, every):
            w = {k: v + 0.02 * rng.normal(size=v.shape) for k, v in w.items()}
            save_file(w, str(folder / f"step_{step:06d}.safetensors"))
        return arch_path

    torch.manual_seed(0)

    class BilinearMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.left = torch.nn.Linear(D_IN, HIDDEN, bias=False)
            self.right = torch.nn.Linear(D_IN, HIDDEN, bias=False)
            self.head = torch.nn.Linear(HIDDEN, D_OUT)

        def forward(self, x):
            return self.head(self.left(x) * self.right(x))

    model = BilinearMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    for step in range(steps + 1):
        if step % every == 0:
            torch.save(model.state_dict(), folder / f"step_{step:06d}.pt")
        batch = torch.randint(0, len(xt), (256,))
        loss = torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (model(xt).argmax(1) == yt).float().mean().item()
    print(f"trained {steps} steps with PyTorch: accuracy {acc:.3f}, loss {loss.item():.3f}")
    return arch_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", type=Path, help="folder of .pt or .safetensors checkpoints")
    p.add_argument("--arch", type=Path, help="architecture description (JSON)")
    p.add_argument("--out", type=Path, default=Path("tensim-compare"), help="output folder")
    p.add_argument("--phases", type=int, default=3, help="number of phases to find")
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    folder, arch = args.folder, args.arch
    if folder is None:
        folder = args.out / "checkpoints"
        arch = make_checkpoints(folder)
    files = tensim.checkpoints(folder)
    print(f"{len(files)} checkpoints in {folder}")

    # Tensor similarity (exact, from the weights) and the weight-cosine baseline; finished tiles
    # are kept in tiles/ so an interrupted run resumes.
    sim = tensim.matrix(files, arch=arch, resume_dir=args.out / "tiles")
    weights = tensim.matrix(files, "matrix", arch=arch, progress=False)
    np.save(args.out / "tensor.npy", sim)
    np.save(args.out / "matrix.npy", weights)

    k = min(args.phases, len(files))
    phases = tensim.phases(sim, k)
    labels = [Path(f).stem for f in files]
    (args.out / "phases.json").write_text(json.dumps({**phases, "labels": labels}, indent=2))
    tensim.plot(sim, args.out / "similarity.png", labels=labels, title="tensor similarity", boundaries=phases["boundaries"])

    print(f"{'checkpoint':>20}  tensor sim. to final  weight cos. to final")
    for i, name in enumerate(labels):
        print(f"{name:>20}  {sim[i, -1]:20.6f}  {weights[i, -1]:20.6f}")
    starts = ", ".join(labels[s] for s in phases["starts"])
    print(f"phases start at: {starts}")
    print(f"wrote {args.out}/tensor.npy, matrix.npy, similarity.png, phases.json")


if __name__ == "__main__":
    main()
