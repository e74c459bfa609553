"""Twins agree on a fleet of several model sizes (issue #11): a nested-averaging FedAvg run gives
the same global model in the simulator, in the emulation (numpy device processes, each
sent its own sub-model) and with firmware boards in QEMU training their sub-models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from conftest import write_spec
from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.engines.runner import start_run
from tinytwin.spec.load import load_spec
from tinytwin.store.db import RunStore

SPEC = """
name: hetero-twins
seed: 5
rounds: 3
dataset: {name: digits}
partition: {method: dirichlet, alpha: 1.0}
model: {name: mlp, hidden: [24, 12]}
fleet:
  groups:
    - {name: small, profile: nrf52840, count: 2, link: ethernet, link_overrides: {loss: 0, header_bytes: 0}, model_rate: 0.25, twin: TWIN}
    - {name: mid, profile: esp32-s3, count: 2, link: ethernet, link_overrides: {loss: 0, header_bytes: 0}, model_rate: 0.5}
    - {name: big, profile: raspberry-pi-4, count: 2, link: ethernet, link_overrides: {loss: 0, header_bytes: 0}}
algorithm:
  name: fedavg
  aggregator: {name: nested}
  local_epochs: 1
  batch_size: 8
  lr: 0.1
  momentum: 0.5
"""


def _final(run_dir: Path) -> tuple[np.ndarray, dict]:
    store = RunStore(run_dir / "results.db")
    try:
        ck = store.checkpoint(store.run_info().run_id)
        summary = store.run_info().summary
    finally:
        store.close()
    assert ck is not None
    return np.asarray(ck[1]["global_params"]), summary


def _both_twins(tmp_path: Path, text: str) -> tuple[Any, dict, np.ndarray, np.ndarray]:
    """Run the spec ``text`` in the simulator and in the emulation (no pacing): the simulator's
    run, the emulation's summary, and both final server vectors (simulated, emulated)."""
    spec_file = write_spec(tmp_path / "spec.yaml", text)
    sim = start_run(*load_spec(spec_file, []), tmp_path / "sim", tmp_path, report=False)
    spec, spec_yaml = load_spec(spec_file, [])
    run_dir, summary = start_emulation(
        spec, spec_yaml, tmp_path / "emu", tmp_path, EmulateOptions(time_scale=0.0), report=False
    )
    return sim, summary, _final(sim.run_dir)[0], _final(run_dir)[0]


DISTILL = "  distillation: {proxy: {source: holdout, samples: 200}, epochs: 2, lr: 0.1}\n"


SCALER = "  aggregator: {name: nested, scaler: true}\n"


@pytest.mark.parametrize("twin", ["process", "firmware", "process+distillation", "process+scaler"])
def test_emulated_sizes_give_the_simulators_global_model(tmp_path: Path, twin: str) -> None:
    text = SPEC.replace("TWIN", twin.split("+")[0]) + (DISTILL if twin.endswith("distillation") else "")
    if twin.endswith("scaler"):  # the numpy devices train through the scaler's layers, as the simulator
        text = text.replace("  aggregator: {name: nested}\n", SCALER)
    sim, summary, simulated, emulated = _both_twins(tmp_path, text)
    assert emulated.shape == simulated.shape == (64 * 24 + 24 + 24 * 12 + 12 + 12 * 10 + 10,)
    assert np.abs(emulated - simulated).max() <= 1e-6
    sizes = {z["rate"]: z for z in summary["model_sizes"]}
    sim_sizes = {z["rate"]: z for z in sim.summary["model_sizes"]}
    assert sorted(sizes) == [0.25, 0.5, 1.0]
    for rate, z in sizes.items():
        assert z["bytes_up"] == sim_sizes[rate]["bytes_up"]  # each device sent its own sub-model
        assert z["test_accuracy"] == pytest.approx(sim_sizes[rate]["test_accuracy"], abs=1e-6)
    if twin == "firmware":
        assert summary["emulate"]["firmware"]["devices"] == 2
    if twin.endswith("distillation"):
        assert summary["distillation"]["rounds"] == sim.summary["distillation"]["rounds"] == 3
        assert summary["distillation"]["kl_last_round"] == pytest.approx(sim.summary["distillation"]["kl_last_round"])
        assert summary["sim_time_s"] == pytest.approx(sim.summary["sim_time_s"])
    spec_yaml = load_spec(tmp_path / "spec.yaml", [])[1]
    assert yaml.safe_load(spec_yaml)["fleet"]["groups"][0]["model_rate"] == 0.25


