"""First contact with the CLI: a device listing that fits the terminal, comparisons that never overwrite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import run_cli, write_spec

TINY = """
name: {name}
rounds: 1
dataset: {{name: digits}}
model: {{name: mlp, hidden: [8]}}
fleet:
  groups:
    - {{profile: esp32-s3, count: 3, link: wifi}}
"""

BUILT_IN = (
    "esp32-s3",
    "nrf52840",
    "stm32h743",
    "rp2040",
    "rp2040-w",
    "raspberry-pi-4",
    "jetson-nano-cpu",
    "jetson-nano-gpu",
    "jetson-agx-orin-cpu",
)


def _cli_in_columns(columns: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "tinytwin.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_devices_listing_is_one_row_per_device_within_100_columns() -> None:
    proc = _cli_in_columns(100, "devices")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) < 20, proc.stdout  # a table, not every source of every device
    assert max(len(l.rstrip()) for l in lines) <= 100
    assert "…" not in proc.stdout  # nothing cut
    rows = {l.split()[0]: l for l in lines if l.strip() and l.split()[0] in BUILT_IN}
    assert set(rows) == set(BUILT_IN)
    assert "Cortex-M4F" in rows["nrf52840"] and "196.6 kB" in rows["nrf52840"] and "ble,ieee802154" in rows["nrf52840"]
    assert "tinytwin devices DEVICE_NAME" in proc.stdout


def test_devices_name_still_cites_every_source() -> None:
    proc = _cli_in_columns(100, "devices", "nrf52840")
    assert proc.returncode == 0, proc.stderr
    assert "seed 003" in proc.stdout and "power.active_w" in proc.stdout
    assert "esp32-s3" not in proc.stdout  # only the device asked for


def _tiny_run(tmp_path: Path, name: str) -> Path:
    spec = write_spec(tmp_path / f"{name}.yaml", TINY.format(name=name))
    proc = run_cli("run", str(spec), "--out", str(tmp_path / "runs"), "--quiet", "--no-report")
    assert proc.returncode == 0, proc.stderr
    return next((tmp_path / "runs").glob(f"{name}-*"))


def test_compare_never_overwrites_without_force(tmp_path: Path) -> None:
    a, b = _tiny_run(tmp_path, "alpha"), _tiny_run(tmp_path, "beta")
    first = run_cli("compare", str(a), str(b), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    page = tmp_path / "runs" / "compare" / "compare.html"
    stamp = page.stat().st_mtime_ns
    second = run_cli("compare", str(b), str(a), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "runs" / "compare-2" / "compare.html").is_file()
    assert "compare-2" in second.stdout
    assert page.stat().st_mtime_ns == stamp  # the first comparison is untouched

    refused = run_cli("compare", str(a), str(b), "--out", str(page.parent), cwd=tmp_path)
    assert refused.returncode == 2
    lines = [l for l in refused.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "already holds a comparison" in lines[0] and "--force" in lines[0]
    assert page.stat().st_mtime_ns == stamp

    forced = run_cli("compare", str(a), str(b), "--out", str(page.parent), "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert page.stat().st_mtime_ns != stamp
