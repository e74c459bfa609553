"""Update norm bounds (algorithm.aggregator.norm_bound): hand computations, a poisoned round, both twins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO
from tinytwin.algorithms.aggregators import aggregate
from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.errors import SpecError
from tinytwin.spec.load import validate_spec
from tinytwin.store.db import RunStore

ROWS = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [1e30, 1e30]])  # norms 5, 1, 10, 1.4e30
W = torch.tensor([1.0, 1.0, 1.0, 1.0])


def test_clip_to_a_multiple_of_the_median_norm_equals_a_hand_computation():
    got = aggregate("fedavg", ROWS, W, norm_bound={"mode": "clip", "multiple": 1.0})
    # median of (1, 5, 10, 1.4e30) = 5 (torch's lower median): rows 3 and 4 are scaled onto norm 5
    expected = (
        torch.tensor([3.0, 4.0]) + torch.tensor([0.0, 1.0]) + torch.tensor([3.0, 4.0]) + torch.tensor([5 / 2**0.5] * 2)
    ) / 4
    assert torch.allclose(got, expected, rtol=1e-6)


def test_reject_above_an_absolute_bound_drops_the_rows_and_their_weights():
    got = aggregate("fedavg", ROWS, torch.tensor([1.0, 3.0, 1.0, 1.0]), norm_bound={"mode": "reject", "max_norm": 6.0})
    assert torch.allclose(got, (torch.tensor([3.0, 4.0]) + 3 * torch.tensor([0.0, 1.0])) / 4)
    with pytest.raises(ValueError, match="rejected every update"):
        aggregate("fedavg", ROWS[2:], W[2:], norm_bound={"mode": "reject", "max_norm": 1.0})


def test_a_nan_row_counts_for_nothing_under_clip():
    rows = torch.tensor([[1.0, 0.0], [float("nan"), 0.0]])
    got = aggregate("fedavg", rows, torch.ones(2), norm_bound={"mode": "clip", "max_norm": 10.0})
    assert torch.equal(got, torch.tensor([0.5, 0.0]))


def test_one_1e30_update_under_fedavg_is_harmless_with_a_norm_bound():
    rng = np.random.default_rng(0)
    honest = torch.from_numpy(rng.normal(0, 0.01, size=(9, 50)).astype(np.float32))
    poisoned = torch.cat([honest, torch.full((1, 50), 1e30)])
    clean = aggregate("fedavg", honest, torch.ones(9))
    bounded = aggregate("fedavg", poisoned, torch.ones(10), norm_bound={"mode": "reject", "multiple": 3.0})
    assert torch.allclose(bounded, clean)
    assert aggregate("fedavg", poisoned, torch.ones(10)).abs().min() > 1e28  # without: destroyed


@pytest.mark.parametrize(
    ("bound", "message"),
    [
        ({"mode": "clip"}, "exactly one of"),
        ({"multiple": 2.0, "max_norm": 1.0}, "exactly one of"),
        ({"multiple": -1}, "multiple"),
    ],
)
def test_bad_norm_bounds_are_refused(bound, message):
    raw = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    raw["algorithm"]["aggregator"] = {"norm_bound": bound}
    with pytest.raises(SpecError, match=message):
        validate_spec(raw)


def test_simulator_and_emulation_bound_the_same_way(tmp_path):
    from dfl_util import run_engine

    raw = {
        "name": "norm-bound",
        "seed": 4,
        "rounds": 2,
        "dataset": {"name": "digits"},
        "partition": {"method": "dirichlet", "alpha": 0.3},
        "model": {"name": "mlp", "hidden": [16]},
        "fleet": {"groups": [{"profile": "esp32-s3", "count": 6, "link": "wifi", "link_overrides": {"loss": 0.0}}]},
        "algorithm": {"local_epochs": 1, "batch_size": 8, "lr": 0.2, "aggregator": {"norm_bound": {"multiple": 0.8}}},
    }
    _, st, sim_store, sim_id = run_engine(tmp_path, raw, name="sim")
    free = {**raw, "algorithm": {**raw["algorithm"], "aggregator": {}}}
    _, _, free_store, free_id = run_engine(tmp_path, free, name="free")
    run_dir, summary = start_emulation(
        validate_spec(raw), yaml.safe_dump(raw), tmp_path / "emu", None, EmulateOptions(time_scale=0.0), report=False
    )
    store = RunStore(run_dir / "results.db")
    emu_loss = [r["test_loss"] for r in store.rounds(store.run_info().run_id)]
    sim_loss = [r["test_loss"] for r in sim_store.rounds(sim_id)]
    assert emu_loss == pytest.approx(sim_loss, rel=1e-5)
    assert sim_loss != pytest.approx([r["test_loss"] for r in free_store.rounds(free_id)], rel=1e-5)  # it bounded
