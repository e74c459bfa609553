"""Split a dataset's sample indices across the devices of a fleet.

The methods and their parameters follow Flower Datasets' partitioners
(``IidPartitioner``, ``DirichletPartitioner``, ``ShardPartitioner``) plus a log-normal
quantity-skew partitioner, so experiments here can be compared with Flower baselines by
name and parameter.

Design choices:

- Only labels go in and only index arrays come out: the partitioners never touch
  images, so the same partition can index the simulator's tensors, the emulator's
  per-process shards and the firmware's baked-in data.
- Everything is drawn from one ``numpy.random.default_rng(seed)``: the same
  ``(labels, seed, arguments)`` give the same partition on every machine and twin.
- Fleets have up to tens of thousands of devices, so the work is vectorised: samples
  get a device id with ``np.repeat``/``argsort`` and are cut into parts with one
  ``np.split``; the only Python loop is the bounded Dirichlet retry.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from tinytwin.errors import DataError

__all__ = ["METHODS", "class_histogram", "partition"]

METHODS = ("iid", "dirichlet", "shards", "quantity")

#: Dirichlet draws tried before giving up on ``min_samples`` (Flower's default is also 10).
DIRICHLET_MAX_TRIES = 10


def partition(
    labels: np.ndarray,
    num_devices: int,
    *,
    method: str,
    seed: int,
    alpha: float = 0.5,
    shards_per_device: int = 2,
    sigma: float = 1.0,
    min_samples: int = 1,
    samples_per_device: int | None = None,
    overlap: bool = False,
) -> list[np.ndarray]:
    """Partition sample indices ``0..len(labels)-1`` over ``num_devices`` devices.

    Methods:

    - ``"iid"`` — shuffle all indices, split into near-equal parts (sizes differ by <= 1).
    - ``"dirichlet"`` — label skew: for each class, proportions ~ Dir(``alpha``) over the
      devices. Small ``alpha`` (0.1) gives each device a few dominant classes; large
      ``alpha`` (100) approaches IID. The whole draw is repeated (at most
      :data:`DIRICHLET_MAX_TRIES` times) until every device has ``min_samples``.
    - ``"shards"`` — pathological label skew (McMahan et al.): sort by label, cut into
      ``num_devices * shards_per_device`` equal shards, deal ``shards_per_device`` random
      shards to each device, so each sees about that many classes.
    - ``"quantity"`` — quantity skew: IID class mix, sizes proportional to
      ``exp(N(0, sigma))`` with every device getting at least ``min_samples``.

    All samples are used, except with ``samples_per_device``: then ``"iid"`` gives every
    device exactly that many samples (a disjoint draw; the rest stay unused) and the other
    methods cap each part at that many, keeping the first samples of its shuffled order.

    ``overlap=True`` (``"iid"`` with ``samples_per_device`` only) lets devices share samples:
    each device takes ``samples_per_device`` consecutive entries, wrapping around, of one
    random permutation from its own random start. Samples are distinct within a device but
    not across devices — the way to give 10 000 devices 60 MNIST samples each.

    Returns one ``int64`` index array per device; the arrays are disjoint (unless
    ``overlap``) and each is in
    random order. Raises ``ValueError`` for invalid arguments and :class:`DataError` when
    the dataset is too small for the request.
    """
    y = _check_labels(labels)
    _check_args(num_devices, method, seed, alpha, shards_per_device, sigma, min_samples, samples_per_device)
    n = len(y)
    if overlap:
        if method != "iid" or samples_per_device is None:
            raise ValueError("overlap needs method='iid' and samples_per_device")
        if samples_per_device > n:
            raise DataError(f"samples_per_device={samples_per_device} exceeds the {n} samples of the dataset")
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n).astype(np.int64, copy=False)
        starts = rng.integers(0, n, size=num_devices)
        windows = (starts[:, None] + np.arange(samples_per_device)[None, :]) % n
        return list(perm[windows])
    if n < num_devices * min_samples:
        raise DataError(
            f"{n} samples cannot give {num_devices} devices at least min_samples={min_samples} each; "
            "use fewer devices or a lower min_samples"
        )
    rng = np.random.default_rng(seed)

    if method == "iid":
        return _iid(n, num_devices, samples_per_device, rng)
    if method == "quantity":
        parts = _quantity(n, num_devices, sigma, min_samples, rng)
    else:
        if method == "dirichlet":
            device_of = _dirichlet_assign(y, num_devices, alpha, min_samples, rng)
        else:
            device_of = _shard_assign(y, num_devices, shards_per_device, min_samples, rng)
        parts = _group_by_device(device_of, num_devices, rng)
    if samples_per_device is not None:
        parts = [p[:samples_per_device] for p in parts]
    return parts


def class_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """``(D, K)`` int64 matrix: samples of class ``k`` held by device ``d``.

    The results store records it per device and the reports plot it, so it is computed
    with one ``bincount`` rather than a loop over devices.
    """
    y = np.asarray(labels)
    if not isinstance(num_classes, Integral) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    k = int(num_classes)
    d = len(parts)
    sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=d)
    if d == 0 or sizes.sum() == 0:
        return np.zeros((d, k), dtype=np.int64)
    idx = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
    part_labels = y[idx].astype(np.int64)
    if part_labels.min() < 0 or part_labels.max() >= k:
        raise ValueError(
            f"labels span {int(part_labels.min())}..{int(part_labels.max())}, outside 0..{k - 1} (num_classes={k})"
        )
    device = np.repeat(np.arange(d, dtype=np.int64), sizes)
    return np.bincount(device * k + part_labels, minlength=d * k).reshape(d, k).astype(np.int64)


# --------------------------------------------------------------------------- validation


def _check_labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    return y


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_args(
    num_devices: int,
    method: str,
    seed: int,
    alpha: float,
    shards_per_device: int,
    sigma: float,
    min_samples: int,
    samples_per_device: int | None,
) -> None:
    """Guard against bad arguments; the spec layer validates first, so these are programming errors."""
    if method not in METHODS:
        raise ValueError(f"unknown partition method {method!r}; choose one of: {', '.join(METHODS)}")
    if not _is_int(num_devices) or num_devices < 1:
        raise ValueError(f"num_devices must be an integer >= 1, got {num_devices!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(alpha, Real) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if not _is_int(shards_per_device) or shards_per_device < 1:
        raise ValueError(f"shards_per_device must be an integer >= 1, got {shards_per_device!r}")
    if not isinstance(sigma, Real) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if not _is_int(min_samples) or min_samples < 0:
        raise ValueError(f"min_samples must be an integer >= 0, got {min_samples!r}")
    if samples_per_device is not None:
        if not _is_int(samples_per_device) or samples_per_device < 1:
            raise ValueError(f"samples_per_device must be an integer >= 1 or None, got {samples_per_device!r}")
        if samples_per_device < min_samples:
            raise ValueError(
                f"samples_per_device={samples_per_device} is below min_samples={min_samples}; "
                "no partition can satisfy both"
            )


# --------------------------------------------------------------------------- methods


def _iid(n: int, num_devices: int, samples_per_device: int | None, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled, near-equal split.

    Shuffling first matters: datasets like CIFAR-10's npz are stored sorted by class, so
    contiguous slices would be anything but IID.
    """
    perm = rng.permutation(n).astype(np.int64, copy=False)
    if samples_per_device is None:
        return np.array_split(perm, num_devices)
    need = num_devices * samples_per_device
    if need > n:
        raise DataError(
            f"iid partition needs {num_devices} devices x {samples_per_device} samples = {need}, "
            f"but the dataset has only {n}; lower samples_per_device or the number of devices"
        )
    return list(perm[:need].reshape(num_devices, samples_per_device))


