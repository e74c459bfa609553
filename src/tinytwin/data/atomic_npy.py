"""One atomic writer for every decoded-data cache (datasets and frozen features alike): a
module of its own so that both can use it without importing each other."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

import tinytwin.cache as cache


def save_atomic(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` to ``path`` via a temporary file + rename.

    Atomic because the emulator starts one process per device and several may load
    CIFAR-10 at once: a reader must never see a half-written cache.
    """
    cache.prepare(path.parent)  # in the user cache folder (announced on its first write), never beside the data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a cache shared through $TINYTWIN_CACHE stays readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Drop caches of earlier versions of the same file (best effort).
    stem = path.name.split(".decoded-")[0]
    for old in path.parent.glob(f"{stem}.decoded-*.npy"):
        if old != path:
            old.unlink(missing_ok=True)
