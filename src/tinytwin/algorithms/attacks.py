"""Poisoned updates (spec ``attacks``, :mod:`tinytwin.spec.attacks`): one definition of what an
attacked device sends instead of its honest update, in numpy (device processes never import
torch), used by the simulator and by the emulated devices alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

HUGE_VALUE = 1e30  # the ``huge`` attack's coordinates: finite in float32, and destroys a plain mean


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
    delta: np.ndarray,
    attack: Mapping[str, Any] | None,
    seed: int,
    round_: int,
    device: int,
    history: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """What an attacked device sends instead of its honest ``delta`` (float32 row).

    ``history`` (mutated) keeps, per device, the honest updates the ``stale`` attack replays:
    the simulator carries it in its checkpoint, an emulated device in a file of its own."""
    if not attack:
        return delta
    kind = attack["kind"]
    if kind == "stale":
        if history is None:
            raise ValueError("the stale attack needs the device's update history")
        return stale_update(delta, history, str(device), int(attack.get("delay", 1)))
    if kind in ("sign_flip", "scale"):
        return (delta.astype(np.float64) * float(attack.get("scale", -1.0))).astype(delta.dtype)
    if kind == "gaussian":
        rng = np.random.default_rng([seed, 18, round_, device])
        return (delta + rng.normal(0.0, float(attack.get("sigma", 1.0)), delta.shape)).astype(delta.dtype)
    if kind == "nan":
        return np.full_like(delta, np.nan)
    if kind == "huge":  # finite but enormous: +1e30 in every coordinate (beyond any spec number)
        return np.full_like(delta, HUGE_VALUE)
    if kind == "free_ride":
        return np.zeros_like(delta)
    if kind == "label_flip":  # its data was poisoned (flip_labels); it sends its honest update on it
        return delta
    raise ValueError(f"unknown attack kind {kind!r}")


def attacked_model(
    model: np.ndarray, start: np.ndarray, attack: Mapping[str, Any] | None, seed: int, round_: int, device: int
) -> np.ndarray:
    """What a poisoning peer of a decentralized run sends instead of ``model``: its start model
    plus its attacked update (a label flip poisoned its data instead: it sends its model)."""
    if not attack or attack["kind"] == "label_flip":
        return model
    return start + attack_update(model - start, attack, seed, round_, device)


def stale_update(delta: np.ndarray, history: dict[str, np.ndarray], key: str, delay: int) -> np.ndarray:
    """A free-rider replaying old work: the update of its ``delay``-th previous participation
    (zeros until it has one); this round's honest update joins ``history[key]`` (oldest first)."""
    past = history.get(key, np.zeros((0, delta.size), dtype=delta.dtype))
    sent = past[0].copy() if len(past) >= delay else np.zeros_like(delta)
    history[key] = np.concatenate([past, delta[None, :]])[-delay:]
    return sent


DatasetT = TypeVar("DatasetT")


def flip_labels(
    dataset: DatasetT, parts: list[np.ndarray], attacks: Sequence[Mapping[str, Any]], seed: int
) -> tuple[DatasetT, list[np.ndarray]]:
    """The dataset and partition with every ``label_flip`` device's samples relabelled ``C-1-y``.

    Why copies: devices share the training arrays (and partitions may overlap), so a flipped
    device gets its own copies of its samples, appended to the training set, and its part
    points at them; honest devices see exactly the data they had. Every twin reads the
    partition, so the poisoned shard is the same in all of them."""
    n = len(parts)
    flipped = [d for d in range(n) if (a := attack_of(attacks, d, n, seed)) and a["kind"] == "label_flip"]
    if not flipped:
        return dataset, parts
    x, y = dataset.x_train, dataset.y_train  # type: ignore[attr-defined]
    num_classes = int(dataset.num_classes)  # type: ignore[attr-defined]
    picks = [parts[d] for d in flipped]
    start = len(y)
    new_parts = list(parts)
    for d, idx in zip(flipped, picks):
        new_parts[d] = np.arange(start, start + len(idx), dtype=parts[d].dtype)
        start += len(idx)
    every = np.concatenate(picks)
    x_new = np.concatenate([x, x[every]])
    y_new = np.concatenate([y, (num_classes - 1 - y[every]).astype(y.dtype)])
    return dataclasses.replace(dataset, x_train=x_new, y_train=y_new), new_parts  # type: ignore[type-var]
