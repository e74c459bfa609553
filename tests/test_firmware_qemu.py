"""Firmware twin, issue #6: the C client on QEMU's Cortex-M boards and on the host.

The bar: one training round on mps2-an386 equals the numpy device runtime (max |Δw| ≤ 1e-5)
and the host build of the library; instruction counts are identical across processes; the
RAM budget is enforced at link time (overflow in bytes), by the arena (a "!FAULT arena") and
by the MPU (a MemManage fault at the exact address); the host executable speaks the same
protocol with the same numbers; M and G equal their Python definitions; a hung device is
killed and leaves no process behind; the M3 and M7 boards train too.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinytwin.algorithms.gist import merge_reference
from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.emulate import mlp_np
from tinytwin.firmware import hostlib
from tinytwin.firmware.build import (
    FirmwareBuildError,
    FirmwareRamOverflow,
    build_firmware,
    build_host_client,
    client_arena_bytes,
    mpu_ram_budget,
    required_arena_bytes,
    size_report,
)
from tinytwin.firmware.qemu import (
    FirmwareError,
    FirmwareFault,
    HostDevice,
    QemuDevice,
    SyncDevice,
    batch_order,
    serial_seconds,
)

# No skip: the README's test command installs QEMU and the cross compiler
# (scripts/install_system_packages.sh); without them these tests fail with the message below.
for _tool in ("qemu-system-arm", "arm-none-eabi-gcc"):
    assert shutil.which(_tool), f"{_tool} missing: run scripts/install_system_packages.sh (the test command does)"

SIZES = [64, 32, 10]
RELU = [True, False]
BATCH = 10
RAM = 64 * 1024
SEED, ROUND, DEVICE = 7, 3, 5
CFG = LocalTraining(epochs=1, batch_size=BATCH, lr=0.05, momentum=0.9, weight_decay=1e-4)
LINEARS = mlp_np.linears_from([(0, 2048, 64, 32, True), (2080, 2400, 32, 10, False)])
N_PARAMS = 2410


@pytest.fixture(scope="module")
def shard() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """180 digits samples (one device's shard) and initial weights."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data[:180] / 16.0).astype(np.float32)
    y = d.target[:180].astype(np.int32)
    p0 = (np.random.default_rng(0).standard_normal(N_PARAMS) * 0.1).astype(np.float32)
    return x, y, p0


@pytest.fixture(scope="module")
def arena() -> int:
    return required_arena_bytes(SIZES, BATCH, momentum=True)


@pytest.fixture(scope="module")
def m4(arena: int):
    return build_firmware("mps2-an386", RAM, arena)


def run(coro):
    return asyncio.run(coro)


async def train_once(image_or_client, workdir: Path, shard, cfg: LocalTraining = CFG, timeout: float = 60.0):
    x, y, p0 = shard
    dev = (
        QemuDevice(image_or_client, workdir, timeout=timeout)
        if hasattr(image_or_client, "elf")
        else HostDevice(image_or_client, workdir, timeout=timeout)
    )
    async with dev:
        await dev.write_data(x, y)
        result = await dev.train(p0, SIZES, RELU, cfg, batch_order(SEED, ROUND, DEVICE, len(y), cfg.epochs))
        assert await dev.stop() == 0
    return result, dev


def hostlib_round(shard, cfg: LocalTraining = CFG) -> tuple[np.ndarray, float]:
    """The same round with the host build of the C library, driven from Python."""
    x, y, p0 = shard
    m = hostlib.HostMLP(SIZES, RELU, batch_max=cfg.batch_size, momentum=bool(cfg.momentum))
    m.set_params(p0)
    m.reset_optimizer()
    ce = 0.0
    for order in batch_order(SEED, ROUND, DEVICE, len(y), cfg.epochs):
        for lo in range(0, len(y), cfg.batch_size):
            idx = order[lo : lo + cfg.batch_size]
            ce += m.loss_backward(x[idx], y[idx])
            m.sgd_step(cfg.lr, cfg.momentum, cfg.weight_decay)
    return m.params.copy(), ce


# ---------------------------------------------------------------------------------- (a) numerics


def test_round_on_m4_equals_numpy_and_host_library(tmp_path, shard, m4, arena):
    result, dev = run(train_once(m4, tmp_path, shard))
    x, y, p0 = shard
    ref, mean_ce, steps = mlp_np.train(LINEARS, p0, x, y, CFG, SEED, ROUND, DEVICE)
    assert result.steps == steps == 18
    assert np.abs(result.params - ref).max() <= 1e-5
    assert result.ce_sum == pytest.approx(mean_ce * len(y), rel=1e-5)
    lib_params, lib_ce = hostlib_round(shard)
    np.testing.assert_array_equal(result.params, lib_params)  # same C, no FMA contraction: bit for bit
    assert result.ce_sum == lib_ce
    assert result.insns == 40 * result.ticks and result.insns > 1_000_000
    assert result.arena_used == client_arena_bytes(SIZES, BATCH, True) <= arena
    assert dev.banner == {"board": "mps2-an386", "arena": str(arena)}
    assert dev.boot_seconds < 5.0


# ---------------------------------------------------------------------------------- (b) determinism


def test_instruction_counts_identical_across_processes(tmp_path, shard, m4):
    cfg = LocalTraining(epochs=2, batch_size=BATCH, lr=0.05)

    async def both():
        return await asyncio.gather(
            train_once(m4, tmp_path / "a", shard, cfg), train_once(m4, tmp_path / "b", shard, cfg)
        )

    (a, dev_a), (b, dev_b) = run(both())
    assert dev_a.pid != dev_b.pid
    assert a.insns == b.insns > 0 and a.ticks == b.ticks
    np.testing.assert_array_equal(a.params, b.params)


# ---------------------------------------------------------------------------------- (c) memory


def test_ram_budget_too_small_is_refused_at_link_time():
    with pytest.raises(FirmwareRamOverflow) as info:
        build_firmware("mps2-an386", 16 * 1024, 20_000)
    msg = str(info.value)
    assert "\n" not in msg and "mps2-an386 with 16384 B RAM" in msg and "arena 20000 B" in msg
    n = int(re.search(r"needs (\d+) B more", msg).group(1))
    assert n == info.value.overflow_bytes and 20_000 - 16 * 1024 < n < 20_000


def test_arena_too_small_for_model_faults_at_run_time(tmp_path, shard):
    small = build_firmware("mps2-an386", RAM, 4096)
    with pytest.raises(FirmwareFault) as info:
        run(train_once(small, tmp_path, shard))
    fault = info.value
    assert fault.kind == "arena" and fault.returncode == 3
    assert int(fault.fields["need"]) == client_arena_bytes(SIZES, BATCH, True)
    assert int(fault.fields["have"]) == 4096


@pytest.mark.parametrize("ram", [64 * 1024, 192 * 1024, 100_000])  # one, two and six MPU regions
def test_poke_past_ram_budget_is_a_memmanage_fault(tmp_path, ram, arena):
    image = build_firmware("mps2-an386", ram, arena)
    assert image.ram_bytes == ram
    end = 0x20000000 + ram

    async def scenario():
        async with QemuDevice(image, tmp_path) as dev:
            await dev.poke(end - 16)  # unused RAM inside the budget: allowed
            await dev.poke(end)  # first byte past the budget

    with pytest.raises(FirmwareFault) as info:
        run(scenario())
    fault = info.value
    cfsr = int(fault.fields["cfsr"], 16)
    assert fault.kind == "memmanage" and fault.returncode == 3
    assert cfsr & 0x02 and cfsr & 0x80  # DACCVIOL, MMARVALID
    assert int(fault.fields["mmfar"], 16) == end


def test_missing_cross_compiler_names_the_packages(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FirmwareBuildError) as info:
        build_firmware("mps2-an386", RAM, 4096)
    msg = str(info.value)
    assert "gcc-arm-none-eabi" in msg and "libnewlib-arm-none-eabi" in msg and "scripts/setup_env.sh" in msg


def test_mpu_ram_budget_rounding():
    assert mpu_ram_budget(192 * 1024) == 192 * 1024 and mpu_ram_budget(1 << 20) == 1 << 20
    assert mpu_ram_budget(100_000) == 100_000  # 3125 units of 32 B: six set bits, six regions
    assert mpu_ram_budget(127 * 1024 + 5) == 126 * 1024  # seven set bits: the lowest is dropped


def test_size_report(m4, arena):
    rep = size_report(m4)
    assert rep["arena"] == arena and rep["ram_budget"] == RAM
    assert rep["ram_used"] == rep["data"] + rep["bss"] <= RAM
    assert rep["static_other"] < 2048 and 4096 < rep["text"] < 32 * 1024


# ---------------------------------------------------------------------------------- (d) host executable


def test_host_executable_speaks_the_same_protocol(tmp_path, shard, m4, arena):
    client = build_host_client(arena)
    host, dev = run(train_once(client, tmp_path / "host", shard))
    qemu, _ = run(train_once(m4, tmp_path / "qemu", shard))
    assert dev.banner == {"board": "host", "arena": str(arena)}
    assert np.abs(host.params - qemu.params).max() <= 1e-5
    assert host.steps == qemu.steps and host.ce_sum == pytest.approx(qemu.ce_sum, rel=1e-6)
    assert host.ticks == host.insns == 0 and host.arena_used == qemu.arena_used
    with pytest.raises(FirmwareFault) as info:  # the host port faults like the device
        run(train_once(build_host_client(4096), tmp_path / "small", shard))
    assert info.value.kind == "arena" and info.value.returncode == 3


def test_bad_command_or_file_is_an_err_and_the_device_goes_on(tmp_path, m4, arena):
    async def scenario():
        async with QemuDevice(m4, tmp_path) as dev:
            with pytest.raises(FirmwareError, match="round.bin"):
                await dev.command("T")  # no round.bin yet
            with pytest.raises(FirmwareError, match="unknown command"):
                await dev.command("X")
            (tmp_path / "mix.bin").write_bytes(b"TTM1")  # truncated header
            with pytest.raises(FirmwareError, match="mix.bin"):
                await dev.command("M")
            await dev.poke(0x20000000 + RAM - 4)  # still alive
            return await dev.stop(7)

    assert run(scenario()) == 7


def test_sync_wrapper_on_the_host_client(tmp_path, arena):
    models = [np.arange(5, dtype=np.float32), np.ones(5, dtype=np.float32)]
    with SyncDevice(HostDevice(build_host_client(arena), tmp_path)) as dev:
        out = dev.mix([0.25, 0.75], models)
        assert dev.stop() == 0
    np.testing.assert_array_equal(out.params, 0.25 * models[0] + 0.75 * models[1])
    assert out.ticks == out.insns == 0


# ---------------------------------------------------------------------------------- (e) merges


def test_mix_and_gist_equal_their_definitions(tmp_path, m4):
    rng = np.random.default_rng(1)
    models = [rng.standard_normal(N_PARAMS).astype(np.float32) for _ in range(3)]
    weights = [0.5, 0.3, 0.2]
    own = models[0]
    segments = []
    for a, density in ((0.7, 0.3), (1.2, 0.6), (0.4, 0.0)):  # the last segment is empty
        mask = rng.random(N_PARAMS) < density
        segments.append((a, rng.standard_normal(N_PARAMS).astype(np.float32), mask))

    async def scenario():
        async with QemuDevice(m4, tmp_path) as dev:
            mixed = await dev.mix(weights, models)
            merged = await dev.gist(own, 0.0, segments)  # a_local 0: untouched positions keep w
            merged_local = await dev.gist(own, 0.5, segments)
            return mixed, merged, merged_local

    mixed, merged, merged_local = run(scenario())
    expect_mix = sum(np.float32(w) * m for w, m in zip(weights, models))
    assert np.abs(mixed.params - expect_mix).max() <= 1e-6
    np.testing.assert_array_equal(mixed.params, hostlib.mix(models, weights))
    for result, a_local in ((merged, 0.0), (merged_local, 0.5)):
        ref = merge_reference(own, a_local, segments)
        assert np.abs(result.params - ref).max() <= 1e-5
        np.testing.assert_array_equal(result.params, hostlib.gist_merge(own, a_local, segments))
    assert mixed.insns > 0 and merged.insns > 0


# ---------------------------------------------------------------------------------- (f) hangs


def _qemu_children_of(pid: int) -> list[int]:
    """qemu-system-arm processes whose parent is ``pid`` (a /proc scan, no psutil)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid and comm.startswith("qemu-system"):
            found.append(int(entry.name))
    return found


def test_hung_device_is_killed_and_reported(tmp_path, shard):
    slow = build_firmware("mps2-an385", RAM, required_arena_bytes(SIZES, BATCH, momentum=True))
    cfg = LocalTraining(epochs=50, batch_size=BATCH, lr=0.05, momentum=0.9)  # ~3 G insns: seconds
    t0 = time.perf_counter()
    with pytest.raises(FirmwareFault) as info:
        run(train_once(slow, tmp_path, shard, cfg, timeout=0.3))
    assert time.perf_counter() - t0 < 10
    fault = info.value
    assert fault.kind == "timeout" and fault.returncode == -9
    assert _qemu_children_of(os.getpid()) == []


def test_qemu_dies_with_its_host_process(tmp_path, m4):
    """PR_SET_PDEATHSIG: a host killed without cleanup takes its QEMU with it."""
    script = (
        "import asyncio, os, sys\n"
        "from pathlib import Path\n"
        "from tinytwin.firmware.build import build_firmware\n"
        "from tinytwin.firmware.qemu import QemuDevice\n"
        "async def main():\n"
        f"    dev = QemuDevice(build_firmware('mps2-an386', {RAM}, {m4.arena_bytes}), Path(sys.argv[1]))\n"
        "    await dev.start()\n"
        "    print(dev.pid, flush=True)\n"
        "    os._exit(0)\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.split()[0])
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail(f"QEMU {pid} outlived its host process")


# ---------------------------------------------------------------------------------- (g) other cores


def test_m3_and_m7_train_and_count_instructions(tmp_path, shard, m4, arena):
    cfg = LocalTraining(epochs=1, batch_size=BATCH, lr=0.05)
    results = {}
    for board in ("mps2-an385", "mps2-an386", "mps2-an500"):
        image = build_firmware(board, RAM, arena)
        results[board], dev = run(train_once(image, tmp_path / board, shard, cfg))
        assert dev.banner["board"] == board
    m3, m4r, m7 = results["mps2-an385"], results["mps2-an386"], results["mps2-an500"]
    for r in (m3, m7):  # IEEE float32 everywhere (soft-float too), same order of operations
        np.testing.assert_array_equal(r.params, m4r.params)
        assert r.steps == 18 and r.insns > 0
    assert m3.insns > 5 * m4r.insns  # soft-float on the M3
    assert 0.5 * m4r.insns < m7.insns < 2 * m4r.insns


# ---------------------------------------------------------------------------------- (h) weights over the UART

HEAD_SIZES, HEAD_RELU = [256, 2], [False]  # TinyFedTL's head: 514 float32 = 2056 B
HEAD_CFG = LocalTraining(epochs=1, batch_size=1, lr=0.01)


@pytest.fixture(scope="module")
def head_shard() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """32 samples of 256 frozen features (binary labels) and initial head weights."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 256)).astype(np.float32)
    y = (rng.random(32) < 0.5).astype(np.int32)
    return x, y, (rng.standard_normal(514) * 0.05).astype(np.float32)


def _all_byte_values(n: int, seed: int) -> bytes:
    """``n`` random bytes holding every value 0..255 (0x00, 0x0a, 0x0d, 0xff ...)."""
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, n, dtype=np.uint8)
    b[rng.permutation(n)[:256]] = np.arange(256, dtype=np.uint8)
    return b.tobytes()


