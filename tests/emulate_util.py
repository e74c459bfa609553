"""Shared helpers of the emulation-twin tests: the quickstart spec, a run's stored rows, and the
kill-and-resume scaffolding (start ``tinytwin emulate``, SIGKILL it mid-run, resume it)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import run_cli
from tinytwin.emulate.fork_fleet import PEERS_FILE
from tinytwin.store import dfl as dfl_store
from tinytwin.store.db import RunStore

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "examples" / "quickstart.yaml"
LOSSLESS = [
    "fleet.groups.0.count=10",
    "fleet.groups.0.link_overrides.loss=0",
    "fleet.groups.0.link_overrides.header_bytes=0",
]


@contextmanager
def _opened(run_dir: Path) -> Iterator[tuple[RunStore, Any]]:
    store = RunStore(run_dir / "results.db")
    try:
        yield store, store.run_info()
    finally:
        store.close()


def stored_rows(run_dir: Path, with_info: bool = False):
    """(rounds, device_rounds, events) of the run in ``run_dir``; ``with_info``: its run info first."""
    with _opened(run_dir) as (store, info):
        rows = store.rounds(info.run_id), store.device_rounds(info.run_id), store.events(info.run_id)
        return (info, *rows) if with_info else rows


def stored_tables(run_dir: Path, ledger: bool = False):
    """(info, rounds, device_rounds, events, round_metrics, device_metrics[, ledger]) of a
    decentralized or hierarchical run in ``run_dir``."""
    with _opened(run_dir) as (store, info):
        rid = info.run_id
        tables = (
            info,
            store.rounds(rid),
            store.device_rounds(rid),
            store.events(rid),
            dfl_store.round_metrics(store, rid),
            dfl_store.device_metrics(store, rid),
        )
        return tables + (dfl_store.ledger(store, rid),) if ledger else tables


# ---- kill and resume ---------------------------------------------------------------------------
def db_rows(run_dir: Path, sql: str) -> list[tuple]:
    """``sql`` on the run's results database, read-only; [] while it (or the table) does not exist yet."""
    if not (run_dir / "results.db").is_file():  # the run folder exists before its database
        return []
    con = sqlite3.connect(f"file:{run_dir / 'results.db'}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        con.close()


def start_cli(*args: str) -> subprocess.Popen:
    """``tinytwin *args`` in the background (stderr kept for a failure's message)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tinytwin.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def wait_for_round(
    coordinator: subprocess.Popen, runs: Path, pattern: str, at: int, timeout_s: float, poll_s: float = 0.01
) -> Path | None:
    """The run folder (``runs/pattern``) once it has committed round ``at``; None after ``timeout_s``.
    The coordinator must not exit before."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = list(runs.glob(pattern))
        if found and db_rows(found[0], f"SELECT round FROM rounds WHERE round >= {at}"):
            return found[0]
        assert coordinator.poll() is None, coordinator.stderr.read() if coordinator.stderr else ""
        time.sleep(poll_s)
    return None


@dataclass
class Killed:
    """What a run killed mid-run had committed: its rounds and device rounds, and how many rounds."""

    before: list[tuple]
    before_dev: list[tuple]
    done: int


def kill_mid_run(coordinator: subprocess.Popen, run_dir: Path, at: int, rounds: int) -> Killed:
    """SIGKILL the coordinator: at least ``at`` and fewer than ``rounds`` rounds are committed, and the
    run is still marked running (SIGKILL: no chance to mark it)."""
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait(10)
    before = db_rows(run_dir, "SELECT * FROM rounds ORDER BY round")
    before_dev = db_rows(run_dir, "SELECT * FROM device_rounds ORDER BY round, device")
    done = len(before)
    assert at <= done < rounds, f"killed after {done} rounds; the test needs a kill mid-run"
    assert db_rows(run_dir, "SELECT status FROM runs")[0][0] == "running"
    return Killed(before, before_dev, done)


def resume_after_kill(
    run_dir: Path, killed: Killed, rounds: int, timeout: float, device_rounds: bool = True
) -> list[tuple]:
    """``tinytwin emulate --resume`` the killed run: it completes every round and leaves the committed
    rounds (and, ``device_rounds``, their device rounds) untouched; returns the rounds' rows."""
    res = run_cli(
        "emulate", str(run_dir / "spec.yaml"), "--resume", str(run_dir), "--quiet", "--no-report", timeout=timeout
    )
    assert res.returncode == 0, res.stderr
    after = db_rows(run_dir, "SELECT * FROM rounds ORDER BY round")
    assert [r[1] for r in after] == list(range(1, rounds + 1))
    assert after[: killed.done] == killed.before  # the committed rounds are untouched
    if device_rounds:
        assert [
            r for r in db_rows(run_dir, "SELECT * FROM device_rounds ORDER BY round, device") if r[1] <= killed.done
        ] == killed.before_dev
    return after


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def peer_pids(run_dir: Path, *roles: str) -> list[int]:
    """The fork server's and the ``roles``' (``aggregators``, ``devices``) pids in ``emulate/peers.json``."""
    saved = json.loads((run_dir / "emulate" / PEERS_FILE).read_text())
    return [int(saved["forkserver"]), *(int(pid) for role in roles for pid in saved[role].values())]


def recorded_peer_pids(run_dir: Path | None, *roles: str) -> list[int]:
    """:func:`peer_pids`, or [] where there is no run folder or no ``emulate/peers.json`` (yet)."""
    if run_dir is None or not (run_dir / "emulate" / PEERS_FILE).is_file():
        return []
    return peer_pids(run_dir, *roles)


def assert_no_orphans(pids: list[int], settle_s: float = 0.5) -> None:
    time.sleep(settle_s)
    assert [p for p in pids if pid_alive(p)] == []


def kill_pids(pids: Iterable[int]) -> None:
    """A failed test's clean-up: SIGKILL those still running."""
    for p in pids:
        if pid_alive(p):
            subprocess.run(["kill", "-9", str(p)], check=False)
