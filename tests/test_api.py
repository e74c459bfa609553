"""The Python API runs the quickstart as the CLI does: same per-round metrics, a callback per round."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import tinytwin
from conftest import REPO, run_cli
from tinytwin.errors import TinyTwinError

QUICKSTART = REPO / "examples" / "quickstart.yaml"
SMALL = {"rounds": 3, "fleet.groups.0.count": 5}
COMPARED = [
    "round",
    "sim_time_s",
    "selected",
    "completed",
    "train_loss",
    "test_accuracy",
    "test_loss",
    "bytes_up",
    "bytes_down",
    "energy_j",
]


def _cli_rounds(out: Path) -> list[tuple]:
    (run_dir,) = out.iterdir()
    conn = sqlite3.connect(run_dir / "results.db")
    try:
        return conn.execute(f"SELECT {', '.join(COMPARED)} FROM rounds ORDER BY round").fetchall()
    finally:
        conn.close()


def test_api_run_equals_cli_run_and_calls_back_each_round(tmp_path: Path) -> None:
    calls: list[tuple[int, float | None]] = []
    exp = tinytwin.Experiment.from_yaml(QUICKSTART, overrides=SMALL)
    result = exp.run(out=tmp_path / "api", on_round=lambda r, info: calls.append((r, info.get("accuracy"))))

    assert isinstance(result, tinytwin.RunResult)
    assert [r for r, _ in calls] == [1, 2, 3]
    assert result.run_dir.parent == tmp_path / "api" and (result.run_dir / "results.db").is_file()
    assert not (result.run_dir / "report.html").exists()  # report=False by default
    assert list(result.rounds["round"]) == [1, 2, 3]
    assert len(result.devices) == 5 and list(result.devices["device"]) == list(range(5))
    assert set(result.devices["group"]) == {"esp32"} and sum(map(sum, result.devices["class_hist"])) > 0
    assert result.summary["final_accuracy"] == pytest.approx(result.rounds["test_accuracy"].iloc[-1])
    assert [a for _, a in calls] == pytest.approx(list(result.rounds["test_accuracy"]))

    cli = run_cli(
        "run",
        str(QUICKSTART),
        "--set",
        "rounds=3",
        "--set",
        "fleet.groups.0.count=5",
        "--out",
        str(tmp_path / "cli"),
        "--no-report",
        "--quiet",
    )
    assert cli.returncode == 0, cli.stderr
    api_rows = [tuple(row) for row in result.rounds[COMPARED].itertuples(index=False)]
    assert api_rows == _cli_rounds(tmp_path / "cli")  # bit for bit, same seed


def test_api_override_errors_are_the_cli_errors(tmp_path: Path) -> None:
    with pytest.raises(TinyTwinError) as info:
        tinytwin.Experiment.from_yaml(QUICKSTART, overrides={"algorithm.lrr": 0.05})
    cli = run_cli("run", str(QUICKSTART), "--set", "algorithm.lrr=0.05", "--out", str(tmp_path), "--quiet")
    assert cli.returncode == 2
    assert str(info.value) in cli.stderr.replace("\n", "")
    assert str(info.value).startswith("algorithm.lrr: unknown key")
    with pytest.raises(TinyTwinError, match="twin must be one of"):
        tinytwin.Experiment.from_yaml(QUICKSTART, overrides=SMALL).run(twin="firmware", out=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_api_runs_the_emulation_twin(tmp_path: Path) -> None:
    calls: list[int] = []
    exp = tinytwin.Experiment.from_yaml(QUICKSTART, overrides={"rounds": 2, "fleet.groups.0.count": 3})
    result = exp.run(twin="emulate", out=tmp_path, on_round=lambda r, info: calls.append(r), time_scale=0.0)
    assert calls == [1, 2]
    assert list(result.rounds["round"]) == [1, 2] and len(result.devices) == 3
    assert "emulate" in result.summary  # the coordinator's summary (process RSS, wall per round, ...)
    conn = sqlite3.connect(result.run_dir / "results.db")
    try:
        assert conn.execute("SELECT twin, status FROM runs").fetchone() == ("emulate", "complete")
    finally:
        conn.close()
