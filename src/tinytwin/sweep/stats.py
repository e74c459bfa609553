"""Statistics for sweeps: confidence intervals per grid cell and paired tests between arms.

Why both a t and a bootstrap interval: with the handful of seeds a sweep can afford, the
t interval assumes near-normal replicates, and the percentile bootstrap assumes nothing
but is coarse; reporting both shows when they disagree. The bootstrap draws from a fixed
generator (``BOOTSTRAP_SEED``), so a report is the same every time it is rendered.

Why paired tests: arms of a sweep share seeds (replicate r of every cell runs with the
same seed, hence the same partition and initial model), so the difference per seed
removes the seed-to-seed variation. Wilcoxon signed-rank (no normality assumption) and
the paired t test are both given, each with an effect size (rank-biserial correlation;
Cohen's d_z = mean difference / SD of the differences).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

#: One metric's values over replicates; None or NaN marks a run without a value.
Values = Sequence[float | None] | np.ndarray

BOOTSTRAP_SEED = 12345
BOOTSTRAP_RESAMPLES = 9999


@dataclass(frozen=True)
class CellStats:
    """Mean of one metric over a cell's replicates, with a t and a percentile-bootstrap interval."""

    n: int
    mean: float
    std: float
    t_low: float
    t_high: float
    boot_low: float
    boot_high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """Arm B minus arm A over the seeds both ran (pairs where either value is missing are dropped)."""

    n: int
    mean_diff: float
    wilcoxon_stat: float
    wilcoxon_p: float
    rank_biserial: float
    t_stat: float
    t_p: float
    cohens_dz: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _clean(values: Values) -> np.ndarray:
    return np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)


def t_interval(values: Values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean ± t(n-1) · s/√n; a single value (or no spread) gives a zero-width interval at the mean."""
    x = _clean(values)
    if len(x) == 0:
        return (math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2 or float(x.std(ddof=1)) == 0.0:
        return (mean, mean)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return (mean - half, mean + half)


def bootstrap_interval(values: Values, confidence: float = 0.95, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (scipy), with a fixed random generator."""
    x = _clean(values)
    if len(x) == 0:
        return (math.nan, math.nan)
    if len(x) < 2 or float(x.std()) == 0.0:
        return (float(x.mean()), float(x.mean()))
    res = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def cell_stats(values: Values, confidence: float = 0.95) -> CellStats:
    """Mean, SD and both intervals of one metric over a cell's replicates (missing values skipped)."""
    x = _clean(values)
    t_low, t_high = t_interval(x, confidence)
    b_low, b_high = bootstrap_interval(x, confidence)
    return CellStats(
        n=len(x),
        mean=float(x.mean()) if len(x) else math.nan,
        std=float(x.std(ddof=1)) if len(x) > 1 else 0.0 if len(x) else math.nan,
        t_low=t_low,
        t_high=t_high,
        boot_low=b_low,
        boot_high=b_high,
    )


def paired_test(a: Values, b: Values) -> PairedTest:
    """Wilcoxon signed-rank and paired t test of ``b - a``, seed by seed, with effect sizes."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length (one value per shared seed)")
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))]
    xa = np.array([p[0] for p in pairs], dtype=float)
    xb = np.array([p[1] for p in pairs], dtype=float)
    d = xb - xa
    n = len(d)
    nan = math.nan
    if n == 0:
        return PairedTest(0, nan, nan, nan, nan, nan, nan, nan)
    mean_diff = float(d.mean())
    nonzero = d[d != 0]
    if len(nonzero) == 0:  # identical arms: no evidence of a difference
        w_stat, w_p, rbc = 0.0, 1.0, 0.0
    else:
        w = stats.wilcoxon(xb, xa)
        w_stat, w_p = float(w.statistic), float(w.pvalue)
        ranks = stats.rankdata(np.abs(nonzero))
        r_plus, r_minus = float(ranks[nonzero > 0].sum()), float(ranks[nonzero < 0].sum())
        rbc = (r_plus - r_minus) / (r_plus + r_minus)
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    if n < 2:
        t_stat, t_p, dz = nan, nan, nan
    elif sd == 0.0:  # constant differences: scipy's limit (|t| = inf, p = 0), or no difference at all (p = 1)
        t_stat = math.copysign(math.inf, mean_diff) if mean_diff else nan
        t_p, dz = (0.0, math.copysign(math.inf, mean_diff)) if mean_diff else (1.0, 0.0)
    else:
        t = stats.ttest_rel(xb, xa)
        t_stat, t_p, dz = float(t.statistic), float(t.pvalue), mean_diff / sd
    return PairedTest(n, mean_diff, w_stat, w_p, rbc, t_stat, t_p, dz)


def time_to_target(rounds: Sequence[Mapping[str, Any]], target: float) -> tuple[int | None, float | None]:
    """The first round whose test accuracy reaches ``target``, and its simulated time; (None, None) if never."""
    for row in rounds:
        acc = row.get("test_accuracy")
        if acc is not None and acc >= target:
            return int(row["round"]), float(row["sim_time_s"]) if row.get("sim_time_s") is not None else None
    return None, None
