"""The emulation over MQTT: every frame a PUBLISH on a per-run topic, through a real broker.

Topics (``prefix`` = ``tinytwin/<run name>``): a device publishes on ``prefix/up/<d>`` and
subscribes to ``prefix/down/<d>``; its will, published by the broker when the device vanishes
without a DISCONNECT, is an empty message on ``prefix/gone/<d>``. Frames keep their own
authentication inside the payload, so the broker is just a carrier.

Two halves, so that neither the coordinator's protocol code nor the device's changes:

* :class:`MqttCoordinatorLink` is the device's link (the interface of
  :class:`tinytwin.emulate.device.CoordinatorLink`): frames it sends are published; frames the
  broker delivers are written into one end of a socket pair the device reads as before.
* :class:`MqttGateway` runs in the coordinator's process: for each device it opens an ordinary
  TCP connection to the coordinator's own listener and pumps frames between that connection
  and the device's topics; a will (or a new HELLO) closes the connection, so the coordinator
  notices a dead or restarted device exactly as it does on TCP.

QoS: telemetry (METRICS) at QoS 0, every other frame at QoS 1 (:func:`qos_of`); the cost model
counts model and update frames with their PUBLISH and PUBACK
(:func:`tinytwin.wire.mqtt.message_bytes`), as it counts only those frames on TCP.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

from tinytwin.emulate.mqtt_client import MqttClient, MqttError
from tinytwin.emulate.wire_np import Rejected, read_frame_blocking
from tinytwin.wire import frame as fm
from tinytwin.wire import mqtt
from tinytwin.wire.mqtt import gateway_topic, topics

UNACKED = {int(fm.MsgType.METRICS)}  # QoS 0: telemetry; every other kind QoS 1
COUNTED = {int(fm.MsgType.MODEL), int(fm.MsgType.UPDATE)}  # what the cost model counts, as on TCP


def qos_of(frame: bytes) -> int:
    """QoS by message kind. MQTT keeps order only within one QoS level, and a device must see a
    round's CONTROL plan before its MODEL (as one TCP stream guarantees): so everything the
    protocol orders goes at QoS 1, and only telemetry at QoS 0."""
    return 0 if fm.msg_type_of(frame) in UNACKED else 1


def counted(frame: bytes) -> bool:
    return len(frame) >= fm.HEADER_SIZE and fm.msg_type_of(frame) in COUNTED


class DeviceClient(MqttClient):
    """A device's MQTT client: received PUBLISHes tallied as model or other frames."""

    def classify(self, topic: str, payload: bytes) -> str:
        return "model" if counted(payload) else "publish"


class MqttCoordinatorLink:
    """The device's link to the coordinator through the broker (see the module docstring)."""

    def __init__(self, cfg: dict[str, Any], rt: Any, hello: dict[str, Any]) -> None:
        m = cfg["mqtt"]
        self.broker = (str(m["host"]), int(m["port"]))
        self.up, self.down, self.gone = topics(str(m["name"]), rt.id)
        self.gateway = gateway_topic(str(m["name"]))
        self.stats_file = Path(m["stats_file"]) if m.get("stats_file") else None
        self.grace_s = float(cfg.get("reconnect_grace_s", 60.0))
        self.rt, self.hello = rt, hello
        self.sock: socket.socket | None = None
        self._feed: socket.socket | None = None
        self.client: DeviceClient | None = None
        self.connects = 0
        self.bytes = {"model_publish": 0, "model_puback": 0, "update_publish": 0, "update_puback": 0}

    def _deliver(self, topic: str, payload: bytes) -> None:
        if topic == self.gateway:
            if payload == b"online":  # the coordinator's side is (back) there: introduce ourselves
                self._hello()
            return
        self._write_stats()  # before the device sees the frame: a "stop" ends the process
        feed = self._feed
        if feed is not None and topic == self.down:
            try:
                feed.sendall(payload)
            except OSError:
                pass

    def connect(self) -> bool:
        """Connect to the broker (retrying within the grace period) and subscribe; HELLO goes
        out when the gateway says it is online (retained, so at once if it already is)."""
        deadline = time.monotonic() + self.grace_s
        while True:
            self.close()
            self.sock, self._feed = socket.socketpair()
            self.client = client = DeviceClient(*self.broker, f"tinytwin-d{self.rt.id}-{self.connects}", self._deliver)
            client.on_close = self._broken
            self.rt.round = 0
            try:
                client.connect(will=(self.gone, b""))
                client.subscribe(self.down, 1)
                client.subscribe(self.gateway, 1)
                return True
            except OSError:  # refused, reset, or no SUBACK (MqttError is one too): try again
                if time.monotonic() > deadline:
                    self.close()
                    return False
                time.sleep(0.2)

    def _hello(self) -> None:
        payload = json.dumps({**self.hello, "reconnects": self.connects}).encode()
        self.connects += 1
        self.send(self.rt.make(self.rt.frame.MsgType.HELLO, 0, "none", payload))

    def _broken(self) -> None:
        feed = self._feed
        if feed is not None:
            try:
                feed.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def send(self, *frames: bytes) -> bool:
        try:
            assert self.client is not None
            for f in frames:
                self.client.publish(self.up, f, qos_of(f), "update" if counted(f) else "publish")
            self._write_stats()
            return True
        except (OSError, MqttError, AssertionError):
            return False

    def _write_stats(self) -> None:
        """The bytes this device's socket carried, by packet kind (for the cost-model check)."""
        if self.stats_file is None or self.client is None:
            return
        c = self.client
        stats = {"sent": dict(c.sent), "received": dict(c.received), "connects": self.connects}
        tmp = self.stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        tmp.replace(self.stats_file)

    def close(self) -> None:
        if self.client is not None:
            self.client.close(graceful=True)
            self.client = None
        for s in (self.sock, self._feed):
            if s is not None:
                s.close()
        self.sock = self._feed = None


