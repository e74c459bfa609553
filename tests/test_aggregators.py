"""Aggregation rules: exact values on hand-made vectors, Krum against planted outliers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinytwin.algorithms.aggregators import (
    AGGREGATORS,
    coordinate_median,
    get_aggregator,
    krum,
    krum_select,
    trim_count,
    trimmed_mean,
    weighted_mean,
)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_weighted_mean_hand_computed() -> None:
    u = t([[1.0, 0.0], [3.0, 4.0]])
    out = weighted_mean(u, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(out, torch.tensor([2.5, 3.0]))
    # Scale of the weights does not matter; zero weight ignores a client.
    torch.testing.assert_close(weighted_mean(u, torch.tensor([10.0, 30.0])), out)
    torch.testing.assert_close(weighted_mean(u, torch.tensor([0.0, 5.0])), u[1])


def test_weighted_mean_does_not_modify_inputs() -> None:
    u = t([[1.0, 2.0], [3.0, 4.0]])
    w = torch.tensor([1.0, 1.0])
    u0, w0 = u.clone(), w.clone()
    weighted_mean(u, w)
    assert torch.equal(u, u0) and torch.equal(w, w0)


@pytest.mark.parametrize(
    "weights",
    [torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0]), torch.tensor([1.0, float("nan")])],
)
def test_weighted_mean_rejects_bad_weights(weights: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        weighted_mean(t([[1.0], [2.0]]), weights)


def test_median_odd_and_even() -> None:
    odd = t([[1.0, 10.0], [5.0, -3.0], [2.0, 0.0]])
    torch.testing.assert_close(coordinate_median(odd), torch.tensor([2.0, 0.0]))
    even = t([[1.0, 10.0], [5.0, -3.0], [2.0, 0.0], [100.0, 1.0]])
    # Mean of the two middle values: (2 + 5) / 2, (0 + 1) / 2.
    torch.testing.assert_close(coordinate_median(even), torch.tensor([3.5, 0.5]))
    torch.testing.assert_close(coordinate_median(even), torch.from_numpy(np.median(even.numpy(), axis=0)))


def test_trimmed_mean_exact() -> None:
    u = t([[1.0, -50.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [100.0, 3.0]])
    # K=5, beta=0.2 -> drop 1 at each end per coordinate.
    torch.testing.assert_close(trimmed_mean(u, 0.2), torch.tensor([3.0, 1.0]))
    # beta=0 is the plain mean.
    torch.testing.assert_close(trimmed_mean(u, 0.0), u.mean(dim=0))
    # beta=0.49 with K=5 drops floor(2.45) = 2 at each end: the median.
    torch.testing.assert_close(trimmed_mean(u, 0.49), coordinate_median(u))


def test_trim_count_absorbs_float_rounding() -> None:
    assert 0.29 * 100 < 29  # binary rounding...
    assert trim_count(100, 0.29) == 29  # ...does not lose a trimmed value
    assert trim_count(10, 0.1) == 1 and trim_count(9, 0.1) == 0


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7])
def test_trimmed_mean_rejects_beta(beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        trimmed_mean(t([[1.0], [2.0], [3.0]]), beta)


def planted(seed: int = 0) -> torch.Tensor:
    """7 honest vectors near 0 followed by 2 outliers near 100."""
    g = torch.Generator().manual_seed(seed)
    honest = 0.1 * torch.randn(7, 20, generator=g)
    outliers = 100.0 + torch.randn(2, 20, generator=g)
    return torch.cat([honest, outliers])


def test_krum_picks_honest_vector() -> None:
    u = planted()
    idx = krum_select(u, num_byzantine=2)
    assert idx.shape == (1,) and int(idx[0]) < 7
    torch.testing.assert_close(krum(u, num_byzantine=2), u[int(idx[0])])


def test_krum_with_outliers_first() -> None:
    u = planted(1).flip(0)  # outliers now at rows 0 and 1
    assert int(krum_select(u, num_byzantine=2)[0]) >= 2


def test_multi_krum_selects_only_honest() -> None:
    u = planted(2)
    idx = krum_select(u, num_byzantine=2, num_selected=5)
    assert sorted(idx.tolist()) == sorted(set(idx.tolist()))
    assert all(i < 7 for i in idx.tolist())
    torch.testing.assert_close(krum(u, 2, 5), u[idx].mean(dim=0))
    w = torch.arange(1.0, 10.0)
    torch.testing.assert_close(krum(u, 2, 5, weights=w), weighted_mean(u[idx], w[idx]))


def test_krum_scores_match_definition() -> None:
    """Brute-force score_i = sum of squared distances to the K-f-2 nearest others."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(8, 5, generator=g)
    f = 2
    d = torch.cdist(u.double(), u.double()) ** 2
    scores = []
    for i in range(8):
        others = torch.cat([d[i, :i], d[i, i + 1 :]])
        scores.append(others.sort().values[: 8 - f - 2].sum().item())
    expected = np.argsort(np.array(scores), kind="stable")[:3].tolist()
    assert krum_select(u, f, 3).tolist() == expected


