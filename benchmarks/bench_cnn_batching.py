"""vmap versus grouped convolution for batched CNN training steps (issue #4: "measure which is faster here").

One training step (forward + backward, LeNet-5-like CNN on 1x28x28 MNIST-sized inputs, batch B
per device) for D devices at once, computed two ways:

- ``vmap``: ``vmap(grad(functional_call(module, ...)))`` over per-device parameters — what the
  engine uses for CNNs today;
- ``grouped``: the D models as one wide model — convolutions with ``groups=D`` over inputs whose
  channels are the devices' samples side by side, fully connected layers as ``bmm`` — and one
  ordinary autograd backward of the summed per-device losses (devices are independent, so the
  gradient of the sum is each device's own gradient). Checked equal to the vmap gradients.

    .venv/bin/python benchmarks/bench_cnn_batching.py [--devices 16 64 256] [--batch 10]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from tinytwin.models.params import ParamLayout
from tinytwin.models.zoo import make_model


def grouped_loss(params: dict[str, torch.Tensor], layers, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed per-device mean cross-entropy; params are (D, *shape) tensors keyed body.{i}.weight/bias."""
    d, b = y.shape
    h = x.transpose(0, 1).reshape(b, d * x.shape[2], *x.shape[3:])  # (B, D*C, H, W)
    flat = False
    for i, layer in enumerate(layers):
        if layer.kind == "conv":
            w, bias = params[f"body.{i}.weight"], params[f"body.{i}.bias"]
            h = F.conv2d(
                h, w.reshape(-1, *w.shape[2:]), bias.reshape(-1), stride=layer.stride, padding=layer.padding, groups=d
            )
        elif layer.kind == "relu":
            h = F.relu(h)
        elif layer.kind == "maxpool":
            h = F.max_pool2d(h, layer.kernel)
        elif layer.kind == "flatten":
            pass
        elif layer.kind == "linear":
            if not flat:
                h = h.reshape(b, d, -1).transpose(0, 1)  # (D, B, features)
                flat = True
            w, bias = params[f"body.{i}.weight"], params[f"body.{i}.bias"]
            h = torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))
    return F.cross_entropy(h.reshape(d * b, -1), y.reshape(-1), reduction="sum") / b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = make_model("lenet5", (1, 28, 28), 10)
    module = model.build(0)
    layout = ParamLayout.of(module)
    base = layout.flatten(module)
    for d in args.devices:
        flat = base.expand(d, -1).clone() + 0.01 * torch.randn(d, layout.total)
        x = torch.rand(d, args.batch, 1, 28, 28)
        y = torch.randint(0, 10, (d, args.batch))

        def loss_one(p, xb, yb):
            return F.cross_entropy(functional_call(module, layout.unflatten(p), (xb,)), yb)

        vgrad = vmap(grad(loss_one))

        def grouped_grad():
            p = flat.clone().requires_grad_(True)
            loss = grouped_loss(layout.unflatten(p), model.layers, x, y)
            (g,) = torch.autograd.grad(loss, p)
            return g

        g1, g2 = vgrad(flat, x, y), grouped_grad()
        diff = float((g1 - g2).abs().max())
        times = {}
        for name, fn in (("vmap", lambda: vgrad(flat, x, y)), ("grouped", grouped_grad)):
            fn()
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                fn()
            times[name] = (time.perf_counter() - t0) / args.repeats
        print(
            json.dumps(
                {
                    "devices": d,
                    "batch": args.batch,
                    "params": layout.total,
                    "vmap_ms_per_step": round(times["vmap"] * 1e3, 1),
                    "grouped_ms_per_step": round(times["grouped"] * 1e3, 1),
                    "speedup_grouped_over_vmap": round(times["vmap"] / times["grouped"], 2),
                    "max_abs_grad_diff": diff,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
