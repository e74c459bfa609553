"""Availability timeline: which devices are online, offline or failed in each round.

Computed once for the whole run from the spec and the seed, so a resumed run sees the
same timeline as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytwin.rng import Stream, stream_rng
from tinytwin.spec.schema import FailureSpec

ONLINE, OFFLINE, FAILED = 0, 1, 2
STATE_NAMES = {ONLINE: "online", OFFLINE: "offline", FAILED: "failed"}


@dataclass(frozen=True)
class Timeline:
    """``state[r - 1, d]`` is device d's state in round r."""

    state: np.ndarray  # (rounds, devices) int8

    def online(self, round_: int) -> np.ndarray:
        return self.state[round_ - 1] == ONLINE

    def changes(self, round_: int) -> list[tuple[int, str]]:
        """(device, event kind) for every device whose state changed at the start of ``round_``."""
        now = self.state[round_ - 1]
        before = np.full_like(now, ONLINE) if round_ == 1 else self.state[round_ - 2]
        out = []
        for d in np.flatnonzero(now != before):
            kind = {ONLINE: "join", OFFLINE: "leave", FAILED: "failure"}[int(now[d])]
            out.append((int(d), kind))
        return out


def build_timeline(spec: FailureSpec, num_devices: int, rounds: int, seed: int) -> Timeline:
    state = np.zeros((rounds, num_devices), dtype=np.int8)
    for item in spec.join:
        state[: item.round - 1, item.device] = OFFLINE
    for item in spec.leave:
        state[item.round - 1:, item.device] = OFFLINE
    failed = np.zeros(num_devices, dtype=bool)
    fail_round = {item.device: item.round for item in spec.permanent}
    for r in range(1, rounds + 1):
        for d, fr in fail_round.items():
            if fr == r:
                failed[d] = True
        if spec.permanent_probability:
            draws = stream_rng(seed, Stream.FAILURES, r).random(num_devices)
            failed |= draws < spec.permanent_probability
        state[r - 1, failed] = FAILED
    return Timeline(state)