async def _train_both(make_dev, tmp_path: Path, x, y, p0, sizes, relu, cfg):
    """The same round with transport="files" and "uart", each on a fresh device and workdir."""

    async def one(transport: str):
        async with make_dev(tmp_path / transport) as dev:
            await dev.write_data(x, y)
            r = await dev.train(
                p0, sizes, relu, cfg, batch_order(SEED, ROUND, DEVICE, len(y), cfg.epochs), transport=transport
            )
            assert await dev.stop() == 0
        return r

    return await asyncio.gather(one("files"), one("uart"))


def _check_uart_equals_files(files, uart, n_params: int, n_samples: int, n_layers: int, epochs: int = 1):
    np.testing.assert_array_equal(uart.params, files.params)
    assert uart.ce_sum == files.ce_sum and uart.steps == files.steps and uart.insns == files.insns
    round_size = 8 + 4 * (2 * n_layers + 1) + 24 + 4 * n_params + 4 * epochs * n_samples
    assert (uart.transport, uart.uart_bytes_in, uart.uart_bytes_out) == ("uart", round_size, 4 * n_params)
    assert uart.uart_in_seconds > 0 and uart.uart_out_seconds > 0
    assert (files.transport, files.uart_bytes_in, files.uart_bytes_out, files.uart_in_seconds) == ("files", 0, 0, 0.0)


