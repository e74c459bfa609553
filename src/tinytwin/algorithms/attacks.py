"""Poisoned updates (spec ``attacks``, :mod:`tinytwin.spec.attacks`): one definition of what an
attacked device sends instead of its honest update, in numpy (device processes never import
torch), used by the simulator and by the emulated devices alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def attacked_devices(attack: Mapping[str, Any], num_devices: int, seed: int) -> set[int]:
    """The devices ``attack`` applies to: its ``devices`` list, or ``fraction`` of the fleet drawn from ``seed``."""
    chosen = {int(d) for d in attack.get("devices", ()) if int(d) < num_devices}
    k = int(round(float(attack.get("fraction", 0.0)) * num_devices))
    if k:
        chosen |= {int(d) for d in np.random.default_rng([seed, 18]).permutation(num_devices)[:k]}
    return chosen


def attack_of(attacks: Sequence[Mapping[str, Any]], device: int, num_devices: int, seed: int) -> dict[str, Any] | None:
    """The first attack that applies to ``device``, or None (an honest device)."""
    for attack in attacks:
        if device in attacked_devices(attack, num_devices, seed):
            return dict(attack)
    return None


def attack_update(
    delta: np.ndarray, attack: Mapping[str, Any] | None, seed: int, round_: int, device: int
) -> np.ndarray:
    """What an attacked device sends instead of its honest ``delta`` (float32 row)."""
    if not attack:
        return delta
    kind = attack["kind"]
    if kind in ("sign_flip", "scale"):
        return (delta.astype(np.float64) * float(attack.get("scale", -1.0))).astype(delta.dtype)
    if kind == "gaussian":
        rng = np.random.default_rng([seed, 18, round_, device])
        return (delta + rng.normal(0.0, float(attack.get("sigma", 1.0)), delta.shape)).astype(delta.dtype)
    if kind == "nan":
        return np.full_like(delta, np.nan)
    if kind == "free_ride":
        return np.zeros_like(delta)
    raise ValueError(f"unknown attack kind {kind!r}")
