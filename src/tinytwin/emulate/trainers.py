"""How a device process trains: in numpy, or by driving its firmware on an emulated board.

The device runtime (:mod:`tinytwin.emulate.device`) does the networking — frames, keys,
link shaping, reconnects — and asks a *trainer* for one round of local training. Two
trainers, one interface, so a firmware device is "just another device" to the coordinator
and its peers (issue #6):

* :class:`NumpyTrainer` — :func:`tinytwin.emulate.mlp_np.train` (MLPs) or
  :func:`tinytwin.emulate.layers_np.train` (any other zoo model: CNNs; the config's
  ``layers``) in the process itself; its compute time is the cost model's (``cfg["compute_s"]``).
* :class:`FirmwareTrainer` — the project's C client on QEMU (``tinytwin.firmware.qemu``),
  started before the process caps anything (QEMU reserves a 1 GiB translation buffer); the
  shard is written once as the board's ``data.bin``, each round's global model and batch
  order as ``round.bin``. Its compute time is the firmware's own instruction count x the
  board's CPI / the profile's clock. A firmware fault (``!FAULT``, MPU violation, lock-up,
  hang) becomes a :class:`DeviceFault` (recorded in the device's ``fault.json``); the runtime
  exits with :data:`FIRMWARE_FAULT_EXIT`.

Both import numpy only (never torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.emulate import layers_np, mlp_np

FIRMWARE_FAULT_EXIT = 87


class DeviceFault(Exception):
    """The device's own hardware failed (a firmware fault): the process reports it and exits."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


@dataclass
class RoundResult:
    params: np.ndarray
    train_loss: float
    steps: int
    modelled_compute_s: float
    extra: dict[str, Any] = field(default_factory=dict)


class NumpyTrainer:
    """Local training in this process (the emulation twin's default device)."""

    caps_process_memory = True

    def __init__(self, cfg: dict[str, Any], x: np.ndarray, y: np.ndarray) -> None:
        layers = cfg.get("layers")
        self.net = layers_np.Net.from_rows(layers) if layers else None  # CNNs; MLPs: mlp_np (tuned)
        self.linears = mlp_np.linears_from(cfg["linears"]) if self.net is None else []
        self.tc = mlp_np.LocalTraining(**cfg["train"])
        self.seed = int(cfg["seed"])
        self.device = int(cfg["device"])
        self.compute_s = float(cfg["compute_s"])
        self.x, self.y = x, y

    def train(self, start: np.ndarray, round_: int) -> RoundResult:
        if self.net is not None:
            params, loss, steps = layers_np.train(
                self.net, start, self.x, self.y, self.tc, self.seed, round_, self.device
            )
            return RoundResult(params, loss, steps, self.compute_s)
        params, loss, steps = mlp_np.train(self.linears, start, self.x, self.y, self.tc, self.seed, round_, self.device)
        return RoundResult(params, loss, steps, self.compute_s)

    def close(self) -> None:
        pass


class FirmwareTrainer:
    """Local training by the C firmware on an emulated Cortex-M board (one QEMU per device)."""

    caps_process_memory = False  # the board's RAM budget is enforced by the linker and the MPU

    def __init__(self, cfg: dict[str, Any], x: np.ndarray, y: np.ndarray) -> None:
        from tinytwin.firmware.qemu import SyncDevice

        fw = cfg["firmware"]
        self.workdir = Path(fw["workdir"])
        self.fault_file = self.workdir / "fault.json"
        self.fault_file.unlink(missing_ok=True)
        self.sizes = [int(s) for s in fw["sizes"]]
        self.relu = [bool(r) for r in fw["relu"]]
        self.cpi, self.clock_hz = float(fw["cpi"]), float(fw["clock_hz"])
        self.timeout = float(fw.get("timeout_s", 120.0))
        self.transport = str(fw.get("transport", "files"))
        self.tc = mlp_np.LocalTraining(**cfg["train"])
        self.seed = int(cfg["seed"])
        self.device = int(cfg["device"])
        self.cost_model_s = float(cfg["compute_s"])
        self.n = len(y)
        self.dev = SyncDevice(_device(fw, self.workdir, self.timeout, f"d{self.device}"))
        self.dev.__enter__()
        self.dev.write_data(x.reshape(len(x), -1), y)

    def train(self, start: np.ndarray, round_: int) -> RoundResult:
        from tinytwin.firmware.qemu import FirmwareFault, batch_order

        order = batch_order(self.seed, round_, self.device, self.n, self.tc.epochs)
        try:
            res = self.dev.train(
                np.asarray(start, np.float32), self.sizes, self.relu, self.tc, order, transport=self.transport
            )
        except FirmwareFault as fault:
            self.fault_file.write_text(
                json.dumps(
                    {"round": round_, "kind": fault.kind, "detail": fault.detail, "returncode": fault.returncode}
                )
            )
            raise DeviceFault(fault.kind, fault.detail) from None
        device_s = res.insns * self.cpi / self.clock_hz
        loss = res.ce_sum / max(1, self.tc.epochs * self.n)
        extra = {
            "insns": res.insns,
            "firmware_compute_s": device_s,
            "cost_model_compute_s": self.cost_model_s,
            "arena_peak": res.arena_peak,
            **_memory_kb(self.dev.pid),
        }
        if self.transport == "uart":
            extra.update(
                uart_bytes_in=res.uart_bytes_in,
                uart_bytes_out=res.uart_bytes_out,
                uart_in_s=res.uart_in_seconds,
                uart_out_s=res.uart_out_seconds,
            )
        return RoundResult(res.params, loss, res.steps, device_s, extra)

    def close(self) -> None:
        self.dev.close()


def _device(fw: dict[str, Any], workdir: Path, timeout: float, name: str) -> Any:
    """The board of a ``firmware`` config: a QEMU instance, or a Wasmtime process (``runtime: wasm``)."""
    if fw.get("runtime") == "wasm":
        from tinytwin.firmware.wasm import WasmDevice
        from tinytwin.firmware.wasm_build import WasmModule

        m = fw["module"]
        module = WasmModule(**{**m, "wasm": Path(m["wasm"]), "cwasm": Path(m["cwasm"])})
        return WasmDevice(module, workdir, int(fw["memory_bytes"]), timeout=timeout, name=name)
    from tinytwin.firmware.build import FirmwareImage
    from tinytwin.firmware.qemu import QemuDevice

    image = FirmwareImage(**{**fw["image"], "elf": Path(fw["image"]["elf"])})
    return QemuDevice(image, workdir, timeout=timeout, name=name)


def _memory_kb(pid: int | None) -> dict[str, int]:
    """Rss and Pss of the QEMU instance (or the Wasmtime process) in kB, from /proc/PID/smaps_rollup."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key = line.split(":")[0]
                if key in ("Rss", "Pss"):
                    out[f"qemu_{key.lower()}_kb"] = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return out


def make_trainer(cfg: dict[str, Any], x: np.ndarray, y: np.ndarray) -> NumpyTrainer | FirmwareTrainer:
    return FirmwareTrainer(cfg, x, y) if cfg.get("twin") == "firmware" else NumpyTrainer(cfg, x, y)


def read_fault(workdir: Path) -> dict[str, Any] | None:
    """The fault a firmware device recorded before it exited (coordinator side)."""
    try:
        return json.loads((Path(workdir) / "fault.json").read_text())
    except (OSError, ValueError):
        return None
