"""Shared fixtures: where the real datasets are, and a helper to run the CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TINYTWIN_SHARED_DATA", REPO.parent / "shared" / "data"))


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
