"""Shared radio media: devices behind one access point / BLE central / LoRa gateway share its airtime.

Why: with independent links, 100 devices on Wi-Fi would finish a round as soon as 20 do,
although one access point can only carry one frame at a time. The model
(docs/cost-model.md, "Shared medium") is deliberately simple and deterministic so that
both twins compute the same figures:

- **Serialized airtime, first come first served.** A medium carries one transfer at a
  time, in the order the transfers become ready (ties: the order of ``selected``), each for
  its airtime ``wire_bytes · 8 / bps`` at the device's own link rate. When two or more
  devices of the medium take part in the round, the airtime is divided by the link's
  ``medium_efficiency`` (contention: CSMA/CA backoff and collisions, ALOHA collisions).
  This is the FIFO single-server queue (Lindley's recursion): ``end_k = max(ready_k,
  end_{k-1}) + airtime_k / efficiency``. Latency and the round trips that notice lost
  packets do not hold the medium.
- **Half duplex, unicast.** Downloads and uploads of one medium share one queue. Every
  device gets its own copy of the global model (TCP over Wi-Fi, GATT over BLE, LoRaWAN
  class-A downlinks are all unicast and acknowledged), so downloads are serialized too.
- **Duty cycle.** A device whose link has ``duty_cycle`` d < 1 (LoRa in EU868: 1 %) must
  stay silent for ``airtime · (1/d − 1)`` after each frame it sends (ETSI EN 300 220-2,
  LoRaWAN Regional Parameters RP002 EU863-870 ``T_off``). Its message of several frames
  therefore cannot end before ``ready + airtime + (airtime − last frame) · (1/d − 1)``; the
  off-time after the last frame falls after the message has arrived and is not carried into
  the next round. Only device transmissions (uploads) are limited; the gateway's downlink
  duty cycle is not modelled.
- A transfer ends at the later of the medium's and the duty cycle's bound, plus its
  latency and retransmission round trips. The difference to the device's own transfer
  time is a *wait*: the radio listens (idle power), it neither sends nor receives.

One device alone on its medium (or a dedicated link, e.g. wired) waits nothing but its
duty-cycle off-time, so single-device figures are those of the independent-link model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEDICATED = -1
"""``medium_of`` of a device on its own, independent link."""

DEDICATED_NAMES = frozenset({"dedicated", "none"})
"""Values of ``fleet.groups[i].medium`` that give every device of the group its own link."""


@dataclass(frozen=True)
class MediumArrays:
    """Per-device medium membership and the medium-related link figures (arrays of length D)."""

    medium_of: np.ndarray  # int: index into ``names``, or DEDICATED
    efficiency: np.ndarray  # link.medium_efficiency: share of the airtime that is useful when contended
    duty_cycle: np.ndarray  # link.duty_cycle: longest share of time the device may transmit
    names: tuple[str, ...] = ()  # medium index -> name

    def take(self, ids: np.ndarray) -> MediumArrays:
        """The rows of devices ``ids``."""
        return MediumArrays(self.medium_of[ids], self.efficiency[ids], self.duty_cycle[ids], self.names)


def dedicated(num_devices: int) -> MediumArrays:
    """Every device on its own link, no duty cycle: the independent-link model."""
    return MediumArrays(np.full(num_devices, DEDICATED, dtype=np.int64), np.ones(num_devices), np.ones(num_devices), ())


def airtime_s(wire_bytes: np.ndarray, bps: np.ndarray) -> np.ndarray:
    """Seconds each transfer keeps the medium busy: every byte it puts on the link, at its rate."""
    return np.asarray(wire_bytes, dtype=np.float64) * 8.0 / np.asarray(bps, dtype=np.float64)


def duty_off_s(
    air_s: np.ndarray,
    payload_bytes: np.ndarray | int,
    packets: np.ndarray,
    mtu_bytes: np.ndarray,
    header_bytes: np.ndarray,
    bps: np.ndarray,
    duty_cycle: np.ndarray,
) -> np.ndarray:
    """Silent time a duty-cycled sender spends between the frames of one message.

    Every frame but the last is followed by ``frame airtime · (1/d − 1)``; the last frame is
    the message's tail, ``payload − (packets − 1) · MTU`` bytes plus its header
    (retransmissions resend full frames, so they are never the tail).
    """
    payload = np.broadcast_to(np.asarray(payload_bytes, dtype=np.int64), packets.shape)
    tail_bytes = payload - np.maximum(packets - 1, 0) * mtu_bytes + header_bytes
    tail_s = np.where(packets > 0, tail_bytes * 8.0 / bps, 0.0)
    return np.maximum(air_s - tail_s, 0.0) * (1.0 / duty_cycle - 1.0)


def fifo_end_s(ready_s: np.ndarray, service_s: np.ndarray) -> np.ndarray:
    """End times of jobs served one at a time, first come first served (ties: input order).

    Lindley's recursion ``end_k = max(ready_k, end_{k-1}) + service_k`` in closed form:
    ``end_k = S_k + max_{j<=k}(ready_j − S_{j-1})`` with ``S`` the running sum of services.
    """
    order = np.argsort(ready_s, kind="stable")
    r, s = ready_s[order], service_s[order]
    total = np.cumsum(s)
    end = total + np.maximum.accumulate(r - (total - s))
    out = np.empty_like(end)
    out[order] = end
    return out


def medium_waits(
    medium: MediumArrays,
    ready_s: np.ndarray,
    air_s: np.ndarray,
    off_s: np.ndarray,
    active: np.ndarray,
    users: np.ndarray | None = None,
) -> np.ndarray:
    """Seconds each transfer waits beyond its own airtime (for the medium or its duty cycle).

    ``medium`` rows, ``ready_s`` (when the device is ready to transfer), ``air_s`` (its
    airtime alone), ``off_s`` (its duty-cycle off-time) and ``active`` (it transfers at all)
    are aligned per transfer. A transfer ends its airtime at
    ``max(medium FIFO end, ready + airtime + off)``; the wait is that minus ``ready + airtime``.
    Inactive rows wait 0 and do not use the medium. ``users`` names the device of each row
    (default: one device per row); the medium is contended, and its airtime divided by the
    efficiency, when rows of two or more devices use it.
    """
    users = np.arange(ready_s.size) if users is None else users
    duty_end = ready_s + air_s + off_s
    end = duty_end.copy()
    for m in np.unique(medium.medium_of[active & (medium.medium_of != DEDICATED)]):
        rows = np.flatnonzero(active & (medium.medium_of == m))
        eff = medium.efficiency[rows] if np.unique(users[rows]).size > 1 else np.ones(rows.size)
        served = fifo_end_s(ready_s[rows], air_s[rows] / eff)
        end[rows] = np.maximum(served, duty_end[rows])
    return np.where(active, np.maximum(end - ready_s - air_s, 0.0), 0.0)
