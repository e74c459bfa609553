"""docs/reproductions.md quotes the seed reproductions' sweeps; its figures must be the results file's."""

from __future__ import annotations

import json

import pytest
from scipy import stats

from conftest import REPO, load_benchmark


def test_every_generated_block_is_the_one_rendered_from_sweeps_json() -> None:
    gen = load_benchmark("reproduce_seeds_sweeps")
    results = json.loads(gen.RESULTS.read_text())
    doc = gen.MD.read_text()
    assert set(results) == set(gen.EXPERIMENTS), "an experiment is missing from docs/reproductions/sweeps.json"
    for name, exp in results.items():
        block = gen.block_pattern(name).search(doc)
        assert block, f"docs/reproductions.md lost its {name} block"
        assert block.group(0) == gen.render_block(name, exp), (
            f"{name}: the doc differs from sweeps.json; rerun {gen.GENERATOR} --from-json"
        )
        assert (REPO / "docs" / "reproductions" / f"{name}.png").is_file()
        assert not exp["quick"] and len(exp["seeds"]) >= 5, f"{name}: the doc must come from >= 5 full-length seeds"


def _run(seed: int, final: float) -> dict:
    return {
        "seed": seed,
        "devices": 10,
        "run_dir": f"runs/x/{seed}",
        "rounds": [1, 2, 3],
        "mean_accuracy": [0.5, 0.7, final],
        "acc_min": [None] * 3,
        "acc_max": [None] * 3,
        "acc_std": [None] * 3,
        "mb_sent_per_device": 1.0,
        "energy_j_median": 2.0,
        "wall_s": 3.0,
    }


def test_arm_statistics_and_the_paired_test_equal_scipy_on_fixed_numbers() -> None:
    gen = load_benchmark("reproduce_seeds_sweeps")
    a_final, b_final = [0.80, 0.82, 0.81], [0.83, 0.84, 0.82]
    arms = {
        "A": gen.arm_summary("zwe3-comparison", [_run(s, f) for s, f in enumerate(a_final)]),
        "B": gen.arm_summary("zwe3-comparison", [_run(s, f) for s, f in enumerate(b_final)]),
    }
    final = arms["A"]["metrics"]["final_acc"]
    low, high = stats.t.interval(0.95, 2, loc=81.0, scale=stats.sem([80.0, 82.0, 81.0]))
    assert final["mean"] == pytest.approx(81.0) and (final["t_low"], final["t_high"]) == pytest.approx((low, high))
    assert arms["A"]["metrics"]["first_80"]["values"] == [3.0, 3.0, 3.0]
    assert arms["A"]["curve"]["mean"] == pytest.approx([50.0, 70.0, 81.0])
    (test,) = gen.paired_against_first(arms)
    expected = stats.ttest_rel([83.0, 84.0, 82.0], [80.0, 82.0, 81.0])
    assert (
        test["b"] == "B" and test["mean_diff"] == pytest.approx(2.0) and test["t_p"] == pytest.approx(expected.pvalue)
    )
    assert gen.cell(final, 1) == f"81.0 [{low:.1f}, {high:.1f}]"
