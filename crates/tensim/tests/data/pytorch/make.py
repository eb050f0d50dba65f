"""Writes the PyTorch checkpoints `tests/pytorch.rs` reads (run with PyTorch and safetensors
installed: `python make.py`; the files are committed, so the tests need neither).

One small model (embed 4→3, bilinear hidden 5 with lerp residual, head 3→2), saved in the ways
training code saves state dicts, beside the same tensors as safetensors."""

import json
import os

import torch
from safetensors.torch import save_file

torch.manual_seed(0)
sd = {
    "embed.weight": torch.randn(3, 4, dtype=torch.float64),
    "body.0.l.weight": torch.randn(5, 3, dtype=torch.float64),
    "body.0.r.weight": torch.randn(5, 3, dtype=torch.float64),
    "body.0.d.weight": torch.randn(3, 5, dtype=torch.float64),
    "body.0.d.bias": torch.randn(3, dtype=torch.float64),
    "head.weight": torch.randn(2, 3, dtype=torch.float64),
}
arch = {
    "format": "tensim/1",
    "input": {"dim": 4},
    "layers": [
        {"kind": "linear", "weight": "embed.weight"},
        {"kind": "bilinear", "left": "body.0.l.weight", "right": "body.0.r.weight",
         "down": "body.0.d.weight", "down_bias": "body.0.d.bias",
         "residual": {"mode": "lerp", "scale": 0.5}},
        {"kind": "linear", "weight": "head.weight"},
    ],
}
with open("arch.json", "w") as f:
    json.dump(arch, f, indent=1)
save_file(sd, "model.safetensors")
torch.save(sd, "plain.pt")
torch.save({k: torch.nn.Parameter(v) for k, v in sd.items()}, "parameters.pth")
# Views into larger storages: transposed (column-major) and offset slices.
wide = {k: torch.cat([torch.zeros_like(v), v], dim=0) for k, v in sd.items()}
views = {k: wide[k][v.shape[0]:] for k, v in sd.items()}
views["head.weight"] = sd["head.weight"].t().contiguous().t()
assert not views["head.weight"].is_contiguous()
torch.save(views, "views.pt")
for name, dtype in [("f16", torch.float16), ("bf16", torch.bfloat16), ("f32", torch.float32)]:
    cast = {k: v.to(dtype) for k, v in sd.items()}
    save_file(cast, f"{name}.safetensors")
    torch.save(cast, f"{name}.bin")
torch.save({"model_state_dict": sd, "step": 1000, "optimizer": {"lr": 0.1}}, "nested.ckpt")
ema = {k: 2 * v for k, v in sd.items()}
torch.save({"model": sd, "ema": ema, "step": 1000}, "two.pt")
torch.save(sd, "legacy.pt", _use_new_zipfile_serialization=False)
torch.save(sd, "protocol4.pt", pickle_protocol=4)


class Shell:
    def __reduce__(self):
        return (os.system, ("true",))


torch.save({"model": sd, "hook": Shell()}, "global.pt")
