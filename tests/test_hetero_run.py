"""`tinytwin run` with groups of different model rates: each device trains, sends and pays for
its own sub-model, the global model learns, and `plan` shows the rates `auto` considered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_cli, write_spec
from tinytwin.algorithms.nested import submodel_index
from tinytwin.engines.experiment import prepare
from tinytwin.engines.runner import start_run
from tinytwin.fleet.memory import message_bytes
from tinytwin.models.zoo import make_model
from tinytwin.spec.load import validate_spec
from tinytwin.store.db import RunStore

SPEC = """
name: hetero
seed: 3
rounds: 6
dataset: {name: digits}
partition: {method: dirichlet, alpha: 1.0}
model: {name: mlp, hidden: [32, 16]}
fleet:
  groups:
    - {name: small, profile: nrf52840, count: 4, link: ble, model_rate: 0.25}
    - {name: mid, profile: esp32-s3, count: 4, link: wifi, model_rate: 0.5}
    - {name: big, profile: raspberry-pi-4, count: 4, link: wifi, model_rate: 1.0}
algorithm: {name: fedavg, aggregator: {name: nested}, local_epochs: 2, batch_size: 8, lr: 0.1}
evaluation: {every: 1, per_device: true}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hetero")
    spec = validate_spec(yaml.safe_load(SPEC))
    out = start_run(spec, SPEC, tmp / "runs", None)
    store = RunStore(out.run_dir / "results.db")
    run_id = store.run_info().run_id
    return spec, out, store, run_id


def test_each_device_sends_its_own_sub_model(run):
    spec, out, store, run_id = run
    widths = {"small": (8, 4), "mid": (16, 8), "big": (32, 16)}
    group_of = {d["device"]: d["group"] for d in store.devices(run_id)}
    ok_rows = [r for r in store.device_rounds(run_id) if r["status"] == "ok"]
    assert {group_of[r["device"]] for r in ok_rows} == set(widths)
    for row in ok_rows:
        model = make_model("mlp", (1, 8, 8), 10, hidden=widths[group_of[row["device"]]])
        payload = message_bytes(model.num_params, "float32", model.tensor_sizes)
        assert payload < row["bytes_up"] < payload * 1.35  # the payload plus headers (BLE: 27 B of 251) and losses


def test_the_global_model_learns_and_each_size_is_reported(run):
    spec, out, store, run_id = run
    rounds = store.rounds(run_id)
    assert rounds[-1]["test_accuracy"] > rounds[0]["test_accuracy"] + 0.1
    sizes = {z["rate"]: z for z in out.summary["model_sizes"]}
    assert sorted(sizes) == [0.25, 0.5, 1.0]
    assert sizes[1.0]["test_accuracy"] == pytest.approx(rounds[-1]["test_accuracy"])
    assert sizes[0.25]["params"] < sizes[0.5]["params"] < sizes[1.0]["params"]
    assert sizes[0.25]["bytes_up"] < sizes[0.5]["bytes_up"] < sizes[1.0]["bytes_up"]
    assert all(0.0 < z["test_accuracy"] <= 1.0 for z in sizes.values())
    per_device = [r["accuracy"] for r in store.device_rounds(run_id) if r["round"] == spec.rounds]
    assert len(per_device) == 12 and all(a is not None for a in per_device)


def test_every_part_of_the_global_model_trains(run):
    """The 0.5 sub-model's parameters are trained by two sizes, the rest only by the rate-1
    devices; both parts move (digits' always-blank border pixels keep some input weights still)."""
    spec, out, store, run_id = run
    exp = prepare(spec)
    final = store.checkpoint(run_id)[1]["global_params"]
    start = exp.initial_params()
    moved = (final != start).numpy()
    half = np.zeros(moved.size, dtype=bool)
    half[submodel_index(64, [32, 16], 10, 0.5)] = True
    assert moved[half].mean() > 0.8 and moved[~half].mean() > 0.8


def test_plan_prints_the_rates_auto_considered(tmp_path: Path):
    text = SPEC.replace("model_rate: 0.25", "model_rate: auto").replace("hidden: [32, 16]", "hidden: [256, 128]")
    proc = run_cli("plan", str(write_spec(tmp_path / "spec.yaml", text)))
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "auto: rate 1" in out and "auto: rate 0.5" in out
    exp = prepare(validate_spec(yaml.safe_load(text)), plan_only=True)
    chosen = exp.models.choices["small"].chosen
    assert chosen is not None and chosen < 1.0
    assert f"model rate │ {chosen:g}" in out or f"model rate {chosen:g}" in out.replace("│", "")
    assert np.all(exp.models.rates[:4] == chosen)


def test_report_plots_each_size(run):
    spec, out, store, run_id = run
    plot = out.run_dir / "plots" / "model_sizes.png"
    assert plot.is_file() and plot.stat().st_size > 10_000
    html = (out.run_dir / "report.html").read_text()
    assert "Per model size: test accuracy of its slice" in html
