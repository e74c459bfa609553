"""The dashboard server over HTTP: bad input, read-only access, pushed round deltas.

A real ``tinytwin dashboard`` process serves run folders written with the real RunStore
(tests/test_report.py's ``make_run``); requests go over loopback with urllib.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sqlite3
import stat
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from browser_util import dashboard_server
from test_report import make_run
from tinytwin.store.db import RunStore


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def read_events(url: str, seconds: float, until: Any = None) -> list[tuple[str, Any, float]]:
    """SSE events of ``url`` for up to ``seconds`` (or until ``until(events)`` holds): (event, data, arrival time)."""
    out: list[tuple[str, Any, float]] = []
    deadline = time.monotonic() + seconds
    with urllib.request.urlopen(url, timeout=seconds + 5) as r:
        event = None
        while time.monotonic() < deadline:
            line = r.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                out.append((event, json.loads(line[6:]), time.time()))
                if until and until(out):
                    break
    return out


def newer_schema_run(run_dir: Path) -> None:
    """A results.db as a future tinytwin might write it: schema version bumped, a column renamed."""
    make_run(run_dir, rounds_done=2, rounds_planned=2)
    conn = sqlite3.connect(run_dir / "results.db")
    conn.execute("ALTER TABLE rounds RENAME COLUMN test_accuracy TO accuracy_top1")
    conn.execute("UPDATE runs SET version = '9.0.0'")
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()


def test_bad_input_gives_clear_messages_and_one_log_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with dashboard_server(empty) as (url, proc):
        for _ in range(3):
            status, body = get(url + "api/runs")
            assert status == 200 and body["runs"] == [] and "No runs in" in body["note"]
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert err.count("no runs") == 1, err  # logged once, not once per request

    runs = tmp_path / "runs"
    make_run(runs / "good")
    (runs / "corrupt").mkdir(parents=True)
    (runs / "corrupt" / "results.db").write_bytes(b"this is not SQLite " * 300)
    newer_schema_run(runs / "newer")
    with dashboard_server(runs) as (url, proc):
        status, body = get(url + "api/runs")
        assert status == 200
        by_key = {r["key"]: r for r in body["runs"]}
        assert set(by_key) == {"good", "corrupt", "newer"}
        assert "error" not in by_key["good"] and by_key["good"]["rounds_done"] == 6
        assert "not a readable SQLite database" in by_key["corrupt"]["error"]
        assert "newer tinytwin (version 9.0.0, schema 7)" in by_key["newer"]["error"]
        status, body = get(url + "api/run?run=corrupt")
        assert status == 422 and "corrupt" in body["error"] and "\n" not in body["error"]
        status, body = get(url + "api/run?run=newer")
        assert status == 422 and "upgrade tinytwin" in body["error"]
        status, body = get(url + "api/run?run=../../etc")
        assert status == 422 and "outside" in body["error"]
        status, body = get(url + "api/fleet?run=good&metric=bogus")
        assert status == 422 and "unknown metric" in body["error"]
        status, body = get(url + "api/device?run=good&device=999")
        assert status == 422 and "no device 999" in body["error"]
        events = read_events(url + "api/stream?run=corrupt", 3, until=lambda ev: any(e == "problem" for e, _, _ in ev))
        assert any(e == "problem" and "corrupt" in d["error"] for e, d, _ in events)
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err
    assert sum("corrupt" in line for line in err.splitlines()) == 1, err
    assert sum("newer tinytwin" in line for line in err.splitlines()) == 1, err


def _fingerprint(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {
        p.name: (p.stat().st_mtime_ns, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.iterdir())
    }


def test_dashboard_never_writes_the_database(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_run(src / "run")
    frozen = tmp_path / "frozen"
    shutil.copytree(src, frozen)
    for p in (frozen / "run").iterdir():
        p.chmod(0o444)
    (frozen / "run").chmod(0o555)
    before = _fingerprint(frozen / "run")
    try:
        with dashboard_server(frozen) as (url, _):
            assert get(url + "api/run?run=run")[1]["rounds_done"] == 6
            for metric in ("energy_j", "status", "group", "accuracy"):
                assert get(url + f"api/fleet?run=run&metric={metric}")[0] == 200
            assert get(url + "api/device?run=run&device=3")[1]["rounds"]["round"] == [1, 2, 3, 4, 5, 6]
            assert get(url + "api/compare?runs=run,run")[0] == 200
            events = read_events(url + "api/stream?run=run&after=0", 3, until=lambda ev: len(ev) >= 2)
            assert [e for e, _, _ in events] == ["runs", "rounds"]
        after = _fingerprint(frozen / "run")
        assert after == before  # same files (no -wal/-shm created), same bytes, same mtimes
        assert stat.S_IMODE(os.stat(frozen / "run" / "results.db").st_mode) == 0o444
    finally:
        (frozen / "run").chmod(0o755)


def test_new_rounds_are_pushed_as_deltas(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "live"
    meta = make_run(run_dir, rounds_done=2, rounds_planned=4, finish=False)
    with dashboard_server(tmp_path / "runs") as (url, _):
        status, body = get(url + "api/run?run=live")
        assert status == 200 and body["rounds"]["round"] == [1, 2] and body["status"] == "running"
        assert body["counts"]["online"] == 8 and body["counts"]["training"] == 7 and body["counts"]["failed"] == 1
        assert body["events"]["kind"] == ["dropout", "dropout", "note"] and body["events_total"] == 3
        assert body["events"]["device"] == [7, 7, None] and body["events"]["round"] == [1, 2, 2]
        last_event = body["events"]["id"][-1]

        written: dict[int, float] = {}

        def writer_thread() -> None:
            """A run's writer: two more rounds, half a second apart, while the stream is open."""
            time.sleep(1.0)
            store = RunStore(run_dir / "results.db")
            for rnd in (3, 4):
                row = {c: 0 for c in ("selected", "completed", "dropped", "stragglers", "bytes_up", "bytes_down")}
                row.update(round=rnd, sim_time_s=100.0 * rnd, duration_s=1.0, energy_j=0.5, wall_time_s=0.1)
                row["test_accuracy"] = 0.5 + rnd / 100
                event = {
                    "round": rnd,
                    "sim_time_s": row["sim_time_s"],
                    "device": rnd,
                    "kind": "straggler",
                    "detail": "late",
                }
                store.write_round(meta["run_id"], row, [], [event], None)
                written[rnd] = time.time()
                time.sleep(0.5)
            store.close()

        writer = threading.Thread(target=writer_thread)
        writer.start()
        events = read_events(
            url + f"api/stream?run=live&after=2&events_after={last_event}",
            15,
            until=lambda ev: any(e == "rounds" and 4 in d["rounds"]["round"] for e, d, _ in ev),
        )
        writer.join()
    deltas = [(d, t) for e, d, t in events if e == "rounds"]
    pushed = [r for d, _ in deltas for r in d["rounds"]["round"]]
    assert pushed == [3, 4]  # only the new rounds, each once
    pushed_events = [(k, dev) for d, _ in deltas for k, dev in zip(d["events"]["kind"], d["events"]["device"])]
    assert pushed_events == [("straggler", 3), ("straggler", 4)]  # only the new events, each once, with the round
    for d, arrived in deltas:
        for rnd in d["rounds"]["round"]:
            assert arrived - written[rnd] < 1.5, "round pushed too late"
    assert deltas[-1][0]["rounds_done"] == 4 and deltas[-1][0]["rounds"]["test_accuracy"] == [pytest.approx(0.54)]