def _quantity(n: int, num_devices: int, sigma: float, min_samples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Log-normal sizes over an IID shuffle.

    Every device first gets ``min_samples``; the rest is shared in proportion to
    ``exp(N(0, sigma))`` with largest-remainder rounding, so the sizes sum to exactly ``n``.
    """
    weights = np.exp(rng.normal(0.0, sigma, size=num_devices))
    spare = n - num_devices * min_samples
    share = weights / weights.sum() * spare
    sizes = np.floor(share).astype(np.int64)
    leftover = spare - int(sizes.sum())
    if leftover > 0:
        sizes[np.argsort(sizes - share, kind="stable")[:leftover]] += 1
    sizes += min_samples
    perm = rng.permutation(n).astype(np.int64, copy=False)
    return np.split(perm, np.cumsum(sizes)[:-1])


def _class_sorted(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices grouped by label, in random order within each label."""
    order = rng.permutation(len(y))
    return order[np.argsort(y[order], kind="stable")]


def _dirichlet_assign(
    y: np.ndarray, num_devices: int, alpha: float, min_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Device id of every sample under per-class Dir(alpha) proportions.

    Cut points are ``floor(cumsum(p) * n_k)`` as in Flower's DirichletPartitioner. All
    classes are drawn at once as a ``(K, D)`` matrix, so a 10 000-device draw is a few
    vectorised calls; redrawing everything (rather than patching small devices) keeps
    the result an honest Dirichlet sample.
    """
    classes, y_idx = np.unique(y, return_inverse=True)
    num_classes = len(classes)
    by_class = _class_sorted(y_idx, rng)
    class_sizes = np.bincount(y_idx, minlength=num_classes).astype(np.int64)
    concentration = np.full(num_devices, float(alpha))
    smallest = 0
    for _ in range(DIRICHLET_MAX_TRIES):
        props = rng.dirichlet(concentration, size=num_classes)  # (K, D)
        cuts = np.floor(np.cumsum(props, axis=1) * class_sizes[:, None]).astype(np.int64)
        cuts = np.minimum(cuts, class_sizes[:, None])
        cuts[:, -1] = class_sizes  # float round-off must not drop the last samples
        counts = np.diff(cuts, axis=1, prepend=0)  # (K, D) samples of class k for device d
        smallest = int(counts.sum(axis=0).min())
        if smallest >= min_samples:
            break
    else:
        raise DataError(
            f"dirichlet partition (alpha={alpha}) could not give all {num_devices} devices at least "
            f"min_samples={min_samples} samples in {DIRICHLET_MAX_TRIES} draws (smallest device: {smallest}); "
            "raise alpha, lower min_samples (0 allows empty devices), or use fewer devices"
        )
    device_of = np.empty(len(y), dtype=np.int64)
    device_of[by_class] = np.repeat(np.tile(np.arange(num_devices, dtype=np.int64), num_classes), counts.ravel())
    return device_of


def _shard_assign(
    y: np.ndarray, num_devices: int, shards_per_device: int, min_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Device id of every sample when label-sorted shards are dealt out at random.

    Shard sizes differ by at most one (unlike Flower, which drops the incomplete last
    shard), so every sample is used.
    """
    n = len(y)
    num_shards = num_devices * shards_per_device
    if n < num_shards:
        raise DataError(
            f"shards partition needs at least one sample per shard: {num_devices} devices x "
            f"{shards_per_device} shards = {num_shards} shards, but the dataset has only {n} samples"
        )
    sorted_idx = _class_sorted(y, rng)
    base, extra = divmod(n, num_shards)
    shard_sizes = np.full(num_shards, base, dtype=np.int64)
    shard_sizes[:extra] += 1
    if base * shards_per_device < min_samples:
        raise DataError(
            f"shards partition gives some devices only {base * shards_per_device} samples, "
            f"below min_samples={min_samples}; use fewer devices or shards_per_device, or lower min_samples"
        )
    shard_at_position = np.repeat(np.arange(num_shards, dtype=np.int64), shard_sizes)
    device_of_shard = np.empty(num_shards, dtype=np.int64)
    device_of_shard[rng.permutation(num_shards)] = np.arange(num_shards, dtype=np.int64) // shards_per_device
    device_of = np.empty(n, dtype=np.int64)
    device_of[sorted_idx] = device_of_shard[shard_at_position]
    return device_of


def _group_by_device(device_of: np.ndarray, num_devices: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Turn a device id per sample into one index array per device, each in random order.

    The random order is what makes a ``samples_per_device`` cap a fair subsample instead
    of, say, the first class a device happens to hold.
    """
    perm = rng.permutation(len(device_of)).astype(np.int64, copy=False)
    grouped = perm[np.argsort(device_of[perm], kind="stable")]
    sizes = np.bincount(device_of, minlength=num_devices)
    return np.split(grouped, np.cumsum(sizes)[:-1])
