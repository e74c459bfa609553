"""CIFAR-100 (seed 004 §4.1's dataset): the official python version, and its published sizes.

The files are the ``cifar-100-python`` folder of the dataset's page (``train``, ``test``,
``meta`` pickles, 100 fine classes, 500 training and 100 test images each), read with the
same restricted unpickler as CIFAR-10 and never downloaded. :func:`published_layout` is
what ``tinytwin plan`` uses when the files are absent: a plan needs the input shape and the
labels (to partition), not the pixels; with CIFAR-100's 500 images per class the per-device
counts of a partition are those the real files give (partitions draw from class sizes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinytwin.data.file_formats import batch_field, restricted_load
from tinytwin.errors import DataError

FOLDER = "cifar-100-python"
FILES = ("train", "test", "meta")
TRAIN_PER_CLASS, TEST_PER_CLASS, CLASSES = 500, 100, 100


def find_folder(dirs: list[Path]) -> Path | None:
    """The first of ``dirs`` (or its ``cifar-100-python`` child) holding the three files."""
    for d in dirs:
        for folder in (d, d / FOLDER):
            if all((folder / f).is_file() for f in FILES):
                return folder
    return None


def _read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = restricted_load(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict with 'data' and 'fine_labels', got {type(batch).__name__}")
    data, labels = batch_field(batch, "data"), batch_field(batch, "fine_labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be a uint8 (N, 3072) array")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (len(data),) or (y.size and (y.min() < 0 or y.max() >= CLASSES)):
        raise DataError(f"{path}: 'fine_labels' must be {len(data)} integers in 0..99")
    return data.reshape(-1, 3, 32, 32), y


def read_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """uint8 images (N, 3, 32, 32) and fine labels of train and test, and the class names."""
    x_train, y_train = _read_split(folder / "train")
    x_test, y_test = _read_split(folder / "test")
    meta = restricted_load(folder / "meta")
    names = batch_field(meta, "fine_label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != CLASSES:
        raise DataError(f"{folder / 'meta'}: expected 100 'fine_label_names'")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return x_train, y_train, x_test, y_test, classes


def published_layout() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Arrays with CIFAR-100's published shapes and class sizes, all pixels 0 (read-only views)."""
    x_train = np.broadcast_to(np.zeros((1, 3, 32, 32), np.float32), (CLASSES * TRAIN_PER_CLASS, 3, 32, 32))
    x_test = np.broadcast_to(np.zeros((1, 3, 32, 32), np.float32), (CLASSES * TEST_PER_CLASS, 3, 32, 32))
    y_train = np.repeat(np.arange(CLASSES, dtype=np.int64), TRAIN_PER_CLASS)
    y_test = np.repeat(np.arange(CLASSES, dtype=np.int64), TEST_PER_CLASS)
    return x_train, y_train, x_test, y_test, tuple(f"class {i}" for i in range(CLASSES))
