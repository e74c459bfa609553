"""The one user cache folder for everything tinytwin computes once and keeps.

Why one module: decoded CIFAR-10 images, frozen-feature extractions and firmware builds
used to pick their folders separately — one of them beside the dataset (184 MB written
into a shared, read-only data folder), another under ``~/.cache`` without a word. Here the
folder is resolved in one place, nothing is ever written beside the data, and the first
write in a process says on stderr where it goes, so a user can find (or delete) it.

Resolution, first match wins: ``$TINYTWIN_CACHE``, ``$XDG_CACHE_HOME/tinytwin``,
``~/.cache/tinytwin``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_VAR = "TINYTWIN_CACHE"

_announced: set[Path] = set()


def cache_dir() -> Path:
    """The cache root, resolved from the environment on every call (tests change it)."""
    own = os.environ.get(ENV_VAR, "").strip()
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tinytwin"


def prepare(folder: Path) -> Path:
    """Create ``folder`` (normally under :func:`cache_dir`) for a cache write about to happen.

    The first write of a process says on stderr where the cache is and how to move it, so a
    folder that grows by hundreds of megabytes never appears unannounced; later writes
    are silent.
    """
    folder.mkdir(parents=True, exist_ok=True)
    root = cache_dir()
    shown = root if folder.resolve().is_relative_to(root.resolve()) else folder
    if shown not in _announced:
        _announced.add(shown)
        print(f"tinytwin: caching in {shown} (set {ENV_VAR} to use another folder)", file=sys.stderr, flush=True)
    return folder