CNN_SPEC = """
name: hetero-cnn-twins
seed: 3
rounds: 2
dataset: {name: digits}
model: {name: lenet5, channels: [6, 8], fc: [16, 12]}
fleet:
  groups:
    - {name: quarter, profile: esp32-s3, count: 2, link: ethernet, link_overrides: {loss: 0, header_bytes: 0}, model_rate: 0.25}
    - {name: half, profile: esp32-s3, count: 2, link: ethernet, link_overrides: {loss: 0, header_bytes: 0}, model_rate: 0.5}
    - {name: full, profile: raspberry-pi-4, count: 2, link: ethernet, link_overrides: {loss: 0, header_bytes: 0}}
algorithm: {name: fedavg, aggregator: {name: nested}, local_epochs: 1, batch_size: 16, lr: 0.1, momentum: 0.5}
"""


def test_cnn_channel_rates_agree_in_simulator_and_emulation(tmp_path: Path) -> None:
    """LeNet-5 members of rate 0.25 / 0.5 / 1 (channels and fully connected widths scaled):
    the numpy device processes train each its own CNN, and the global model equals the
    simulator's; each size is its own parameter count."""
    sim, summary, simulated, emulated = _both_twins(tmp_path, CNN_SPEC)
    assert np.abs(emulated - simulated).max() <= 1e-5
    sizes = {z["rate"]: z for z in summary["model_sizes"]}
    assert [sizes[r]["channels"] for r in (0.25, 0.5, 1.0)] == [[2, 2], [3, 4], [6, 8]]
    assert sizes[0.25]["params"] < sizes[0.5]["params"] < sizes[1.0]["params"]
    for rate, z in sizes.items():
        assert z["bytes_up"] == {s["rate"]: s for s in sim.summary["model_sizes"]}[rate]["bytes_up"]


DEPTH_SPEC = """
name: hetero-depth-twins
seed: 2
rounds: 3
dataset: {name: digits}
model: {name: mlp, hidden: [20, 12]}
fleet:
  groups:
    - {name: deep, profile: raspberry-pi-4, count: 2, link: ethernet, link_overrides: {loss: 0, header_bytes: 0}}
    - {name: shallow, profile: nrf52840, count: 2, link: ethernet, link_overrides: {loss: 0, header_bytes: 0}, model_depth: 1, twin: firmware}
    - {name: shallow-half, profile: esp32-s3, count: 2, link: ethernet, link_overrides: {loss: 0, header_bytes: 0}, model_depth: 1, model_rate: 0.5}
algorithm: {name: fedavg, aggregator: {name: nested}, local_epochs: 1, batch_size: 8, lr: 0.1, momentum: 0.5}
"""


@pytest.mark.parametrize("distil", [False, True])
def test_depth_variants_agree_in_simulator_emulation_and_firmware(tmp_path: Path, distil: bool) -> None:
    """One-hidden-layer members (a firmware board among them) beside the two-layer model: the
    server's vector (global model, then the depth-1 head) is the same in both twins, and the
    shallow members report their own accuracy and bytes. With distillation the server also
    distils the depth-1 prototype's classifier (on the distilled shared layer)."""
    text = DEPTH_SPEC.replace(
        "aggregator: {name: nested},",
        "aggregator: {name: nested}, distillation: {proxy: {source: holdout, samples: 200}, epochs: 2, lr: 0.1},",
    )
    sim, summary, simulated, emulated = _both_twins(tmp_path, text if distil else DEPTH_SPEC)
    global_size = 64 * 20 + 20 + 20 * 12 + 12 + 12 * 10 + 10
    assert emulated.shape == simulated.shape == (global_size + 10 * 20 + 10,)
    assert np.abs(emulated - simulated).max() <= 1e-6
    sizes = {z["size"]: z for z in summary["model_sizes"]}
    assert sorted(sizes) == ["0.5 depth 1", "1", "1 depth 1"]
    assert sizes["1 depth 1"]["hidden"] == [20] and sizes["0.5 depth 1"]["hidden"] == [10]
    sim_sizes = {z["size"]: z for z in sim.summary["model_sizes"]}
    for key, z in sizes.items():
        assert z["bytes_up"] == sim_sizes[key]["bytes_up"]
        assert z["test_accuracy"] == pytest.approx(sim_sizes[key]["test_accuracy"], abs=1e-6)
    assert summary["emulate"]["firmware"]["devices"] == 2
    if distil:  # the head moved beyond its plain average: compare with the run without distillation
        plain = start_run(
            *load_spec(write_spec(tmp_path / "p.yaml", DEPTH_SPEC), []), tmp_path / "p", tmp_path, report=False
        )
        head = slice(global_size, None)
        assert not np.allclose(simulated[head], _final(plain.run_dir)[0][head])
