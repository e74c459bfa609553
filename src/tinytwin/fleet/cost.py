"""Time and energy cost model, vectorised over devices.

Per device and round (docs/cost-model.md has the worked example):

- compute time   t_c = FLOPs / effective throughput, with
  FLOPs = epochs · samples · (forward + backward FLOPs per sample) + steps · optimizer FLOPs;
- transfer time  t = latency + (wire bytes + retransmitted bytes) · 8 / bandwidth
  + lost packets · 2 · latency (one round trip to notice each loss), where a message of
  ``payload`` bytes is cut into ceil(payload / MTU) packets, each carrying ``header_bytes``;
  lost packets are drawn from the link's loss probability (negative binomial: failures
  before every packet got through) and retransmitted, so their bytes and time count;
- a participant first receives the global model, then trains, then sends its update;
  on a shared radio medium each transfer may first wait for the medium or its duty cycle
  (:mod:`tinytwin.net.medium`), idle;
- energy E = P_active·t_c + P_tx·t_up + P_rx·t_down + P_idle·(round time − busy time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinkArrays:
    """Per-device link parameters (arrays of length D)."""

    latency_s: np.ndarray
    up_bps: np.ndarray
    down_bps: np.ndarray
    loss: np.ndarray
    mtu_bytes: np.ndarray
    header_bytes: np.ndarray


@dataclass(frozen=True)
class Transfer:
    """Cost of sending one message per device (arrays of length D)."""

    packets: np.ndarray
    lost_packets: np.ndarray
    wire_bytes: np.ndarray  # every byte put on the link, headers and retransmissions included
    time_s: np.ndarray


def packets_for(payload_bytes: np.ndarray | int, mtu_bytes: np.ndarray | int) -> np.ndarray:
    """Packets needed to carry ``payload_bytes`` with at most ``mtu_bytes`` each (0 for empty)."""
    payload = np.asarray(payload_bytes, dtype=np.int64)
    mtu = np.asarray(mtu_bytes, dtype=np.int64)
    return -(-payload // mtu)


def transfer_cost(
    payload_bytes: np.ndarray | int, bps: np.ndarray, links: LinkArrays, lost_packets: np.ndarray
) -> Transfer:
    """Time and bytes to move a message of ``payload_bytes`` over each device's link."""
    payload = np.broadcast_to(np.asarray(payload_bytes, dtype=np.int64), links.mtu_bytes.shape)
    packets = packets_for(payload, links.mtu_bytes)
    full_packet = np.minimum(links.mtu_bytes, payload) + links.header_bytes
    wire = payload + packets * links.header_bytes + lost_packets * full_packet
    time = np.where(packets > 0, links.latency_s + wire * 8.0 / bps + lost_packets * 2.0 * links.latency_s, 0.0)
    return Transfer(packets, lost_packets.astype(np.int64), wire.astype(np.int64), time)


def draw_lost_packets(rng: np.random.Generator, payload_bytes: np.ndarray | int, links: LinkArrays) -> np.ndarray:
    """Lost transmissions per device: failures before all packets succeeded at (1 - loss)."""
    packets = packets_for(np.broadcast_to(np.asarray(payload_bytes), links.mtu_bytes.shape), links.mtu_bytes)
    lost = np.zeros(packets.shape, dtype=np.int64)
    lossy = (links.loss > 0) & (packets > 0)
    if lossy.any():
        lost[lossy] = rng.negative_binomial(packets[lossy], 1.0 - links.loss[lossy])
    return lost


def compute_flops(
    num_samples: np.ndarray,
    epochs: int,
    batch_size: int,
    flops_per_sample: int | np.ndarray,
    flops_per_step: int | np.ndarray,
) -> np.ndarray:
    """Training FLOPs per device for one round of local training."""
    n = np.asarray(num_samples, dtype=np.int64)
    steps = epochs * (-(-n // batch_size))
    return epochs * n * flops_per_sample + steps * flops_per_step


@dataclass(frozen=True)
class PowerArrays:
    """Per-device power in each state (W), arrays of length D."""

    active_w: np.ndarray
    idle_w: np.ndarray
    tx_w: np.ndarray
    rx_w: np.ndarray


def clip_phases(
    down_s: np.ndarray, compute_s: np.ndarray, up_s: np.ndarray, limit_s: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut each device's download→compute→upload timeline at ``limit_s`` (a round deadline)."""
    d, c, u = clip_timeline((down_s, compute_s, up_s), limit_s)
    return d, c, u


def clip_timeline(phases: tuple[np.ndarray, ...], limit_s: float | np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Cut consecutive phases (per device) at ``limit_s``: what of each phase happens before it."""
    if limit_s is None:
        return phases
    out, start = [], np.zeros_like(np.asarray(phases[0], dtype=np.float64))
    for p in phases:
        cut = np.clip(limit_s - start, 0.0, p)
        out.append(cut)
        start = start + cut
    return tuple(out)


def energy_joules(
    power: PowerArrays,
    compute_s: np.ndarray,
    up_s: np.ndarray,
    down_s: np.ndarray,
    round_s: float | np.ndarray,
    online: np.ndarray,
) -> np.ndarray:
    """Energy per device over a round (``round_s``: one horizon, or one per device); offline devices draw nothing."""
    busy = compute_s + up_s + down_s
    idle = np.maximum(round_s - busy, 0.0)
    energy = power.active_w * compute_s + power.tx_w * up_s + power.rx_w * down_s + power.idle_w * idle
    return np.where(online, energy, 0.0)


# ---- device-to-device messages (decentralized and hierarchical learning) -------------------


def take_links(links: LinkArrays, ids: np.ndarray) -> LinkArrays:
    """The link parameters of devices ``ids`` (one row per entry, repeats allowed)."""
    return LinkArrays(*(getattr(links, f)[ids] for f in LinkArrays.__dataclass_fields__))


def peer_transfer_cost(
    rng: np.random.Generator, payload_bytes: np.ndarray | int, src: np.ndarray, dst: np.ndarray, links: LinkArrays
) -> Transfer:
    """Cost of messages from devices ``src`` to devices ``dst`` (arrays of length M).

    A device-to-device message goes out on the sender's link (its MTU, per-packet header,
    latency and loss) at the slower of the sender's uplink and the receiver's downlink
    rate; lost packets are drawn per message as in :func:`draw_lost_packets` and resent.
    The sender transmits and the receiver listens for the whole ``time_s``.
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    sender = take_links(links, src)
    payload = np.broadcast_to(np.asarray(payload_bytes, dtype=np.int64), src.shape)
    bps = np.minimum(links.up_bps[src], links.down_bps[dst])
    lost = draw_lost_packets(rng, payload, sender)
    return transfer_cost(payload, bps, sender, lost)


def per_device(ids: np.ndarray, values: np.ndarray, num_devices: int) -> np.ndarray:
    """Sum ``values`` per device id (``np.bincount`` with weights), length ``num_devices``."""
    return np.bincount(
        np.asarray(ids, dtype=np.int64), weights=np.asarray(values, dtype=np.float64), minlength=num_devices
    )
