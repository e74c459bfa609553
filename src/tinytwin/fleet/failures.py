"""Availability timeline: which devices are online, offline or failed in each round, and
when each device's link to the server is down.

Computed once for the whole run from the spec and the seed, so a resumed run sees the
same timeline as an uninterrupted one, and every twin reads the same outages from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytwin.rng import Stream, stream_rng
from tinytwin.spec.presence import presence_events
from tinytwin.spec.schema import FailureSpec

ONLINE, OFFLINE, FAILED = 0, 1, 2
STATE_NAMES = {ONLINE: "online", OFFLINE: "offline", FAILED: "failed"}


NEVER = np.inf
"""``link_cut_s`` of a link that stays up for the whole round."""


@dataclass(frozen=True)
class Timeline:
    """``state[r - 1, d]`` is device d's state in round r.

    ``link_cut_s[r - 1, d]``: modelled seconds into round r after which device d's link to
    the server is down (``failures.link_down``); 0 = down for the whole round (the server
    cannot reach it), ``NEVER`` = up all round. A link that goes down stays down until the
    start of a later round, so within a round it can only go from up to down.
    """

    state: np.ndarray  # (rounds, devices) int8
    link_cut_s: np.ndarray | None = None  # (rounds, devices) float64; None: no outages

    def cut_s(self, round_: int) -> np.ndarray:
        """When each device's link goes down in ``round_`` (seconds into it; ``NEVER``: stays up)."""
        if self.link_cut_s is None:
            return np.full(self.state.shape[1], NEVER)
        return self.link_cut_s[round_ - 1]

    def reachable(self, round_: int) -> np.ndarray:
        """Devices whose link is up when ``round_`` starts (the server can select them)."""
        return self.cut_s(round_) > 0

    def link_changes(self, round_: int) -> list[tuple[int, str, float]]:
        """(device, 'link_up' | 'link_down', seconds into the round) for every outage that ends
        at the start of ``round_`` or begins during it."""
        if self.link_cut_s is None:
            return []
        now = self.link_cut_s[round_ - 1]
        down_before = np.zeros_like(now, dtype=bool) if round_ == 1 else self.link_cut_s[round_ - 2] < NEVER
        out = [(int(d), "link_up", 0.0) for d in np.flatnonzero(down_before & (now > 0))]
        starts = (now < NEVER) & (~down_before | (now > 0))
        out += [(int(d), "link_down", float(now[d])) for d in np.flatnonzero(starts)]
        return out

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
    for device, events in presence_events(spec.leave, spec.join).items():
        # Offline exactly between a leave and the next join; before a first join (a new device).
        present, since = events[0][1] == "leave", 1
        for round_, kind in events:
            if not present:
                state[since - 1 : round_ - 1, device] = OFFLINE
            present, since = kind == "join", round_
        if not present:
            state[since - 1 :, device] = OFFLINE
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
    return Timeline(state, _link_cuts(spec, num_devices, rounds))


def _link_cuts(spec: FailureSpec, num_devices: int, rounds: int) -> np.ndarray | None:
    """``failures.link_down`` as per-round cut instants (overlapping outages: the earliest wins)."""
    if not spec.link_down:
        return None
    cut = np.full((rounds, num_devices), NEVER)
    for item in spec.link_down:
        devices = np.asarray(item.devices, dtype=np.int64)
        first = item.round - 1
        cut[first, devices] = np.minimum(cut[first, devices], item.after_s)
        cut[first + 1 : first + item.rounds][:, devices] = 0.0
    return cut
