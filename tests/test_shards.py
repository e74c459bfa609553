"""Sample indices held as one flat array and offsets (CSR) give exactly what lists of arrays give."""

from __future__ import annotations

import numpy as np
import torch

from tinytwin.engines.schedule_torch import padded_indices, schedule
from tinytwin.engines.shards import Shards, sizes_of, take


def _parts() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.permutation(500)[: int(k)] for k in rng.integers(0, 40, size=57)]  # some empty


def test_take_sizes_and_padding_equal_the_list_path() -> None:
    parts = _parts()
    shards = Shards.from_list(parts)
    assert len(shards) == len(parts) and all(np.array_equal(a, b) for a, b in zip(shards, parts, strict=True))
    pos = np.array([5, 0, 56, 5, 12, 3])
    taken = take(shards, pos)
    assert isinstance(taken, Shards)
    assert all(np.array_equal(a, parts[i]) for a, i in zip(taken, pos, strict=True))
    assert np.array_equal(sizes_of(taken), [len(parts[i]) for i in pos])
    listed = take(parts, pos)
    assert np.array_equal(padded_indices(taken), padded_indices(listed))
    assert np.array_equal(shards[-1], parts[-1]) and len(shards[10:20]) == 10
    empty = Shards.from_list([np.zeros(0, dtype=np.int64)] * 3)
    assert padded_indices(empty).tolist() == [[-1], [-1], [-1]]


def test_the_schedule_of_shards_equals_the_schedule_of_lists() -> None:
    parts = _parts()
    ids = np.arange(len(parts)) * 7
    a = schedule(0, 4, 2, 8, ids, parts, torch.device("cpu"))
    b = schedule(0, 4, 2, 8, ids, Shards.from_list(parts), torch.device("cpu"))
    assert torch.equal(a, b)
