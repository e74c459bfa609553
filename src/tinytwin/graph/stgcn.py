"""ST-GCN (Yu, Yin, Zhu, IJCAI 2018) as seed 004 §3 trains it, in plain torch.

Two ST blocks (temporal conv with GLU, Chebyshev graph conv K = 3, temporal conv with ReLU,
layer norm, dropout), then an output block (temporal conv over the remaining steps, two dense
layers), following the hazdzz/stgcn layout the seed's code adapts. Two changes, both so that
one set of weights serves every cloudlet's subgraph (FL averages them): the graph operator is
an argument of ``forward`` rather than a buffer, and layer norm runs over channels only
(hazdzz normalises over nodes × channels, which ties the weights to one node count). The
output layer predicts every horizon at once (one output per horizon) instead of one model per
horizon.

Plain torch, not PyTorch Geometric: the graphs have at most a few hundred nodes, where a dense
``L̃ @ X`` is one small matmul (faster on CPU than PyG's scatter-based message passing and
with an exactly countable FLOP figure), and the Chebyshev recursion is five lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tinytwin.models.accounting import BYTES_PER_VALUE, TrainingMemory


@dataclass(frozen=True)
class StgcnConfig:
    """Architecture of the seed's ST-GCN: channels 64-16-64 per block, output width 128."""

    history: int = 12
    n_out: int = 3
    blocks: int = 2
    channels: tuple[int, int, int] = (64, 16, 64)
    out_hidden: int = 128
    kt: int = 3
    ks: int = 3
    dropout: float = 0.5

    @property
    def ko(self) -> int:
        """Time steps left for the output block after the ST blocks' temporal convolutions."""
        return self.history - (self.kt - 1) * 2 * self.blocks


def scaled_laplacian(adj: np.ndarray) -> np.ndarray:
    """L̃ = 2 L / λmax − I with L = I − D^-½ A D^-½ on the symmetrised graph without self-loops."""
    a = np.maximum(adj, adj.T).astype(np.float64)
    np.fill_diagonal(a, 0.0)
    deg = a.sum(axis=1)
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    lap = np.eye(len(a)) - inv[:, None] * a * inv[None, :]
    # torch's solver, so that the caller's intra-op thread setting governs it (numpy's BLAS may spin)
    lam = float(torch.linalg.eigvalsh(torch.from_numpy(lap)).max()) if len(a) > 1 else 0.0
    lam = lam if lam > 1e-9 else 2.0
    return 2.0 * lap / lam - np.eye(len(a))


