"""A round's per-device rows, built as columns, agree with the round's own totals and with the
cost model's verdict for each device (every status: ok, dropped, straggler, link_down, idle)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from dfl_util import spec_dict
from tinytwin.engines.runner import start_run
from tinytwin.spec.load import validate_spec
from tinytwin.store.db import DeviceColumns, RunStore


def _mixed_run(tmp_path):
    raw = spec_dict(
        rounds=8,
        fleet={
            "groups": [
                {"profile": "esp32-s3", "count": 12, "link": "wifi"},
                {"profile": "nrf52840", "count": 6, "link": "ble"},
                {"profile": "rp2040", "count": 4, "link": "uart"},
            ]
        },
        algorithm={"clients_per_round": 0.6, "local_epochs": 2, "batch_size": 8, "lr": 0.1, "deadline_s": 10.0},
        failures={
            "dropout": 0.15,
            "leave": [{"device": 0, "round": 3}],
            "link_down": [{"devices": [3], "round": 2, "rounds": 3}, {"devices": [14, 15], "round": 4, "after_s": 0.5}],
        },
        evaluation={"per_device": True},
    )
    out = start_run(validate_spec(raw), json.dumps(raw), tmp_path, None, report=False)
    store = RunStore(out.run_dir / "results.db")
    run_id = store.run_info().run_id
    tables = store.rounds(run_id), store.device_rounds(run_id)
    store.close()
    return tables


def test_device_rows_add_up_to_their_round_and_follow_each_status(tmp_path) -> None:
    rounds, devices = _mixed_run(tmp_path)
    seen = Counter(r["status"] for r in devices)
    assert {"ok", "dropped", "straggler", "link_down", "idle"} <= set(seen), seen
    for rnd in rounds:
        rows = [d for d in devices if d["round"] == rnd["round"]]
        status = Counter(d["status"] for d in rows)
        assert status["ok"] == rnd["completed"] and status["dropped"] == rnd["dropped"]
        assert status["straggler"] == rnd["stragglers"]
        assert rnd["selected"] == len(rows) - status["idle"] - sum(
            1 for d in rows if d["status"] == "link_down" and d["bytes_down"] == 0 and d["compute_s"] == 0
        )
        assert sum(d["bytes_up"] for d in rows) == rnd["bytes_up"]
        assert sum(d["bytes_down"] for d in rows) == rnd["bytes_down"]
        assert sum(d["energy_j"] for d in rows) == pytest.approx(rnd["energy_j"])
        assert 0 not in {d["device"] for d in rows} or rnd["round"] < 3  # device 0 left at round 3
        for d in rows:
            assert d["accuracy"] is not None  # evaluation.per_device: every online device
            if d["status"] == "idle":
                assert (d["bytes_up"], d["bytes_down"], d["compute_s"], d["train_loss"]) == (0, 0, 0.0, None)
                assert d["energy_j"] > 0  # idle power
            if d["status"] == "ok":
                assert d["train_loss"] is not None and d["bytes_up"] > 0 and d["compute_s"] > 0


def test_columns_are_written_as_the_rows_they_hold(tmp_path) -> None:
    from tinytwin.store.db import DEVICE_ROUND_COLUMNS, ROUND_COLUMNS

    store = RunStore(tmp_path / "r.db")
    store.create_run("x", "t", "simulate", 0, "{}", 1, "test")
    values = {c: [1, 2] for c in DEVICE_ROUND_COLUMNS}
    values.update(device=[4, 7], status=["ok", "idle"], train_loss=[0.5, None], accuracy=[None, 0.25])
    store.write_round("x", dict.fromkeys(ROUND_COLUMNS, 1), DeviceColumns(values), [], None)
    rows = store.device_rounds("x")
    store.close()
    assert [(r["device"], r["status"], r["train_loss"], r["accuracy"]) for r in rows] == [
        (4, "ok", 0.5, None),
        (7, "idle", None, 0.25),
    ]
    with pytest.raises(ValueError, match="zip"):
        list(DeviceColumns({**values, "status": ["ok"]}).records("x"))  # a short column is refused
