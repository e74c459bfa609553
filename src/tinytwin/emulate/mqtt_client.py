"""A small blocking MQTT 3.1.1 client that counts every byte it puts on and takes off its socket.

Why not paho-mqtt: the emulation has to show that the cost model's MQTT bytes are the bytes
on the wire, packet by packet, so the client must own its socket and its packets; and the
device runtime stays numpy-only with nothing else under its memory cap. It speaks only what
tinytwin needs (:mod:`tinytwin.wire.mqtt`): one reader thread dispatches PUBLISHes to a
callback and acknowledges QoS 1 ones; a keep-alive thread pings; ``publish`` is thread-safe.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable

from tinytwin.emulate.wire_np import recv_exact
from tinytwin.wire import mqtt

OnMessage = Callable[[str, bytes], None]


class MqttError(ConnectionError):
    """The broker refused us, or the connection broke."""


def read_packet(sock: socket.socket) -> tuple[int, int, bytes, int]:
    """(type, flags, body, bytes on the wire) of the next packet."""
    first = recv_exact(sock, 1)[0]
    length, shift, header = 0, 0, 1
    while True:
        digit = recv_exact(sock, 1)[0]
        header += 1
        length += (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            break
        if shift > 21:
            raise MqttError("malformed remaining length")
    return first >> 4, first & 0x0F, recv_exact(sock, length), header + length


class MqttClient:
    """One connection to a broker; ``sent`` / ``received`` count bytes by packet kind."""

    def __init__(self, host: str, port: int, client_id: str, on_message: OnMessage, keepalive_s: int = 20) -> None:
        self.addr, self.client_id, self.on_message, self.keepalive_s = (host, port), client_id, on_message, keepalive_s
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()
        self.packet_id = 0
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.unacked: dict[int, str] = {}  # QoS 1 packet id -> the kind of what it carried
        self.subacks: dict[int, threading.Event] = {}
        self.closed = threading.Event()
        self.on_close: Callable[[], None] = lambda: None

    def connect(self, will: tuple[str, bytes] | None = None, timeout_s: float = 5.0) -> None:
        sock = socket.create_connection(self.addr, timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        packet = mqtt.connect(self.client_id, self.keepalive_s, will)
        sock.sendall(packet)
        kind, _, body, size = read_packet(sock)
        if kind != mqtt.CONNACK or len(body) < 2 or body[1] != 0:
            sock.close()
            raise MqttError(f"broker refused the connection (CONNACK {body.hex()})")
        sock.settimeout(None)
        self.sock, self.closed = sock, threading.Event()
        self.sent["connect"] += len(packet)
        self.received["connack"] += size
        threading.Thread(target=self._read_loop, daemon=True, name=f"mqtt-{self.client_id}").start()
        threading.Thread(target=self._ping_loop, daemon=True, name=f"mqtt-ping-{self.client_id}").start()

    def _send(self, packet: bytes, kind: str) -> None:
        with self.lock:
            if self.sock is None:
                raise MqttError("not connected")
            self.sock.sendall(packet)
            self.sent[kind] += len(packet)

    def _next_id(self) -> int:
        with self.lock:
            self.packet_id = self.packet_id % 65535 + 1
            return self.packet_id

    def subscribe(self, topic: str, qos: int = 1, timeout_s: float = 10.0) -> None:
        """Subscribe and wait for the broker's SUBACK (from then on nothing published is missed)."""
        pid = self._next_id()
        acked = self.subacks[pid] = threading.Event()
        self._send(mqtt.subscribe(pid, topic, qos), "subscribe")
        if not acked.wait(timeout_s):
            raise MqttError(f"no SUBACK for {topic} within {timeout_s:g} s")

    def publish(self, topic: str, payload: bytes, qos: int, kind: str = "publish", retain: bool = False) -> int:
        """Send one PUBLISH; returns its size on the wire."""
        pid = self._next_id() if qos else 0
        if qos:
            self.unacked[pid] = kind
        packet = mqtt.publish(topic, payload, qos, pid, retain)
        self._send(packet, kind)
        return len(packet)

    def _read_loop(self) -> None:
        sock = self.sock
        try:
            while sock is not None:
                kind, flags, body, size = read_packet(sock)
                if kind == mqtt.PUBLISH:
                    topic, payload, qos, pid = mqtt.parse_publish(flags, body)
                    what = self.classify(topic, payload)
                    self.received[what] += size
                    if qos:
                        self._send(mqtt.puback(pid), f"puback:{what}")  # tallied by what it acknowledges
                    self.on_message(topic, payload)
                elif kind == mqtt.PUBACK and len(body) >= 2:  # tallied by what it acknowledges
                    self.received[f"puback:{self.unacked.pop(int.from_bytes(body[:2], 'big'), 'other')}"] += size
                else:
                    if kind == mqtt.SUBACK and len(body) >= 2:
                        self.subacks.pop(int.from_bytes(body[:2], "big"), threading.Event()).set()
                    self.received[{mqtt.SUBACK: "suback", mqtt.PINGRESP: "ping"}.get(kind, "other")] += size
        except (OSError, MqttError):
            pass
        finally:
            self.closed.set()
            self.on_close()

    def classify(self, topic: str, payload: bytes) -> str:
        """How received PUBLISHes are tallied (a subclass may name kinds by payload)."""
        return "publish"

    def _ping_loop(self) -> None:
        while not self.closed.wait(self.keepalive_s / 2):
            try:
                self._send(mqtt.pingreq(), "ping")
            except (OSError, MqttError):
                return

    def close(self, graceful: bool = True) -> None:
        """DISCONNECT (no will is published) unless ``graceful`` is False (the will is)."""
        with self.lock:
            sock, self.sock = self.sock, None
        if sock is None:
            return
        try:
            if graceful:
                sock.sendall(mqtt.disconnect())
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
