"""ST-GCN (issue #13): Chebyshev conv equals the dense T_k(L̃)·X·Θ, exact parameters and FLOPs."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinytwin.graph.stgcn import (
    ChebConv,
    Stgcn,
    StgcnConfig,
    forward_flops,
    layer_outputs,
    param_count,
    scaled_laplacian,
    training_memory,
)

ADJ5 = np.array(
    [
        [1, 0.5, 0, 0, 0.2],
        [0.5, 1, 0.8, 0, 0],
        [0, 0.3, 1, 0.9, 0],
        [0, 0, 0.9, 1, 0.4],
        [0.2, 0, 0, 0.4, 1],
    ]
)


def test_scaled_laplacian_spectrum_in_minus_one_one() -> None:
    lt = scaled_laplacian(ADJ5)
    eig = np.linalg.eigvalsh(lt)
    assert np.allclose(lt, lt.T) and abs(eig.max() - 1.0) < 1e-9 and eig.min() >= -1 - 1e-9


def test_chebyshev_conv_equals_dense_polynomial() -> None:
    torch.manual_seed(0)
    lt = scaled_laplacian(ADJ5)
    conv = ChebConv(2, 3, k=3).double()
    x = torch.randn(1, 2, 1, 5, dtype=torch.float64)  # (B, C, T, N)
    got = conv(x, torch.from_numpy(lt))[0, :, 0, :].T.detach().numpy()  # (N, C_out)
    xn = x[0, :, 0, :].T.numpy()  # (N, C_in)
    t = [np.eye(5), lt, 2 * lt @ lt - np.eye(5)]
    w = conv.weight.detach().numpy()
    want = sum(t[k] @ xn @ w[k] for k in range(3)) + conv.bias.detach().numpy()
    assert np.allclose(got, want, atol=1e-12)


def test_param_count_and_flops_are_exact() -> None:
    for cfg in (StgcnConfig(), StgcnConfig(channels=(8, 4, 8), out_hidden=16, n_out=1)):
        model = Stgcn(cfg).eval()
        assert param_count(cfg) == sum(p.numel() for p in model.parameters())
        gso = torch.from_numpy(scaled_laplacian(ADJ5)).float()
        with FlopCounterMode(display=False) as fc:
            model(torch.randn(2, cfg.history, 5), gso)
        assert fc.get_total_flops() == forward_flops(cfg, 5, batch=2)


def test_one_model_serves_any_node_count() -> None:
    model = Stgcn(StgcnConfig(channels=(8, 4, 8), out_hidden=16)).eval()
    for n in (3, 5):
        gso = torch.from_numpy(scaled_laplacian(ADJ5[:n, :n])).float()
        assert model(torch.randn(4, 12, n), gso).shape == (4, 3, n)


def test_training_memory_is_counted_like_the_classification_models_and_bounds_what_autograd_keeps() -> None:
    cfg = StgcnConfig(channels=(4, 2, 6), out_hidden=8, dropout=0.2)
    n, batch = 10, 3
    mem = training_memory(cfg, n, batch, receive_bytes=100, send_bytes=40)
    p = param_count(cfg)
    assert (mem.weights, mem.gradients, mem.optimizer_state) == (4 * p, 4 * p, 8 * p)  # Adam: two moments
    outputs = layer_outputs(cfg, n)
    assert outputs[0] == cfg.history * n and outputs[-1] == cfg.n_out * n  # the input ... the forecasts
    assert mem.activations == 4 * batch * (sum(outputs) + 2 * max(outputs))
    assert mem.total == 16 * p + mem.activations + 140
    # what PyTorch's autograd actually keeps for backward of this implementation: the count is
    # an upper bound within 2x (every layer's output, plus two backward buffers)
    torch.manual_seed(0)
    model = Stgcn(cfg)
    rng = np.random.default_rng(0)
    gso = torch.from_numpy(scaled_laplacian((rng.random((n, n)) > 0.7).astype(float))).float()
    params = {q.untyped_storage().data_ptr() for q in model.parameters()} | {gso.untyped_storage().data_ptr()}
    saved: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(torch.randn(batch, cfg.history, n), gso)
    assert sum(saved.values()) <= mem.activations <= 2 * sum(saved.values())
