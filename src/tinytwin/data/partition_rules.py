"""The ``per_device`` partition: every device gets ``per_class`` samples of each of its classes
(``partition.devices``, spec/device_data.py), drawn without replacement so no two devices share
a sample. Each class's indices are shuffled once (seeded) and handed out in device order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tinytwin.errors import DataError


def expand_rules(rules: Sequence[Any], num_devices: int, num_classes: int) -> list[tuple[list[int], int]]:
    """``[(classes, per_class)]`` for every device; ``ValueError`` naming what is wrong."""
    out: list[tuple[list[int], int]] = []
    for i, rule in enumerate(rules):
        classes = list(range(num_classes)) if rule.classes is None else list(rule.classes)
        bad = [c for c in classes if c >= num_classes]
        if bad:
            raise ValueError(f"devices.{i}.classes: {bad[0]} is not a class of the dataset (0..{num_classes - 1})")
        if len(set(classes)) != len(classes):
            raise ValueError(f"devices.{i}.classes: a class is listed twice")
        out += [(classes, int(rule.per_class))] * int(rule.count)
    if len(out) != num_devices:
        raise ValueError(
            f"devices: the rules cover {len(out)} devices but the fleet has {num_devices}; make the counts add up"
        )
    return out


def per_device_partition(labels: np.ndarray, rules: Sequence[Any], num_devices: int, seed: int) -> list[np.ndarray]:
    """One disjoint, shuffled ``int64`` index array per device following ``rules``."""
    y = np.asarray(labels)
    num_classes = int(y.max()) + 1 if y.size else 0
    plan = expand_rules(rules, num_devices, num_classes)
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(y == c)) for c in range(num_classes)]
    taken = np.zeros(num_classes, dtype=np.int64)
    parts = []
    for classes, per_class in plan:
        chunks = []
        for c in classes:
            if taken[c] + per_class > pools[c].size:
                need = sum(p for cl, p in plan if c in cl)
                raise DataError(
                    f"partition.devices: class {c} has {pools[c].size} training samples, the rules ask {need}"
                )
            chunks.append(pools[c][taken[c] : taken[c] + per_class])
            taken[c] += per_class
        parts.append(rng.permutation(np.concatenate(chunks)).astype(np.int64, copy=False))
    return parts
