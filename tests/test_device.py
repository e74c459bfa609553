"""The engine's device option: CPU results bit-identical to the stored reference, the
device-generic path equal to the default one, streaming FedAvg equal to the one-shot mean,
and a clear refusal of cuda where there is none."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, run_cli
from cpu_reference import cases, cpu_capability, load_references, run_case
from tinytwin.algorithms.aggregators import weighted_mean
from tinytwin.algorithms.local_update import LocalTraining
from tinytwin.engines.device import resolve_device
from tinytwin.engines.experiment import prepare
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.engines.simulate import stream_fedavg
from tinytwin.errors import SpecError
from tinytwin.spec.load import validate_spec
from tinytwin.wire.encoding import tensor_sizes_within
from tinytwin.wire.roundtrip import roundtrip_torch

REFERENCES = load_references()
CAPABILITY = cpu_capability()
# This machine's kernel family's reference, else any other (compared to float rounding only).
REF = REFERENCES.get(CAPABILITY) or next(iter(REFERENCES.values()))
CUDA = torch.cuda.is_available()


def _assert_equal_to_reference(got: list[dict], name: str) -> None:
    """Bit for bit where this CPU's kernel family was recorded; to 1e-6 against every other."""
    if CAPABILITY in REFERENCES:
        assert got == REFERENCES[CAPABILITY][name]
    for family, ref in REFERENCES.items():
        for a, b in zip(got, ref[name], strict=True):
            for k in a:
                assert abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(b[k])), (family, k, a[k], b[k])


@pytest.mark.parametrize("name", sorted(cases()))
def test_cpu_runs_equal_the_stored_reference_bit_for_bit(name):
    _assert_equal_to_reference(run_case(cases()[name]), name)


def test_explicit_cpu_device_in_the_spec_changes_nothing():
    _assert_equal_to_reference(run_case(cases()["quickstart"], device="cpu"), "quickstart")


def _trainer_inputs(model: dict, count: int = 12):
    """An experiment of ``count`` devices with ``model``, and its device ids."""
    spec = dict(cases()["quickstart"], model=model)
    spec["fleet"] = {"groups": [{"profile": "raspberry-pi-4", "count": count, "link": "wifi"}]}
    exp = prepare(validate_spec(spec))
    return exp, np.arange(count)


@pytest.mark.parametrize("model", [{"name": "mlp", "hidden": [32]}, {"name": "lenet5"}])
def test_device_generic_trainer_on_cpu_equals_the_default_trainer(model):
    exp, ids = _trainer_inputs(model, 6)
    x, y = torch.from_numpy(exp.dataset.x_train), torch.from_numpy(exp.dataset.y_train)
    sim = validate_spec(cases()["quickstart"]).algorithm

    cfg = LocalTraining(sim.local_epochs, sim.batch_size, sim.lr, sim.optimizer, sim.momentum, sim.weight_decay, 0.0)
    parts = [exp.parts[d] for d in ids]
    start = exp.initial_params()
    default = LocalTrainer(exp.module, exp.layout, x, y, cfg, 5).train(start, 2, ids, parts)
    generic = LocalTrainer(exp.module, exp.layout, x, y, cfg, 5, device=torch.device("cpu"), threads=1)
    got = generic.train(start, 2, ids, parts)
    assert got.params.device.type == "cpu"
    assert torch.equal(got.params, default.params)
    assert np.array_equal(got.train_loss, default.train_loss)
    assert not torch.equal(got.params, start.expand_as(got.params))  # it trained