class Align(nn.Module):
    """Residual path between channel counts: 1x1 conv to shrink, zero padding to grow."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        self.conv = nn.Conv2d(c_in, c_out, 1) if c_in > c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            return self.conv(x)
        if self.c_in < self.c_out:
            pad = x.new_zeros(x.shape[0], self.c_out - self.c_in, *x.shape[2:])
            return torch.cat([x, pad], dim=1)
        return x


class TemporalConv(nn.Module):
    """Causal conv over time (kernel ``kt``) plus the aligned residual, gated by GLU or ReLU."""

    def __init__(self, kt: int, c_in: int, c_out: int, glu: bool) -> None:
        super().__init__()
        self.kt, self.glu, self.c_out = kt, glu, c_out
        self.align = Align(c_in, c_out)
        self.conv = nn.Conv2d(c_in, 2 * c_out if glu else c_out, (kt, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.align(x)[:, :, self.kt - 1 :, :]
        h = self.conv(x)
        if self.glu:
            return (h[:, : self.c_out] + res) * torch.sigmoid(h[:, self.c_out :])
        return torch.relu(h + res)


class ChebConv(nn.Module):
    """Σ_k T_k(L̃) X Θ_k with T_0 = I, T_1 = L̃, T_k = 2 L̃ T_{k−1} − T_{k−2}; x is (B, C, T, N)."""

    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, c_in, c_out))
        self.bias = nn.Parameter(torch.zeros(c_out))
        nn.init.kaiming_uniform_(self.weight.view(k * c_in, c_out), a=5**0.5)

    def forward(self, x: torch.Tensor, gso: torch.Tensor) -> torch.Tensor:
        # x @ L̃ᵀ over the node axis (last, contiguous): one GEMM of (B·C·T, N) × (N, N)
        terms = [x]
        if self.weight.shape[0] > 1:
            terms.append(torch.matmul(x, gso.T))
        for _ in range(2, self.weight.shape[0]):
            terms.append(2.0 * torch.matmul(terms[-1], gso.T) - terms[-2])
        k, c_in, c_out = self.weight.shape
        out = torch.einsum("bctn,cd->bdtn", torch.cat(terms, dim=1), self.weight.reshape(k * c_in, c_out))
        return out + self.bias[None, :, None, None]


class GraphConv(nn.Module):
    """Chebyshev graph convolution on the aligned input, plus that input (residual)."""

    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__()
        self.align = Align(c_in, c_out)
        self.cheb = ChebConv(c_out, c_out, k)

    def forward(self, x: torch.Tensor, gso: torch.Tensor) -> torch.Tensor:
        a = self.align(x)
        return self.cheb(a, gso) + a


class StBlock(nn.Module):
    """Temporal (GLU) → graph (Chebyshev) → ReLU → temporal (ReLU) → layer norm → dropout."""

    def __init__(self, c_in: int, cfg: StgcnConfig) -> None:
        super().__init__()
        c0, c1, c2 = cfg.channels
        self.t1 = TemporalConv(cfg.kt, c_in, c0, glu=True)
        self.g = GraphConv(c0, c1, cfg.ks)
        self.t2 = TemporalConv(cfg.kt, c1, c2, glu=False)
        self.norm = nn.LayerNorm(c2)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, gso: torch.Tensor) -> torch.Tensor:
        h = self.t2(torch.relu(self.g(self.t1(x), gso)))
        h = self.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.drop(h)


class Stgcn(nn.Module):
    """x: (batch, history, nodes) z-scores → (batch, horizons, nodes) z-scores."""

    def __init__(self, cfg: StgcnConfig) -> None:
        super().__init__()
        if cfg.ko < 1:
            raise ValueError(f"history {cfg.history} is too short for {cfg.blocks} ST blocks with kt {cfg.kt}")
        self.cfg = cfg
        self.blocks = nn.ModuleList(StBlock(1 if i == 0 else cfg.channels[2], cfg) for i in range(cfg.blocks))
        self.out_t = TemporalConv(cfg.ko, cfg.channels[2], cfg.out_hidden, glu=True)
        self.out_norm = nn.LayerNorm(cfg.out_hidden)
        self.fc1 = nn.Linear(cfg.out_hidden, cfg.out_hidden)
        self.fc2 = nn.Linear(cfg.out_hidden, cfg.n_out)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, gso: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1)
        for block in self.blocks:
            h = block(h, gso)
        h = self.out_norm(self.out_t(h).permute(0, 2, 3, 1))  # (B, 1, N, C)
        h = self.fc2(self.drop(torch.relu(self.fc1(h))))  # (B, 1, N, n_out)
        return h[:, 0].transpose(1, 2)


def param_count(cfg: StgcnConfig) -> int:
    """Trainable parameters, from the architecture alone (a test holds it equal to the module's)."""
    c0, c1, c2 = cfg.channels

    def temporal(kt: int, c_in: int, c_out: int, glu: bool) -> int:
        width = 2 * c_out if glu else c_out
        return kt * c_in * width + width + (c_in * c_out + c_out if c_in > c_out else 0)

    total = 0
    for i in range(cfg.blocks):
        c_in = 1 if i == 0 else c2
        total += temporal(cfg.kt, c_in, c0, True)
        total += (c0 * c1 + c1 if c0 > c1 else 0) + cfg.ks * c1 * c1 + c1
        total += temporal(cfg.kt, c1, c2, False) + 2 * c2
    total += temporal(cfg.ko, c2, cfg.out_hidden, True) + 2 * cfg.out_hidden
    return total + cfg.out_hidden * cfg.out_hidden + cfg.out_hidden + cfg.out_hidden * cfg.n_out + cfg.n_out


def forward_flops(cfg: StgcnConfig, n_nodes: int, batch: int = 1) -> int:
    """FLOPs (2 per multiply-add) of one forward pass: convolutions, graph products, dense layers.

    Elementwise work (bias, GLU, norm) is left out, as PyTorch's ``FlopCounterMode`` does; the
    graph product is the dense N×N one this implementation runs (a test holds the two equal).
    """
    c0, c1, c2 = cfg.channels
    n, macs, t = n_nodes, 0, cfg.history

    def temporal(kt: int, c_in: int, c_out: int, glu: bool, t_in: int) -> int:
        width = 2 * c_out if glu else c_out
        return kt * c_in * width * (t_in - kt + 1) * n + (c_in * c_out * t_in * n if c_in > c_out else 0)

    for i in range(cfg.blocks):
        macs += temporal(cfg.kt, 1 if i == 0 else c2, c0, True, t)
        t -= cfg.kt - 1
        macs += (c0 * c1 * t * n if c0 > c1 else 0) + (cfg.ks - 1) * n * n * c1 * t + cfg.ks * c1 * c1 * t * n
        macs += temporal(cfg.kt, c1, c2, False, t)
        t -= cfg.kt - 1
    macs += temporal(cfg.ko, c2, cfg.out_hidden, True, t)
    macs += (cfg.out_hidden * cfg.out_hidden + cfg.out_hidden * cfg.n_out) * n
    return 2 * macs * batch


def train_flops(cfg: StgcnConfig, n_nodes: int, samples: int) -> int:
    """Training FLOPs for ``samples`` windows: forward + backward ≈ 3 × forward (the usual rule)."""
    return 3 * forward_flops(cfg, n_nodes, samples)


def layer_outputs(cfg: StgcnConfig, n_nodes: int) -> list[int]:
    """Values per sample that each step of the forward pass produces (what autograd keeps for
    backward, by the convention of the classification models: every layer's output), input first."""
    c0, c1, c2 = cfg.channels
    n, t = n_nodes, cfg.history
    out = [t * n]

    def temporal(kt: int, c_in: int, c_out: int, glu: bool, t_in: int) -> list[int]:
        t_out = t_in - kt + 1
        align = c_out * t_in * n if c_in != c_out else 0  # the residual's 1x1 conv or zero padding
        return [align, (2 * c_out if glu else c_out) * t_out * n, c_out * t_out * n]  # residual, conv, gate

    for i in range(cfg.blocks):
        out += temporal(cfg.kt, 1 if i == 0 else c2, c0, True, t)
        t -= cfg.kt - 1
        align = c1 * t * n if c0 != c1 else 0
        # aligned input, the K Chebyshev terms, the convolution, + residual, ReLU
        out += [align, cfg.ks * c1 * t * n, c1 * t * n, c1 * t * n, c1 * t * n]
        out += temporal(cfg.kt, c1, c2, False, t)
        t -= cfg.kt - 1
        out += [c2 * t * n, c2 * t * n]  # layer norm, dropout
    out += temporal(cfg.ko, c2, cfg.out_hidden, True, t)
    h = cfg.out_hidden * n
    return [*out, h, h, h, h, cfg.n_out * n]  # output norm, fc1, ReLU, dropout, fc2


def training_memory(
    cfg: StgcnConfig, n_nodes: int, batch: int, receive_bytes: int = 0, send_bytes: int = 0
) -> TrainingMemory:
    """RAM to train the model on an ``n_nodes`` subgraph at ``batch`` windows with Adam, counted as
    the classification models are (``models.accounting.training_memory``): weights, gradients, two
    Adam moments, the stored forward values plus two backward buffers of the largest one, and
    the frames received (merged models, node features) and sent."""
    p = param_count(cfg)
    outputs = layer_outputs(cfg, n_nodes)
    return TrainingMemory(
        weights=p * BYTES_PER_VALUE,
        gradients=p * BYTES_PER_VALUE,
        optimizer_state=2 * p * BYTES_PER_VALUE,
        activations=batch * (sum(outputs) + 2 * max(outputs)) * BYTES_PER_VALUE,
        receive_buffer=receive_bytes,
        send_buffer=send_bytes,
    )
