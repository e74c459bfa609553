"""An emulation's options, and their JSON form in ``emulate/coordinator.json`` (a resumed
coordinator runs with the options its run was started with). Shared by the three families.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

MiB = 2**20


@dataclass
class EmulateOptions:
    time_scale: float = 0.01
    """Wall seconds per modelled second for link and compute pacing (0: no pacing)."""
    round_timeout_s: float = 120.0
    """How long the coordinator waits for the survivors' updates (plus the paced times)."""
    start_timeout_s: float = 60.0
    mem_slack_bytes: int = 16 * MiB
    """Added to the profile's training RAM for numpy temporaries (see docs/emulation.md)."""
    mem_budget_override: dict[int, int] = field(default_factory=dict)
    """device -> bytes above the process's baseline, replacing the computed budget."""
    netns: bool = False
    """One network namespace per device, links shaped by the kernel (:mod:`tinytwin.emulate.netns`)."""
    reconnect_grace_s: float = 60.0
    """How long a device keeps calling a vanished coordinator before it exits (resume window)."""
    firmware_all: bool = False
    """Every group runs as firmware on emulated boards (``--twin firmware``); else each group's ``twin``."""
    firmware_arena_override: dict[int, int] = field(default_factory=dict)
    """device -> arena bytes its firmware image is built with (tests: a run-time arena fault)."""
    tls: bool = False
    """Devices reach the coordinator over TLS, verified against a CA made for the run (emulate/tls.py)."""
    broker_url: str | None = None
    """``transport: mqtt``: an MQTT broker already running (``mqtt://host:port``); None: start mosquitto."""


OptionsT = TypeVar("OptionsT", bound=EmulateOptions)


def options_to_json(opt: EmulateOptions) -> dict[str, Any]:
    data = asdict(opt)
    data["mem_budget_override"] = {str(k): v for k, v in opt.mem_budget_override.items()}
    data["firmware_arena_override"] = {str(k): v for k, v in opt.firmware_arena_override.items()}
    return data


def options_from_json(
    data: dict[str, Any],
    cls: type[OptionsT] = EmulateOptions,  # type: ignore[assignment]
    int_lists: tuple[str, ...] = (),
) -> OptionsT:
    """The options (of class ``cls``) an emulation was started with (``emulate/coordinator.json``):
    the fields ``cls`` knows, JSON's string keys made ints again (``int_lists``: {int: [int]} fields)."""
    known = {f.name for f in fields(cls)}
    data = {k: v for k, v in data.items() if k in known}
    for k in ("mem_budget_override", "firmware_arena_override"):
        data[k] = {int(d): int(v) for d, v in data.get(k, {}).items()}
    for k in int_lists:
        data[k] = {int(r): [int(x) for x in xs] for r, xs in data.get(k, {}).items()}
    return cls(**data)


def options_as(options: EmulateOptions | None, cls: type[OptionsT]) -> OptionsT:
    """``options`` as a family's options class ``cls`` (its defaults for None)."""
    options = options or cls()
    return options if isinstance(options, cls) else cls(**vars(options))
