"""Tests for tinytwin.data.partition: coverage, determinism, the skew each method promises, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tinytwin.data.partition import METHODS, class_histogram, partition
from tinytwin.errors import DataError


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    from tinytwin.data.datasets import load_dataset

    return load_dataset("digits").y_train  # 1500 labels, 10 classes


@pytest.fixture(scope="module")
def mnist_like_labels() -> np.ndarray:
    """60 000 labels with MNIST's class balance, for the 10 000-device speed checks."""
    return np.random.default_rng(123).integers(0, 10, 60000).astype(np.int64)


def _max_class_fraction(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    hist = class_histogram(labels, parts, 10)
    sizes = hist.sum(axis=1)
    keep = sizes > 0
    return float((hist[keep].max(axis=1) / sizes[keep]).mean())


def _cv(parts: list[np.ndarray]) -> float:
    sizes = np.array([len(p) for p in parts], dtype=float)
    return float(sizes.std() / sizes.mean())


@pytest.mark.parametrize("method", METHODS)
def test_disjoint_complete_int64(method: str, digits_labels: np.ndarray) -> None:
    parts = partition(digits_labels, 10, method=method, seed=0)
    assert len(parts) == 10
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(digits_labels)  # no sample twice ...
    np.testing.assert_array_equal(np.sort(allidx), np.arange(len(digits_labels)))  # ... and every sample once
    assert min(len(p) for p in parts) >= 1


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_for_seed(method: str, digits_labels: np.ndarray) -> None:
    a = partition(digits_labels, 7, method=method, seed=42, alpha=0.3)
    b = partition(digits_labels, 7, method=method, seed=42, alpha=0.3)
    c = partition(digits_labels, 7, method=method, seed=43, alpha=0.3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_is_shuffled_and_balanced(digits_labels: np.ndarray) -> None:
    parts = partition(digits_labels, 10, method="iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert not np.array_equal(parts[0], np.arange(len(parts[0])))  # not a contiguous slice
    assert _max_class_fraction(digits_labels, parts) < 0.25
    sorted_labels = np.sort(digits_labels)  # even on class-sorted data, every device sees every class
    assert (class_histogram(sorted_labels, partition(sorted_labels, 10, method="iid", seed=0), 10) > 0).all()


def test_dirichlet_small_alpha_is_skewed(digits_labels: np.ndarray) -> None:
    skewed = partition(digits_labels, 10, method="dirichlet", seed=0, alpha=0.1)
    iid = partition(digits_labels, 10, method="iid", seed=0)
    assert _max_class_fraction(digits_labels, skewed) > 0.5
    assert _max_class_fraction(digits_labels, iid) < 0.25
    near_iid = partition(digits_labels, 10, method="dirichlet", seed=0, alpha=1000.0)
    assert _max_class_fraction(digits_labels, near_iid) < 0.25


def test_dirichlet_min_samples(digits_labels: np.ndarray) -> None:
    parts = partition(digits_labels, 20, method="dirichlet", seed=3, alpha=0.5, min_samples=10)
    assert min(len(p) for p in parts) >= 10
    with pytest.raises(DataError, match=r"dirichlet partition \(alpha=0.01\).*min_samples=70.*raise alpha"):
        partition(digits_labels, 20, method="dirichlet", seed=3, alpha=0.01, min_samples=70)


def test_shards_give_few_classes_per_device(digits_labels: np.ndarray) -> None:
    parts = partition(digits_labels, 10, method="shards", seed=0, shards_per_device=2)
    distinct = (class_histogram(digits_labels, parts, 10) > 0).sum(axis=1)
    # A shard (75 samples) is smaller than a class (~150), so it spans at most 2 classes.
    assert distinct.max() <= 4 and np.median(distinct) <= 3
    assert (distinct <= 3).mean() >= 0.7
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 2


def test_shards_need_enough_samples() -> None:
    with pytest.raises(DataError, match="100 shards, but the dataset has only 50 samples"):
        partition(np.zeros(50, np.int64), 50, method="shards", seed=0, shards_per_device=2)


def test_quantity_skew_sizes(digits_labels: np.ndarray) -> None:
    parts = partition(digits_labels, 100, method="quantity", seed=0, sigma=1.0, min_samples=2)
    iid = partition(digits_labels, 100, method="iid", seed=0)
    assert min(len(p) for p in parts) >= 2
    assert sum(len(p) for p in parts) == len(digits_labels)
    assert _cv(parts) > 0.5 and _cv(iid) < 0.05
    flat = partition(digits_labels, 100, method="quantity", seed=0, sigma=0.0)
    assert _cv(flat) < 0.05  # sigma=0 means equal sizes


def test_samples_per_device_iid_exact(digits_labels: np.ndarray) -> None:
    parts = partition(digits_labels, 25, method="iid", seed=0, samples_per_device=60)
    assert [len(p) for p in parts] == [60] * 25
    assert len(np.unique(np.concatenate(parts))) == 1500
    with pytest.raises(DataError, match="26 devices x 60 samples = 1560, but the dataset has only 1500"):
        partition(digits_labels, 26, method="iid", seed=0, samples_per_device=60)


@pytest.mark.parametrize("method", ["dirichlet", "shards", "quantity"])
def test_samples_per_device_caps_other_methods(method: str, digits_labels: np.ndarray) -> None:
    full = partition(digits_labels, 10, method=method, seed=5)
    capped = partition(digits_labels, 10, method=method, seed=5, samples_per_device=40)
    for f, c in zip(full, capped):
        assert len(c) == min(40, len(f))
        np.testing.assert_array_equal(c, f[:40])  # the first samples of the part's shuffled order
    assert len(np.unique(np.concatenate(capped))) == sum(len(c) for c in capped)


def test_too_few_samples_for_min_samples() -> None:
    with pytest.raises(DataError, match="10 samples cannot give 20 devices"):
        partition(np.zeros(10, np.int64), 20, method="iid", seed=0)
    parts = partition(np.zeros(10, np.int64), 20, method="iid", seed=0, min_samples=0)
    assert sum(len(p) for p in parts) == 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "random"}, "unknown partition method 'random'"),
        ({"num_devices": 0}, "num_devices must be an integer >= 1"),
        ({"num_devices": 2.5}, "num_devices must be an integer >= 1"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"alpha": 0.0}, "alpha must be a finite number > 0"),
        ({"alpha": float("nan")}, "alpha must be a finite number > 0"),
        ({"shards_per_device": 0}, "shards_per_device must be an integer >= 1"),
        ({"sigma": -1.0}, "sigma must be a finite number >= 0"),
        ({"min_samples": -1}, "min_samples must be an integer >= 0"),
        ({"samples_per_device": 0}, "samples_per_device must be an integer >= 1"),
        ({"samples_per_device": 3, "min_samples": 5}, "below min_samples=5"),
        ({"labels": np.zeros((3, 3), np.int64)}, "labels must be a 1-D array"),
        ({"labels": np.zeros(9, np.float32)}, "labels must be integers"),
    ],
)
def test_argument_validation(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"labels": np.zeros(100, np.int64), "num_devices": 4, "method": "iid", "seed": 0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        partition(**args)  # type: ignore[arg-type]


def test_class_histogram() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2, 0], dtype=np.int64)
    parts = [np.array([0, 1, 2]), np.array([], dtype=np.int64), np.array([3, 4, 5, 6])]
    hist = class_histogram(labels, parts, 3)
    assert hist.dtype == np.int64
    assert hist.tolist() == [[1, 2, 0], [0, 0, 0], [1, 0, 3]]
    assert class_histogram(labels, [], 3).shape == (0, 3)
    with pytest.raises(ValueError, match="outside 0..1"):
        class_histogram(labels, parts, 2)


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("iid", {}),
        ("iid", {"samples_per_device": 6}),
        ("shards", {}),
        ("dirichlet", {"min_samples": 0}),
        ("quantity", {}),
    ],
)
def test_ten_thousand_devices_fast(method: str, kwargs: dict[str, int], mnist_like_labels: np.ndarray) -> None:
    start = time.perf_counter()
    parts = partition(mnist_like_labels, 10000, method=method, seed=0, **kwargs)
    elapsed = time.perf_counter() - start
    assert len(parts) == 10000
    assert len(np.unique(np.concatenate(parts))) == 60000
    assert elapsed < 0.5, f"{method} took {elapsed:.3f} s for 10 000 devices"


def test_overlap_gives_every_device_distinct_samples_beyond_the_dataset_size() -> None:
    labels = np.arange(1000) % 10
    parts = partition(labels, 200, method="iid", seed=3, samples_per_device=60, overlap=True)
    assert len(parts) == 200 and all(len(p) == 60 and len(set(p.tolist())) == 60 for p in parts)
    assert sum(len(p) for p in parts) == 12000 > len(labels)  # more than the dataset: samples are shared
    again = partition(labels, 200, method="iid", seed=3, samples_per_device=60, overlap=True)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    with pytest.raises(ValueError, match="overlap"):
        partition(labels, 10, method="dirichlet", seed=0, overlap=True, samples_per_device=5)
