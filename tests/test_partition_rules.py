"""``partition.method: per_device``: every device gets exactly its classes and samples per class,
disjoint from the others; rules that do not fit say so in one line."""

from __future__ import annotations

import numpy as np
import pytest

from dfl_util import spec_dict
from tinytwin.data.partition_rules import per_device_partition
from tinytwin.engines.experiment import prepare
from tinytwin.errors import DataError, SpecError
from tinytwin.spec.device_data import DeviceData
from tinytwin.spec.load import validate_spec


def test_each_device_holds_its_classes_and_counts_disjointly():
    y = np.repeat(np.arange(4), 50)
    rules = [
        DeviceData(classes=[0, 1], per_class=10, count=2),
        DeviceData(per_class=5),
        DeviceData(classes=[3], per_class=30),
    ]
    parts = per_device_partition(y, rules, 4, seed=1)
    hist = [np.bincount(y[p], minlength=4).tolist() for p in parts]
    assert hist == [[10, 10, 0, 0], [10, 10, 0, 0], [5, 5, 5, 5], [0, 0, 0, 30]]
    flat = np.concatenate(parts)
    assert flat.size == np.unique(flat).size  # no sample on two devices
    with pytest.raises(DataError, match="class 3 has 50 training samples, the rules ask 55"):
        per_device_partition(y, [*rules[:2], DeviceData(classes=[3], per_class=50)], 4, seed=1)


def test_bad_rules_name_the_key():
    raw = spec_dict(partition={"method": "per_device", "devices": [{"classes": [0, 1], "per_class": 5, "count": 7}]})
    with pytest.raises(SpecError, match="the rules cover 7 devices but the fleet has 8"):
        prepare(validate_spec(raw))
    raw["partition"]["devices"] = [{"classes": [12], "per_class": 5, "count": 8}]
    with pytest.raises(SpecError, match=r"devices.0.classes: 12 is not a class of the dataset \(0..9\)"):
        prepare(validate_spec(raw))
