"""Firmware twin, issue #6: the C training library (firmware/lib) equals the PyTorch models.

The bar: forward, backward and SGD step equal PyTorch on the same weights and batch
(max |Δ| ≤ 1e-5) for the MLPs of #2 and the TinyFedTL head; one full local epoch equals
the numpy device runtime (tinytwin.emulate.mlp_np.train) with the simulator's batch order;
the merges equal their Python definitions; the arena accounting is exact to the byte.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinytwin.algorithms.gist import merge_reference
from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.emulate import mlp_np
from tinytwin.engines.batched_mlp import BatchedMLPGrad
from tinytwin.engines.experiment import prepare
from tinytwin.errors import TinyTwinError
from tinytwin.firmware import hostlib
from tinytwin.models.params import ParamLayout
from tinytwin.models.zoo import LayerModule, ModelDef, make_model
from tinytwin.rng import device_permutations
from tinytwin.spec.load import load_spec
from tinytwin.wire.encoding import encode

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
LR, MOMENTUM, WD = 0.1, 0.9, 1e-4


@pytest.fixture(scope="module")
def quickstart():
    spec, _ = load_spec(ROOT / "examples" / "quickstart.yaml", ["fleet.groups.0.count=10"])
    return prepare(spec, ROOT / "examples")


@dataclass
class Case:
    name: str
    model: ModelDef
    module: LayerModule
    batch: int
    x: np.ndarray  # (N, features) float32, N a multiple of batch
    y: np.ndarray  # (N,) int64


def _case(name: str, quickstart, rng: np.random.Generator) -> Case:
    ds = quickstart.dataset
    digits_x = ds.x_train.reshape(len(ds.x_train), -1).astype(np.float32)
    digits_y = ds.y_train.astype(np.int64)
    if name == "quickstart":  # the model of examples/quickstart.yaml, as the simulator builds it
        bs = quickstart.spec.algorithm.batch_size
        return Case(name, quickstart.model, quickstart.module, bs, digits_x[: 6 * bs], digits_y[: 6 * bs])
    if name == "digits-64-32-10":
        model = make_model("mlp", (1, 8, 8), 10, hidden=(32,))
        return Case(name, model, model.build(3), 16, digits_x[:96], digits_y[:96])
    if name == "digits-3-hidden":
        model = make_model("mlp", (1, 8, 8), 10, hidden=(48, 32, 16))
        return Case(name, model, model.build(4), 10, digits_x[200:260], digits_y[200:260])
    if name == "mnist-784-16-10":  # MNIST-sized inputs: pixels in [0, 1]
        model = make_model("mlp", (1, 28, 28), 10, hidden=(16,))
        return Case(name, model, model.build(5), 32, rng.random((192, 784), dtype=np.float32), rng.integers(0, 10, 192))
    if name == "tinyfedtl-head-256-2":  # seed 003: a dense 256 -> 2 head on frozen (post-ReLU) features
        model = make_model("mlp", (256,), 2, hidden=())
        return Case(
            name, model, model.build(6), 1, (rng.random((6, 256), dtype=np.float32) * 2.0), rng.integers(0, 2, 6)
        )
    raise AssertionError(name)


CASES = ["quickstart", "digits-64-32-10", "digits-3-hidden", "mnist-784-16-10", "tinyfedtl-head-256-2"]


def _shape(model: ModelDef) -> tuple[list[int], list[bool]]:
    """Layer widths and ReLU flags of an MLP layer list, checked against the simulator's own view."""
    fast = BatchedMLPGrad.for_layers(model.layers)
    assert fast is not None, f"{model.name} is not an MLP"
    sizes = [fast.linears[0].n_in] + [lin.n_out for lin in fast.linears]
    return sizes, [lin.relu_after for lin in fast.linears]


def _host(case: Case, momentum: bool = True) -> tuple[hostlib.HostMLP, np.ndarray]:
    sizes, relu = _shape(case.model)
    flat = ParamLayout.of(case.module).flatten(case.module).numpy()
    net = hostlib.HostMLP(sizes, relu, batch_max=case.batch, momentum=momentum)
    assert net.n_params == flat.size == case.model.num_params
    net.set_params(flat)
    return net, flat


