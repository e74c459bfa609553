"""FedAvg reduced chunk by chunk, so a round never holds every device's model at once.

At 100 000 devices the (D, P) matrices of trained models and of their deltas take 5 GB each
(docs/benchmarks.md); at a million, 51 GB. FedAvg is a weighted sum, so each chunk of
devices can be reduced as soon as it finishes training: memory stays at one chunk. The
weights are normalised over the whole round first, as
:func:`~tinytwin.algorithms.aggregators.weighted_mean` does; only the order of the
float32 additions differs (results agree to ~1e-7 relative).
"""

from __future__ import annotations

import numpy as np
import torch


class StreamingMean:
    """``sum_k w_k x_k / sum_k w_k`` over rows that arrive in chunks."""

    def __init__(self, weights: torch.Tensor, num_params: int, device: torch.device) -> None:
        w = weights.to(device=device, dtype=torch.float32)
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("weights must be finite and non-negative")
        total = w.sum()
        if not bool(total > 0):
            raise ValueError("weights must have a positive sum")
        self.normalised = w / total
        self.total = torch.zeros(num_params, dtype=torch.float32, device=device)

    def add(self, positions: np.ndarray, rows: torch.Tensor, offset: int = 0) -> None:
        """Add the rows of the devices at ``positions`` (a (len(positions), S) tensor), weighted,
        to the parameters ``offset .. offset + S`` (a model's tensors may arrive one by one)."""
        weights = self.normalised[torch.from_numpy(np.asarray(positions, dtype=np.int64)).to(self.total.device)]
        self.total[offset : offset + rows.shape[1]].add_(weights @ rows)

    def result(self) -> torch.Tensor:
        """The weighted mean; refuses NaN or Inf as the one-shot FedAvg does."""
        if not bool(torch.isfinite(self.total).all()):
            raise ValueError("updates contain NaN or Inf; receivers must drop non-finite payloads first")
        return self.total
