"""Sweep statistics equal hand calculations with scipy on fixed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tinytwin.sweep.report import arm_pairs, cell_table, paired_table
from tinytwin.sweep.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    bootstrap_interval,
    cell_stats,
    paired_test,
    t_interval,
    time_to_target,
)

A = [0.81, 0.84, 0.79, 0.86, 0.80]
B = [0.83, 0.88, 0.785, 0.89, 0.84]  # B - A = 0.02, 0.04, -0.005, 0.03, 0.04


def test_t_interval_is_mean_plus_minus_t_sem() -> None:
    x = np.array(A)
    sem = x.std(ddof=1) / math.sqrt(len(x))
    half = 2.7764451051977987 * sem  # t(0.975, df=4), from tables
    assert t_interval(A) == pytest.approx((x.mean() - half, x.mean() + half), abs=1e-12)
    assert t_interval(A) == pytest.approx(stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sem), abs=1e-12)
    assert t_interval([0.5]) == (0.5, 0.5) and t_interval([0.7, 0.7]) == (0.7, 0.7)


def test_bootstrap_interval_is_scipy_percentile_bootstrap_with_a_fixed_rng() -> None:
    ref = stats.bootstrap(
        (np.array(A),),
        np.mean,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    ).confidence_interval
    assert bootstrap_interval(A) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert bootstrap_interval(A) == bootstrap_interval(A)  # fixed generator: same every time
    lo, hi = bootstrap_interval(A)
    assert min(A) <= lo < np.mean(A) < hi <= max(A)
    s = cell_stats([*A, None, math.nan])  # missing values are skipped
    assert s.n == 5 and s.mean == pytest.approx(np.mean(A)) and s.std == pytest.approx(np.std(A, ddof=1))


def test_paired_tests_equal_scipy_and_hand_effect_sizes() -> None:
    t = paired_test(A, B)
    d = np.array(B) - np.array(A)
    assert t.n == 5 and t.mean_diff == pytest.approx(d.mean())
    w = stats.wilcoxon(B, A)
    assert (t.wilcoxon_stat, t.wilcoxon_p) == pytest.approx((w.statistic, w.pvalue))
    # exact: of the 32 sign patterns, W- = 0 and W- = 1 are as extreme (2 of 32), doubled for two sides
    assert t.wilcoxon_p == pytest.approx(4 / 32)
    # |d| ranks: 0.005->1, 0.02->2, 0.03->3, 0.04->4.5, 0.04->4.5; R+ = 14, R- = 1
    assert t.rank_biserial == pytest.approx((14 - 1) / 15)
    r = stats.ttest_rel(B, A)
    assert (t.t_stat, t.t_p) == pytest.approx((r.statistic, r.pvalue))
    assert t.cohens_dz == pytest.approx(d.mean() / d.std(ddof=1))
    same = paired_test(A, A)
    assert same.wilcoxon_p == 1.0 and same.rank_biserial == 0.0 and same.t_p == 1.0
    shifted = paired_test([0.5, 0.25, 0.75], [0.75, 0.5, 1.0])  # a constant difference: scipy gives p = 0
    assert shifted.t_stat == math.inf and shifted.t_p == 0.0
    assert paired_test([0.5, None], [0.6, 0.7]).n == 1  # a missing value drops its pair


def test_time_to_target_and_arm_pairs() -> None:
    rounds = [
        {"round": 1, "sim_time_s": 0.5, "test_accuracy": 0.6},
        {"round": 2, "sim_time_s": 1.0, "test_accuracy": None},
        {"round": 3, "sim_time_s": 1.5, "test_accuracy": 0.82},
    ]
    assert time_to_target(rounds, 0.8) == (3, 1.5)
    assert time_to_target(rounds, 0.9) == (None, None)
    rows = []
    for cell, (lr, alpha) in enumerate([(0.05, 0.1), (0.05, 0.5), (0.1, 0.1), (0.1, 0.5)]):
        for rep in range(len(A)):
            acc = (A if lr == 0.05 else B)[rep]
            rows.append(
                {
                    "cell": cell,
                    "replicate": rep,
                    "seed": 42 + rep,
                    "status": "complete",
                    "label": f"lr={lr} alpha={alpha}",
                    "overrides": {"algorithm.lr": lr, "partition.alpha": alpha},
                    "final_accuracy": acc,
                    "rounds_to_target": None,
                    "time_to_target_s": None,
                    "bytes_total": 100,
                    "energy_j_total": 1.0,
                }
            )
    pairs = arm_pairs(rows)  # 2 x 2 grid: four pairs that differ in one key, not the two diagonals
    assert sorted((k, a["cell"], b["cell"]) for k, a, b in pairs) == [
        ("algorithm.lr", 0, 2),
        ("algorithm.lr", 1, 3),
        ("partition.alpha", 0, 1),
        ("partition.alpha", 2, 3),
    ]
    lr_test = next(
        p for p in paired_table(rows) if p["cell_a"] == 0 and p["cell_b"] == 2 and p["metric"] == "final_accuracy"
    )
    assert lr_test["t_p"] == pytest.approx(stats.ttest_rel(B, A).pvalue)
    acc0 = next(c for c in cell_table(rows) if c["cell"] == 0 and c["metric"] == "final_accuracy")
    assert (acc0["t_low"], acc0["t_high"]) == pytest.approx(t_interval(A))