class MqttGateway:
    """The coordinator's side: one TCP connection to the coordinator per device, pumped to and
    from that device's topics (see the module docstring)."""

    def __init__(self, broker: tuple[str, int], name: str, coordinator: tuple[str, int], grace_s: float = 30.0) -> None:
        self.broker, self.name, self.coordinator, self.grace_s = broker, name, coordinator, grace_s
        self.client = MqttClient(*broker, f"tinytwin-gateway-{name}", self._on_message)
        self.conns: dict[int, socket.socket] = {}
        self.lock = threading.Lock()
        self.stopping = False
        self.reconnects = 0

    def start(self) -> None:
        self.client.connect()
        prefix = f"tinytwin/{self.name}"
        self.client.subscribe(f"{prefix}/up/+", 1)
        self.client.subscribe(f"{prefix}/gone/+", 1)
        self.client.on_close = self._lost
        self.client.publish(gateway_topic(self.name), b"online", 1, retain=True)

    def _lost(self) -> None:
        """The broker went away: every device's connection ends (the coordinator sees them
        go, as on TCP), and the gateway keeps calling the broker for ``grace_s``; devices that
        reconnect say HELLO again and get a fresh connection."""
        if self.stopping:
            return
        for d in list(self.conns):
            self._drop(d)
        threading.Thread(target=self._reconnect, daemon=True, name=f"mqtt-gateway-{self.name}").start()

    def _reconnect(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while not self.stopping and time.monotonic() < deadline:
            self.client = MqttClient(*self.broker, f"tinytwin-gateway-{self.name}", self._on_message)
            try:
                self.start()
                self.reconnects += 1
                return
            except OSError:
                time.sleep(0.2)

    def _on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.rsplit("/", 2)
        kind, device = parts[-2], int(parts[-1])
        if kind == "gone":
            self._drop(device)
            return
        if fm.msg_type_of(payload) == int(fm.MsgType.HELLO):
            self._drop(device)  # a (re)connected device starts a new connection, as on TCP
        conn = self._conn(device)
        try:
            conn.sendall(payload)
        except OSError:
            self._drop(device)

    def _conn(self, device: int) -> socket.socket:
        with self.lock:
            conn = self.conns.get(device)
            if conn is None:
                conn = socket.create_connection(self.coordinator, timeout=5)
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.conns[device] = conn
                threading.Thread(target=self._pump_down, args=(device, conn), daemon=True).start()
            return conn

    def _pump_down(self, device: int, conn: socket.socket) -> None:
        """Coordinator -> device: every whole frame the coordinator writes becomes a PUBLISH."""
        down = topics(self.name, device)[1]
        try:
            while True:
                f = read_frame_blocking(conn, fm.FRAME_OVERHEAD + fm.MAX_PAYLOAD)
                self.client.publish(down, f, qos_of(f))
        except (OSError, Rejected):  # the connection ended (MqttError is an OSError too)
            return

    def _drop(self, device: int) -> None:
        with self.lock:
            conn = self.conns.pop(device, None)
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def stop(self) -> None:
        self.stopping = True
        for d in list(self.conns):
            self._drop(d)
        try:
            self.client.publish(gateway_topic(self.name), b"", 1, retain=True)  # clears the retained "online"
        except (OSError, MqttError):
            pass
        self.client.close()


class MqttTransport:
    """An emulation's MQTT side: its broker, the gateway, and what device configs need."""

    def __init__(self, name: str, folder: Path, broker_url: str | None) -> None:
        self.name, self.folder, self.url = name, folder, broker_url
        self.broker: Any = None
        self.gateway: MqttGateway | None = None
        self.restarts = 0

    def start(self, coordinator: tuple[str, int]) -> None:
        from tinytwin.emulate.broker import start_broker

        self.broker = start_broker(self.folder / "broker", self.url)
        self.gateway = MqttGateway((self.broker.host, self.broker.port), self.name, coordinator)
        self.gateway.start()
        if self.broker.process is not None:
            threading.Thread(target=self._watch, daemon=True, name="mqtt-broker-watch").start()

    def _watch(self) -> None:
        """Our own broker died (killed, crashed): start it again on the same port, so devices
        and the gateway reconnect within their grace periods and the run goes on."""
        while self.gateway is not None and not self.gateway.stopping:
            if self.broker.process.poll() is not None and not self.gateway.stopping:
                self.broker.restart()
                self.restarts += 1
            time.sleep(0.1)

    def on_wire(self, d: int, frame_bytes: int, direction: int) -> int:
        """A model (``direction`` 1) or update (0) frame's bytes as MQTT carries them, with its
        PUBLISH framing and PUBACK (:func:`tinytwin.wire.mqtt.message_bytes`); 0 stays 0."""
        if not frame_bytes:
            return frame_bytes
        return mqtt.message_bytes(topics(self.name, d)[direction], frame_bytes)

    def device_extra(self, d: int) -> dict[str, Any]:
        """The ``mqtt`` entry of device ``d``'s configuration."""
        assert self.broker is not None, "start the transport before writing device configs"
        stats = self.folder / "devices" / f"d{d}.mqtt.json"
        return {
            "mqtt": {"host": self.broker.host, "port": self.broker.port, "name": self.name, "stats_file": str(stats)}
        }

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        if self.broker is not None:
            self.broker.stop()
