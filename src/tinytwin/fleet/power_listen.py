"""Live power readings from an MQTT topic, written as a power trace CSV while a run goes on.

Smart plugs such as seed 004's (a Delock socket with Tasmota firmware) publish their readings
on a topic every few seconds, e.g. ``tele/<plug>/SENSOR`` with ``{"ENERGY": {"Power": 15, ...}}``.
:func:`listen` subscribes, takes each message's watts (a bare number, or the JSON ``field``
path, default ``ENERGY.Power``) with the time it arrived, and appends ``timestamp,watts`` rows
to a CSV that :func:`tinytwin.fleet.power_trace.read_trace` reads — so ``tinytwin energy
integrate`` and ``fit --run`` work on it as on any recorded trace. Each row is flushed as it
arrives: a trace cut short is still a valid trace.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tinytwin.errors import TinyTwinError


def watts_of(payload: bytes, field: str) -> float | None:
    """The reading in ``payload``: a number, or the value at the dotted JSON path ``field``;
    None when the message holds no reading (a plug also publishes state messages)."""
    text = payload.decode(errors="replace").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    for key in field.split(".") if isinstance(value, dict) else ():
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def listen(
    host: str,
    port: int,
    topic: str,
    out: Path,
    field: str,
    samples: int | None,
    seconds: float | None,
    on_ready: Callable[[], None] = lambda: None,
) -> int:
    """Record readings until ``samples`` were written or ``seconds`` passed; returns the count.
    ``on_ready`` runs once the subscription is in place (readings before it are not seen)."""
    from tinytwin.emulate.mqtt_client import MqttClient

    if out.exists():
        raise TinyTwinError(f"{out} exists; choose another --out (a trace is never overwritten)")
    done = threading.Event()
    count = 0
    with open(out, "w", buffering=1) as fh:
        fh.write("timestamp,watts\n")

        def on_message(_topic: str, payload: bytes) -> None:
            nonlocal count
            watts = watts_of(payload, field)
            if watts is None or done.is_set():
                return
            fh.write(f"{time.time():.3f},{watts:g}\n")
            count += 1
            if samples is not None and count >= samples:
                done.set()

        client = MqttClient(host, port, f"tinytwin-power-{int(time.time())}", on_message)
        try:
            client.connect()
        except OSError as exc:
            raise TinyTwinError(f"no MQTT broker at {host}:{port} ({exc}); check --broker") from None
        client.subscribe(topic, 0)
        on_ready()
        done.wait(seconds)
        client.close()
    return count
