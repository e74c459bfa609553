"""Run the firmware client as a device: one QEMU Cortex-M instance (or the host executable).

Why this shape (measured facts: ``../shared/reference/qemu-cortex-m.md``):

- One process per device, spoken to over ``-serial stdio`` with asyncio pipes — no ports, no
  socket files, no races; it scales to hundreds of instances.  Control lines go over the UART,
  weights and data through semihosting files in the device's own working directory (each byte
  into QEMU's UART costs the host ~33 µs of CPU; files move ~60-90 MiB/s).
- ``transport="uart"`` (:meth:`FirmwareDevice.train`) is the "realistic serial cost" mode:
  round.bin goes to the device over the UART ("W", raw bytes) and update.bin comes back the
  same way ("U"), each transfer timed; :func:`serial_seconds` gives what the same bytes take on
  a real UART at a given baud rate (QEMU ignores the baud rate: ~36 KiB/s into the device).
- ``-icount shift=0``: every guest instruction is 1 ns of virtual time, so the firmware's
  FPGAIO tick deltas ×40 are exact, deterministic instruction counts.
- A device never hangs its host: every wait has a timeout that kills the process group; the
  child dies with its parent (``PR_SET_PDEATHSIG``) and dumps no core; a firmware fault
  ("!FAULT" + exit code 3), a QEMU lockup (SIGABRT with "Lockup" on stderr) or a timeout all
  become one exception, :class:`FirmwareFault`.

The file formats of protocol v1 (``firmware/include/tt_client.h``) are pure functions in
:mod:`tinytwin.firmware.protocol` (:func:`round_bytes`, :func:`data_bytes`, :func:`mix_bytes`,
:func:`gist_bytes`, re-exported here) so any driver can reuse them.  :class:`QemuDevice` runs a built image, :class:`HostDevice` the host build of
the same client; both are :class:`FirmwareDevice`.  :class:`SyncDevice` wraps either for
synchronous code.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import os
import resource
import shutil
import signal
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from tinytwin.errors import TinyTwinError
from tinytwin.firmware.build import FirmwareImage, HostClient
from tinytwin.firmware.protocol import (
    PROTOCOL_VERSION,
    FirmwareError,
    batch_order,
    data_bytes,
    f32,
    gist_bytes,
    mix_bytes,
    param_count,
    params_from,
    parse_fields,
    read_params,
    round_bytes,
    serial_seconds,
)

__all__ = [
    "FirmwareDevice",
    "FirmwareError",
    "FirmwareFault",
    "HostDevice",
    "MergeResult",
    "QemuDevice",
    "SyncDevice",
    "TrainResult",
    "UartTransfer",
    "batch_order",
    "data_bytes",
    "gist_bytes",
    "mix_bytes",
    "parse_fields",
    "qemu_argv",
    "read_params",
    "round_bytes",
    "serial_seconds",
]

QEMU_BINARY = "qemu-system-arm"
_STDERR_CAP = 64 * 1024
_PR_SET_PDEATHSIG = 1
try:  # loaded in the parent: the forked child must not run the dynamic loader
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _LIBC = None


class FirmwareFault(TinyTwinError):
    """A device died or stopped answering.

    ``kind``: "arena", "memmanage", "busfault", "usagefault", "hardfault" (the firmware's
    "!FAULT" line), "lockup" (QEMU aborted), "timeout" (killed), "exit" (ended unexpectedly).
    ``detail``: the rest of the fault line or the reason; ``returncode``: the process's exit
    status (3 for a firmware fault, -6 for a lockup, -9 after a kill); ``fields``: the
    ``key=value`` pairs of the fault line (cfsr, mmfar, need, have, ...)."""

    def __init__(self, kind: str, detail: str, returncode: int | None, device: str = "") -> None:
        self.kind, self.detail, self.returncode = kind, detail, returncode
        self.fields = parse_fields(detail)
        where = f"{device}: " if device else ""
        super().__init__(f"{where}firmware fault {kind}: {detail} (exit status {returncode})")


@dataclass(frozen=True)
class TrainResult:
    """Reply to ``T``: the trained parameters and what the device measured."""

    params: np.ndarray
    steps: int
    ce_sum: float  # sum of the samples' cross-entropies over the round (exact, from ce_bits)
    ticks: int  # FPGAIO ticks of the training loop (0 on the host)
    insns: int  # instructions = ticks × 40 under -icount shift=0 (0 on the host)
    arena_used: int
    arena_peak: int
    transport: str = "files"  # how round.bin / update.bin moved: "files" or "uart"
    uart_bytes_in: int = 0  # round.bin bytes sent to the device over the UART ("W" payload)
    uart_bytes_out: int = 0  # update.bin bytes received over the UART ("U" payload)
    uart_in_seconds: float = 0.0  # wall seconds of the W transfer (command line to "OK W")
    uart_out_seconds: float = 0.0  # wall seconds of the U transfer (command line to the last byte)


@dataclass(frozen=True)
class UartTransfer:
    """One bulk transfer over the UART ("W" in, "U" out): the payload bytes (without the
    command/reply line), the host's wall seconds, and for "W" the device's ticks/insns."""

    nbytes: int
    seconds: float
    ticks: int = 0
    insns: int = 0


@dataclass(frozen=True)
class MergeResult:
    """Reply to ``M`` / ``G``: the merged parameters and the measured work."""

    params: np.ndarray
    ticks: int
    insns: int


# ---------------------------------------------------------------------------------- processes


def _child_setup(parent: int) -> None:
    """In the child between fork and exec: die with the parent, never dump core."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def qemu_argv(elf: Path, board: str) -> list[str]:
    """The QEMU command line of one device (no monitor, UART on stdio, semihosting, icount)."""
    return [
        QEMU_BINARY,
        "-M",
        board,
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-semihosting-config",
        "enable=on,target=native",
        "-icount",
        "shift=0",
        "-kernel",
        str(elf),
    ]


