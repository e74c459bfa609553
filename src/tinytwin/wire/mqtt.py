"""MQTT 3.1.1 packets (OASIS standard) and their sizes: what tinytwin frames cost inside MQTT.

tinytwin's authenticated frames travel as PUBLISH payloads when the emulation runs over a
broker (:mod:`tinytwin.emulate.mqtt_link`). The cost model must count the same bytes the
sockets carry, so the sizes are defined here once — :func:`publish_size` and :data:`PUBACK_SIZE`
— and used by the cost model (``transport: mqtt``) and by the client that writes the packets.

Only what tinytwin needs: CONNECT (with a will), CONNACK, PUBLISH at QoS 0 and 1, PUBACK,
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP and DISCONNECT. numpy-free and torch-free: device
processes import it.
"""

from __future__ import annotations

import struct

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14
PUBACK_SIZE = 4  # fixed header (2) + packet identifier (2)
MAX_REMAINING = 268_435_455  # the largest remaining length four varint bytes encode


def varint(n: int) -> bytes:
    """The remaining-length encoding: 7 bits per byte, high bit = more bytes follow."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"MQTT remaining length {n} is out of range")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def publish_size(topic: str, payload_len: int, qos: int) -> int:
    """Bytes of one PUBLISH of ``payload_len`` bytes on ``topic`` (what goes on the socket)."""
    body = 2 + len(topic.encode()) + (2 if qos else 0) + payload_len
    return 1 + len(varint(body)) + body


def publish(topic: str, payload: bytes, qos: int, packet_id: int = 0, retain: bool = False) -> bytes:
    head = _string(topic) + (struct.pack("!H", packet_id) if qos else b"")
    return _packet(PUBLISH, qos << 1 | int(retain), head + payload)


def puback(packet_id: int) -> bytes:
    return _packet(PUBACK, 0, struct.pack("!H", packet_id))


def connect(client_id: str, keepalive_s: int, will: tuple[str, bytes] | None = None) -> bytes:
    """CONNECT with a clean session and, optionally, a will (published by the broker if the
    client vanishes without DISCONNECT: how a dead device is noticed)."""
    flags = 0x02 | (0x04 | 0x08 if will else 0)  # clean session; will at QoS 1
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s) + _string(client_id)
    if will:
        body += _string(will[0]) + _string(will[1])
    return _packet(CONNECT, 0, body)


def subscribe(packet_id: int, topic: str, qos: int) -> bytes:
    return _packet(SUBSCRIBE, 0x02, struct.pack("!H", packet_id) + _string(topic) + bytes([qos]))


def pingreq() -> bytes:
    return _packet(PINGREQ, 0, b"")


def disconnect() -> bytes:
    return _packet(DISCONNECT, 0, b"")


def parse_publish(flags: int, body: bytes) -> tuple[str, bytes, int, int]:
    """(topic, payload, qos, packet id) of a PUBLISH packet's body."""
    qos = (flags >> 1) & 3
    (n,) = struct.unpack_from("!H", body)
    topic = body[2 : 2 + n].decode()
    at = 2 + n
    packet_id = struct.unpack_from("!H", body, at)[0] if qos else 0
    return topic, body[at + (2 if qos else 0) :], qos, packet_id


def topics(name: str, device: int) -> tuple[str, str, str]:
    """(up, down, gone) topics of ``device`` in the run named ``name``."""
    prefix = f"tinytwin/{name}"
    return f"{prefix}/up/{device}", f"{prefix}/down/{device}", f"{prefix}/gone/{device}"


def gateway_topic(name: str) -> str:
    """Where the coordinator's gateway says ``online`` (retained): a device says HELLO on it."""
    return f"tinytwin/{name}/gateway"


def message_bytes(topic: str, frame_bytes: int) -> int:
    """Bytes on the wire for one model or update frame on ``topic`` (QoS 1): the PUBLISH, plus
    the PUBACK that comes back the other way, counted with the message it acknowledges."""
    return publish_size(topic, frame_bytes, 1) + PUBACK_SIZE
