"""WebAssembly devices (issue #19): the firmware client as a wasm32-wasi module under Wasmtime.

The bar: a training round under Wasmtime equals the host build of the C library and the QEMU
Cortex-M4 board bit for bit (weights and ce_sum); its fuel count is deterministic and the
same over files or the "UART"; the device's memory limit refuses a module too large for it
with the numbers (at build time and in the runner); a too small arena and a store past the
linear memory are reported faults; M and G equal the library's merges.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinytwin.firmware import hostlib
from tinytwin.firmware.build import build_firmware, client_arena_bytes, required_arena_bytes
from tinytwin.firmware.qemu import FirmwareFault, QemuDevice, batch_order
from tinytwin.firmware.wasm import WasmDevice
from tinytwin.firmware.wasm_build import WasmMemoryOverflow, build_wasm, check_memory

# No skip: the test command installs clang, lld, wasi-libc and wasmtime (scripts/test.sh).
for _tool in ("clang", "wasm-ld"):
    assert shutil.which(_tool), f"{_tool} missing: run scripts/install_system_packages.sh (the test command does)"

# the QEMU tests' round (its hyper-parameters) and their Python-driven host-library version of it
import test_firmware_qemu as qemu_tests  # noqa: E402
from test_firmware_qemu import BATCH, CFG, DEVICE, RELU, ROUND, SEED, SIZES, hostlib_round  # noqa: E402

MEMORY = 256 * 1024  # the nRF52840's RAM
BIG = [784, 64, 10]  # an MNIST MLP: 51 k parameters, ~0.5 MB of arena with momentum


@pytest.fixture(scope="module")
def shard() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The QEMU tests' shard: 180 digits samples and initial weights."""
    from sklearn.datasets import load_digits

    d = load_digits()
    p0 = (np.random.default_rng(0).standard_normal(qemu_tests.N_PARAMS) * 0.1).astype(np.float32)
    return (d.data[:180] / 16.0).astype(np.float32), d.target[:180].astype(np.int32), p0


@pytest.fixture(scope="module")
def module():
    return build_wasm(required_arena_bytes(SIZES, BATCH, momentum=True))


async def _round(dev, shard, transport: str = "files", sizes=SIZES, relu=RELU):
    x, y, p0 = shard
    async with dev:
        await dev.write_data(x, y)
        order = batch_order(SEED, ROUND, DEVICE, len(y), CFG.epochs)
        result = await dev.train(p0, sizes, relu, CFG, order, transport=transport)
        assert await dev.stop() == 0
    return result


def test_round_under_wasmtime_equals_host_library_and_qemu_bit_for_bit(tmp_path: Path, shard, module) -> None:
    dev = WasmDevice(module, tmp_path / "w", MEMORY)
    result = asyncio.run(_round(dev, shard))
    lib_params, lib_ce = hostlib_round(shard)
    np.testing.assert_array_equal(result.params, lib_params)
    assert result.ce_sum == lib_ce and result.steps == 18
    board = build_firmware("mps2-an386", 64 * 1024, module.arena_bytes)
    on_m4 = asyncio.run(_round(QemuDevice(board, tmp_path / "q"), shard))
    np.testing.assert_array_equal(result.params, on_m4.params)
    assert dev.banner == {"board": "wasm32-wasi", "arena": str(module.arena_bytes)}
    assert result.arena_used == client_arena_bytes(SIZES, BATCH, True)
    assert result.insns == result.ticks > 1_000_000  # fuel: one unit per WebAssembly operator


def test_fuel_count_is_deterministic_and_transport_independent(tmp_path: Path, shard, module) -> None:
    a = asyncio.run(_round(WasmDevice(module, tmp_path / "a", MEMORY), shard))
    b = asyncio.run(_round(WasmDevice(module, tmp_path / "b", MEMORY), shard, transport="uart"))
    assert a.insns == b.insns
    np.testing.assert_array_equal(a.params, b.params)
    assert b.uart_bytes_in > 0 and b.uart_bytes_out == 4 * a.params.size


def test_memory_limit_refuses_an_oversized_model_with_the_numbers(tmp_path: Path) -> None:
    big = build_wasm(required_arena_bytes(BIG, 32, momentum=True))
    assert big.memory_bytes > MEMORY
    with pytest.raises(WasmMemoryOverflow) as err:
        check_memory(big, MEMORY)
    over = big.memory_bytes - MEMORY
    assert err.value.overflow_bytes == over
    msg = str(err.value)
    for number in (MEMORY, big.memory_bytes, over, big.arena_bytes, big.stack_bytes):
        assert f"{number} B" in msg
    # the runner refuses it too (the second line of defence): a fault with need= and have=
    with pytest.raises(FirmwareFault) as fault:
        asyncio.run(WasmDevice(big, tmp_path, MEMORY).start())
    assert fault.value.kind == "memory" and fault.value.returncode == 3
    assert fault.value.fields["need"] == str(big.memory_bytes) and fault.value.fields["have"] == str(MEMORY)


def test_arena_too_small_for_the_model_faults_at_run_time(tmp_path: Path, shard, module) -> None:
    x, y, _ = shard
    p0 = np.zeros(hostlib.param_count([64, 128, 10]), np.float32)
    with pytest.raises(FirmwareFault) as fault:
        asyncio.run(_round(WasmDevice(module, tmp_path, MEMORY), (x, y, p0), sizes=[64, 128, 10]))
    assert fault.value.kind == "arena" and fault.value.fields["have"] == str(module.arena_bytes)
    assert int(fault.value.fields["need"]) == client_arena_bytes([64, 128, 10], BATCH, True)


def test_store_past_linear_memory_is_a_memory_fault(tmp_path: Path, module) -> None:
    async def poke() -> None:
        async with WasmDevice(module, tmp_path, MEMORY) as dev:
            await dev.poke(module.memory_bytes - 4)  # the last word of linear memory: fine
            await dev.poke(module.memory_bytes)

    with pytest.raises(FirmwareFault) as fault:
        asyncio.run(poke())
    assert fault.value.kind == "memory" and "out of bounds" in fault.value.detail
    assert f"address {module.memory_bytes:#x} in linear memory of size {module.memory_bytes:#x}" in fault.value.detail


def test_mix_and_gist_equal_the_library(tmp_path: Path, module) -> None:
    rng = np.random.default_rng(3)
    n = 1000
    models = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    weights = [0.5, 0.3, 0.2]
    mask = rng.random(n) < 0.3
    segments = [(0.7, models[1], mask), (0.4, models[2], ~mask)]
    merge_module = build_wasm(required_arena_bytes(SIZES, BATCH, momentum=True, merges=True))

    async def merges():
        async with WasmDevice(merge_module, tmp_path, MEMORY) as dev:
            return await dev.mix(weights, models), await dev.gist(models[0], 0.9, segments)

    mixed, merged = asyncio.run(merges())
    np.testing.assert_array_equal(mixed.params, hostlib.mix(models, weights))
    np.testing.assert_array_equal(merged.params, hostlib.gist_merge(models[0], 0.9, segments))
    assert mixed.insns > 0 and merged.insns > 0
