"""The numpy aggregation kernels (device-side processes) equal their torch twins to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinytwin.algorithms import aggregators as T
from tinytwin.algorithms import aggregators_np as N


@pytest.mark.parametrize("k", [1, 3, 7])
def test_weighted_mean_matches_torch(k: int) -> None:
    rng = np.random.default_rng(k)
    updates = rng.standard_normal((k, 1000)).astype(np.float32)
    weights = rng.integers(1, 50, k).astype(np.float32)
    ref = T.weighted_mean(torch.from_numpy(updates), torch.from_numpy(weights)).numpy()
    # same operations; the BLAS behind each matrix product may round differently (float32)
    np.testing.assert_allclose(N.weighted_mean(updates, weights), ref, rtol=0, atol=1e-6)


def test_weighted_mean_refuses_bad_weights() -> None:
    updates = np.ones((2, 3), np.float32)
    for bad in (np.zeros(2), np.array([1.0, -1.0]), np.array([1.0, np.nan]), np.ones(3)):
        with pytest.raises(ValueError):
            N.weighted_mean(updates, bad)
