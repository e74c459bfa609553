"""The forecasting task (issue #13): metrics equal hand calculations, windows and split are chronological."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from tinytwin.errors import SpecError
from tinytwin.graph.forecasting import (
    forecast_metrics,
    load_forecast,
    make_windows,
    metrics_per_horizon,
    persistence_forecast,
    split_bounds,
)

DATA = os.environ.get("TINYTWIN_SHARED_DATA", "/work/shared/data")
HAS_DATA = os.path.isfile(os.path.join(DATA, "metr-la-week.npz"))


def test_metrics_equal_hand_calculation() -> None:
    y = np.array([[10.0, 20.0], [30.0, 40.0]])
    p = np.array([[12.0, 18.0], [30.0, 44.0]])
    # errors 2, -2, 0, 4: MAE = 8/4, RMSE = sqrt((4+4+0+16)/4), WMAPE = 8/100
    m = forecast_metrics(y, p)
    assert m["mae"] == pytest.approx(2.0)
    assert m["rmse"] == pytest.approx(math.sqrt(6.0))
    assert m["wmape"] == pytest.approx(8.0)


def test_metrics_per_horizon_names_minutes() -> None:
    y = np.ones((4, 3, 2)) * 50.0
    p = y.copy()
    p[:, 2] += 5.0  # only the 60-min horizon is off, by 5 mph everywhere
    m = metrics_per_horizon(y, p, (3, 6, 12))
    assert m["15min"]["mae"] == 0.0 and m["30min"]["rmse"] == 0.0
    assert m["60min"] == pytest.approx({"mae": 5.0, "rmse": 5.0, "wmape": 10.0})


def test_windows_target_h_steps_after_last_input() -> None:
    series = np.arange(40, dtype=float).reshape(20, 2)  # value = 2 * step + node
    w = make_windows(series, series, history=4, horizons=(1, 3))
    assert w.x.shape == (14, 4, 2) and w.y.shape == (14, 2, 2)
    assert w.x[0, -1, 0] == 6.0  # step 3
    assert w.y[0, 0, 0] == 8.0 and w.y[0, 1, 0] == 12.0  # steps 4 and 6
    assert split_bounds(2016) == (1411, 1713)


def test_unknown_dataset_is_one_clear_error() -> None:
    with pytest.raises(SpecError, match="pems-bay-graph"):
        load_forecast("pems-bay-graph", DATA)


@pytest.mark.skipif(not HAS_DATA, reason="shared METR-LA week not present")
def test_metr_la_split_and_scaler_use_train_only() -> None:
    d = load_forecast("metr-la-week", DATA)
    assert d.train.x.shape == (1411 - 23, 12, 207) and d.test.y.shape[1:] == (3, 207)
    # the scaler is fitted on the training part: its windows are z-scores of mean ~0
    assert abs(float(d.train.x.mean())) < 0.05
    base = metrics_per_horizon(d.test.y, persistence_forecast(d, d.test), d.horizons)
    assert 0 < base["15min"]["mae"] < base["60min"]["mae"]
