"""Userspace link shaper: how long a message occupies a device's link.

The same formula as the simulator's cost model (:func:`tinytwin.fleet.cost.transfer_cost`,
docs/cost-model.md), for one message: the frame is cut into ceil(bytes / MTU) packets with
``header_bytes`` each; ``lost`` packets (negative binomial at the link's loss
probability) are retransmitted and cost their bytes plus one round trip each::

    t = latency + wire_bytes * 8 / bps + lost * 2 * latency

The sender sleeps ``t * time_scale`` before writing the frame (``time_scale = 0``: no
pacing). Pure numpy, used by the coordinator (downlink) and by device processes (uplink).

Shared radio media (docs/cost-model.md): the cost model's phase times
(``RoundCosts.down.time_s`` / ``up.time_s``) already include each transfer's wait for its
medium and duty cycle, so pacing them reproduces the modelled medium schedule.
:class:`MediumGate` is the alternative for pacing that is not planned ahead: the devices of
one medium hold one lock while they send (use one or the other, not both).
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Link:
    latency_s: float
    up_bps: float
    down_bps: float
    loss: float
    mtu_bytes: int
    header_bytes: int


def draw_lost(rng: np.random.Generator, nbytes: int, link: Link) -> int:
    packets = -(-int(nbytes) // int(link.mtu_bytes))
    if link.loss <= 0 or packets == 0:
        return 0
    return int(rng.negative_binomial(packets, 1.0 - link.loss))


def transfer(nbytes: int, bps: float, link: Link, lost: int) -> tuple[float, int]:
    """(link seconds, link bytes incl. packet headers and retransmissions) of one message."""
    packets = -(-int(nbytes) // int(link.mtu_bytes))
    if packets == 0:
        return 0.0, 0
    full = min(int(link.mtu_bytes), int(nbytes)) + int(link.header_bytes)
    wire = int(nbytes) + packets * int(link.header_bytes) + lost * full
    return link.latency_s + wire * 8.0 / bps + lost * 2.0 * link.latency_s, wire


KERNEL_NONE, KERNEL_RATE, KERNEL_RATE_DELAY = "none", "rate", "rate+delay"
"""Who else shapes a link: nobody (loopback TCP), the kernel's tbf (``--netns``), or tbf under
netem (``--netns`` on a kernel with netem)."""


def userspace_share(
    link_s: float, nbytes: int, bps: float, link: Link, kernel: str, medium_wait_s: float = 0.0
) -> float:
    """The seconds of a message's modelled link time ``link_s`` the sender itself must wait.

    ``none``: all of it. ``rate``: the kernel's tbf already spends the lossless
    serialisation ``(bytes + packets · header) · 8 / bps`` while the frame crosses the veth,
    so the sender waits for the rest — latency, retransmitted bytes and their round trips,
    and the wait for a shared medium. ``rate+delay``: netem adds latency and loss in the
    kernel too, so the sender waits only for the medium: ``medium_wait_s``, the part of
    ``link_s`` spent waiting for other devices' airtime or a duty cycle
    (``RoundCosts.down_wait_s`` / ``up_wait_s``), which no per-device qdisc shapes.
    """
    if kernel == KERNEL_NONE:
        return link_s
    if kernel == KERNEL_RATE_DELAY:
        return max(0.0, medium_wait_s)
    packets = -(-int(nbytes) // int(link.mtu_bytes))
    return max(0.0, link_s - (int(nbytes) + packets * int(link.header_bytes)) * 8.0 / bps)


class MediumGate:
    """One lock per shared medium, across processes: its devices send one at a time.

    Why: to let sharing emerge from the emulated processes themselves (e.g. when transfers
    are not planned ahead) instead of pacing the cost model's planned waits. Each medium is
    an ``flock`` on ``<lock_dir>/<medium>.lock``, so the coordinator (downloads) and the
    device processes (uploads) of one medium serialize on the same file. ``lock_dir=None``
    (the default) or ``medium=None`` shares nothing: :meth:`hold` just sleeps.
    """

    def __init__(self, lock_dir: Path | None = None) -> None:
        self.lock_dir = lock_dir
        if lock_dir is not None:
            lock_dir.mkdir(parents=True, exist_ok=True)

    def hold(self, medium: str | None, seconds: float) -> float:
        """Occupy ``medium`` for ``seconds`` (a transfer's airtime); returns the seconds waited for it."""
        if self.lock_dir is None or medium is None:
            time.sleep(max(0.0, seconds))
            return 0.0
        fd = os.open(self.lock_dir / f"{medium}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            t0 = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            waited = time.monotonic() - t0
            time.sleep(max(0.0, seconds))
            return waited
        finally:
            os.close(fd)  # closing the descriptor releases the lock
