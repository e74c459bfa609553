"""Readable labels and unit-aware values for summary keys the report does not know by name.

Engines add summary keys over time (``energy_j_total``, ``device_rss_kb``, a nested
``emulate`` block); a report that prints them as "Energy j total" or as raw JSON reads like
a debug dump. The keys follow a naming convention — the unit is the suffix (``_s``, ``_j``,
``_bytes``, ``_kb``) — so the label drops the suffix, the value is formatted in that unit,
and statistics nested under such a key (``min``, ``median``, ``max``…) inherit it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tinytwin.report.format import format_accuracy, format_bytes, format_energy, format_number, format_seconds

LABELS: dict[str, str] = {
    "energy_j_total": "Energy, all devices",
    "uplink_message_bytes": "Uplink message size",
    "downlink_message_bytes": "Downlink message size",
    "message_payload_bytes": "Message payload size",
    "final_accuracy_across_devices": "Final accuracy across devices",
    "final_consensus_distance": "Final consensus distance",
    "emulate": "Emulation",
    "firmware": "Firmware devices",
    "time_scale": "Time scale (wall s per modelled s)",
    "modelled_time_s": "Modelled time",
    "startup_s": "Start-up time",
    "wall_per_round_s": "Wall time per round",
    "device_rss_kb": "Device process memory (RSS)",
    "device_pss_kb": "Device process memory (PSS)",
    "qemu_rss_kb": "QEMU memory (RSS)",
    "qemu_pss_kb": "QEMU memory (PSS)",
    "control_bytes": "Control traffic",
    "frames_rejected": "Frames rejected",
    "devices_with_torch": "Devices running torch",
    "process_starts": "Device processes started",
    "flash_components": "Flash components",
    "components": "RAM components",
    "degree_min": "Smallest degree",
    "degree_max": "Largest degree",
    "degree_mean": "Mean degree",
    "component_sizes": "Component sizes",
    "insns_per_round_median": "Instructions per round (median)",
}
WORDS = {
    "acc": "accuracy",
    "rss": "RSS",
    "pss": "PSS",
    "cpi": "CPI",
    "qemu": "QEMU",
    "lr": "learning rate",
    "num": "number of",
    "insns": "instructions",
    "ram": "RAM",
    "sim": "simulated",
    "la": "LA",
    "ga": "GA",
    "ok": "OK",
    "elf": "ELF",
    "bss": "BSS",
}
UNIT_SUFFIXES: dict[str, Callable[[Any], str]] = {
    "bytes": format_bytes,
    "kb": lambda v: format_bytes(v * 1024),  # /proc reports kB meaning KiB
    "j": format_energy,
    "s": format_seconds,
}


def unit_of(key: str) -> Callable[[Any], str] | None:
    """The formatter a key's suffix implies (``wall_time_s`` → seconds), or None."""
    tokens = str(key).lower().split("_")
    for i in range(len(tokens) - 1, -1, -1):  # energy_j_total and energy_j_per_device carry the unit inside
        if tokens[i] in UNIT_SUFFIXES and (i > 0 or tokens[i] == "bytes"):
            return UNIT_SUFFIXES[tokens[i]]
    if "accuracy" in tokens or tokens[0] == "acc":
        return lambda v: format_accuracy(v) if isinstance(v, float) and 0.0 <= v <= 1.0 else format_number(v)
    return None


def label(key: str) -> str:
    """``wall_per_round_s`` → "Wall per round"; known keys by name (``LABELS``)."""
    if key in LABELS:
        return LABELS[key]
    tokens = [t for t in str(key).split("_") if t]
    kept = [t for i, t in enumerate(tokens) if not (i > 0 and t.lower() in UNIT_SUFFIXES)] or tokens
    words = " ".join(WORDS.get(t.lower(), t) for t in kept)
    return words[:1].upper() + words[1:]


def value_text(key: str, value: Any, inherited: Callable[[Any], str] | None = None) -> str:
    """A scalar in the unit its key (or its parent's key) names; plain otherwise."""
    fmt = unit_of(key) or inherited
    if fmt is not None and isinstance(value, int | float) and not isinstance(value, bool):
        return fmt(value)
    return format_number(value)
