"""Leave / join timelines of devices (``failures.leave`` and ``failures.join``), read as events.

A device may leave and come back several times: each ``leave`` takes it offline from its round,
each ``join`` brings it (back) online from its round. A device whose first event is a ``join``
is new to the fleet: offline from round 1 until then. Events of one device must alternate
(leave, join, leave, ...) on distinct rounds; anything else is a contradiction the spec refuses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Protocol

PresenceKind = Literal["leave", "join"]


class DeviceRoundLike(Protocol):
    device: int
    round: int


def presence_events(
    leave: Iterable[DeviceRoundLike], join: Iterable[DeviceRoundLike]
) -> dict[int, list[tuple[int, PresenceKind]]]:
    """Each device's (round, kind) events in round order."""
    events: dict[int, list[tuple[int, PresenceKind]]] = {}
    for item in leave:
        events.setdefault(item.device, []).append((item.round, "leave"))
    for item in join:
        events.setdefault(item.device, []).append((item.round, "join"))
    return {d: sorted(ev) for d, ev in sorted(events.items())}


def check_presence_events(leave: Iterable[DeviceRoundLike], join: Iterable[DeviceRoundLike]) -> None:
    """Refuse contradictory timelines (ValueError naming the device and the rounds)."""
    for device, events in presence_events(leave, join).items():
        for (r0, k0), (r1, k1) in zip(events, events[1:], strict=False):
            if r0 == r1:
                raise ValueError(
                    f"failures: device {device} has a {k0} and a {k1} both at round {r0}; give them distinct rounds"
                )
            if k0 == k1:
                other = "join" if k0 == "leave" else "leave"
                raise ValueError(
                    f"failures: device {device} has a {k0} at round {r0} and another at round {r1} with no "
                    f"{other} between them; a device alternates leave and join"
                )
