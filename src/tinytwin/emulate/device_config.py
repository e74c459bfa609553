"""The configuration file a device process starts from (``emulate/devices/dN.json``), as one
typed object for the three coordinators to fill in instead of three hand-built dicts.

Torch-free: device runtimes read the same JSON (as a plain dict, the keys below)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tinytwin.algorithms.local_config import LocalTraining
from tinytwin.store.files import write_private


@dataclass(frozen=True)
class DeviceConfig:
    """What every emulated device needs, whatever the family; ``extra`` holds the family's own
    keys (model rows, algorithm and partners of a peer, firmware image, role)."""

    device: int
    host: str
    port: int
    key_file: str
    data_file: str
    seed: int
    num_params: int
    tensor_sizes: list[int]
    train: LocalTraining
    encoding: str
    time_scale: float
    compute_s: float
    arena_bytes: int
    """The memory plan's training RAM, reserved and touched at each round's start."""
    mem_budget_bytes: int
    """``RLIMIT_DATA`` above the measured runtime baseline (interpreter, numpy, BLAS buffers)."""
    max_frame: int
    reconnect_grace_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The flat dict a device runtime reads (``extra``'s keys at the top level)."""
        data = asdict(self)
        data.pop("extra")
        return {**data, **self.extra}

    def write(self, path: Path) -> None:
        write_private(path, json.dumps(self.as_json()))  # it names the device's key file: 0600


def memory_budget(options: Any, ram_available: int, device: int) -> int:
    """A device's budget above its runtime baseline: its profile's training RAM plus the slack
    for numpy temporaries, or the options' override for that device (tests: an OOM)."""
    return int(options.mem_budget_override.get(device, ram_available + options.mem_slack_bytes))