def test_run_with_dashboard_serves_the_run_while_it_goes(tmp_path: Path) -> None:
    from browser_util import start_cli
    from test_dashboard_browser import SPEC

    spec = tmp_path / "watched.yaml"
    spec.write_text(SPEC.replace("rounds: 24", "rounds: 8").replace("round: 12}", "round: 6}"))  # leave within the run
    runs = tmp_path / "runs"
    proc = start_cli("run", str(spec), "--out", str(runs), "--quiet", "--no-report", "--dashboard")
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("dashboard: http://127.0.0.1:"), line
        url = line.split()[1]
        seen = set()
        while proc.poll() is None:
            try:
                status, body = get(url + "api/runs")
            except (OSError, http.client.HTTPException):
                break  # the run ended and took the server with it (maybe mid-answer)
            # A database being created holds no run row for a moment: listed with its error.
            seen |= {(r["status"], r["rounds_done"]) for r in body["runs"] if "error" not in r}
            time.sleep(0.1)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "final accuracy" in out and "Traceback" not in err
    assert any(s == "running" and 0 < n < 8 for s, n in seen), seen  # watched mid-run through the dashboard


def test_fleet_view_draws_a_decentralized_runs_topology(tmp_path: Path) -> None:
    import yaml

    from conftest import run_cli
    from dfl_util import spec_dict

    spec = tmp_path / "ring.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(rounds=2, algorithm={"name": "gossip", "batch_size": 32})))
    proc = run_cli("run", str(spec), "--out", str(tmp_path / "runs"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    with dashboard_server(tmp_path / "runs") as (url, _):
        status, run = get(url + f"api/run?run={run_dir.name}")
        assert status == 200 and run["spread"]["round"] == [1, 2]  # accuracy band of the devices' own models
        assert all(lo <= hi for lo, hi in zip(run["spread"]["acc_min"], run["spread"]["acc_max"]))
        status, body = get(url + f"api/fleet?run={run_dir.name}&metric=rounds_trained")
    assert status == 200 and body["note"] == "ring topology, 8 links"
    assert len(body["edge_x"]) == 8 * 3 and body["value"] == [2] * 8  # 8 segments; every device trained twice
    # The report draws the same graph.
    html = (run_dir / "report.html").read_text()
    assert '"note":"ring topology, 8 links"' in html and '"spread":{"round":[1,2]' in html


def test_ctrl_c_stops_the_server_cleanly_with_a_page_attached(tmp_path: Path) -> None:
    import signal

    make_run(tmp_path / "runs" / "a")
    with dashboard_server(tmp_path / "runs") as (url, proc):
        ended: list[str] = []

        def follow() -> None:  # a page's open event stream
            with urllib.request.urlopen(url + "api/stream?run=a", timeout=30) as r:
                while r.readline():
                    pass
            ended.append("closed by the server")

        page = threading.Thread(target=follow)
        page.start()
        time.sleep(1.0)
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        page.join(timeout=10)
    assert proc.returncode == 0 and time.monotonic() - t < 2.0
    assert "dashboard stopped" in out and "Traceback" not in err and "ERROR" not in err, err
    assert ended == ["closed by the server"]


def test_host_other_than_loopback_warns_and_bad_options_are_one_line(tmp_path: Path) -> None:
    from conftest import run_cli
    from tinytwin.cli_dashboard import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.10")
    # 192.0.2.1 (TEST-NET-1) is on no interface here: the warning comes first, then the bind error.
    proc = run_cli("dashboard", str(tmp_path), "--host", "192.0.2.1", "--port", "0", timeout=60)
    assert proc.returncode == 2
    assert "warning" in proc.stderr and "no login" in proc.stderr
    assert "error: cannot listen on 192.0.2.1:0" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("dashboard", str(tmp_path), "--port", "70000", timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --port must be 0..65535, not 70000"
