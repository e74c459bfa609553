"""The server's unlabeled proxy set for ensemble distillation (``algorithm.distillation.proxy``).

``holdout`` takes a seeded slice of the training set *away* from the devices (partitioning
then sees only the rest), so the server never distils on a device's own samples; a dataset
name takes the first samples of that dataset's training split, which must have the same
input shape. Labels are dropped: the server has none.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.data.datasets import Dataset, load_dataset
from tinytwin.errors import SpecError
from tinytwin.rng import Stream, stream_rng


def split_proxy(dataset: Dataset, proxy: Any, seed: int, base_dir: Path | None) -> tuple[Dataset, np.ndarray]:
    """(the devices' dataset, the proxy inputs ``(n, C, H, W)``)."""
    key = "algorithm.distillation.proxy"
    n = int(proxy.samples)
    if proxy.source == "holdout":
        total = len(dataset.y_train)
        if n >= total:
            raise SpecError(f"{key}.samples", f"{n} of {dataset.name}'s {total} training samples leaves none to train")
        order = stream_rng(seed, Stream.PROXY).permutation(total)
        held, kept = order[:n], np.sort(order[n:])
        rest = replace(dataset, x_train=dataset.x_train[kept], y_train=dataset.y_train[kept])
        return rest, dataset.x_train[np.sort(held)]
    data_dir = proxy.data_dir
    if data_dir is not None and base_dir is not None and not Path(data_dir).is_absolute():
        data_dir = str(base_dir / data_dir)
    other = load_dataset(proxy.source, data_dir)
    if other.x_train.shape[1:] != dataset.x_train.shape[1:]:
        raise SpecError(
            f"{key}.source",
            f"{proxy.source} inputs are {other.x_train.shape[1:]}, {dataset.name}'s are "
            f"{dataset.x_train.shape[1:]}; use a proxy of the same shape or holdout",
        )
    if n > len(other.x_train):
        raise SpecError(f"{key}.samples", f"{proxy.source} has only {len(other.x_train)} training samples")
    return dataset, other.x_train[:n]
