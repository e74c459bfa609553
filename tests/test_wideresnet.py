"""The WideResNet of seed 004 §4.1 (Table 7) in the model zoo: exact size, counted FLOPs, it trains."""

from __future__ import annotations

from pathlib import Path

import torch

from tinytwin.data.datasets import is_stand_in, published_stand_in
from tinytwin.engines.experiment import prepare
from tinytwin.models.accounting import backward_flops, forward_flops
from tinytwin.models.params import ParamLayout
from tinytwin.models.zoo import make_model
from tinytwin.spec.load import load_spec

TABLE7_PARAMS = 8_662_100


def test_parameter_count_is_table_7s_and_the_torch_module_agrees():
    model = make_model("wideresnet", (3, 32, 32), 100)
    assert model.num_params == TABLE7_PARAMS
    layout = ParamLayout.of(model.build(0))
    assert layout.total == TABLE7_PARAMS
    assert layout.sizes == model.tensor_sizes  # flat order: the layer list's promise is the module's
    assert abs(model.num_params - 8.66e6) / 8.66e6 < 0.01


def test_counted_macs_equal_the_torch_modules_convolutions():
    model = make_model("wideresnet", (3, 32, 32), 100)
    module = model.build(0)
    macs = 0

    def count(mod, _inputs, out):
        nonlocal macs
        if isinstance(mod, torch.nn.Conv2d):
            macs += out[0].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, torch.nn.Linear):
            macs += mod.in_features * mod.out_features

    for mod in module.modules():
        mod.register_forward_hook(count)
    with torch.no_grad():
        module(torch.zeros(1, 3, 8, 8))  # the count scales with the map; 8x8 keeps it fast
    small = make_model("wideresnet", (3, 8, 8), 100)
    assert macs == sum(layer.macs for layer in small.layers)
    assert sum(layer.macs for layer in model.layers) == 884_423_936  # per 32x32 sample
    assert forward_flops(model.layers, 100) == 1_774_755_124
    assert backward_flops(model.layers, 100) == 3_543_422_152


def test_a_short_real_training_run_lowers_the_loss():
    """The same 8.66 M parameters (global pooling makes them size-free) on 8x8 crops, so it is fast."""
    model = make_model("wideresnet", (3, 8, 8), 100)
    module = model.build(0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8, generator=gen), torch.randint(0, 100, (4,), generator=gen)
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(module(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_plan_of_the_seed_workload_needs_no_cifar100_files():
    spec, _ = load_spec(Path(__file__).parents[1] / "examples" / "seed004-energy.yaml", [])
    exp = prepare(spec, None, check_memory=False, plan_only=True)
    assert is_stand_in(exp.dataset) and exp.model.num_params == TABLE7_PARAMS
    assert sum(len(p) for p in exp.parts) == 50_000 and exp.fleet.num_devices == 8
    stand_in = published_stand_in("cifar100")
    assert stand_in is not None and stand_in.input_shape == (3, 32, 32) and stand_in.num_classes == 100


def test_cifar100_reads_the_python_version_and_names_missing_files(tmp_path):
    import pickle

    import numpy as np
    import pytest

    from tinytwin.data.datasets import load_dataset
    from tinytwin.errors import DataError

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / split).write_bytes(pickle.dumps({b"data": data, b"fine_labels": list(range(n))}))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}))
    ds = load_dataset("cifar100", tmp_path)
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.num_classes == 100 and ds.class_names[5] == "c5"
    assert list(ds.y_test) == [0, 1, 2] and not is_stand_in(ds)
    with pytest.raises(DataError, match="cifar100: data files not found"):
        load_dataset("cifar100", tmp_path / "empty")