def _torch_grads(case: Case, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(logits, summed CE, flat gradient of the mean CE) of PyTorch on one batch."""
    module = case.module
    module.zero_grad()
    logits = module(torch.from_numpy(x).reshape(len(x), *case.model.input_shape))
    yt = torch.from_numpy(y)
    F.cross_entropy(logits, yt).backward()
    ce_sum = float(F.cross_entropy(logits.detach(), yt, reduction="sum"))
    grads = torch.cat([p.grad.reshape(-1) for p in module.parameters()]).numpy()
    return logits.detach().numpy(), ce_sum, grads


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


@pytest.mark.parametrize("name", CASES)
def test_forward_loss_and_gradients_equal_pytorch(name: str, quickstart) -> None:
    case = _case(name, quickstart, np.random.default_rng(11))
    net, _ = _host(case)
    for lo in range(0, 3 * case.batch, case.batch):
        x, y = case.x[lo : lo + case.batch], case.y[lo : lo + case.batch]
        logits, ce_sum, grads = _torch_grads(case, x, y)
        assert _maxdiff(net.forward(x), logits) <= TOL
        ce = net.loss_backward(x, y)
        assert abs(ce - ce_sum) <= TOL * max(1.0, abs(ce_sum)), (ce, ce_sum)
        assert np.abs(grads).max() > 1e-4  # a real gradient, not a vacuous comparison
        assert _maxdiff(net.grads, grads) <= TOL
        assert net.correct(x, y) == int((logits.argmax(axis=1) == y).sum())


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("momentum", [MOMENTUM, 0.0])
def test_sgd_steps_equal_torch_optim_sgd(name: str, momentum: float, quickstart) -> None:
    case = _case(name, quickstart, np.random.default_rng(12))
    net, start = _host(case, momentum=momentum != 0.0)
    opt = torch.optim.SGD(case.module.parameters(), lr=LR, momentum=momentum, weight_decay=WD)
    layout = ParamLayout.of(case.module)
    net.reset_optimizer()
    steps = len(case.x) // case.batch
    for step in range(steps):
        x, y = case.x[step * case.batch : (step + 1) * case.batch], case.y[step * case.batch : (step + 1) * case.batch]
        opt.zero_grad()
        F.cross_entropy(
            case.module(torch.from_numpy(x).reshape(len(x), *case.model.input_shape)), torch.from_numpy(y)
        ).backward()
        opt.step()
        net.loss_backward(x, y)
        net.sgd_step(LR, momentum, WD)
        expected = layout.flatten(case.module).numpy()
        assert _maxdiff(net.params, expected) <= TOL, f"step {step + 1}"
    assert steps >= 5 and _maxdiff(net.params, start) > 1e-3  # training moved the weights


def test_batch_in_the_input_buffer_needs_no_copy(quickstart) -> None:
    """The client reads a batch straight into act[0]; the result is the same as passing a copy."""
    case = _case("digits-3-hidden", quickstart, np.random.default_rng(1))
    net, _ = _host(case)
    x, y = case.x[:7], case.y[:7]
    ce = net.loss_backward(x, y)
    grads = net.grads.copy()
    net.input_buffer[:] = -1.0
    net.input_buffer[:7] = x
    assert net.loss_backward(7, y) == ce and np.array_equal(net.grads, grads)
    assert np.array_equal(net.input_buffer[:7], x)  # backprop works in place but keeps the input
    assert np.array_equal(net.forward(7), net.forward(x))


def test_batch_larger_than_batch_max_is_refused_in_c(quickstart) -> None:
    """The C guard itself (HostMLP checks first): no overrun, and no stale gradients for SGD."""
    case = _case("digits-64-32-10", quickstart, np.random.default_rng(1))
    net, _ = _host(case)
    net.loss_backward(case.x[: case.batch], case.y[: case.batch])
    x = np.ascontiguousarray(case.x[: case.batch + 1])
    y = np.ascontiguousarray(case.y[: case.batch + 1], dtype=np.int32)
    ptr, yptr = x.ctypes.data_as(hostlib._F32P), y.ctypes.data_as(hostlib._I32P)
    assert not net._lib.tt_mlp_forward(ctypes.byref(net._m), ptr, case.batch + 1)
    assert net._lib.tt_mlp_loss_backward(ctypes.byref(net._m), ptr, yptr, case.batch + 1) == 0.0
    assert not net.grads.any()


def test_correct_counts_the_first_maximum(quickstart) -> None:
    case = _case("digits-64-32-10", quickstart, np.random.default_rng(1))
    net, _ = _host(case)
    net.set_params(np.zeros(net.n_params, np.float32))  # every logit 0: torch.argmax says class 0
    y = np.array([0, 1, 0, 9, 0, 2, 3, 4, 5, 6, 7, 8, 0, 0, 1, 2])
    assert net.correct(case.x[:16], y) == int((y == 0).sum()) == 5


def test_reset_optimizer_restarts_momentum(quickstart) -> None:
    """After a reset the first step uses buf = g' again (the simulator's fresh state every round)."""
    case = _case("digits-64-32-10", quickstart, np.random.default_rng(1))
    net, start = _host(case)
    x, y = case.x[: case.batch], case.y[: case.batch]
    net.loss_backward(x, y)
    net.sgd_step(LR, MOMENTUM, WD)
    net.set_params(start)
    net.reset_optimizer()
    assert not net.momentum_buffer.any()
    net.loss_backward(x, y)
    g = net.grads + np.float32(WD) * start
    net.sgd_step(LR, MOMENTUM, WD)
    assert _maxdiff(net.params, start - np.float32(LR) * g) <= 1e-7


def _c_local_epoch(
    net: hostlib.HostMLP, x: np.ndarray, y: np.ndarray, cfg: LocalTraining, seed: int, round_: int, device: int
) -> tuple[float, int]:
    """What the firmware client does for one round: the simulator's batch order, fresh momentum."""
    n = len(y)
    net.reset_optimizer()
    ce, steps = 0.0, 0
    for epoch in range(cfg.epochs):
        order = device_permutations(seed, round_, epoch, np.array([device]), np.array([n]))[0]
        for lo in range(0, n, cfg.batch_size):
            idx = order[lo : lo + cfg.batch_size]
            ce += net.loss_backward(x[idx], y[idx])
            net.sgd_step(cfg.lr, cfg.momentum, cfg.weight_decay)
            steps += 1
    return ce / max(1, cfg.epochs * n), steps