class FirmwareDevice:
    """One device process speaking protocol v1 over stdin/stdout, with files in ``workdir``.

    ``timeout``: seconds a command may take before the device is killed and
    :class:`FirmwareFault` ("timeout") is raised; ``boot_timeout`` the same for the banner.
    Use ``async with`` (or call :meth:`kill` in a ``finally``) so no process outlives it."""

    def __init__(
        self, argv: Sequence[str], workdir: Path, name: str = "", timeout: float = 60.0, boot_timeout: float = 10.0
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.workdir = Path(workdir)
        self.name = name or Path(self.argv[0]).name
        self.timeout = timeout
        self.boot_timeout = boot_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.banner: dict[str, str] = {}
        self.boot_seconds = 0.0
        self.log: list[str] = []  # device lines that were not replies
        self._stderr = bytearray()
        self._stderr_task: asyncio.Task[None] | None = None
        self._n_data: int | None = None

    # -------------------------------------------------------------- life cycle

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    @property
    def stderr_text(self) -> str:
        return self._stderr.decode(errors="replace")

    async def start(self) -> dict[str, str]:
        """Spawn the device and wait for its "RDY" banner; returns the banner's fields."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if shutil.which(self.argv[0]) is None and not Path(self.argv[0]).is_file():
            raise TinyTwinError(
                f"{self.argv[0]} not found: the firmware twin needs QEMU; install the Debian "
                "package qemu-system-arm (scripts/setup_env.sh installs it)"
            )
        t0 = time.perf_counter()
        parent = os.getpid()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=self.workdir,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=lambda: _child_setup(parent),
        )
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        line = await self._expect(lambda text: text.startswith("RDY "), "boot", self.boot_timeout)
        self.boot_seconds = time.perf_counter() - t0
        tokens = line.split()
        if len(tokens) < 3 or tokens[1] != "tinytwin-fw" or tokens[2] != str(PROTOCOL_VERSION):
            await self.kill()
            raise FirmwareError(f"{self.name}: unexpected banner {line!r} (protocol {PROTOCOL_VERSION} wanted)")
        self.banner = parse_fields(line)
        return self.banner

    async def stop(self, code: int = 0) -> int:
        """Ask the device to exit ("Q <code>"); kill it if it does not within a few seconds."""
        if self.proc is None or self.proc.returncode is not None:
            return self.returncode if self.returncode is not None else 0
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"Q {code}\n".encode())
            await self.proc.stdin.drain()
            await asyncio.wait_for(self.proc.wait(), 5.0)
        except (TimeoutError, ConnectionError, BrokenPipeError):
            await self.kill()
        await self._finish_stderr()
        return int(self.proc.returncode if self.proc.returncode is not None else -9)

    async def kill(self) -> None:
        """Kill the device's whole process group and reap it (idempotent)."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            await self.proc.wait()
        await self._finish_stderr()

    async def __aenter__(self) -> FirmwareDevice:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    # -------------------------------------------------------------- commands

    async def write_data(self, x: np.ndarray, y: np.ndarray) -> None:
        """Store the device's shard as data.bin (its "flash"; read batch by batch by T)."""
        (self.workdir / "data.bin").write_bytes(data_bytes(x, y))
        self._n_data = len(y)

    async def train(
        self,
        params: np.ndarray,
        sizes: Sequence[int],
        relu: Sequence[bool],
        cfg: Any,
        order: np.ndarray,
        timeout: float | None = None,
        transport: str = "files",
    ) -> TrainResult:
        """One round of local training ("T").  ``cfg`` has epochs, batch_size, lr, momentum and
        weight_decay (:class:`tinytwin.algorithms.local_config.LocalTraining`; SGD only);
        ``order`` is (epochs, n_samples) positions into data.bin (:func:`batch_order`).

        ``transport``: "files" puts round.bin into the workdir and reads update.bin from it
        (semihosting, fast); "uart" sends round.bin over the UART ("W") and receives
        update.bin over it ("U"), timing both (the result's ``uart_*`` fields).  The numbers
        are the same either way.  ``timeout`` applies to each command."""
        if transport not in ("files", "uart"):
            raise ValueError(f"transport must be 'files' or 'uart', got {transport!r}")
        if getattr(cfg, "optimizer", "sgd") != "sgd" or getattr(cfg, "prox_mu", 0.0):
            raise TinyTwinError(
                "the firmware client trains with SGD (momentum, weight decay) only; "
                f"got optimizer={getattr(cfg, 'optimizer', 'sgd')} prox_mu={getattr(cfg, 'prox_mu', 0.0)}"
            )
        n_params = param_count(sizes)
        payload = round_bytes(
            params,
            sizes,
            relu,
            int(cfg.epochs),
            int(cfg.batch_size),
            float(cfg.lr),
            float(cfg.momentum),
            float(cfg.weight_decay),
            order,
        )
        up = down = None
        if transport == "uart":
            up = await self.upload_round(payload, timeout)
        else:
            (self.workdir / "round.bin").write_bytes(payload)
        f = await self.command("T", timeout)
        if transport == "uart":
            raw, down = await self.download_update(timeout)
            out = params_from(raw, "update.bin (over the UART)", n_params)
        else:
            out = read_params(self.workdir / "update.bin", n_params)
        bits = f.get("ce_bits")
        ce = struct.unpack("<d", int(bits, 16).to_bytes(8, "little"))[0] if bits else float(f["ce_sum"])
        return TrainResult(
            params=out,
            steps=int(f["steps"]),
            ce_sum=ce,
            ticks=int(f["ticks"]),
            insns=int(f["insns"]),
            arena_used=int(f["arena_used"]),
            arena_peak=int(f["arena_peak"]),
            transport=transport,
            uart_bytes_in=up.nbytes if up else 0,
            uart_bytes_out=down.nbytes if down else 0,
            uart_in_seconds=up.seconds if up else 0.0,
            uart_out_seconds=down.seconds if down else 0.0,
        )

    async def upload_round(self, payload: bytes, timeout: float | None = None) -> UartTransfer:
        """ "W": send ``payload`` as raw bytes over the UART; the device stores it as round.bin.
        ``seconds``: from writing the command line until the "OK W" reply (the device has
        consumed and stored every byte by then)."""
        proc = self._running()
        limit = self.timeout if timeout is None else timeout
        t0 = time.perf_counter()
        try:
            proc.stdin.write(f"W {len(payload)}\n".encode() + bytes(payload))
        except (ConnectionError, BrokenPipeError):
            await self._died("while sending 'W'")
        # No drain before the reply: the pipe feeds the device as fast as it reads (QEMU holds
        # bytes back until the guest takes them), and a device that faults mid-transfer is
        # then reported by its "!FAULT" line rather than as a broken pipe.
        reply = await self._expect(_is_reply, "'W'", limit)
        seconds = time.perf_counter() - t0
        try:
            await proc.stdin.drain()
        except (ConnectionError, BrokenPipeError):
            await self._died("after 'W'")
        f = self._fields_or_raise("W", reply)
        if int(f.get("bytes", -1)) != len(payload):
            raise FirmwareError(f"{self.name}: 'W' stored {f.get('bytes')} B, sent {len(payload)} B")
        return UartTransfer(len(payload), seconds, int(f.get("ticks", 0)), int(f.get("insns", 0)))

    async def download_update(self, timeout: float | None = None) -> tuple[bytes, UartTransfer]:
        """ "U": the device's update.bin over the UART (the "OK U bytes=<n>" line, then n raw
        bytes).  ``seconds``: from writing the command line until the last byte arrived."""
        proc = self._running()
        limit = self.timeout if timeout is None else timeout
        t0 = time.perf_counter()
        try:
            proc.stdin.write(b"U\n")
            await proc.stdin.drain()
        except (ConnectionError, BrokenPipeError):
            await self._died("while sending 'U'")
        reply = await self._expect(_is_reply, "'U'", limit)
        f = self._fields_or_raise("U", reply)
        n = int(f["bytes"])
        assert proc.stdout is not None
        try:
            raw = await asyncio.wait_for(proc.stdout.readexactly(n), max(limit - (time.perf_counter() - t0), 0.0))
        except TimeoutError:
            await self.kill()
            raise FirmwareFault(
                "timeout", f"'U' payload of {n} B not complete within {limit:g} s; killed", self.returncode, self.name
            ) from None
        except asyncio.IncompleteReadError as exc:
            await self._died(f"after {len(exc.partial)} of {n} B of the 'U' payload")
        return raw, UartTransfer(n, time.perf_counter() - t0)

    async def mix(
        self, weights: Sequence[float], models: Sequence[np.ndarray], timeout: float | None = None
    ) -> MergeResult:
        """DecFedAvg mix ("M"): Σ_k weights[k]·models[k] (model 0 is the device's own)."""
        payload = mix_bytes(weights, models)
        (self.workdir / "mix.bin").write_bytes(payload)
        f = await self.command("M", timeout)
        out = read_params(self.workdir / "mixed.bin", f32(models[0]).size)
        return MergeResult(out, int(f["ticks"]), int(f["insns"]))

    async def gist(
        self,
        own: np.ndarray,
        a_local: float,
        segments: Sequence[tuple[float, np.ndarray, np.ndarray]],
        timeout: float | None = None,
    ) -> MergeResult:
        """Gist merge ("G") of (weight, values, mask) segments into ``own``."""
        (self.workdir / "gist.bin").write_bytes(gist_bytes(own, a_local, segments))
        f = await self.command("G", timeout)
        out = read_params(self.workdir / "merged.bin", f32(own).size)
        return MergeResult(out, int(f["ticks"]), int(f["insns"]))

    async def poke(self, addr: int, timeout: float | None = None) -> None:
        """Store 0xDEADBEEF at ``addr`` on the device (MPU tests): returns, or raises the fault."""
        await self.command(f"P {addr:08x}", timeout)

    async def command(self, line: str, timeout: float | None = None) -> dict[str, str]:
        """Send one command line and return the fields of its "OK" reply."""
        proc = self._running()
        try:
            proc.stdin.write(line.encode() + b"\n")
            await proc.stdin.drain()
        except (ConnectionError, BrokenPipeError):
            await self._died(f"while sending {line!r}")
        verb = line.split()[0]
        reply = await self._expect(_is_reply, f"{verb!r}", self.timeout if timeout is None else timeout)
        return self._fields_or_raise(line, reply)

    def _running(self) -> Any:
        """The live process (its stdin and stdout are pipes), or FirmwareError."""
        if self.proc is None or self.proc.returncode is not None:
            raise FirmwareError(f"{self.name}: device is not running")
        assert self.proc.stdin is not None
        return self.proc

    def _fields_or_raise(self, line: str, reply: str) -> dict[str, str]:
        if reply.startswith("ERR"):
            raise FirmwareError(f"{self.name}: {line!r} refused: {reply[4:]}")
        return parse_fields(reply)

    # -------------------------------------------------------------- reading

    async def _expect(self, accept: Any, what: str, timeout: float) -> str:
        """The next line ``accept`` likes; a fault line, EOF or the timeout raise FirmwareFault."""
        try:
            return await asyncio.wait_for(self._read_until(accept), timeout)
        except TimeoutError:
            await self.kill()
            raise FirmwareFault(
                "timeout", f"no reply to {what} within {timeout:g} s; killed", self.returncode, self.name
            ) from None

    async def _read_until(self, accept: Any) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                await self._died("the device ended without a reply")
            text = raw.decode(errors="replace").rstrip("\r\n")
            if text.startswith("!FAULT"):
                await self._faulted(text)
            if accept(text):
                return text
            self.log.append(text)

    async def _reap(self) -> None:
        """Give a dying device a few seconds to exit on its own, then make sure it is gone."""
        assert self.proc is not None
        try:
            await asyncio.wait_for(self.proc.wait(), 5.0)
        except TimeoutError:
            pass
        await self.kill()

    async def _faulted(self, line: str) -> None:
        """A "!FAULT <kind> <detail>" line: wait for the exit (code 3), then raise."""
        await self._reap()
        parts = line.split(None, 2)
        kind = parts[1] if len(parts) > 1 else "fault"
        if "=" in kind:  # a bare "!FAULT exc=.. cfsr=.." line
            kind = _kind_from_cfsr(parse_fields(line))
        raise FirmwareFault(kind, parts[2] if len(parts) > 2 else "", self.returncode, self.name)

    async def _died(self, why: str) -> NoReturn:
        await self._reap()
        err = self.stderr_text
        if "Lockup" in err:
            first = next((ln for ln in err.splitlines() if "Lockup" in ln), "Lockup")
            raise FirmwareFault("lockup", first.strip(), self.returncode, self.name)
        tail = err.strip().splitlines()[-1] if err.strip() else ""
        raise FirmwareFault("exit", f"{why}{'; stderr: ' + tail if tail else ''}", self.returncode, self.name)

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            chunk = await self.proc.stderr.read(4096)
            if not chunk:
                return
            if len(self._stderr) < _STDERR_CAP:
                self._stderr += chunk[: _STDERR_CAP - len(self._stderr)]

    async def _finish_stderr(self) -> None:
        if self._stderr_task is not None:
            try:
                await asyncio.wait_for(self._stderr_task, 2.0)
            except (TimeoutError, asyncio.CancelledError):
                self._stderr_task.cancel()
            self._stderr_task = None


def _is_reply(text: str) -> bool:
    return text.startswith(("OK ", "ERR ")) or text in ("OK", "ERR")


def _kind_from_cfsr(fields: dict[str, str]) -> str:
    cfsr = int(fields.get("cfsr", "0"), 16)
    if cfsr & 0xFF:
        return "memmanage"
    if cfsr & 0xFF00:
        return "busfault"
    if cfsr & 0xFFFF0000:
        return "usagefault"
    return "hardfault"


class QemuDevice(FirmwareDevice):
    """A built firmware image on its QEMU board (``board`` defaults to the image's)."""

    def __init__(
        self,
        image: FirmwareImage,
        workdir: Path,
        board: str | None = None,
        timeout: float = 60.0,
        boot_timeout: float = 10.0,
        name: str = "",
    ) -> None:
        self.image = image
        self.board = board or image.board
        super().__init__(
            qemu_argv(image.elf, self.board),
            workdir,
            name or f"{self.board}@{Path(workdir).name}",
            timeout,
            boot_timeout,
        )


class HostDevice(FirmwareDevice):
    """The host build of the client: same protocol and numerics, native speed, no counts."""

    def __init__(
        self, client: HostClient, workdir: Path, timeout: float = 60.0, boot_timeout: float = 10.0, name: str = ""
    ) -> None:
        self.client = client
        super().__init__([str(client.exe)], workdir, name or f"host@{Path(workdir).name}", timeout, boot_timeout)


class SyncDevice:
    """Synchronous façade over a :class:`FirmwareDevice` (tests, scripts): every coroutine
    method becomes a blocking call on a private event loop.  Use as a context manager."""

    def __init__(self, device: FirmwareDevice) -> None:
        self.device = device
        self._loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.device, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **k: self._loop.run_until_complete(attr(*a, **k))
        return attr

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self.device.kill())
            self._loop.close()

    def __enter__(self) -> SyncDevice:
        self._loop.run_until_complete(self.device.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
