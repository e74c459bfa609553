"""What a device process's runtime costs before it trains: one BLAS thread, and BLAS's work
buffers allocated up front, so that the memory cap sits on top of the measured runtime.

OpenBLAS allocates its work buffer (~33 MB of address space, which ``RLIMIT_DATA`` counts)
lazily, at the first matrix product large enough to be blocked, and one per BLAS thread.
A tiny warm-up product does not trigger it; a device whose baseline missed it then fails its
first real product under the cap ("Memory allocation still failed after 10 retries"), a
failure of the harness, not of the device's memory plan. Torch-free (device processes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

BLAS_THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
WARM_SIZE = 256
"""Side of the warm-up products: large enough that OpenBLAS blocks them (it does at 128)."""


def pinned_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with every BLAS / OpenMP pool at one
    thread; a child sees it before it imports numpy, which is when the pools are sized."""
    env = dict(os.environ if base is None else base)
    for var in BLAS_THREAD_VARS:
        env[var] = "1"
    return env


def warm_blas() -> None:
    """Make BLAS allocate its work buffers now (float32 and float64 products), so that a
    baseline measured afterwards includes them."""
    for dtype in (np.float32, np.float64):
        a = np.ones((WARM_SIZE, WARM_SIZE), dtype)
        _ = a @ a
        _ = a @ a[0]


def vm_data_bytes() -> int:
    """This process's data memory (``VmData``, what ``RLIMIT_DATA`` limits) in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0
