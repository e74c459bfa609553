"""`tinytwin sweep --ray HOST:PORT` on a real Ray head on loopback gives the process pool's results."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from sweep_util import QUICKSTART, index_rows, only_sweep

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'tinytwin[ray]')")
RAY_BIN = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Ray head on 127.0.0.1 with 2 CPUs and no dashboard; stopped (``ray stop``) in teardown.

    Token authentication is off for the head and the sweep's driver alike (``RAY_AUTH_MODE``,
    inherited by `run_cli`): the head is reachable only from this machine, and with it on the
    driver would need the token file Ray keeps in the user's home.
    """
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="tt-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    try:
        subprocess.run(
            [
                str(RAY_BIN),
                "start",
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(port),
                "--num-cpus",
                "2",
                "--include-dashboard=false",
                "--disable-usage-stats",
                "--temp-dir",
                temp_dir,
            ],
            check=True,
            env=env,
            capture_output=True,
            timeout=120,
        )
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY_BIN), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_sweep_equals_process_pool_sweep(tmp_path: Path, ray_head: str) -> None:
    sweep_file = tmp_path / "lr.sweep.yaml"  # the same grid as a sweep file, for the process-pool run
    sweep_file.write_text(
        f"spec: {QUICKSTART}\ngrid:\n  algorithm.lr: [0.05, 0.1]\nseeds: 2\n",
    )
    tiny = ["--set", "rounds=2", "--set", "fleet.groups.0.count=5", "--quiet", "--no-report"]
    pool = run_cli("sweep", str(sweep_file), *tiny, "--workers", "2", "--out", str(tmp_path / "pool"))
    assert pool.returncode == 0, pool.stderr
    on_ray = run_cli(
        "sweep",
        str(QUICKSTART),
        *tiny,
        "--grid",
        "algorithm.lr=0.05,0.1",
        "--seeds",
        "2",
        "--ray",
        ray_head,
        "--out",
        str(tmp_path / "ray"),
    )
    assert on_ray.returncode == 0, on_ray.stderr
    pool_rows, ray_rows = index_rows(only_sweep(tmp_path / "pool")), index_rows(only_sweep(tmp_path / "ray"))
    assert len(ray_rows) == 4 and {r["status"] for r in ray_rows} == {"complete"}
    assert ray_rows == pool_rows
    ray_runs = only_sweep(tmp_path / "ray") / "runs"
    assert sorted(p.name for p in ray_runs.iterdir()) == ["c00-r0", "c00-r1", "c01-r0", "c01-r1"]
    pool_runs = only_sweep(tmp_path / "pool") / "runs"
    for run in ray_runs.iterdir():  # the tasks' run folders came back whole
        assert (run / "results.db").stat().st_size > 0
        assert sorted(p.name for p in run.rglob("*")) == sorted(p.name for p in (pool_runs / run.name).rglob("*"))
