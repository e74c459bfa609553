"""Emulation twin, issue #17: a device process's memory cap sits on top of its measured runtime
(interpreter, numpy and BLAS's work buffers, one BLAS thread), and a process that dies of the cap
in a C library (OpenBLAS exits 1 after "Memory allocation still failed") is recorded as ``oom``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tinytwin.emulate.processes import child_env, exit_kind, oom_in_log
from tinytwin.emulate.runtime_env import BLAS_THREAD_VARS

# A device's start-up as device.py does it (warm BLAS, measure, cap), then one product of the
# size a LeNet-5 layer makes. WARM=0 skips the warm-up: the cap then misses BLAS's buffer.
PROBE = """
import os, resource, sys
import numpy as np
from tinytwin.emulate.runtime_env import vm_data_bytes, warm_blas
if os.environ["WARM"] == "1":
    warm_blas()
cap = vm_data_bytes() + 8 * 2**20
resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
sys.stderr.write(f"probe: VmData baseline {cap} B\\n")
a = np.ones((300, 300), np.float32)
print(float((a @ a).sum()))
"""


def _probe(tmp_path: Path, warm: bool) -> tuple[int, Path]:
    log_file = tmp_path / f"warm{int(warm)}.log"
    env = {**child_env(), "WARM": "1" if warm else "0"}
    with open(log_file, "ab") as err:
        rc = subprocess.run([sys.executable, "-c", PROBE], env=env, stderr=err, stdout=subprocess.DEVNULL).returncode
    return rc, log_file


def test_device_environment_pins_blas_to_one_thread() -> None:
    env = child_env()
    assert all(env[var] == "1" for var in BLAS_THREAD_VARS)


def test_cap_above_the_warmed_baseline_leaves_the_budget_for_training(tmp_path: Path) -> None:
    rc, log_file = _probe(tmp_path, warm=True)
    assert rc == 0, log_file.read_text()


def test_openblas_allocation_failure_under_the_cap_is_an_oom(tmp_path: Path) -> None:
    rc, log_file = _probe(tmp_path, warm=False)  # BLAS's buffer is allocated after the cap: it fails
    assert rc != 0
    assert "Memory allocation still failed" in log_file.read_text()
    assert exit_kind(rc, log_file=log_file) == "oom"
    assert exit_kind(rc) == f"crash (exit {rc})"  # without the log, only the exit code speaks
    assert exit_kind(rc, killed=True, log_file=log_file) == "killed"


def test_only_the_latest_process_in_a_log_counts(tmp_path: Path) -> None:
    log_file = tmp_path / "d0.log"
    log_file.write_text(
        "device 0: pid 1 VmData baseline 1 B, RLIMIT_DATA 2 B\n"
        "OpenBLAS error: Memory allocation still failed after 10 retries, giving up.\n"
        "device 0: pid 2 VmData baseline 1 B, RLIMIT_DATA 2 B\n"
        "Traceback (most recent call last):\nValueError: boom\n"
    )
    assert not oom_in_log(log_file)
    assert exit_kind(1, log_file=log_file) == "crash (exit 1)"
    assert exit_kind(None, log_file=log_file) == "disconnected"
    assert exit_kind(86) == "oom"
