"""AdaStair and AdaLoss per-device learning rates."""

from __future__ import annotations

import numpy as np

from dfl_util import run_engine, spec_dict
from tinytwin.algorithms.lr_schedules import LRSchedule, patience_thresholds, stair_points
from tinytwin.store.dfl import device_metrics


def test_adastair_lowers_the_rate_exactly_at_the_stair_rounds():
    assert stair_points(100, (0.4, 0.65, 0.75)) == [40, 65, 75]
    assert stair_points(150, (0.4, 0.65, 0.75)) == [60, 98, 113]
    s = LRSchedule("adastair", 0.1, np.array([100, 20]))
    history = []
    for r in range(1, 101):
        ids = np.array([0, 1]) if r <= 20 else np.array([0])
        changed = s.on_round_end(ids, np.full(ids.size, r), np.ones(ids.size))
        history.append((r, s.lr[0], bool(changed[0])))
    drops = [r for r, _, c in history if c]
    assert drops == [40, 65, 75]  # device 0: T = 100
    lr0 = {r: lr for r, lr, _ in history}
    assert lr0[39] == 0.1 and lr0[40] == 0.1 / 8 and lr0[64] == 0.1 / 8 and lr0[65] == 0.1 / 64
    assert lr0[75] == 0.1 / 512 and lr0[100] == 0.1 / 512
    assert np.isclose(s.lr[1], 0.1 / 512)  # device 1: T = 20 -> stairs 8, 13, 15
    floor = LRSchedule("adastair", 1e-4, np.array([10]))
    for r in range(1, 11):
        floor.on_round_end(np.array([0]), np.array([r]), np.array([1.0]))
    assert floor.lr[0] == 1e-5  # never below min_lr


def test_adaloss_halves_the_rate_after_patience_rounds_without_improvement():
    assert patience_thresholds(10, (0.3, 0.2, 0.2, 0.1)) == [3, 2, 2, 1]
    s = LRSchedule("adaloss", 0.1, np.array([10]))
    losses = [1.0, 1.1, 1.2, 1.3, 1.4, 0.1, 1.5, 1.6, 1.7, 1.8]
    lrs = []
    for r, l in enumerate(losses, start=1):
        s.on_round_end(np.array([0]), np.array([r]), np.array([l]))
        lrs.append(float(s.lr[0]))
    # counter: r2..r5 = 1, 2, 3, 4 > P[0] = 3 -> halve at r5; r6 improves (c = 0);
    # r7..r9 = 1, 2, 3 > P[1] = 2 -> halve at r9; r10 = 1
    assert lrs == [0.1] * 4 + [0.05] * 4 + [0.025] * 2
    assert s.counter[0] == 1 and s.patience_index[0] == 2


def test_both_applies_the_stairs_then_the_loss_rule():
    s = LRSchedule("both", 0.8, np.array([10]))
    for r in range(1, 11):
        s.on_round_end(np.array([0]), np.array([r]), np.array([1.0 + r]))  # loss keeps rising
    stairs_only = 0.8 / 8**3
    assert s.lr[0] < stairs_only  # AdaLoss halved on top of the stairs


def test_engine_applies_adastair_per_device_round_and_records_it(tmp_path):
    raw = spec_dict(
        rounds=10, algorithm={"name": "gossip", "batch_size": 64, "lr": 0.4, "lr_schedule": {"name": "adastair"}}
    )
    sim, st, store, run_id = run_engine(tmp_path, raw)
    by_round = {}
    for row in device_metrics(store, run_id):
        by_round.setdefault(row["round"], set()).add(row["lr"])
    # stairs of T = 10: 4, 7, 8; the recorded rate is the one after the round's update
    expected = {1: 0.4, 3: 0.4, 4: 0.05, 6: 0.05, 7: 0.4 / 64, 8: 0.4 / 512, 10: 0.4 / 512}
    for r, lr in expected.items():
        assert by_round[r] == {lr}, (r, by_round[r])
