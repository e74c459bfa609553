"""Build the firmware client for an emulated Cortex-M board or for the host.

Why: the firmware twin runs the project's own C client (``firmware/``) on QEMU's MPS2 boards.
Each device class has a RAM budget, and the build is where that budget is first enforced: the
training arena is a static array in ``.bss`` and the linker script's RAM region is exactly the
budget, so a model that cannot fit fails here with the number of bytes missing — before any
QEMU starts.  Builds take about a second and are cached by a hash of the sources, flags and
sizes under ``<cache>/firmware/`` (``<cache>``: :func:`tinytwin.cache.cache_dir`); each build happens
in a temporary folder that is renamed into place, so concurrent processes never see a
half-written image.

Public API: :func:`build_firmware`, :func:`build_host_client`, :func:`size_report`,
:func:`client_arena_bytes`, :func:`required_arena_bytes`, :data:`BOARDS`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import tinytwin.cache as cache
from tinytwin.errors import MemoryPlanError, TinyTwinError

__all__ = [
    "BOARDS",
    "Board",
    "FirmwareBuildError",
    "FirmwareImage",
    "FirmwareRamOverflow",
    "HostClient",
    "build_firmware",
    "build_host_client",
    "client_arena_bytes",
    "image_dict",
    "mpu_ram_budget",
    "required_arena_bytes",
    "size_report",
]

CROSS_GCC = "arm-none-eabi-gcc"
CROSS_SIZE = "arm-none-eabi-size"
DEFAULT_STACK_BYTES = 2048  # application stack (PSP); the client needs under 1 KiB (-fstack-usage)
MSP_STACK_BYTES = 1024  # exception handlers (fault report, UART RX)
FLASH_BYTES = 1 << 20  # code region of the MPU map (SSRAM1 at 0x0 stands in for flash)

# Shared by both builds: the firmware's numerics must not depend on whether the compiler may
# fuse multiply-adds (the host library, tinytwin.firmware.hostlib, uses the same flag), and
# no pass may turn loops into libc calls (the firmware links without libc).
COMMON_CFLAGS: tuple[str, ...] = (
    "-std=c99",
    "-O2",
    "-Wall",
    "-Wextra",
    "-ffp-contract=off",
    "-fno-tree-loop-distribute-patterns",
)
CROSS_CFLAGS: tuple[str, ...] = (
    "-mthumb",
    "-ffreestanding",
    "-nostdlib",
    "-ffunction-sections",
    "-fdata-sections",
    "-fno-unwind-tables",
    "-fno-asynchronous-unwind-tables",
    "-Wl,--gc-sections",
)


class FirmwareBuildError(TinyTwinError):
    """The firmware could not be built (missing toolchain, compiler error)."""


class FirmwareRamOverflow(FirmwareBuildError, MemoryPlanError):
    """The image does not fit the device's RAM budget (the linker's RAM region overflowed)."""

    def __init__(self, message: str, overflow_bytes: int) -> None:
        super().__init__(message)
        self.overflow_bytes = overflow_bytes


@dataclass(frozen=True)
class Board:
    """A QEMU machine and the compiler flags of its core."""

    machine: str  # qemu-system-arm -M
    cpu: str  # core name, for reports
    flags: tuple[str, ...]
    fpu: str  # "none", "fpv4-sp", "fpv5-dp"


BOARDS: dict[str, Board] = {
    "mps2-an385": Board("mps2-an385", "cortex-m3", ("-mcpu=cortex-m3", "-mfloat-abi=soft"), "none"),
    "mps2-an386": Board(
        "mps2-an386", "cortex-m4", ("-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"), "fpv4-sp"
    ),
    "mps2-an500": Board(
        "mps2-an500", "cortex-m7", ("-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"), "fpv5-dp"
    ),
}


@dataclass(frozen=True)
class FirmwareImage:
    """A built firmware ELF and its memory figures (bytes; Berkeley ``size``: bss includes
    the stacks and the arena)."""

    elf: Path
    board: str
    cpu: str
    ram_bytes: int  # RAM budget the image was linked and MPU-guarded for
    arena_bytes: int
    stack_bytes: int  # application stack (PSP)
    msp_stack_bytes: int  # exception handlers' stack (MSP)
    text: int
    data: int
    bss: int

    @property
    def flash_used(self) -> int:
        return self.text + self.data

    @property
    def ram_used(self) -> int:
        return self.data + self.bss


@dataclass(frozen=True)
class HostClient:
    """The firmware client built as a host executable (same protocol on stdin/stdout)."""

    exe: Path
    arena_bytes: int
    board: str = "host"


# ---------------------------------------------------------------------------------- sizes


def _align8(n: int) -> int:
    return (n + 7) & ~7


def client_arena_bytes(sizes: Sequence[int], batch_size: int, momentum: bool) -> int:
    """Arena bytes the client's ``T`` command takes for an MLP of layer widths ``sizes``.

    The model's share is ``tt_mlp_arena_bytes`` itself (through :mod:`tinytwin.firmware.hostlib`,
    the one definition); the client adds the labels and the order positions of one batch
    (see the comment at the top of ``firmware/client/tt_client.c``)."""
    from tinytwin.firmware import hostlib

    model = hostlib.arena_bytes(sizes, batch_size, momentum)
    if model == 0:
        raise TinyTwinError(
            f"invalid MLP for the firmware: sizes={list(sizes)} batch_size={batch_size} "
            f"(1..{hostlib.MAX_LAYERS} layers, positive widths)"
        )
    return model + 2 * _align8(4 * batch_size)


def required_arena_bytes(sizes: Sequence[int], batch_size: int, momentum: bool = False, merges: bool = True) -> int:
    """Arena bytes for training and, with ``merges``, for the M (one model) and G (two
    vectors) commands, which reuse the same arena."""
    need = client_arena_bytes(sizes, batch_size, momentum)
    if merges:
        n_params = sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))
        need = max(need, 2 * _align8(4 * n_params))
    return need


def mpu_ram_budget(ram_bytes: int) -> int:
    """The RAM budget the MPU can enforce exactly: a multiple of 32 B that is a sum of at most
    six powers of two (one MPU region each); anything else is rounded down to it."""
    if ram_bytes < 1024:
        raise TinyTwinError(f"a firmware RAM budget of {ram_bytes} B is too small (at least 1024 B)")
    units, kept = ram_bytes // 32, 0
    for bit in range(units.bit_length() - 1, -1, -1):
        if units >> bit & 1 and bin(kept).count("1") < 6:
            kept |= 1 << bit
    return kept * 32


# ---------------------------------------------------------------------------------- toolchain


def _cache_root() -> Path:
    return cache.cache_dir() / "firmware"


def _firmware_dir() -> Path:
    from tinytwin.firmware import hostlib

    return hostlib.firmware_dir()


def _missing_toolchain(tool: str) -> FirmwareBuildError:
    return FirmwareBuildError(
        f"{tool} not found: the firmware twin needs the Arm cross compiler; install the Debian packages "
        "gcc-arm-none-eabi and libnewlib-arm-none-eabi (scripts/setup_env.sh installs them)"
    )


@functools.cache
def _tool_version(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise _missing_toolchain(tool)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    return f"{path}\n{out.stdout.splitlines()[0] if out.stdout else ''}"


def _host_cc() -> str:
    name = os.environ.get("CC", "").strip() or "cc"
    found = shutil.which(name) or shutil.which("gcc")
    if found is None:
        raise FirmwareBuildError("no C compiler found for the host client; install the 'gcc' package")
    return found


def _sources(fw: Path, port: str) -> list[Path]:
    return [*sorted((fw / "lib").glob("*.c")), fw / "client" / "tt_client.c", *sorted((fw / "port" / port).glob("*.c"))]


def _digest(parts: Sequence[str], files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    for path in files:
        h.update(str(path.name).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def _build_into_cache(key_dir: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a fresh temporary folder next to ``key_dir``, then rename it into
    place; a concurrent builder that won the race is fine (its result is identical)."""
    if (key_dir / "meta.json").is_file():
        return key_dir
    cache.prepare(key_dir.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key_dir.name}-", dir=key_dir.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, key_dir)
        except OSError:
            if not (key_dir / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return key_dir


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if "error" in line.lower():
            return line.strip()
    return stderr.strip().splitlines()[-1] if stderr.strip() else "unknown error"


# ---------------------------------------------------------------------------------- cross build


def _section_sizes(elf: Path) -> dict[str, int]:
    size = shutil.which(CROSS_SIZE)
    if size is None:
        raise _missing_toolchain(CROSS_SIZE)
    out = subprocess.run([size, "-B", "-d", str(elf)], capture_output=True, text=True, timeout=60, check=True).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def build_firmware(
    board: str,
    ram_bytes: int,
    arena_bytes: int,
    stack_bytes: int = DEFAULT_STACK_BYTES,
    extra_cflags: Sequence[str] = (),
) -> FirmwareImage:
    """Cross-compile the client for ``board`` with a RAM budget and a static arena (bytes).

    ``ram_bytes`` is rounded down to what the MPU enforces exactly (:func:`mpu_ram_budget`;
    powers of two and sums like 192 KiB are exact).  Raises :class:`FirmwareRamOverflow` when
    the arena, stacks and static data exceed the budget, :class:`FirmwareBuildError` when the
    cross compiler is missing or fails."""
    if board not in BOARDS:
        raise TinyTwinError(f"unknown firmware board {board!r}; expected one of {', '.join(BOARDS)}")
    if arena_bytes < 8 or stack_bytes < 256:
        raise TinyTwinError(f"firmware arena ({arena_bytes} B) or stack ({stack_bytes} B) too small")
    spec = BOARDS[board]
    ram = mpu_ram_budget(ram_bytes)
    stack = _align8(stack_bytes)
    gcc = shutil.which(CROSS_GCC)
    if gcc is None:
        raise _missing_toolchain(CROSS_GCC)
    fw = _firmware_dir()
    sources = _sources(fw, "cm4")
    linker_script = fw / "port" / "cm4" / "link.ld"
    flags = [
        *spec.flags,
        *COMMON_CFLAGS,
        *CROSS_CFLAGS,
        *extra_cflags,
        f"-DTT_ARENA_BYTES={arena_bytes}",
        f'-DTT_BOARD="{board}"',
        f"-I{fw / 'include'}",
        f"-Wl,--defsym=RAM_SIZE={ram}",
        f"-Wl,--defsym=STACK_SIZE={stack}",
        f"-Wl,--defsym=MSP_STACK_SIZE={MSP_STACK_BYTES}",
        f"-Wl,--defsym=FLASH_SIZE={FLASH_BYTES}",
        "-T",
        str(linker_script),
    ]
    key = _digest([_tool_version(CROSS_GCC), *flags], [*sources, linker_script, *sorted((fw / "include").glob("*.h"))])
    key_dir = _cache_root() / f"{board}-{key}"

    def build(tmp: Path) -> None:
        elf = tmp / "fw.elf"
        cmd = [gcc, *flags, *map(str, sources), "-lgcc", "-o", str(elf)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            over = re.search(r"region [`']RAM' overflowed by (\d+) bytes", proc.stderr)
            if over:
                n = int(over.group(1))
                rest = ram + n - arena_bytes - stack - MSP_STACK_BYTES
                raise FirmwareRamOverflow(
                    f"firmware for {board} with {ram} B RAM: the image needs {n} B more than the RAM budget "
                    f"(arena {arena_bytes} B + stack {stack + MSP_STACK_BYTES} B + data/bss {rest} B); "
                    "give the device more RAM or a smaller model",
                    n,
                )
            if re.search(r"region [`']FLASH' overflowed", proc.stderr):
                raise FirmwareBuildError(f"firmware for {board}: the code does not fit {FLASH_BYTES} B of flash")
            raise FirmwareBuildError(f"building the firmware for {board} failed: {_first_error(proc.stderr)}")
        meta = {
            "board": board,
            "cpu": spec.cpu,
            "ram_bytes": ram,
            "arena_bytes": arena_bytes,
            "stack_bytes": stack,
            "msp_stack_bytes": MSP_STACK_BYTES,
            **_section_sizes(elf),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))

    key_dir = _build_into_cache(key_dir, build)
    meta = json.loads((key_dir / "meta.json").read_text())
    return FirmwareImage(elf=key_dir / "fw.elf", **meta)


def size_report(image: FirmwareImage) -> dict[str, int | str]:
    """Memory figures of an image for docs and reports (bytes)."""
    stacks = image.stack_bytes + image.msp_stack_bytes
    return {
        "board": image.board,
        "cpu": image.cpu,
        "text": image.text,
        "data": image.data,
        "bss": image.bss,
        "flash_used": image.flash_used,
        "ram_budget": image.ram_bytes,
        "ram_used": image.ram_used,
        "ram_free": image.ram_bytes - image.ram_used,
        "arena": image.arena_bytes,
        "stack": image.stack_bytes,
        "handler_stack": image.msp_stack_bytes,
        "static_other": image.ram_used - image.arena_bytes - stacks,
    }


# ---------------------------------------------------------------------------------- host build


def build_host_client(arena_bytes: int) -> HostClient:
    """Build the client as a host executable with a static arena of ``arena_bytes``."""
    if arena_bytes < 8:
        raise TinyTwinError(f"host client arena ({arena_bytes} B) too small")
    cc = _host_cc()
    fw = _firmware_dir()
    sources = _sources(fw, "host")
    flags = [*COMMON_CFLAGS, f"-DTT_ARENA_BYTES={arena_bytes}", f"-I{fw / 'include'}"]
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = _digest([cc, version, *flags], [*sources, *sorted((fw / "include").glob("*.h"))])
    key_dir = _cache_root() / f"hostclient-{key}"

    def build(tmp: Path) -> None:
        cmd = [cc, *flags, *map(str, sources), "-o", str(tmp / "tt_client")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise FirmwareBuildError(f"building the host client failed: {_first_error(proc.stderr)}")
        (tmp / "meta.json").write_text(json.dumps({"arena_bytes": arena_bytes}))

    key_dir = _build_into_cache(key_dir, build)
    return HostClient(exe=key_dir / "tt_client", arena_bytes=arena_bytes)


def image_dict(image: FirmwareImage) -> dict[str, object]:
    """JSON-friendly fields of an image (for run records)."""
    out = asdict(image)
    out["elf"] = str(image.elf)
    return out