@pytest.mark.parametrize("momentum", [MOMENTUM, 0.0])
def test_local_epoch_equals_numpy_device_runtime(momentum: float, quickstart) -> None:
    exp = quickstart
    a = exp.spec.algorithm
    cfg = LocalTraining(1, a.batch_size, a.lr, "sgd", momentum, WD)
    ds = exp.dataset
    sizes, relu = _shape(exp.model)
    linears = mlp_np.linears_from(
        [
            [l.w_offset, l.b_offset, l.n_in, l.n_out, l.relu_after]
            for l in BatchedMLPGrad.for_layers(exp.model.layers).linears
        ]
    )
    start = exp.initial_params().numpy()
    for device in (0, 3, 7):
        part = exp.parts[device]
        x = ds.x_train[part].reshape(len(part), -1).astype(np.float32)
        y = ds.y_train[part]
        ref, ref_loss, ref_steps = mlp_np.train(linears, start, x, y, cfg, exp.spec.seed, 2, device)
        net = hostlib.HostMLP(sizes, relu, batch_max=cfg.batch_size, momentum=momentum != 0.0)
        net.set_params(start)
        loss, steps = _c_local_epoch(net, x, y, cfg, exp.spec.seed, 2, device)
        assert steps == ref_steps >= 10
        assert _maxdiff(net.params, ref) <= TOL, device
        assert abs(loss - ref_loss) <= 1e-6 * max(1.0, ref_loss)


