"""Corrupt, read-only and full (issue #18): ``report`` and ``--resume`` on damaged results give
one line and exit 2, never write the database; read-only and full disks give one line naming the
folder, and a run stopped by a full disk resumes once there is space."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli, write_spec

SPEC = """name: robust
rounds: 2
dataset: {name: digits}
model: {name: mlp, hidden: [8]}
fleet:
  groups:
    - {profile: esp32-s3, count: 3, link: wifi}
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """One finished 2-round run (its spec, its folder), copied by each test that damages it."""
    base = tmp_path_factory.mktemp("robust")
    spec = write_spec(base / "spec.yaml", SPEC)
    proc = run_cli("run", str(spec), "--out", str(base / "runs"), "--quiet", "--no-report")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (base / "runs").iterdir()
    return spec, run_dir


def _sql(*statements: str) -> Callable[[Path], None]:
    def damage(db: Path) -> None:
        with sqlite3.connect(db) as conn:
            for s in statements:
                conn.execute(s)
        conn.close()

    return damage


def _truncate(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])


def _random(db: Path) -> None:
    db.write_bytes(random.Random(1).randbytes(db.stat().st_size))


def _scribble(db: Path) -> None:
    data = bytearray(db.read_bytes())
    rng = random.Random(2)
    for page in range(1, len(data) // 4096, 2):  # every other page, the header page spared
        data[page * 4096 : (page + 1) * 4096] = rng.randbytes(4096)
    db.write_bytes(bytes(data))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "random-bytes": _random,
    "scribbled-pages": _scribble,
    "bad-summary-json": _sql("UPDATE runs SET summary_json = '{not json'"),
    "text-in-numeric": _sql("UPDATE rounds SET sim_time_s = 'abc' WHERE round = 1"),
    "dropped-rounds": _sql("DROP TABLE rounds"),
    "hist-not-json": _sql("UPDATE devices SET class_hist_json = 'x' WHERE device = 0"),
}


def _damaged_copy(finished_run: tuple[Path, Path], folder: Path, how: str, incomplete: bool) -> Path:
    run_dir = folder / how
    shutil.copytree(finished_run[1], run_dir)
    db = run_dir / "results.db"
    if incomplete:  # a run that stopped after round 1, so --resume has something to do
        _sql("UPDATE runs SET status = 'incomplete', rounds_done = 1, summary_json = NULL")(db)
    DAMAGE[how](db)
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)
    return run_dir


def _digest(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir()) if p.is_file()}


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["report", "resume"])
def test_damaged_database_gives_one_line_and_stays_untouched(tmp_path: Path, finished_run, command: str):
    spec = finished_run[0]
    dirs = {how: _damaged_copy(finished_run, tmp_path, how, command == "resume") for how in DAMAGE}
    before = {how: _digest(d) for how, d in dirs.items()}

    def call(how: str) -> subprocess.CompletedProcess:
        if command == "report":
            return run_cli("report", str(dirs[how]), timeout=120)
        return run_cli("run", str(spec), "--resume", str(dirs[how]), "--quiet", "--no-report", timeout=120)

    with ThreadPoolExecutor(2) as pool:
        procs = dict(zip(DAMAGE, pool.map(call, DAMAGE)))
    for how, proc in procs.items():
        line = _one_line(proc)
        assert str(dirs[how]) in line, (how, line)
        assert _digest(dirs[how]) == before[how], f"{how}: {command} changed the run folder"


def test_report_of_a_good_run_leaves_the_database_as_it_was(tmp_path: Path, finished_run):
    run_dir = tmp_path / "good"
    shutil.copytree(finished_run[1], run_dir)
    db_hash = _digest(run_dir)["results.db"]
    proc = run_cli("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert _digest(run_dir)["results.db"] == db_hash
    wal = run_dir / "results.db-wal"  # the dashboard's chart reader (mode=ro) may leave an empty one
    assert not wal.exists() or wal.stat().st_size == 0


def test_checked_reader_leaves_no_side_files(tmp_path: Path, finished_run):
    from tinytwin.store.reader import open_checked

    run_dir = tmp_path / "good"
    shutil.copytree(finished_run[1], run_dir)
    before = _digest(run_dir)
    store, info = open_checked(run_dir)
    assert len(store.rounds(info.run_id)) == 2
    store.close()
    assert _digest(run_dir) == before  # same files, same bytes: no -wal, no -shm


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


def test_read_only_folders_give_one_line(tmpfs: Path, finished_run):
    spec = finished_run[0]
    run_dir = tmpfs / "run"
    shutil.copytree(finished_run[1], run_dir)
    _sql("UPDATE runs SET status = 'incomplete', rounds_done = 1")(run_dir / "results.db")
    _remount(tmpfs, "ro")
    before = _digest(run_dir)
    line = _one_line(run_cli("run", str(spec), "--out", str(tmpfs / "runs"), "--quiet"))
    assert "not writable" in line and str(tmpfs) in line
    line = _one_line(run_cli("run", str(spec), "--resume", str(run_dir), "--quiet"))
    assert "not writable" in line and str(run_dir) in line
    line = _one_line(run_cli("report", str(run_dir)))
    assert "not writable" in line and str(run_dir) in line
    assert _digest(run_dir) == before


def test_full_disk_gives_one_line_and_the_run_resumes(tmpfs: Path, tmp_path: Path):
    spec = write_spec(tmp_path / "long.yaml", SPEC.replace("rounds: 2", "rounds: 200"))
    out = tmpfs / "runs"
    line = _one_line(run_cli("run", str(spec), "--out", str(out), "--quiet", "--no-report", timeout=300))
    (run_dir,) = out.iterdir()
    assert "disk is full" in line and str(run_dir) in line and "--resume" in line
    with sqlite3.connect(f"file:{run_dir / 'results.db'}?mode=ro", uri=True) as conn:
        done = conn.execute("SELECT count(*) FROM rounds").fetchone()[0]
    assert 0 < done < 200
    _remount(tmpfs, "size=64m")
    proc = run_cli("run", str(spec), "--resume", str(run_dir), "--quiet", "--no-report", timeout=300)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(run_dir / "results.db") as conn:
        rounds = [r[0] for r in conn.execute("SELECT round FROM rounds ORDER BY round")]
        status = conn.execute("SELECT status FROM runs").fetchone()[0]
    conn.close()
    assert rounds == list(range(1, 201)) and status == "complete"


def test_run_folder_is_private(tmp_path: Path, finished_run):
    run_dir = finished_run[1]
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    for name in ("spec.yaml", "results.db"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o600, name
    assert os.stat(run_dir).st_uid == os.getuid()


def test_private_file_helpers_never_expose_a_file(tmp_path: Path):
    """The helpers the emulation coordinators are to use for keys, configs, shards and logs."""
    from tinytwin.store.files import open_private_append, private_dirs, write_private

    old = os.umask(0)  # the most permissive umask: modes must still be private
    try:
        keys = tmp_path / "emulate" / "keys"
        private_dirs(keys)
        key = write_private(keys / "d0.key", b"secret")
        write_private(key, b"secret2")  # replaced atomically, still private
        with open_private_append(tmp_path / "emulate" / "d0.log") as log:
            log.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.read_bytes() == b"secret2"
    assert stat.S_IMODE((tmp_path / "emulate" / "d0.log").stat().st_mode) == 0o600
    assert sorted(p.name for p in keys.iterdir()) == ["d0.key"]  # no temp file left
