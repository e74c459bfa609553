"""``engine.precision``: local training in bfloat16 or float16 with float32 aggregation, an
explicit option that changes results (and says so in the summary), refused where an engine
or twin trains in float32 only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, run_cli
from cpu_reference import cases, run_case
from tinytwin.algorithms.local_update import LocalTraining
from tinytwin.engines.device import training_dtype
from tinytwin.engines.experiment import prepare
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.engines.simulate import stream_fedavg
from tinytwin.errors import SpecError
from tinytwin.spec.load import validate_spec


def _quick(rounds: int = 4) -> dict:
    return dict(cases()["quickstart"], rounds=rounds)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_a_lower_precision_learns_as_well_but_is_not_the_float32_run(precision):
    full = run_case(_quick())
    low = run_case(_quick(), precision=precision)
    assert low != full  # the option does change the computation
    assert abs(low[-1]["test_accuracy"] - full[-1]["test_accuracy"]) <= 0.03
    assert low[-1]["test_accuracy"] > 0.8 and low[-1]["train_loss"] < low[0]["train_loss"]


@pytest.mark.parametrize("model", [{"name": "mlp", "hidden": [32]}, {"name": "lenet5"}])
def test_devices_train_in_the_lower_dtype_and_hand_back_float32_models(model):
    spec = dict(cases()["quickstart"], model=model)
    spec["fleet"] = {"groups": [{"profile": "raspberry-pi-4", "count": 6, "link": "wifi"}]}
    exp = prepare(validate_spec(spec))
    x, y = torch.from_numpy(exp.dataset.x_train), torch.from_numpy(exp.dataset.y_train)
    cfg = LocalTraining(1, 8, 0.1, "sgd", 0.0, 0.0, 0.0)
    ids = np.arange(6)
    parts = [exp.parts[d] for d in ids]
    start = exp.initial_params()
    full = LocalTrainer(exp.module, exp.layout, x, y, cfg, 1).train(start, 1, ids, parts)
    trainer = LocalTrainer(exp.module, exp.layout, x, y, cfg, 1, dtype=torch.bfloat16)
    low = trainer.train(start, 1, ids, parts)
    assert trainer._x_rows.dtype == torch.bfloat16  # the batches' memory traffic is halved
    assert low.params.dtype == torch.float32 and low.params.shape == full.params.shape
    moved = (full.params - start).norm(dim=1)
    err = (low.params - full.params).norm(dim=1)
    assert bool((err > 0).all()) and bool((err < 0.25 * moved).all())  # bf16 rounding, not another model


def test_streaming_fedavg_in_bfloat16_equals_the_one_shot_bfloat16_mean():
    spec = dict(cases()["quickstart"])
    spec["fleet"] = {"groups": [{"profile": "raspberry-pi-4", "count": 12, "link": "wifi"}]}
    exp = prepare(validate_spec(spec))
    x, y = torch.from_numpy(exp.dataset.x_train), torch.from_numpy(exp.dataset.y_train)
    cfg = LocalTraining(1, 8, 0.1, "sgd", 0.0, 0.0, 0.0)
    ids = np.arange(12)
    parts = [exp.parts[d] for d in ids]
    n = np.array([len(p) for p in parts])
    start = exp.initial_params()
    whole = LocalTrainer(exp.module, exp.layout, x, y, cfg, 1, dtype=torch.bfloat16).train(start, 1, ids, parts)
    expected = ((whole.params - start) * torch.from_numpy(n / n.sum()).float()[:, None]).sum(dim=0)
    chunked = LocalTrainer(exp.module, exp.layout, x, y, cfg, 1, chunk_size=5, dtype=torch.bfloat16)
    agg, _, error = stream_fedavg(chunked, start, 1, ids, parts, n, "float32", exp.model.tensor_sizes)
    assert error is None and agg.dtype == torch.float32
    assert torch.allclose(agg, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))


def test_the_summary_names_a_lower_precision_and_float32_runs_say_nothing(tmp_path):
    from tinytwin.engines.runner import start_run

    low = start_run(
        validate_spec(dict(_quick(2), engine={"precision": "bfloat16"})), "{}", tmp_path, None, report=False
    )
    full = start_run(validate_spec(_quick(2)), "{}", tmp_path, None, report=False)
    assert low.summary["precision"].startswith("bfloat16") and "precision" not in full.summary


def test_decfedavg_trains_in_bfloat16():
    raw = {
        "name": "dfl-bf16",
        "seed": 3,
        "rounds": 3,
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [16]},
        "fleet": {"groups": [{"profile": "esp32-s3", "count": 8, "link": "wifi"}]},
        "topology": {"kind": "ring"},
        "algorithm": {"name": "decfedavg", "local_epochs": 1, "batch_size": 8, "lr": 0.1},
    }
    low, full = run_case(raw, precision="bfloat16"), run_case(raw)
    assert low != full and abs(low[-1]["test_accuracy"] - full[-1]["test_accuracy"]) <= 0.05


@pytest.mark.parametrize(
    ("family", "algorithm"), [("decentralized", "gossip"), ("decentralized", "gist"), ("hierarchical", "hierarchical")]
)
def test_engines_that_train_in_float32_only_refuse_a_lower_precision(family, algorithm):
    with pytest.raises(SpecError, match=f"engine.precision: 'float16': {algorithm} trains in float32 only"):
        training_dtype(family, algorithm, "float16")
    assert training_dtype(family, algorithm, "float32") == torch.float32
    assert training_dtype("centralized", "fedavg", "bfloat16") == torch.bfloat16


def test_cli_refuses_a_lower_precision_for_emulate_and_for_gossip_in_one_line(tmp_path):
    quick = str(REPO / "examples" / "quickstart.yaml")
    r = run_cli("emulate", quick, "--set", "engine.precision=bfloat16", "--out", str(tmp_path), "--quiet")
    assert r.returncode == 2 and "engine.precision" in r.stderr and "Traceback" not in r.stderr
    spec = tmp_path / "gossip.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "g",
                "rounds": 2,
                "dataset": {"name": "digits"},
                "model": {"name": "mlp", "hidden": [8]},
                "fleet": {"groups": [{"profile": "esp32-s3", "count": 4, "link": "wifi"}]},
                "topology": {"kind": "ring"},
                "algorithm": {"name": "gossip", "local_epochs": 1, "batch_size": 8, "lr": 0.1},
                "engine": {"precision": "float16"},
            }
        )
    )
    out = tmp_path / "runs"
    r = run_cli("run", str(spec), "--out", str(out), "--quiet", "--no-report")
    assert r.returncode == 2 and "engine.precision" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() or not list(out.iterdir())  # refused before any run folder


class Stop(Exception):
    """Stands for a crash after a round has committed."""


def test_resume_keeps_the_precision_a_run_started_with(tmp_path):
    from tinytwin.engines.runner import resume_run, start_run

    def crash_after_one(r: int, _: dict) -> None:
        if r == 1:
            raise Stop

    raw = dict(_quick(3), engine={"precision": "bfloat16"})
    with pytest.raises(Stop):
        start_run(validate_spec(raw), yaml.safe_dump(raw), tmp_path, None, progress=crash_after_one, report=False)
    (cut,) = tmp_path.iterdir()
    with pytest.raises(SpecError, match="engine.precision: 'float32', but the run started in 'bfloat16'"):
        resume_run(cut, validate_spec(_quick(3)), None, report=False)
    resumed = resume_run(cut, None, None, report=False)
    assert resumed.summary["rounds"] == 3 and resumed.summary["precision"].startswith("bfloat16")
