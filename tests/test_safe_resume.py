"""Safe resume (issue #18): checkpoints are plain data, and a planted pickle never runs."""

from __future__ import annotations

import math
import os
import pickle
import sqlite3
from collections import Counter, OrderedDict, defaultdict, deque
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli, write_spec
from tinytwin.engines.decentralized import Messages
from tinytwin.store import checkpoint

SPEC = """name: safe
rounds: 2
dataset: {name: digits}
model: {name: mlp, hidden: [8]}
fleet:
  groups:
    - {profile: esp32-s3, count: 3, link: wifi}
"""


class Planted:
    """What an attacker pickles: unpickling calls os.system, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_is_exact():
    state = {
        "round": 3,
        "big": 2**70,
        "f": 0.1 + 0.2,
        "nan": float("nan"),
        "inf": -math.inf,
        "t": torch.randn(5, dtype=torch.float64),
        "a": np.arange(6, dtype=np.int16).reshape(2, 3),
        "s": np.float32(1.5),
        "tuple_list": [(1, 0.5), (2, 0.25)],
        "ints": {0: np.zeros(2), 7: None},
        "set": {1, 2},
        "dq": deque([1, 2], maxlen=4),
        "counter": Counter(a=2),
        "od": OrderedDict(b=1),
        "dd": defaultdict(list, {"x": [1]}),
        "msg": Messages.empty(),
        "text": "é",
    }
    back = checkpoint.decode(checkpoint.encode(state))
    assert back["round"] == 3 and back["big"] == 2**70 and back["f"] == 0.1 + 0.2
    assert math.isnan(back["nan"]) and back["inf"] == -math.inf
    assert isinstance(back["t"], torch.Tensor) and torch.equal(back["t"], state["t"])
    assert back["a"].dtype == np.int16 and np.array_equal(back["a"], state["a"])
    assert type(back["s"]) is np.float32 and back["s"] == 1.5
    assert back["tuple_list"] == [(1, 0.5), (2, 0.25)] and isinstance(back["tuple_list"][0], tuple)
    assert set(back["ints"]) == {0, 7} and back["set"] == {1, 2}
    assert back["dq"] == deque([1, 2]) and back["dq"].maxlen == 4
    assert type(back["counter"]) is Counter and type(back["od"]) is OrderedDict
    assert back["dd"].default_factory is list and back["dd"]["x"] == [1]
    assert isinstance(back["msg"], Messages) and len(back["msg"]) == 0
    assert back["text"] == "é"


def test_numeric_row_lists_are_one_array_and_come_back_exactly():
    """Per-round histories (``[(round, accuracy), ...]``) are stored as one array, not a JSON
    node per number, and come back with their ints, floats, NaNs and row types unchanged."""
    accuracies = [(r, 1.0 / (r + 3)) for r in range(500)] + [(500, float("nan")), (-(2**52), -0.0)]
    distillation = [[0.1 * r, 2.0, 1e-300] for r in range(6)]
    mixed = [(1, 0.5), (2, 1), (3, 0.25), (4, 0.125)]  # a column of mixed types stays a plain list
    blob = checkpoint.encode({"acc": accuracies, "dist": distillation, "mixed": mixed, "big": [(2**60, 1.0)] * 5})
    assert len(blob) < 20_000  # as JSON nodes the 500 rows alone take ~25 kB of header
    back = checkpoint.decode(blob)
    assert back["acc"][:500] == accuracies[:500] and all(type(r) is tuple for r in back["acc"])
    assert all(type(r) is int and type(a) is float for r, a in back["acc"])
    assert math.isnan(back["acc"][500][1]) and back["acc"][501] == (-(2**52), -0.0)
    assert math.copysign(1.0, back["acc"][501][1]) == -1.0
    assert back["dist"] == distillation and type(back["dist"][0]) is list
    assert back["mixed"] == mixed and type(back["mixed"][1][1]) is int
    assert back["big"] == [(2**60, 1.0)] * 5 and type(back["big"][0][0]) is int


def test_unplain_values_are_refused_when_written():
    with pytest.raises(TypeError, match="cannot hold"):
        checkpoint.encode({"x": object()})
    with pytest.raises(TypeError, match="Python objects"):
        checkpoint.encode({"x": np.array([object()])})


@pytest.mark.parametrize(
    "blob",
    [b"", b"TTCKPT1\n", b"TTCKPT1\n\xff\xff\xff\xff\xff\xff\xff\xff", b'TTCKPT1\n\x05\0\0\0\0\0\0\0{"a":'],
)
def test_damaged_blobs_are_format_errors(blob: bytes):
    with pytest.raises(checkpoint.CheckpointFormatError):
        checkpoint.decode(blob)


def test_a_dataclass_is_only_rebuilt_from_an_imported_tinytwin_module():
    module = Messages.__module__.encode()
    blob = checkpoint.encode({"m": Messages.empty()})
    assert module in blob
    blob = blob.replace(module, b"tinytwin.engines." + b"x" * (len(module) - len(b"tinytwin.engines.")))
    with pytest.raises(checkpoint.CheckpointFormatError, match="damaged"):
        checkpoint.decode(blob)


def _incomplete_run(tmp_path: Path) -> tuple[Path, Path]:
    spec = write_spec(tmp_path / "spec.yaml", SPEC)
    proc = run_cli("run", str(spec), "--out", str(tmp_path / "runs"), "--quiet", "--no-report")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    with sqlite3.connect(run_dir / "results.db") as conn:
        conn.execute("UPDATE runs SET status = 'incomplete', rounds_done = 1")
        conn.execute("DELETE FROM rounds WHERE round = 2")
        (blob,) = conn.execute("SELECT state FROM checkpoints").fetchone()
    assert blob.startswith(checkpoint.MAGIC)  # the run itself wrote plain data
    return spec, run_dir


@pytest.mark.parametrize("kind", ["pickle", "torch-save"])
def test_planted_pickle_is_refused_and_never_runs(tmp_path: Path, kind: str):
    spec, run_dir = _incomplete_run(tmp_path)
    marker = tmp_path / "PWNED"
    if kind == "pickle":
        payload = pickle.dumps({"round": 1, "x": Planted(marker)})
    else:
        import io

        buf = io.BytesIO()
        torch.save({"round": 1, "x": Planted(marker)}, buf)
        payload = buf.getvalue()
    with sqlite3.connect(run_dir / "results.db") as conn:
        conn.execute("UPDATE checkpoints SET state = ?", (payload,))
    proc = run_cli("run", str(spec), "--resume", str(run_dir), "--quiet", "--no-report")
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot resume" in lines[0] and "pickle" in lines[0]
    assert not marker.exists()


def test_a_second_resume_of_a_folder_still_being_written_is_refused(tmp_path):
    """A run holds its folder's lock while it writes; --resume from another process is refused in one line."""
    import subprocess
    import sys
    import time

    runs = tmp_path / "runs"
    slow = subprocess.Popen(
        [sys.executable, "-m", "tinytwin.cli", "run", str(REPO / "examples" / "quickstart.yaml"), "--set",
         "rounds=400", "--set", "fleet.groups.0.count=40", "--out", str(runs), "--quiet", "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (runs.exists() and any(runs.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.1)
        (run_dir,) = runs.iterdir()
        time.sleep(1.0)  # a few rounds in: the database is being written
        r = run_cli("run", str(run_dir / "spec.yaml"), "--resume", str(run_dir), "--quiet", "--no-report")
        assert slow.poll() is None, "the run ended before the resume was tried; make it longer"
        assert r.returncode == 2 and "being written by another tinytwin process" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        slow.kill()
        slow.wait()
    # killed (-9): the kernel dropped the lock with the process; the folder can be taken again
    from tinytwin.store.files import lock_run_folder, private_umask

    with private_umask():
        lock_run_folder(run_dir)