def test_train_over_uart_equals_files_on_m4(tmp_path, shard, head_shard, m4):
    x, y, p0 = shard
    files, uart = run(_train_both(lambda d: QemuDevice(m4, d), tmp_path / "mlp", x, y, p0, SIZES, RELU, CFG))
    _check_uart_equals_files(files, uart, N_PARAMS, len(y), 2)
    hx, hy, hp = head_shard
    head = build_firmware("mps2-an386", RAM, required_arena_bytes(HEAD_SIZES, 1))
    files, uart = run(
        _train_both(lambda d: QemuDevice(head, d), tmp_path / "head", hx, hy, hp, HEAD_SIZES, HEAD_RELU, HEAD_CFG)
    )
    _check_uart_equals_files(files, uart, 514, len(hy), 1)
    assert uart.steps == 32 and uart.uart_bytes_out == 2056 and uart.uart_bytes_in == 2056 + 44 + 4 * 32


async def _binary_roundtrip(dev, workdir: Path) -> None:
    """64 KiB of every byte value in via W (after "Q 5\\n": a payload never reaches the line
    reader), 4 KiB out via U, bad W/U lines refused, and the device still answers."""
    payload = b"Q 5\n" + _all_byte_values(64 * 1024 - 4, 11)
    up = await dev.upload_round(payload)
    assert up.nbytes == 65536 and (workdir / "round.bin").read_bytes() == payload
    with pytest.raises(FirmwareError, match="update.bin"):
        await dev.download_update()  # no update.bin yet
    out = _all_byte_values(4096, 12)
    (workdir / "update.bin").write_bytes(out)
    raw, down = await dev.download_update()
    assert raw == out and down.nbytes == 4096
    with pytest.raises(FirmwareError, match="usage: W"):
        await dev.command("W x")
    assert (await dev.upload_round(b"")).nbytes == 0 and (workdir / "round.bin").read_bytes() == b""
    assert (await dev.download_update())[0] == out  # the line after a payload is still a command
    assert await dev.stop(0) == 0


def test_64k_binary_transfer_over_uart_on_m4(tmp_path, m4):
    async def scenario():
        async with QemuDevice(m4, tmp_path) as dev:
            await _binary_roundtrip(dev, tmp_path)

    run(scenario())


def test_host_executable_moves_bytes_and_trains_over_stdio(tmp_path, shard, arena):
    client = build_host_client(arena)

    async def scenario():
        async with HostDevice(client, tmp_path / "bytes") as dev:
            await _binary_roundtrip(dev, tmp_path / "bytes")

    run(scenario())
    x, y, p0 = shard
    files, uart = run(_train_both(lambda d: HostDevice(client, d), tmp_path, x, y, p0, SIZES, RELU, CFG))
    _check_uart_equals_files(files, uart, N_PARAMS, len(y), 2)


def test_serial_seconds_models_an_8n1_uart():
    assert serial_seconds(2056, 9600) == pytest.approx(2.141667, rel=1e-6)  # 514 float32 at 9600 baud
    assert serial_seconds(960, 9600) == 1.0 and serial_seconds(1000, 115200, bits_per_byte=8) == 8000 / 115200
    with pytest.raises(ValueError):
        serial_seconds(1, 0)
