"""Averaging with graph neighbours: DecFedAvg / DFedAvgM and server-free FL.

Both run after local training, on all devices at once, as one sparse matrix product
``X ← W X`` over the ``(D, P)`` matrix of flat models.

**DecFedAvg / DFedAvgM** (Sun, Li, Wang, TPAMI 2023; reference/algorithms.md §3, update
rule [recon]). Round t, every device i: ``K`` local SGD steps with heavy-ball momentum θ
from ``y⁰ = x_i`` (``y^{k+1} = y^k − η g(y^k) + θ (y^k − y^{k−1})``, which is PyTorch's
SGD momentum with a fresh buffer each round, i.e. ``algorithm.momentum``), giving ``z_i``;
every device sends ``z_i`` to each graph neighbour; then ``x_i ← Σ_l W_il z_l`` with the
Metropolis–Hastings matrix (:func:`tinytwin.net.topology.metropolis_hastings`). θ = 0 is
plain decentralized FedAvg. W is doubly stochastic, so with learning switched off the
mean of the models is conserved and on a connected graph every model converges to it.

**Server-free FL** (seed 004, Kralj et al.; reference/algorithms.md §6): after each local
epoch a device replaces its model by the *unweighted* mean of itself and its graph
neighbours: ``W_ii = W_ij = 1 / (1 + deg_i)``. Row-stochastic but not symmetric on
irregular graphs, so the mean is conserved only on regular graphs (ring, torus, full).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["distances_to_mean", "mix", "mix_received", "serverfree_weights", "to_torch_sparse"]


def to_torch_sparse(w: sp.spmatrix, dtype: torch.dtype = torch.float32) -> Tensor:
    """A scipy sparse matrix as a (coalesced) torch sparse COO tensor."""
    c = sp.coo_matrix(w)
    idx = torch.from_numpy(np.stack([c.row, c.col]).astype(np.int64))
    return torch.sparse_coo_tensor(
        idx, torch.from_numpy(c.data).to(dtype), size=c.shape, check_invariants=True
    ).coalesce()


def mix(w: sp.spmatrix, x: Tensor, steps: int = 1) -> Tensor:
    """``W^steps · X`` for a ``(D, D)`` mixing matrix and ``(D, P)`` models."""
    wt = to_torch_sparse(w, x.dtype).to(x.device)
    for _ in range(steps):
        x = wt @ x
    return x


def mix_received(w: sp.spmatrix, own: Tensor, received: Tensor) -> Tensor:
    """``x_i ← W_ii·own_i + Σ_{l≠i} W_il·received_l``: mixing where neighbours' models arrive
    through a lossy encoding (``received`` = what the wire decodes) but a device's own model is exact."""
    c = sp.csr_matrix(w)
    diag = torch.from_numpy(c.diagonal()).to(own.dtype).to(own.device)[:, None]
    off = c - sp.diags(c.diagonal())
    return diag * own + to_torch_sparse(off, own.dtype).to(own.device) @ received


def serverfree_weights(n: int, edges: np.ndarray, active: np.ndarray | None = None) -> sp.csr_matrix:
    """Unweighted mean over self and neighbours: ``W_ii = W_ij = 1 / (1 + deg_i)`` (float64 CSR)."""
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if active is not None:
        e = e[active[e[:, 0]] & active[e[:, 1]]]
    rows = np.concatenate([e[:, 0], e[:, 1], np.arange(n)])
    cols = np.concatenate([e[:, 1], e[:, 0], np.arange(n)])
    deg = np.bincount(e.ravel(), minlength=n).astype(np.float64)
    a = sp.csr_matrix((1.0 / (1.0 + deg[rows]), (rows, cols)), shape=(n, n))
    a.sum_duplicates()
    a.sort_indices()
    return a


def distances_to_mean(models: Tensor, chunk: int = 4096) -> np.ndarray:
    """Each device's distance to the mean of ``models`` (D, P), in float64 (their mean is the
    consensus distance). Chunk by chunk: a float64 copy of every model would be 1 GB at 10 000
    MNIST devices."""
    mean = torch.zeros(models.shape[1], dtype=torch.float64, device=models.device)
    for lo in range(0, len(models), chunk):
        mean += models[lo : lo + chunk].to(torch.float64).sum(dim=0)
    mean /= max(len(models), 1)
    out = [(models[lo : lo + chunk].to(torch.float64) - mean).norm(dim=1) for lo in range(0, len(models), chunk)]
    return torch.cat(out).cpu().numpy() if out else np.zeros(0)
