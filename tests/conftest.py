"""Shared fixtures: where the real datasets are, and a helper to run the CLI as a user would."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TINYTWIN_SHARED_DATA", REPO.parent / "shared" / "data"))


def data_listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` (recursively) with its size and mtime in ns."""
    listing: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            listing[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return listing


@pytest.fixture(scope="session", autouse=True)
def shared_data_untouched() -> Iterator[None]:
    """Fail the session if any test (or the code under test) changed the shared data folder.

    Why: the data folder is shared and meant read-only; tinytwin once wrote 184 MB of decoded
    CIFAR-10 beside it. Caches belong in the user cache folder (tinytwin.cache).
    """
    before = data_listing(SHARED_DATA)
    yield
    after = data_listing(SHARED_DATA)
    if after != before:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        pytest.fail(f"the shared data folder {SHARED_DATA} changed during the tests: {', '.join(changed[:10])}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real datasets (MNIST, Fashion-MNIST, CIFAR-10) used by tests."""
    if not (SHARED_DATA / "mnist.npz").is_file():
        pytest.fail(f"real datasets not found in {SHARED_DATA}; set TINYTWIN_SHARED_DATA")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``tinytwin`` in a fresh process, exactly as a user's shell would."""
    return subprocess.run(
        [sys.executable, "-m", "tinytwin.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load_benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ as a module, for the tests that check a doc against its results file."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec and spec.loader, f"benchmarks/{name}.py is missing"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def generated_block(text: str, begin: str, end: str) -> str | None:
    """The block of ``text`` from the marker ``begin`` through ``end`` (what a benchmark script's
    ``render`` writes into a doc), or ``None`` when the markers are gone."""
    found = re.search(re.escape(begin) + ".*?" + re.escape(end), text, re.DOTALL)
    return found.group(0) if found else None
