"""Emulation twin: numpy device training equals the simulator's; no torch in devices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from tinytwin.algorithms.local_update import LocalTraining
from tinytwin.emulate import mlp_np, shaper
from tinytwin.emulate.model_rows import mlp_rows
from tinytwin.engines.experiment import prepare
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.fleet.cost import LinkArrays, transfer_cost
from tinytwin.spec.load import load_spec

ROOT = Path(__file__).resolve().parents[1]


def _exp(*sets: str):
    spec, _ = load_spec(ROOT / "examples" / "quickstart.yaml", ["fleet.groups.0.count=10", *sets])
    return prepare(spec, ROOT / "examples")


def test_numpy_training_matches_local_trainer_after_one_epoch() -> None:
    exp = _exp("algorithm.local_epochs=1")
    a = exp.spec.algorithm
    cfg = LocalTraining(1, a.batch_size, a.lr)
    ds = exp.dataset
    trainer = LocalTrainer(
        exp.module, exp.layout, torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train), cfg, exp.spec.seed
    )
    start = exp.initial_params()
    ids = np.arange(10)
    result = trainer.train(start, 3, ids, [exp.parts[d] for d in ids])
    linears = mlp_np.linears_from(mlp_rows(exp))
    tc = mlp_np.LocalTraining(1, a.batch_size, a.lr)
    worst = 0.0
    for d in ids:
        x = ds.x_train[exp.parts[d]].reshape(len(exp.parts[d]), -1)
        w, loss, steps = mlp_np.train(linears, start.numpy(), x, ds.y_train[exp.parts[d]], tc, exp.spec.seed, 3, int(d))
        worst = max(worst, float(np.abs(w - result.params[d].numpy()).max()))
        assert abs(loss - result.train_loss[d]) < 1e-4
        assert steps == result.steps[d]
    assert worst <= 1e-4, worst


def test_numpy_training_with_momentum_and_prox_matches() -> None:
    exp = _exp(
        "algorithm.local_epochs=1",
        "algorithm.momentum=0.9",
        "algorithm.weight_decay=0.001",
    )
    a = exp.spec.algorithm
    cfg = LocalTraining(1, a.batch_size, a.lr, "sgd", 0.9, 0.001, 0.01)
    ds = exp.dataset
    trainer = LocalTrainer(
        exp.module, exp.layout, torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train), cfg, exp.spec.seed
    )
    start = exp.initial_params()
    ids = np.arange(4)
    result = trainer.train(start, 1, ids, [exp.parts[d] for d in ids])
    linears = mlp_np.linears_from(mlp_rows(exp))
    tc = mlp_np.LocalTraining(1, a.batch_size, a.lr, "sgd", 0.9, 0.001, 0.01)
    for d in ids:
        x = ds.x_train[exp.parts[d]].reshape(len(exp.parts[d]), -1)
        w, _, _ = mlp_np.train(linears, start.numpy(), x, ds.y_train[exp.parts[d]], tc, exp.spec.seed, 1, int(d))
        assert float(np.abs(w - result.params[d].numpy()).max()) <= 1e-4


def test_shaper_matches_cost_model() -> None:
    link = shaper.Link(0.005, 1e6, 2e6, 0.1, 1500, 40)
    arrays = LinkArrays(*(np.array([v]) for v in (0.005, 1e6, 2e6, 0.1, 1500, 40)))
    for nbytes, lost in ((9702, 0), (9702, 3), (10, 1), (0, 0)):
        t, wire = shaper.transfer(nbytes, link.up_bps, link, lost)
        ref = transfer_cost(nbytes, arrays.up_bps, arrays, np.array([lost]))
        assert wire == int(ref.wire_bytes[0])
        assert abs(t - float(ref.time_s[0])) < 1e-12


def test_device_runtime_does_not_import_torch() -> None:
    code = (
        "import sys; import tinytwin.emulate.device as d; f, e = d.load_wire(); "
        "import numpy as np; from tinytwin.wire.encoding import encode; "
        "assert encode(np.ones(3), 'int8') == bytes.fromhex('0402013c7f7f7f'), encode(np.ones(3), 'int8').hex(); "
        "print('torch' in sys.modules, e.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.split() == ["False", "tinytwin.wire.encoding"], out.stdout + out.stderr