# ---------------------------------------------------------------------------------- merges


def test_mix_is_the_weighted_sum() -> None:
    rng = np.random.default_rng(2)
    models = [rng.standard_normal(1003).astype(np.float32) for _ in range(4)]
    weights = np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32)
    out = hostlib.mix(models, weights)
    ref = sum(float(w) * m.astype(np.float64) for w, m in zip(weights, models))
    assert _maxdiff(out, ref) <= 1e-6
    assert _maxdiff(hostlib.mix(models[:1], [1.0]), models[0]) == 0.0


def test_bitmap_packing_is_the_wire_encoding() -> None:
    mask = np.random.default_rng(3).random(1001) < 0.3
    values = np.arange(1001, dtype=np.float32)
    wire = encode(values, "bitmap", mask=mask)
    assert bytes(hostlib.pack_bitmap(mask)) == wire[: (1001 + 7) // 8]


def test_gist_merge_equals_merge_reference() -> None:
    rng = np.random.default_rng(4)
    n = 1001  # not a multiple of 8: the last bitmap byte is partial
    own = rng.standard_normal(n).astype(np.float32)
    masks = [rng.random(n) < p for p in (0.5, 0.4, 0.3)]  # overlapping, with uncovered positions
    assert (masks[0] & masks[1] & masks[2]).any() and not (masks[0] | masks[1] | masks[2]).all()
    segments = [(a, rng.standard_normal(n).astype(np.float32), m) for a, m in zip((0.9, 0.6, 0.75), masks)]
    for a_local in (0.8, 1.0, 0.0):
        out = hostlib.gist_merge(own, a_local, segments)
        ref = merge_reference(own, a_local, segments)
        assert _maxdiff(out, ref) <= 1e-6, a_local
        assert _maxdiff(out, own) > 0.1
    # every weight 0: the denominator is 0 everywhere and the local value is kept
    zero = [(0.0, v, m) for _, v, m in segments]
    assert _maxdiff(hostlib.gist_merge(own, 0.0, zero), own) == 0.0


# ---------------------------------------------------------------------------------- arena and math


@pytest.mark.parametrize(
    "sizes,batch,momentum",
    [
        ([64, 32, 10], 8, True),
        ([784, 16, 10], 32, True),
        ([256, 2], 1, False),
        ([5, 3, 7, 2], 3, True),
        ([9, 1, 3], 5, False),
    ],
)
def test_arena_accounting_is_exact(sizes: list[int], batch: int, momentum: bool) -> None:
    need = hostlib.arena_bytes(sizes, batch, momentum)
    p = sum(a * b + b for a, b in zip(sizes, sizes[1:]))

    def r8(v: int) -> int:
        return -(-v // 8) * 8

    # the documented formula (tt_nn.h), which the build uses to size the arena
    assert need == r8(4 * p * (3 if momentum else 2)) + sum(r8(4 * batch * s) for s in sizes)
    relu = [True] * (len(sizes) - 2) + [False]
    assert hostlib.init_status(sizes, relu, batch, momentum, need) == (0, need, need)
    assert hostlib.init_status(sizes, relu, batch, momentum, need - 1) == (-1, 0, 0)


def test_init_refuses_bad_shapes() -> None:
    assert hostlib.arena_bytes([64, 0, 10], 8) == 0
    assert hostlib.init_status([64, 32, 10], [True, True], 8, True, 1 << 20)[0] == -1  # ReLU on the logits
    assert hostlib.init_status([4] * 10, None, 8, True, 1 << 20)[0] == -1  # 9 > TT_MAX_LAYERS layers


def test_arena_allocator_alignment_exhaustion_and_peak() -> None:
    lib = hostlib.load()
    buf = np.zeros(128, dtype=np.uint8)
    base = buf.ctypes.data + (-buf.ctypes.data) % 8 + 4  # misaligned on purpose
    with hostlib._ARENA_LOCK:
        lib.tt_arena_init(base, 100)
        assert lib.tt_arena_size() == 96  # 4 bytes to align, rounded down to 8
        a = lib.tt_arena_alloc(5)
        b = lib.tt_arena_alloc(16)
        assert a % 8 == 0 and b == a + 8 and lib.tt_arena_used() == 24
        assert lib.tt_arena_alloc(73) is None and lib.tt_arena_used() == 24  # no partial allocation
        assert lib.tt_arena_alloc(72) is not None and lib.tt_arena_used() == 96
        lib.tt_arena_reset()
        assert lib.tt_arena_used() == 0 and lib.tt_arena_peak() == 96
        assert lib.tt_arena_alloc(2**63) is None


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    def key(v: np.ndarray) -> np.ndarray:
        i = v.astype(np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    return np.abs(key(a) - key(b))


def test_expf_and_logf_within_one_ulp() -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate(
        [rng.uniform(-103.9, 88.7, 20000), rng.uniform(-20, 0, 20000), [0.0, -0.0, 1.0, -1.0, 1e-8, -87.3, 88.72]]
    ).astype(np.float32)
    assert _ulps(hostlib.expf(x), np.exp(x.astype(np.float64)).astype(np.float32)).max() <= 1
    v = np.concatenate(
        [np.exp(rng.uniform(-103, 88, 20000)), rng.uniform(0.5, 16, 20000), [1e-45, 1e-40, 1.0, 2.0, 3.4e38]]
    ).astype(np.float32)
    assert _ulps(hostlib.logf(v), np.log(v.astype(np.float64)).astype(np.float32)).max() <= 1
    special = hostlib.expf(np.array([np.inf, -np.inf, 89.0, -104.0], np.float32))
    assert special.tolist() == [np.inf, 0.0, np.inf, 0.0] and np.isnan(hostlib.expf(np.array([np.nan]))[0])
    special = hostlib.logf(np.array([0.0, -0.0, np.inf], np.float32))
    assert special.tolist() == [-np.inf, -np.inf, np.inf] and np.isnan(hostlib.logf(np.array([-1.0]))).all()


# ---------------------------------------------------------------------------------- build


def test_missing_compiler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-cc")
    with pytest.raises(TinyTwinError, match="gcc"):
        hostlib.build_library()


def test_library_is_cached_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYTWIN_CACHE", str(tmp_path))
    first = hostlib.build_library()
    assert first.is_file() and first.parent.parent == tmp_path / "firmware" and first.name == "libttnn.so"
    stamp = first.stat().st_mtime_ns
    assert hostlib.build_library() == first and first.stat().st_mtime_ns == stamp


def test_library_builds_for_cortex_m4_without_libc(tmp_path: Path) -> None:
    """The M4 build the firmware links: freestanding, -Werror, and no undefined symbol outside the library."""
    gcc, nm = shutil.which("arm-none-eabi-gcc"), shutil.which("arm-none-eabi-nm")
    assert gcc and nm, "arm-none-eabi-gcc missing: run scripts/install_system_packages.sh (the test command does)"
    fw = hostlib.firmware_dir()
    sources = sorted((fw / "lib").glob("*.c"))
    defined: set[str] = set()
    undefined: set[str] = set()
    for src in sources:
        obj = tmp_path / (src.stem + ".o")
        subprocess.run(
            [
                gcc,
                "-std=c99",
                "-pedantic",
                "-O2",
                "-mcpu=cortex-m4",
                "-mthumb",
                "-mfpu=fpv4-sp-d16",
                "-mfloat-abi=hard",
                "-ffreestanding",
                "-Wall",
                "-Wextra",
                "-Werror",
                f"-I{fw / 'include'}",
                "-c",
                str(src),
                "-o",
                str(obj),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        syms = subprocess.run([nm, str(obj)], check=True, capture_output=True, text=True).stdout.split("\n")
        for line in syms:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "U":
                undefined.add(parts[1])
            elif len(parts) == 3 and parts[1] in "TDBR":
                defined.add(parts[2])
    assert undefined <= defined, f"libc/libm symbols needed: {sorted(undefined - defined)}"
