"""`tinytwin search`: Optuna drives real runs; its trials, best trial and refusals."""

from __future__ import annotations

import csv
import sqlite3

import pytest

from conftest import REPO, run_cli

QUICK = str(REPO / "examples" / "quickstart.yaml")
SMALL = ["--set", "rounds=2", "--set", "fleet.groups.0.count=6"]


def test_a_three_trial_search_runs_each_trial_and_prints_the_best(tmp_path):
    r = run_cli(
        "search", QUICK, *SMALL, "--param", "algorithm.lr=0.01..0.3:log", "--trials", "3", "--seeds", "2",
        "--out", str(tmp_path), "--quiet",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (search_dir,) = tmp_path.iterdir()
    rows = list(csv.DictReader((search_dir / "trials.csv").open()))
    assert [row["state"] for row in rows] == ["complete"] * 3
    lrs = [float(row["algorithm.lr"]) for row in rows]
    assert all(0.01 <= lr <= 0.3 for lr in lrs) and len(set(lrs)) == 3
    best = max(rows, key=lambda row: float(row["value"]))
    assert f"best: trial {best['trial']}:" in r.stdout
    assert sorted(p.name for p in (search_dir / "runs").iterdir()) == [
        f"t{t:03d}-r{s}" for t in range(3) for s in range(2)
    ]
    with sqlite3.connect(search_dir / "optuna.db") as db:  # the study itself, as Optuna stored it
        states = [s for (s,) in db.execute("SELECT state FROM trials ORDER BY number")]
    assert states == ["COMPLETE"] * 3


def test_a_search_where_every_trial_breaks_the_constraint_exits_1(tmp_path):
    r = run_cli(
        "search", QUICK, *SMALL, "--param", "algorithm.local_epochs=1..2:int", "--trials", "2",
        "--constraint", "energy_j_total<=0", "--out", str(tmp_path), "--quiet",
    )  # fmt: skip
    assert r.returncode == 1 and "no feasible trial" in r.stdout
    (search_dir,) = tmp_path.iterdir()
    assert [row["state"] for row in csv.DictReader((search_dir / "trials.csv").open())] == ["infeasible"] * 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "algorithm.nope=0.1..0.2"], "algorithm.nope"),
        (["--param", "algorithm.lr=0.3..0.1"], "LOW < HIGH"),
        (["--param", "algorithm.lr=0..0.1:log"], "LOW > 0"),
        (["--param", "algorithm.local_epochs=1..100000:int"], "local_epochs"),
        (["--param", "algorithm.lr=0.1..0.2", "--trials", "0"], "--trials"),
        (["--param", "algorithm.lr=0.1..0.2", "--objective", "joy"], "--objective"),
        (["--param", "algorithm.lr=0.1..0.2", "--constraint", "energy<5"], "--constraint"),
        ([], "--param"),
    ],
    ids=["unknown-key", "reversed", "log-zero", "out-of-bounds", "no-trials", "objective", "constraint", "no-param"],
)
def test_bad_search_options_one_line_exit_2_nothing_written(tmp_path, args, message):
    r = run_cli("search", QUICK, *args, "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
