"""Userspace link shaper: how long a message occupies a device's link.

The same formula as the simulator's cost model (:func:`tinytwin.fleet.cost.transfer_cost`,
docs/cost-model.md), for one message: the frame is cut into ceil(bytes / MTU) packets with
``header_bytes`` each; ``lost`` packets (negative binomial at the link's loss
probability) are retransmitted and cost their bytes plus one round trip each::

    t = latency + wire_bytes * 8 / bps + lost * 2 * latency

The sender sleeps ``t * time_scale`` before writing the frame (``time_scale = 0``: no
pacing). Pure numpy, used by the coordinator (downlink) and by device processes (uplink).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def userspace_share(link_s: float, nbytes: int, bps: float, link: Link, kernel: str) -> float:
    """The seconds of a message's modelled link time ``link_s`` the sender itself must wait.

    ``none``: all of it. ``rate``: the kernel's tbf already spends the lossless
    serialisation ``(bytes + packets · header) · 8 / bps`` while the frame crosses the veth,
    so the sender waits for the rest — latency, retransmitted bytes and their round trips.
    ``rate+delay``: netem adds latency and loss in the kernel too, so the sender waits for
    nothing.
    """
    if kernel == KERNEL_NONE:
        return link_s
    if kernel == KERNEL_RATE_DELAY:
        return 0.0
    packets = -(-int(nbytes) // int(link.mtu_bytes))
    return max(0.0, link_s - (int(nbytes) + packets * int(link.header_bytes)) * 8.0 / bps)
