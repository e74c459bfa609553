"""``transport``: how frames travel between devices and the coordinator.

``tcp`` (default): tinytwin's frames on TCP connections. ``mqtt``: every frame a PUBLISH
through a broker (model and update frames at QoS 1, the rest at QoS 0); the cost model then
counts MQTT's framing — fixed header, topic, packet id, and the PUBACK coming back — so the
simulator's bytes equal what the emulation's sockets carry (:mod:`tinytwin.wire.mqtt`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TransportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Literal["tcp", "mqtt"] = Field(
        default="tcp", description="tcp: tinytwin's frames on TCP; mqtt: frames as PUBLISH payloads through a broker"
    )


def check_transport(spec: Any) -> None:
    if spec.transport.protocol == "mqtt" and spec.algorithm.family != "centralized":
        raise ValueError(
            f"transport.protocol: mqtt carries fedavg and fedprox runs so far, not {spec.algorithm.name}; use tcp"
        )