def test_krum_is_precise_for_long_close_vectors() -> None:
    """Large common offset + tiny differences: the naive float32 Gram trick would be noise."""
    g = torch.Generator().manual_seed(4)
    base = 1000.0 * torch.ones(1, 50_000)
    honest = base + 1e-3 * torch.randn(7, 50_000, generator=g)
    byz = base + 1e-2 * torch.randn(2, 50_000, generator=g)
    u = torch.cat([byz, honest])
    assert all(i >= 2 for i in krum_select(u, 2, 5).tolist())


@pytest.mark.parametrize(("k", "f", "m"), [(6, 2, 1), (4, 1, 1), (9, 2, 0), (9, 2, 8), (9, -1, 1)])
def test_krum_rejects_impossible_parameters(k: int, f: int, m: int) -> None:
    with pytest.raises(ValueError):
        krum_select(torch.zeros(k, 3), f, m)


def test_non_finite_updates_rejected() -> None:
    u = t([[1.0, float("nan")], [2.0, 3.0], [0.0, 1.0]])
    for fn in (lambda x: weighted_mean(x, torch.ones(3)), coordinate_median, lambda x: trimmed_mean(x, 0.1)):
        with pytest.raises(ValueError, match="NaN"):
            fn(u)


def test_wrong_shape_rejected() -> None:
    with pytest.raises(ValueError, match="K, P"):
        coordinate_median(torch.zeros(3))


def test_registry_uniform_signature() -> None:
    u = planted(5)
    w = torch.arange(1.0, 10.0)
    assert set(AGGREGATORS) == {"fedavg", "median", "trimmed_mean", "krum", "nested"}
    torch.testing.assert_close(AGGREGATORS["fedavg"](u, w), weighted_mean(u, w))
    assert torch.equal(AGGREGATORS["nested"](u, w), weighted_mean(u, w))  # full-size rows: FedAvg
    torch.testing.assert_close(AGGREGATORS["fedavg"](u, None), u.mean(dim=0))
    torch.testing.assert_close(AGGREGATORS["median"](u, w), coordinate_median(u))
    torch.testing.assert_close(AGGREGATORS["trimmed_mean"](u, w, beta=0.25), trimmed_mean(u, 0.25))
    torch.testing.assert_close(AGGREGATORS["krum"](u, w, num_byzantine=2, num_selected=3), krum(u, 2, 3, weights=w))
    assert get_aggregator("median") is AGGREGATORS["median"]
    with pytest.raises(ValueError, match="known"):
        get_aggregator("fedsgd")
    with pytest.raises(TypeError):
        AGGREGATORS["median"](u, w, beta=0.1)


def test_the_server_drops_exactly_the_rows_holding_nan_or_inf_even_when_sums_overflow() -> None:
    from tinytwin.engines.simulate import finite_updates

    big = torch.full((3,), 3e38)  # finite values whose row sum overflows to Inf
    received = torch.stack(
        [torch.ones(3), big, torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([float("inf"), 0, 0])]
    )
    kept, weights = finite_updates(received, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.equal(kept, received[:2]) and torch.equal(weights, torch.tensor([1.0, 2.0]))
    same, w = finite_updates(received[:1], torch.tensor([5.0]))
    assert same is not None and torch.equal(same, received[:1]) and torch.equal(w, torch.tensor([5.0]))