@pytest.mark.parametrize("encoding", ["float32", "int8"])  # int8: one scale per tensor, layer by layer
@pytest.mark.parametrize("model", [{"name": "mlp", "hidden": [32]}, {"name": "lenet5"}])  # layered; one flat tensor
def test_streaming_fedavg_equals_the_one_shot_mean(encoding, model):
    exp, ids = _trainer_inputs(model, 12)
    x, y = torch.from_numpy(exp.dataset.x_train), torch.from_numpy(exp.dataset.y_train)

    cfg = LocalTraining(1, 8, 0.1, "sgd", 0.0, 0.0, 0.0)
    parts = [exp.parts[d] for d in ids]
    n = np.array([len(p) for p in parts])
    start = exp.initial_params()
    sizes = exp.model.tensor_sizes
    whole = LocalTrainer(exp.module, exp.layout, x, y, cfg, 1).train(start, 1, ids, parts)
    received = roundtrip_torch(whole.params - start, encoding, tensor_sizes=sizes)
    expected = weighted_mean(received, torch.from_numpy(n).float())
    chunked = LocalTrainer(exp.module, exp.layout, x, y, cfg, 1, chunk_size=5)
    agg, losses, error = stream_fedavg(chunked, start, 1, ids, parts, n, encoding, sizes)
    assert error is None
    assert np.array_equal(losses, whole.train_loss)
    assert float(expected.abs().max()) > 1e-4
    assert torch.allclose(agg, expected, rtol=0, atol=1e-6 * float(expected.abs().max()))


def test_a_slice_of_whole_tensors_keeps_their_sizes_and_a_cut_tensor_is_refused():
    assert tensor_sizes_within([6, 2, 4, 1], 6, 6) == [2, 4]
    assert tensor_sizes_within([6, 2, 4, 1], 0, 13) == [6, 2, 4, 1]
    with pytest.raises(ValueError, match="cut through a tensor of 6"):
        tensor_sizes_within([6, 2, 4, 1], 3, 5)
    with pytest.raises(ValueError, match="not whole tensors"):
        tensor_sizes_within([6, 2], 6, 5)


def test_streaming_fedavg_refuses_zero_weights_but_keeps_the_losses():
    exp, ids = _trainer_inputs({"name": "mlp", "hidden": [32]}, 4)
    x, y = torch.from_numpy(exp.dataset.x_train), torch.from_numpy(exp.dataset.y_train)

    trainer = LocalTrainer(exp.module, exp.layout, x, y, LocalTraining(1, 8, 0.1, "sgd", 0, 0, 0), 1, chunk_size=2)
    parts = [exp.parts[d] for d in ids]
    agg, losses, error = stream_fedavg(
        trainer, exp.initial_params(), 1, ids, parts, np.zeros(4), "float32", exp.model.tensor_sizes
    )
    assert agg is None and "positive sum" in error
    assert np.all(losses > 0)


def test_streamed_run_agrees_with_the_reference_to_float_rounding():
    got = run_case(cases()["quickstart"], chunk_size=3)
    for a, b in zip(got, REF["quickstart"], strict=True):
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(b[k])), (k, a[k], b[k])


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_spec_error():
    with pytest.raises(SpecError, match="engine.device.*no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
def test_cli_device_cuda_without_a_gpu_fails_in_one_line(tmp_path):
    r = run_cli(
        "run", str(REPO / "examples" / "quickstart.yaml"), "--device", "cuda", "--out", str(tmp_path), "--quiet"
    )
    assert r.returncode != 0
    assert "engine.device" in r.stderr + r.stdout and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())


def test_cli_device_cpu_runs(tmp_path):
    r = run_cli(
        "run", str(REPO / "examples" / "quickstart.yaml"), "--device", "cpu", "--set", "rounds=2",
        "--out", str(tmp_path), "--quiet", "--no-report",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (run_dir,) = tmp_path.iterdir()
    assert "device: cpu" in (run_dir / "spec.yaml").read_text()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(cases()))
def test_cuda_runs_agree_with_the_cpu_reference(name):
    got = run_case(cases()[name], device="cuda")
    for a, b in zip(got, REF[name], strict=True):
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.02
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-3 * max(1.0, abs(b["train_loss"]))


