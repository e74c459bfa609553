"""ST-GCN (issue #13): Chebyshev conv equals the dense T_k(L̃)·X·Θ, exact parameters and FLOPs."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinytwin.graph.stgcn import ChebConv, Stgcn, StgcnConfig, forward_flops, param_count, scaled_laplacian

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
