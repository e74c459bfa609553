"""Large checkpoints live in a file beside results.db: written before the round commits, read
back exactly, older rounds' files removed, and a damaged or missing file refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tinytwin.engines.runner import resume_run, start_run
from tinytwin.spec.load import validate_spec
from tinytwin.store import checkpoint_files
from tinytwin.store.check import ResultsError
from tinytwin.store.db import RunStore

ROUND = {
    **{c: 0 for c in ("selected", "completed", "dropped", "stragglers", "bytes_up", "bytes_down")},
    **{c: 1.0 for c in ("sim_time_s", "duration_s", "train_loss", "test_accuracy", "test_loss", "energy_j")},
    "round": 1,
    "wall_time_s": 0.1,
}


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_files, "INLINE_LIMIT", 1000)


def _store(tmp_path: Path) -> RunStore:
    store = RunStore(tmp_path / "results.db")
    store.create_run("abc123", "ck", "simulate", 0, "{}", 3, "test")
    return store


def test_a_large_checkpoint_goes_to_a_file_and_comes_back_exactly(tmp_path: Path, small_limit: None) -> None:
    store = _store(tmp_path)
    models = np.random.default_rng(0).standard_normal((40, 50)).astype(np.float32)
    store.write_round("abc123", ROUND, [], [], {"round": 1, "params": models})
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["abc123-r000001.ttckpt"]
    (row,) = store.conn.execute("SELECT state FROM checkpoints").fetchone()
    assert row.startswith(checkpoint_files.REFERENCE) and len(row) < 200  # the row only points at it
    assert json.loads(row[len(checkpoint_files.REFERENCE) :])["bytes"] > 8000
    store.write_round("abc123", dict(ROUND, round=2), [], [], {"round": 2, "params": models + 1})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["abc123-r000002.ttckpt"]
    done, state = store.checkpoint("abc123") or (0, {})
    assert done == 2 and np.array_equal(state["params"], models + 1)
    small = {"round": 3, "params": np.zeros(3, np.float32)}
    store.write_round("abc123", dict(ROUND, round=3), [], [], small)  # small again: inline, no file left
    assert not list((tmp_path / "checkpoints").iterdir())
    assert np.array_equal((store.checkpoint("abc123") or (0, {}))[1]["params"], np.zeros(3))


@pytest.mark.parametrize("damage", ["flip", "missing"])
def test_a_damaged_or_missing_checkpoint_file_is_one_clear_line(tmp_path: Path, small_limit: None, damage: str) -> None:
    store = _store(tmp_path)
    store.write_round("abc123", ROUND, [], [], {"params": np.ones((40, 50), np.float32)})
    path = tmp_path / "checkpoints" / "abc123-r000001.ttckpt"
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        expected = "is not the one the database recorded"
    else:
        path.unlink()
        expected = "cannot be read"
    with pytest.raises(
        ResultsError, match=f"cannot resume: the checkpoint file checkpoints/abc123-r000001.ttckpt {expected}"
    ):
        store.checkpoint("abc123")


def test_a_reference_cannot_name_a_file_outside_the_checkpoints_folder(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ref = checkpoint_files.REFERENCE + json.dumps({"file": "../results.db", "bytes": 1, "sha256": "0"}).encode()
    store.conn.execute("INSERT INTO checkpoints VALUES (?,?,?)", ("abc123", 1, ref))
    with pytest.raises(ResultsError, match="reference is damaged"):
        store.checkpoint("abc123")


class Stop(Exception):
    """Stands for a crash after a round has committed."""


def test_a_decentralized_run_resumes_from_its_checkpoint_file(tmp_path: Path, small_limit: None) -> None:
    raw = {
        "name": "dfl-ck",
        "seed": 4,
        "rounds": 4,
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [16]},
        "fleet": {"groups": [{"profile": "esp32-s3", "count": 6, "link": "wifi"}]},
        "topology": {"kind": "ring"},
        "algorithm": {"name": "decfedavg", "local_epochs": 1, "batch_size": 8, "lr": 0.1},
    }
    spec, text = validate_spec(raw), yaml.safe_dump(raw)

    def crash_after_two(r: int, _: dict) -> None:
        if r == 2:
            raise Stop

    with pytest.raises(Stop):
        start_run(spec, text, tmp_path / "cut", None, progress=crash_after_two, report=False)
    (cut,) = (tmp_path / "cut").iterdir()
    assert [p.name for p in (cut / "checkpoints").iterdir()][0].endswith("-r000002.ttckpt")
    resumed = resume_run(cut, None, None, report=False)
    whole = start_run(spec, text, tmp_path / "whole", None, report=False)
    assert resumed.summary["final_accuracy"] == whole.summary["final_accuracy"]
    assert [p.name for p in (cut / "checkpoints").iterdir()][0].endswith("-r000004.ttckpt")
