"""``tinytwin emulate --dashboard`` and ``tinytwin sweep --dashboard``: the page answers while the command runs.

Each command is a real ``tinytwin`` process; its first line names the dashboard's URL, and the
test asks the dashboard's API over loopback, as the page does, until the command exits (the
server is a thread of the command, so it goes with it).
"""

from __future__ import annotations

import http.client
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from browser_util import dashboard_server, start_cli
from sweep_util import QUICKSTART, TINY, only_sweep
from test_dashboard import get


def watch_while_running(proc: subprocess.Popen) -> tuple[list[dict[str, Any]], str, str]:
    """Load the command's page, then poll its run list until the command exits: every listing
    answered while the command was still running, then the command's stdout and stderr."""
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.startswith("dashboard: http://127.0.0.1:"), line
    url = line.split()[1]
    listings: list[dict[str, Any]] = []
    try:
        with urllib.request.urlopen(url, timeout=20) as page:  # the page itself, while the command runs
            assert page.status == 200 and b'id="chart-events"' in page.read()
        while proc.poll() is None:
            try:
                status, body = get(url + "api/runs")
            except (OSError, http.client.HTTPException):
                break  # the command ended and took the server with it (maybe mid-answer)
            if proc.poll() is None:
                assert status == 200
                listings.append(body)
            time.sleep(0.1)
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return listings, out, err


def test_emulate_with_dashboard_serves_the_emulation_while_it_goes(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = start_cli(
        "emulate", str(QUICKSTART), "--set", "rounds=2", "--set", "fleet.groups.0.count=3",
        "--time-scale", "0", "--out", str(runs), "--quiet", "--no-report", "--dashboard",
    )  # fmt: skip
    listings, out, err = watch_while_running(proc)
    assert "Traceback" not in err
    seen = [r for body in listings for r in body["runs"]]
    assert any(r.get("twin") == "emulate" and r.get("status") == "running" for r in seen), seen
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    with dashboard_server(runs) as (url, _):  # what the wall-time axis draws: the rounds' measured seconds
        status, body = get(f"{url}api/run?run={run_dir.name}")
    assert status == 200 and body["rounds"]["round"] == [1, 2] and body["status"] == "complete"
    assert all(w > 0 for w in body["rounds"]["wall_time_s"]), body["rounds"]


def test_sweep_with_dashboard_lists_the_sweeps_runs_while_it_goes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = start_cli(
        "sweep", str(QUICKSTART), *TINY, "--grid", "algorithm.lr=0.05,0.1", "--seeds", "2", "--workers", "1",
        "--out", str(out), "--quiet", "--no-report", "--dashboard",
    )  # fmt: skip
    listings, _, err = watch_while_running(proc)
    assert "Traceback" not in err
    keys = {r["key"] for body in listings for r in body["runs"]}
    # The runs three folders down (OUT/SWEEP/runs/RUN) are found while the sweep is going.
    assert keys and all(k.count("/") == 2 and "/runs/" in k for k in keys), keys
    assert len(list((only_sweep(out) / "runs").iterdir())) == 4
