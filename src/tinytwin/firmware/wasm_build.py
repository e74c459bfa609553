"""Build the firmware client as a WebAssembly module (wasm32-wasi) for Wasmtime devices.

Why: a WebAssembly device runs the very same C sources as the QEMU boards and the host
library (``firmware/lib``, ``firmware/client``), on its own port (``firmware/port/wasm``:
WASI stdin/stdout for the UART, the preopened work folder for files, Wasmtime's fuel for the
tick counter).  Debian's clang + lld + wasi-libc build it; ``-ffp-contract=off`` as on every
other build (WebAssembly has no fused multiply-add anyway), so its weights equal the host
library's bit for bit.

The module's linear memory is its static image: data, a fixed stack and the training arena
(a static array, as on the boards).  Its size is fixed at link time, so the device's memory
limit (the profile's RAM budget) is checked here and again by the runner
(:mod:`tinytwin.firmware.wasm_run`).  Builds are cached under ``<cache>/firmware/wasm-<hash>/``
like the other builds, together with Wasmtime's precompiled ``client.cwasm`` (devices start
without compiling).

Public API: :func:`build_wasm`, :func:`check_memory`, :class:`WasmModule`, :class:`WasmMemoryOverflow`.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from tinytwin.errors import MemoryPlanError, TinyTwinError
from tinytwin.firmware.build import (
    COMMON_CFLAGS,
    FirmwareBuildError,
    _build_into_cache,
    _cache_root,
    _digest,
    _firmware_dir,
    _first_error,
    _sources,
)

__all__ = ["WASM_STACK_BYTES", "WasmMemoryOverflow", "WasmModule", "build_wasm", "check_memory", "module_dict"]

CLANG = "clang"
WASM_TARGET = "wasm32-wasi"
WASM_STACK_BYTES = 16384  # the client needs under 1 KiB of stack on the boards; wasm-ld's default is 64 KiB
PAGE_BYTES = 65536
_GCC_ONLY = {"-fno-tree-loop-distribute-patterns"}


class WasmMemoryOverflow(FirmwareBuildError, MemoryPlanError):
    """The module's linear memory at start-up exceeds the device's memory limit."""

    def __init__(self, message: str, overflow_bytes: int) -> None:
        super().__init__(message)
        self.overflow_bytes = overflow_bytes


@dataclass(frozen=True)
class WasmModule:
    """A built module: the ``.wasm``, Wasmtime's precompiled ``.cwasm``, and its figures (bytes)."""

    wasm: Path
    cwasm: Path
    arena_bytes: int
    stack_bytes: int
    module_bytes: int  # size of the .wasm file (what a device would download)
    code_bytes: int  # the code section
    memory_bytes: int  # linear memory at start-up (whole 64 KiB pages)

    @property
    def static_other(self) -> int:
        """Linear memory that is neither arena nor stack: data, bss, page rounding."""
        return self.memory_bytes - self.arena_bytes - self.stack_bytes


def _missing(tool: str) -> FirmwareBuildError:
    return FirmwareBuildError(
        f"{tool} cannot build WebAssembly here: WebAssembly devices need Debian's clang, lld, wasi-libc "
        "and libclang-rt-14-dev-wasm32 (scripts/install_system_packages.sh installs them)"
    )


@functools.cache
def _clang_version() -> tuple[str, str]:
    path = shutil.which(CLANG)
    if path is None or shutil.which("wasm-ld") is None:
        raise _missing("clang" if path is None else "wasm-ld")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    return path, out.splitlines()[0] if out else ""


def _section_sizes(wasm: Path) -> int:
    """Bytes of the code section (id 10) of a WebAssembly binary."""
    raw = wasm.read_bytes()
    pos = 8
    while pos < len(raw):
        sid = raw[pos]
        pos += 1
        size, shift = 0, 0
        while True:
            b = raw[pos]
            pos += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if sid == 10:
            return size
        pos += size
    return 0


def _precompile(wasm: Path, cwasm: Path) -> int:
    """Compile with the devices' engine, store the result; return the start-up memory bytes."""
    import wasmtime

    from tinytwin.firmware import wasm_run

    module = wasmtime.Module(wasm_run.engine(), wasm.read_bytes())
    cwasm.write_bytes(bytes(module.serialize()))
    return wasm_run.memory_min_bytes(module)


def build_wasm(arena_bytes: int, stack_bytes: int = WASM_STACK_BYTES) -> WasmModule:
    """Compile the client for wasm32-wasi with a static arena of ``arena_bytes`` (cached)."""
    if arena_bytes < 8 or stack_bytes < 1024:
        raise TinyTwinError(f"wasm arena ({arena_bytes} B) or stack ({stack_bytes} B) too small")
    try:
        import wasmtime  # noqa: F401
    except ImportError:
        raise FirmwareBuildError(
            "WebAssembly devices need the wasmtime Python package: pip install -c constraints.txt -e '.[wasm]'"
        ) from None
    clang, version = _clang_version()
    fw = _firmware_dir()
    sources = _sources(fw, "wasm")
    stack = (stack_bytes + 15) & ~15
    flags = [
        f"--target={WASM_TARGET}",
        *(f for f in COMMON_CFLAGS if f not in _GCC_ONLY),
        f"-DTT_ARENA_BYTES={arena_bytes}",
        f"-I{fw / 'include'}",
        f"-Wl,-z,stack-size={stack}",
        "-Wl,--strip-all",
    ]
    key = _digest([clang, version, wasmtime_version(), *flags], [*sources, *sorted((fw / "include").glob("*.h"))])
    key_dir = _cache_root() / f"wasm-{key}"

    def build(tmp: Path) -> None:
        wasm = tmp / "client.wasm"
        proc = subprocess.run(
            [clang, *flags, *map(str, sources), "-o", str(wasm)], capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            raise FirmwareBuildError(f"building the WebAssembly client failed: {_first_error(proc.stderr)}")
        memory = _precompile(wasm, tmp / "client.cwasm")
        meta = {
            "arena_bytes": arena_bytes,
            "stack_bytes": stack,
            "module_bytes": wasm.stat().st_size,
            "code_bytes": _section_sizes(wasm),
            "memory_bytes": memory,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))

    key_dir = _build_into_cache(key_dir, build)
    meta = json.loads((key_dir / "meta.json").read_text())
    return WasmModule(wasm=key_dir / "client.wasm", cwasm=key_dir / "client.cwasm", **meta)


def wasmtime_version() -> str:
    try:
        from importlib.metadata import version

        return version("wasmtime")
    except Exception:  # noqa: BLE001 - not installed: build_wasm says so
        return "none"


def check_memory(module: WasmModule, limit_bytes: int, who: str = "WebAssembly device") -> None:
    """Refuse a module whose start-up linear memory exceeds the device's limit (bytes)."""
    if module.memory_bytes <= limit_bytes:
        return
    over = module.memory_bytes - limit_bytes
    raise WasmMemoryOverflow(
        f"{who} with a {limit_bytes} B memory limit: the module needs {module.memory_bytes} B of linear memory, "
        f"{over} B more (arena {module.arena_bytes} B + stack {module.stack_bytes} B + data and page rounding "
        f"{module.static_other} B, in {PAGE_BYTES} B pages); give the device more RAM or a smaller model",
        over,
    )


def module_dict(module: WasmModule) -> dict[str, object]:
    """JSON-friendly fields of a module (for run records and device configs)."""
    out = asdict(module)
    out["wasm"], out["cwasm"] = str(module.wasm), str(module.cwasm)
    return out