def test_schedule_hashed_with_torch_equals_the_numpy_schedule():
    from tinytwin.engines import schedule_torch

    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 70, 3000)
    sizes[:2] = 0  # devices without data
    parts = [rng.integers(0, 60_000, k) for k in sizes]
    ids = rng.permutation(1 << 20)[:3000] + (1 << 40)  # large ids exercise the full 64 bits
    trainer = LocalTrainer.__new__(LocalTrainer)
    trainer.cfg, trainer.seed = LocalTraining(2, 8, 0.1, "sgd", 0, 0, 0), 11
    expected = trainer.schedule(4, ids, parts)
    got = schedule_torch.schedule(11, 4, 2, 8, ids, parts, torch.device("cpu"))
    assert expected.shape == (3000, 2 * 9 * 8) and (expected >= 0).sum() == 2 * sizes.sum()
    assert np.array_equal(got.numpy(), expected)
    if CUDA:
        cuda = schedule_torch.schedule(11, 4, 2, 8, ids, parts, torch.device("cuda"))
        assert np.array_equal(cuda.cpu().numpy(), expected)


def test_resume_accepts_other_engine_settings_but_not_other_experiments(tmp_path):
    from tinytwin.engines.runner import open_resumable, start_run
    from tinytwin.errors import TinyTwinError

    spec = dict(cases()["quickstart"], rounds=1)
    run_dir = start_run(validate_spec(spec), yaml.safe_dump(spec), tmp_path, None, report=False).run_dir
    other_engine = validate_spec(dict(spec, engine={"device": "auto", "threads": 2, "chunk_size": 7}))
    with pytest.raises(TinyTwinError, match="already complete"):  # past the spec check
        open_resumable(run_dir, other_engine, "simulate")
    with pytest.raises(TinyTwinError, match="differs"):
        open_resumable(run_dir, validate_spec(dict(spec, seed=1)), "simulate")


def _decentralized(name: str) -> dict:
    """A small digits fleet on a ring running ``name`` (mixing, so the whole round is device-generic)."""
    return {
        "name": f"{name}-device",
        "seed": 3,
        "rounds": 3,
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [16]},
        "fleet": {"groups": [{"profile": "esp32-s3", "count": 8, "link": "wifi"}]},
        "topology": {"kind": "ring"},
        "algorithm": {"name": name, "local_epochs": 1, "batch_size": 8, "lr": 0.1},
    }


@pytest.mark.parametrize("name", ["decfedavg", "serverfree"])
def test_decentralized_mixing_with_an_explicit_device_equals_the_default(name):
    default = run_case(_decentralized(name))
    generic = run_case(_decentralized(name), device="cpu", chunk_size=3, threads=1)
    assert generic == default
    assert default[-1]["test_accuracy"] > default[0]["test_accuracy"] - 0.05 and default[0]["train_loss"] > 0


def test_cpu_only_engines_refuse_an_explicit_gpu_and_fall_back_under_auto():
    from tinytwin.engines.device import engine_device

    gpu = torch.device("cuda")  # a device object is taken as given: no GPU needed to test the rule
    assert engine_device("decentralized", "decfedavg", gpu) == gpu
    assert engine_device("flat", "fedavg", gpu) == gpu
    for family, algorithm in (("decentralized", "gossip"), ("decentralized", "gist"), ("hierarchical", "hierarchical")):
        with pytest.raises(SpecError, match=f"{algorithm} runs on the CPU only"):
            engine_device(family, algorithm, gpu)
        assert engine_device(family, algorithm, "auto").type == "cpu"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["decfedavg", "serverfree"])
def test_decentralized_mixing_on_cuda_agrees_with_the_cpu(name):
    cpu, gpu = run_case(_decentralized(name)), run_case(_decentralized(name), device="cuda")
    for a, b in zip(gpu, cpu, strict=True):
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.02
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-3 * max(1.0, abs(b["train_loss"]))
