"""The workload of bench_vs_flower.py (issues #4, #16) in plain PyTorch: data, model, local training, evaluation.

Everything here mirrors benchmarks/specs/digits_vs_flower.yaml:

- scikit-learn digits, pixels / 16 as float32, the first 1500 samples train and the last
  297 test (tinytwin's ``dataset: {name: digits, split: last}``);
- each client's training indices come from the partition file that bench_vs_flower.py
  exports from tinytwin's own partitioner (``FLOWER_DIGITS_PARTITION``);
- MLP 64-32-10 with ReLU and torch's default initialisation;
- local training: ``epochs`` passes over the client's samples in shuffled batches of
  ``batch_size`` (the last batch short), mean cross-entropy, plain SGD.

Data is cached per process (one Ray actor trains many clients), as Flower's examples do
with their ``FederatedDataset``.
"""

from __future__ import annotations

import functools
import hashlib
import os

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

TEST_SIZE = 297
PARTITION_ENV = "FLOWER_DIGITS_PARTITION"


class Net(nn.Module):
    """MLP 64-32-10 (ReLU), the same layers as tinytwin's ``model: {name: mlp, hidden: [32]}``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@functools.lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): float32 pixels in [0, 1], shape (N, 1, 8, 8); int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data).reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    split = len(x) - TEST_SIZE
    return x[:split], y[:split], x[split:], y[split:]


def data_digest() -> str:
    """SHA-256 over the four arrays; bench_vs_flower.py checks it against tinytwin's loader."""
    h = hashlib.sha256()
    for a in digits():
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def partition() -> list[np.ndarray]:
    """Training-sample indices of every client, as exported from tinytwin's partitioner."""
    with np.load(os.environ[PARTITION_ENV]) as f:
        flat, sizes = f["indices"], f["sizes"]
    return np.split(flat, np.cumsum(sizes)[:-1])


def partition_digest() -> str:
    """SHA-256 of the loaded partition (client sizes, then every client's int64 indices), as
    bench_vs_flower.py computes it for tinytwin's: proof that both sides trained the same clients."""
    parts = partition()
    h = hashlib.sha256()
    h.update(np.array([len(p) for p in parts], dtype=np.int64).tobytes())
    for p in parts:
        h.update(np.ascontiguousarray(p, dtype=np.int64).tobytes())
    return h.hexdigest()


def client_loader(partition_id: int, batch_size: int, seed: int) -> DataLoader:
    x_train, y_train, _, _ = digits()
    ix = partition()[partition_id]
    ds = TensorDataset(torch.from_numpy(x_train[ix]), torch.from_numpy(y_train[ix]))
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def train(net: Net, loader: DataLoader, epochs: int, lr: float) -> tuple[float, int]:
    """Local SGD; returns (mean cross-entropy over all samples seen, optimizer steps taken)."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    total, seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            seen += len(y)
            steps += 1
    return total / max(seen, 1), steps


@torch.no_grad()
def test(net: Net) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``net`` on the 297 test samples, in one batch."""
    _, _, x_test, y_test = digits()
    net.eval()
    logits = net(torch.from_numpy(x_test))
    y = torch.from_numpy(y_test)
    return float((logits.argmax(1) == y).float().mean()), float(nn.functional.cross_entropy(logits, y))
