"""`tinytwin compare --group`: per-group 95 % CIs and paired tests over real run folders."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from scipy import stats

import tinytwin
from conftest import REPO, run_cli

QUICKSTART = REPO / "examples" / "quickstart.yaml"


def test_groups_of_runs_get_cis_and_paired_tests(tmp_path: Path) -> None:
    finals: dict[float, list[float]] = {}
    for lr in (0.05, 0.2):
        for seed in (1, 2, 3):
            over = {"rounds": 2, "fleet.groups.0.count": 4, "algorithm.lr": lr, "seed": seed}
            result = tinytwin.Experiment.from_yaml(QUICKSTART, overrides=over).run(out=tmp_path / f"lr{lr}")
            finals.setdefault(lr, []).append(result.final_accuracy)
    out = tmp_path / "cmp"
    r = run_cli(
        "compare",
        "--group",
        f"slow={tmp_path / 'lr0.05'}/*",
        "--group",
        f"fast={tmp_path / 'lr0.2'}/*",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert (out / "compare.html").is_file() and (out / "group_curves.png").stat().st_size > 0
    cells = {(c["label"], c["metric"]): c for c in csv.DictReader((out / "groups.csv").open())}
    for label, lr in (("slow", 0.05), ("fast", 0.2)):
        c = cells[(label, "final_accuracy")]
        x = finals[lr]
        lo, hi = stats.t.interval(0.95, len(x) - 1, loc=sum(x) / len(x), scale=stats.sem(x))
        assert int(c["n"]) == 3 and (float(c["t_low"]), float(c["t_high"])) == pytest.approx((lo, hi))
    (test,) = [t for t in csv.DictReader((out / "group_tests.csv").open()) if t["metric"] == "final_accuracy"]
    assert test["test"] == "paired" and (test["a"], test["b"]) == ("slow", "fast")  # same seeds 1, 2, 3
    assert float(test["t_p"]) == pytest.approx(stats.ttest_rel(finals[0.2], finals[0.05]).pvalue)

    bad = run_cli("compare", "--group", f"x={tmp_path}/nothing-*", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "matches no folder" in bad.stderr
    assert not (tmp_path / "bad").exists()
