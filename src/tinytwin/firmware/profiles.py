"""Which emulated board stands in for which catalog device, and its cycles per instruction.

QEMU has no Xtensa or Cortex-M0+ board that runs our bare-metal port, and it models no
pipeline, so a firmware device is (board, CPI): the board gives the instruction set and FPU
class (what changes the instruction count: soft-float on M3 needs ~11x the instructions of
M4F), the CPI and the profile's clock turn counted instructions into device seconds:
``compute_s = instructions x CPI / clock_hz``.

CPI figures are estimates for compiled float32 multiply-accumulate loops (loads, FPU op,
store, loop overhead) and say so; the firmware calibration benchmark
(benchmarks/bench_firmware_calibration.py) sets the resulting times beside the cost
model's FLOP-based ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinytwin.errors import TinyTwinError


@dataclass(frozen=True)
class FirmwareTarget:
    board: str  # a key of tinytwin.firmware.build.BOARDS
    cpi: float  # cycles per (QEMU-counted) instruction on the real device
    why: str


# estimate: Cortex-M4F single-issue, 1-cycle FPU MAC issue but 2-cycle loads without cache
# and flash wait states -> ~1.25 on float loops (reference/qemu-cortex-m.md: 1.1-1.5).
_M4F = 1.25
TARGETS: dict[str, FirmwareTarget] = {
    "nrf52840": FirmwareTarget("mps2-an386", _M4F, "Cortex-M4F, as the nRF52840 itself"),
    "esp32-s3": FirmwareTarget(
        "mps2-an386",
        _M4F,
        "estimate: Xtensa LX7 with single-precision FPU has no QEMU board we run; the "
        "Cortex-M4F is the nearest single-issue core with a float32 FPU",
    ),
    "stm32h743": FirmwareTarget(
        "mps2-an500", 0.9, "Cortex-M7 as the STM32H743; estimate: dual issue with caches ~0.9 CPI"
    ),
    "rp2040": FirmwareTarget(
        "mps2-an385",
        1.4,
        "estimate: Cortex-M0+ without FPU -> the Cortex-M3 soft-float build "
        "(same software float, Thumb-2 instead of Thumb-1: a slight under-count)",
    ),
    "rp2040-w": FirmwareTarget("mps2-an385", 1.4, "as rp2040"),
}


def target_for(profile: str) -> FirmwareTarget:
    """The board + CPI that stand in for catalog profile ``profile``."""
    try:
        return TARGETS[profile]
    except KeyError:
        raise TinyTwinError(
            f"device profile {profile!r} has no firmware twin; firmware devices exist for "
            f"{', '.join(sorted(TARGETS))} (set that group's twin: process)"
        ) from None
