"""MLP local training and evaluation in numpy: the device runtime's model code (no torch).

Same math as :mod:`tinytwin.algorithms.local_update` and
:mod:`tinytwin.engines.batched_mlp`: loss = mean cross-entropy over the batch's samples
(+ FedProx's (mu/2)||w - w0||^2), SGD with momentum / L2 weight decay (PyTorch's
semantics) or Adam, fresh optimizer state every round, and the same batch order as
:meth:`tinytwin.engines.local_training.LocalTrainer.schedule` (each epoch the device's
permutation from :func:`tinytwin.rng.device_permutations`, batches of consecutive
positions, a short last batch). Everything is float32 like the simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytwin.algorithms.local_config import ADAM_BETAS, ADAM_EPS, LocalTraining
from tinytwin.rng import device_permutations


@dataclass(frozen=True)
class Linear:
    w_offset: int
    b_offset: int
    n_in: int
    n_out: int
    relu_after: bool


def linears_from(rows: Sequence[Sequence[int]]) -> list[Linear]:
    """The layers of rows ``[n_in_offset, ..., relu_after]`` (ints; the last one a bool)."""
    return [Linear(int(a), int(b), int(c), int(d), bool(e)) for a, b, c, d, e in rows]


def split(linears: Sequence[Linear], flat: np.ndarray) -> list[np.ndarray]:
    """Flat vector -> [W0 (out, in), b0, W1, b1, ...] (copies, float32)."""
    out = []
    for lin in linears:
        out.append(flat[lin.w_offset : lin.b_offset].reshape(lin.n_out, lin.n_in).astype(np.float32, copy=True))
        out.append(flat[lin.b_offset : lin.b_offset + lin.n_out].astype(np.float32, copy=True))
    return out


def join(tensors: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([t.reshape(-1) for t in tensors]).astype(np.float32, copy=False)


def forward(
    linears: Sequence[Linear], tensors: Sequence[np.ndarray], x: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Layer inputs, pre-activations and the logits of a batch ``x`` (B, in)."""
    h = x.reshape(len(x), -1).astype(np.float32, copy=False)
    inputs, pre = [], []
    for i, lin in enumerate(linears):
        inputs.append(h)
        z = h @ tensors[2 * i].T + tensors[2 * i + 1]
        pre.append(z)
        h = np.maximum(z, np.float32(0.0)) if lin.relu_after else z
    return inputs, pre, h


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def grads(
    linears: Sequence[Linear], tensors: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[list[np.ndarray], float]:
    """Gradients of the mean cross-entropy over the batch, and the summed cross-entropy."""
    inputs, pre, logits = forward(linears, tensors, x)
    log_p = log_softmax(logits)
    rows = np.arange(len(y))
    ce_sum = float(-log_p[rows, y].astype(np.float64).sum())
    g = np.exp(log_p)
    g[rows, y] -= np.float32(1.0)
    g *= np.float32(1.0 / max(len(y), 1))
    out: list[np.ndarray] = [np.empty(0, np.float32)] * len(tensors)
    for i in range(len(linears) - 1, -1, -1):
        if linears[i].relu_after:
            g = g * (pre[i] > 0)
        out[2 * i] = g.T @ inputs[i]
        out[2 * i + 1] = g.sum(axis=0)
        if i > 0:
            g = g @ tensors[2 * i]
    return out, ce_sum


def train(
    linears: Sequence[Linear],
    start: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    cfg: LocalTraining,
    seed: int,
    round_: int,
    device: int,
) -> tuple[np.ndarray, float, int]:
    """One round of local training of one device; returns (params, mean train CE, steps).

    ``x``, ``y`` are the device's samples in partition order (position p = its p-th index).
    """
    n = len(y)
    tensors = split(linears, np.asarray(start, dtype=np.float32))
    anchors = [t.copy() for t in tensors] if cfg.prox_mu else None
    m = [np.zeros_like(t) for t in tensors] if (cfg.momentum or cfg.optimizer == "adam") else None
    v = [np.zeros_like(t) for t in tensors] if cfg.optimizer == "adam" else None
    lr = np.float32(cfg.lr)
    ce_total, steps = 0.0, 0
    for epoch in range(cfg.epochs):
        order = device_permutations(seed, round_, epoch, np.array([device]), np.array([n]))[0]
        for lo in range(0, n, cfg.batch_size):
            idx = order[lo : lo + cfg.batch_size]
            g, ce = grads(linears, tensors, x[idx], y[idx])
            steps += 1
            ce_total += ce
            for k, t in enumerate(tensors):
                gk = g[k]
                if cfg.prox_mu and anchors is not None:
                    gk = gk + np.float32(cfg.prox_mu) * (t - anchors[k])
                if cfg.weight_decay:
                    gk = gk + np.float32(cfg.weight_decay) * t
                if cfg.optimizer == "adam":
                    assert m is not None and v is not None
                    b1, b2 = ADAM_BETAS
                    m[k] = np.float32(b1) * m[k] + np.float32(1 - b1) * gk
                    v[k] = np.float32(b2) * v[k] + np.float32(1 - b2) * gk * gk
                    m_hat = m[k] / np.float32(1 - b1**steps)
                    v_hat = v[k] / np.float32(1 - b2**steps)
                    direction = m_hat / (np.sqrt(v_hat) + np.float32(ADAM_EPS))
                elif cfg.momentum:
                    assert m is not None
                    m[k] = np.float32(cfg.momentum) * m[k] + gk
                    direction = m[k]
                else:
                    direction = gk
                tensors[k] = t - lr * direction
    return join(tensors), ce_total / max(1, cfg.epochs * n), steps


def evaluate(
    linears: Sequence[Linear], flat: np.ndarray, x: np.ndarray, y: np.ndarray, chunk: int = 8192
) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of the flat model on (x, y)."""
    tensors = split(linears, np.asarray(flat, dtype=np.float32))
    correct, loss = 0, 0.0
    for lo in range(0, len(y), chunk):
        _, _, logits = forward(linears, tensors, x[lo : lo + chunk])
        yy = y[lo : lo + chunk]
        correct += int((logits.argmax(axis=1) == yy).sum())
        loss += float(-log_softmax(logits)[np.arange(len(yy)), yy].astype(np.float64).sum())
    return correct / max(len(y), 1), loss / max(len(y), 1)
