"""Ensemble distillation (FedDF) at the server: the ensemble is the mean of the models' logits,
the student's KL to it falls epoch by epoch, and on the planted non-IID case below the
distilled global model beats the plain average."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tinytwin.algorithms.distillation import Teacher, distill, ensemble_logits
from tinytwin.engines.runner import start_run
from tinytwin.models.params import ParamLayout
from tinytwin.models.zoo import make_model
from tinytwin.spec.load import validate_spec
from tinytwin.store.db import RunStore


def _mlp(hidden: list[int], seed: int):
    model = make_model("mlp", (1, 4, 4), 3, hidden=hidden)
    module = model.build(seed)
    layout = ParamLayout.of(module)
    return module, layout, layout.flatten(module)


def test_ensemble_is_the_mean_of_every_models_logits_across_widths():
    x = torch.rand(7, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    wide, wide_layout, w = _mlp([8], 1)
    narrow, narrow_layout, n = _mlp([3], 2)
    rows_w = torch.stack([w, w * 0.5])
    got = ensemble_logits([Teacher(wide, wide_layout, rows_w), Teacher(narrow, narrow_layout, n[None])], x)
    with torch.no_grad():
        by_hand = []
        for module, layout, flat in ((wide, wide_layout, w), (wide, wide_layout, w * 0.5), (narrow, narrow_layout, n)):
            by_hand.append(torch.func.functional_call(module, layout.unflatten(flat), (x,)))
    assert torch.allclose(got, sum(by_hand) / 3, atol=1e-6)


def test_students_kl_to_the_ensemble_falls_over_the_epochs():
    x = torch.rand(200, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    teacher, t_layout, t = _mlp([16], 3)
    student, s_layout, s = _mlp([16], 4)
    ensemble = ensemble_logits([Teacher(teacher, t_layout, (t * 3)[None])], x)
    out = distill(student, s_layout, s, x, ensemble, epochs=5, batch_size=20, lr=0.5, temperature=2.0, seed=0, round_=1)
    assert len(out.kl) == 6
    assert all(b < a for a, b in zip(out.kl, out.kl[1:])), out.kl
    assert out.kl[-1] < 0.5 * out.kl[0]


PLANTED = """
name: planted
seed: 0
rounds: 8
dataset: {name: digits}
partition: {method: shards, shards_per_device: 2}
model: {name: mlp, hidden: [32]}
fleet:
  groups:
    - {profile: raspberry-pi-4, count: 10, link: ethernet}
algorithm:
  name: fedavg
  aggregator: {name: nested}
  local_epochs: 3
  batch_size: 8
  lr: 0.1
"""
DISTILL = "  distillation: {proxy: {source: holdout, samples: 300}, epochs: 2, lr: 0.02}\n"


@pytest.mark.parametrize("case", ["average", "distilled"])
def test_planted_non_iid_case(tmp_path: Path, case: str):
    """Measured (seed 0, two label shards per device): plain nested average 68.0 %, distilled
    78.8 %. Over seeds 1 and 2 the two are close (79.1 / 79.8 and 87.9 / 77.4 %): FedDF is not
    always better; this case is where it is, and the test pins the figures."""
    text = PLANTED + (DISTILL if case == "distilled" else "")
    out = start_run(validate_spec(yaml.safe_load(text)), text, tmp_path, None, report=False)
    acc = out.summary["final_accuracy"]
    assert acc == pytest.approx({"average": 0.680, "distilled": 0.788}[case], abs=0.02)
    if case == "distilled":
        store = RunStore(out.run_dir / "results.db")
        events = [e for e in store.events(store.run_info().run_id) if e["kind"] == "distillation"]
        assert [e["round"] for e in events] == list(range(1, 9))
        first, last = out.summary["distillation"]["kl_first_round"]
        assert last < first
        assert out.summary["distillation"]["server_s"] > 0 and out.summary["distillation"]["server_energy_j"] > 0


def test_the_server_distils_a_shallower_members_classifier_too(tmp_path: Path):
    """With a depth-1 group, the distilled update moves the depth-1 head away from its plain
    nested average (its prototype is distilled on the distilled shared layer); without the
    head step those positions would equal the average."""
    import numpy as np
    import torch

    from conftest import write_spec
    from tinytwin.algorithms.nested import RateGroup
    from tinytwin.engines.distill_round import ServerDistiller
    from tinytwin.engines.experiment import prepare
    from tinytwin.spec.load import load_spec

    text = """
name: heads
seed: 1
rounds: 1
dataset: {name: digits}
model: {name: mlp, hidden: [12, 8]}
fleet:
  groups:
    - {name: deep, profile: esp32-s3, count: 2, link: wifi}
    - {name: shallow, profile: esp32-s3, count: 2, link: wifi, model_depth: 1}
algorithm: {name: fedavg, aggregator: {name: nested}, distillation: {proxy: {source: holdout, samples: 100}, epochs: 2, lr: 0.1}}
"""
    exp = prepare(load_spec(write_spec(tmp_path / "s.yaml", text), [])[0], tmp_path)
    g = exp.initial_params()
    gen = torch.Generator().manual_seed(0)
    groups, keys = [], []
    for key, sub in exp.models.sizes.items():
        rows = 0.05 * torch.randn(2, sub.index.size, generator=gen)
        groups.append(RateGroup(sub.index, rows, torch.ones(2)))
        keys.append(key)
    from tinytwin.algorithms.nested import nested_average

    delta = nested_average(torch.zeros_like(g), groups)
    distilled, info = ServerDistiller(exp).apply(g, delta, groups, keys, 1)
    (head,) = exp.models.heads
    at = slice(head.offset, head.offset + head.size)
    assert head.offset == exp.model.num_params and g.numel() == head.offset + head.size
    assert not torch.allclose(distilled[at], delta[at])
    assert np.isfinite(distilled.numpy()).all() and info.server_s > 0
