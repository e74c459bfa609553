"""Emulation twin, issue #5: CNN training in numpy (emulate/layers_np.py) equals the simulator's
PyTorch models — per layer (forward, gradients), after one local epoch of lenet5 / dscnn, and
end to end; device processes still never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from tinytwin.algorithms.local_update import LocalTraining
from tinytwin.emulate import layers_np
from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.emulate.firmware_fleet import check_firmware_spec
from tinytwin.emulate.model_rows import model_rows
from tinytwin.engines.experiment import prepare
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.engines.runner import start_run
from tinytwin.errors import TinyTwinError
from tinytwin.models.layers import LayerStack
from tinytwin.models.params import ParamLayout
from tinytwin.models.zoo import ModelDef, make_model
from tinytwin.spec.load import load_spec, validate_spec
from tinytwin.store.db import RunStore

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "examples" / "quickstart.yaml"

STACKS = {  # every layer kind and option of models/layers.py
    "conv-stride2-pad1-maxpool": ((3, 9, 9), lambda s: s.conv(4, 3, stride=2, padding=1).relu().maxpool(2).linear(5)),
    "depthwise-pointwise-avgpool": (
        (4, 7, 7),
        lambda s: s.conv(4, 3, padding=1, groups=4).relu().conv(6, 1).global_avgpool().linear(3),
    ),
    "depthwise-stride2-maxpool": (
        (4, 9, 9),
        lambda s: s.conv(4, 3, stride=2, padding=1, groups=4).relu().conv(6, 1).maxpool(2).linear(3),
    ),
    "grouped-conv-flatten": ((4, 8, 8), lambda s: s.conv(6, 3, stride=2, groups=2).relu().flatten().linear(3)),
    "maxpool3-odd-size": ((2, 8, 8), lambda s: s.conv(4, 3).relu().maxpool(3).linear(3)),
}
ZOO = {
    "lenet5-28": ("lenet5", (1, 28, 28)),
    "lenet5-8": ("lenet5", (1, 8, 8)),
    "dscnn-32": ("dscnn", (3, 32, 32)),
    "dscnn-28": ("dscnn", (1, 28, 28)),
    "mlp": ("mlp", (1, 8, 8)),
}


@pytest.mark.parametrize("case", list(STACKS) + list(ZOO))
def test_forward_and_gradients_match_torch(case: str) -> None:
    if case in STACKS:
        shape, build = STACKS[case]
        layers = build(LayerStack(shape)).layers
        model = ModelDef(case, tuple(layers), shape, layers[-1].out_features)
    else:
        name, shape = ZOO[case]
        model = make_model(name, shape, 10)
    module = model.build(1)
    layout = ParamLayout.of(module)
    flat = layout.flatten(module)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7,) + shape).astype(np.float32)
    y = rng.integers(0, model.num_classes, 7)
    net = layers_np.Net.from_rows(layers_np.describe(model.layers))
    assert net.num_params == flat.numel() == model.num_params
    tensors = net.split(flat.numpy())
    assert [t.shape for t in tensors] == list(layout.shapes)  # the simulator's flat layout
    logits, _ = net.forward(tensors, x.reshape(7, -1))
    w = flat.clone().requires_grad_(True)
    ref = functional_call(module, layout.unflatten(w), (torch.from_numpy(x),))
    loss = F.cross_entropy(ref, torch.from_numpy(y))
    (g_ref,) = torch.autograd.grad(loss, w)
    grads, ce_sum = net.grads(tensors, x.reshape(7, -1), y)
    assert np.abs(logits - ref.detach().numpy()).max() <= 1e-5
    assert np.abs(net.join(grads) - g_ref.numpy()).max() <= 1e-5
    assert abs(ce_sum / 7 - float(loss.detach())) <= 1e-5


def test_maxpool_ties_route_to_the_first_maximum_like_torch() -> None:
    layers = LayerStack((1, 4, 4)).maxpool(2).linear(2).layers
    x = np.array([[[[1, 1, 0, 2], [1, 0, 2, 2], [3, 3, 5, 5], [3, 3, 5, 5]]]], dtype=np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    expected = torch.autograd.grad(F.max_pool2d(xt, 2).sum(), xt)[0].numpy()
    net = layers_np.Net.from_rows(layers_np.describe(layers))
    pooled, cache = net._f_maxpool(net.layers[0], net._input(x.reshape(1, -1)), None, None, True)
    dx, _, _ = net._b_maxpool(net.layers[0], np.ones_like(pooled), cache, None, True)
    assert np.array_equal(dx.reshape(1, 1, 4, 4), expected)


def _one_epoch(exp, devices, cfg: LocalTraining, round_: int = 2) -> tuple[float, float]:
    ds = exp.dataset
    trainer = LocalTrainer(
        exp.module, exp.layout, torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train), cfg, exp.spec.seed
    )
    start = exp.initial_params()
    parts = [exp.parts[d] for d in devices]
    batched = trainer.train(start, round_, np.asarray(devices), parts)
    ref = trainer.train_reference(start, round_, np.asarray(devices), parts)
    linears, rows = model_rows(exp)
    assert linears is None and rows is not None  # the coordinator sends CNNs to layers_np
    net = layers_np.Net.from_rows(rows)
    worst_batched = worst_ref = 0.0
    for i, d in enumerate(devices):
        x = ds.x_train[exp.parts[d]].reshape(len(exp.parts[d]), -1)
        w, loss, steps = layers_np.train(
            net, start.numpy(), x, ds.y_train[exp.parts[d]], cfg, exp.spec.seed, round_, int(d)
        )
        assert steps == batched.steps[i]
        assert abs(loss - batched.train_loss[i]) < 1e-4
        worst_batched = max(worst_batched, float(np.abs(w - batched.params[i].numpy()).max()))
        worst_ref = max(worst_ref, float(np.abs(w - ref.params[i].numpy()).max()))
    return worst_batched, worst_ref


def _exp(shared_data: Path, dataset: str, model: str, batch: int):
    spec = validate_spec(
        {
            "name": "cnn",
            "seed": 3,
            "rounds": 1,
            "dataset": {"name": dataset, "data_dir": str(shared_data), "test_size": 200},
            "partition": {"method": "iid"},
            "model": {"name": model},
            "fleet": {"groups": [{"profile": "esp32-s3", "count": 100, "link": "wifi"}]},
            "algorithm": {"local_epochs": 1, "batch_size": batch, "lr": 0.05},
        }
    )
    return prepare(spec)


def test_lenet5_one_epoch_on_mnist_matches_the_simulator(shared_data: Path) -> None:
    exp = _exp(shared_data, "mnist", "lenet5", 32)
    assert exp.model.input_shape == (1, 28, 28)
    plain = _one_epoch(exp, [0, 1], LocalTraining(1, 32, 0.05))
    extras = _one_epoch(exp, [2], LocalTraining(1, 32, 0.05, "sgd", 0.9, 1e-3, 0.01))  # momentum, decay, prox
    print("lenet5 max|dw| (vs batched, vs reference):", plain, extras)
    assert max(plain + extras) <= 1e-4, (plain, extras)


def test_dscnn_one_epoch_on_cifar10_matches_the_simulator(shared_data: Path) -> None:
    exp = _exp(shared_data, "cifar10", "dscnn", 16)
    assert exp.model.input_shape == (3, 32, 32)
    assert any(l.kind == "conv" and l.groups > 1 for l in exp.model.layers)  # depthwise
    worst = _one_epoch(exp, [0, 1], LocalTraining(1, 16, 0.05))
    print("dscnn max|dw| (vs batched, vs reference):", worst)
    assert max(worst) <= 1e-4, worst


def test_firmware_devices_refuse_cnns_in_one_line(tmp_path: Path) -> None:
    spec, _ = load_spec(QUICK, ["model.name=lenet5", "fleet.groups.0.count=3"])
    with pytest.raises(TinyTwinError) as err:
        check_firmware_spec(prepare(spec, ROOT / "examples"))
    assert "MLPs only" in str(err.value) and "conv" in str(err.value) and "\n" not in str(err.value)
    spec, spec_yaml = load_spec(QUICK, ["model.name=lenet5", "fleet.groups.0.count=3"])
    with pytest.raises(TinyTwinError, match="MLPs only"):
        start_emulation(spec, spec_yaml, tmp_path, ROOT / "examples", EmulateOptions(firmware_all=True), report=False)
    assert not any(tmp_path.iterdir())  # refused before the run folder exists


def test_cnn_runtime_does_not_import_torch() -> None:
    code = "import sys; import tinytwin.emulate.device, tinytwin.emulate.layers_np; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.split() == ["False"], out.stdout + out.stderr


def test_lenet5_emulation_matches_the_simulator(tmp_path: Path) -> None:
    sets = [
        "model.name=lenet5",
        "fleet.groups.0.count=5",
        "fleet.groups.0.link_overrides.loss=0",
        "fleet.groups.0.link_overrides.header_bytes=0",
        "rounds=2",
    ]
    spec, spec_yaml = load_spec(QUICK, sets)
    sim = start_run(spec, spec_yaml, tmp_path / "sim", ROOT / "examples", report=False)
    spec, spec_yaml = load_spec(QUICK, sets)
    run_dir, summary = start_emulation(
        spec, spec_yaml, tmp_path / "emu", ROOT / "examples", EmulateOptions(time_scale=0.0), report=False
    )
    rows = {}
    for name, folder in (("sim", sim.run_dir), ("emu", run_dir)):
        store = RunStore(folder / "results.db")
        try:
            rows[name] = store.rounds(store.run_info().run_id)
        finally:
            store.close()
    assert len(rows["emu"]) == 2 and all(r["completed"] == 5 for r in rows["emu"])
    print(
        [(r["test_accuracy"], r["test_loss"]) for r in rows["sim"]],
        [(r["test_accuracy"], r["test_loss"]) for r in rows["emu"]],
    )
    for s, e in zip(rows["sim"], rows["emu"]):
        assert abs(s["test_accuracy"] - e["test_accuracy"]) <= 0.01
        assert abs(s["test_loss"] - e["test_loss"]) <= 1e-3
        assert (s["bytes_up"], s["bytes_down"]) == (e["bytes_up"], e["bytes_down"])
    assert summary["emulate"]["devices_with_torch"] == 0
    assert summary["emulate"]["frames_rejected"] == {}
    assert 0 < summary["emulate"]["device_rss_kb"]["max"] <= 64 * 1024
    print("lenet5 device RSS kB:", summary["emulate"]["device_rss_kb"])
