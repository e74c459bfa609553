"""The emulation over MQTT (issue #19): a real mosquitto on loopback carries every frame; the run
equals the TCP run, the cost model's MQTT bytes are the bytes the device sockets carried, and a
broker killed mid-run is survived."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_spec
from tinytwin.emulate.broker import start_broker
from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.emulate.mqtt_client import MqttClient
from tinytwin.engines.runner import start_run
from tinytwin.spec.load import load_spec
from tinytwin.store.db import RunStore
from tinytwin.wire import mqtt

SPEC = """
name: mqtt-fedavg
seed: 3
rounds: ROUNDS
dataset: {name: digits}
model: {name: mlp, hidden: [12]}
fleet:
  groups:
    - {name: a, profile: esp32-s3, count: 3, link: ethernet, link_overrides: {loss: 0, header_bytes: 0}}
algorithm: {name: fedavg, lr: 0.1, local_epochs: 1, batch_size: 16}
"""


@pytest.mark.parametrize(
    "topic,size,qos",
    [("t", 0, 0), ("tinytwin/x/up/7", 100, 1), ("a/b", 127 - 5, 1), ("a/b", 16_384, 1), ("a", 2_100_000, 1)],
)
def test_publish_size_is_the_packets_length(topic: str, size: int, qos: int) -> None:
    """The cost model's formula against the packet the client writes (varint boundaries included)."""
    assert mqtt.publish_size(topic, size, qos) == len(mqtt.publish(topic, b"x" * size, qos, 1))


def test_client_round_trip_and_will_through_mosquitto(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "broker")
    try:
        got: list[tuple[str, bytes]] = []
        sub = MqttClient(broker.host, broker.port, "sub", lambda t, p: got.append((t, p)))
        sub.connect()
        sub.subscribe("run/#", 1)
        pub = MqttClient(broker.host, broker.port, "pub", lambda t, p: None)
        pub.connect(will=("run/gone", b""))
        time.sleep(0.2)
        pub.publish("run/frame", b"\x01" * 70_000, 1)
        pub.close(graceful=False)  # vanishes: the broker publishes its will
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == [("run/frame", b"\x01" * 70_000), ("run/gone", b"")]
        assert sub.received["publish"] == mqtt.publish_size("run/frame", 70_000, 1) + mqtt.publish_size(
            "run/gone", 0, 1
        )
        sub.close()
    finally:
        broker.stop()


def _final(run_dir: Path) -> tuple[np.ndarray, list[dict], list[dict]]:
    store = RunStore(run_dir / "results.db")
    try:
        run_id = store.run_info().run_id
        ck = store.checkpoint(run_id)
        assert ck is not None
        return np.asarray(ck[1]["global_params"]), store.device_rounds(run_id), store.events(run_id)
    finally:
        store.close()


def test_fedavg_over_mosquitto_equals_tcp_and_counts_the_wire_bytes(tmp_path: Path) -> None:
    """Same global model as over TCP; the emulation's and the simulator's per-device bytes are
    MQTT's (PUBLISH + PUBACK); and each device's own socket counters say the same."""
    spec_file = write_spec(tmp_path / "spec.yaml", SPEC.replace("ROUNDS", "3"))
    runs = {}
    for protocol in ("tcp", "mqtt"):
        spec, text = load_spec(spec_file, [f"transport.protocol={protocol}"])
        runs[protocol], _ = start_emulation(
            spec, text, tmp_path / protocol, tmp_path, EmulateOptions(time_scale=0.0), report=False
        )
    sim = start_run(*load_spec(spec_file, ["transport.protocol=mqtt"]), tmp_path / "sim", tmp_path, report=False)
    tcp_model, tcp_rows, _ = _final(runs["tcp"])
    mqtt_model, mqtt_rows, _ = _final(runs["mqtt"])
    _, sim_rows, _ = _final(sim.run_dir)
    assert np.array_equal(tcp_model, mqtt_model)
    for row, sim_row, tcp_row in zip(mqtt_rows, sim_rows, tcp_rows):
        assert (row["bytes_up"], row["bytes_down"]) == (sim_row["bytes_up"], sim_row["bytes_down"])
        up, down = mqtt.topics("mqtt-fedavg", row["device"])[:2]
        assert row["bytes_up"] == mqtt.publish_size(up, tcp_row["bytes_up"], 1) + mqtt.PUBACK_SIZE
        assert row["bytes_down"] == mqtt.publish_size(down, tcp_row["bytes_down"], 1) + mqtt.PUBACK_SIZE
    for d in range(3):
        stats = json.loads((runs["mqtt"] / "emulate" / "devices" / f"d{d}.mqtt.json").read_text())
        mine = [r for r in mqtt_rows if r["device"] == d]
        # up: its update PUBLISHes and the PUBACKs it sent for the models; down: the model
        # PUBLISHes and the PUBACKs it got for its updates (control frames are not modelled)
        assert stats["sent"]["update"] + stats["sent"]["puback:model"] == sum(r["bytes_up"] for r in mine)
        assert stats["received"]["model"] + stats["received"]["puback:update"] == sum(r["bytes_down"] for r in mine)


def test_a_broker_killed_mid_run_is_survived(tmp_path: Path) -> None:
    """Kill mosquitto while round 2 or 3 runs: the transport restarts it on the same port, the
    devices and the gateway reconnect, and every round is recorded with learning continuing."""
    spec_file = write_spec(tmp_path / "spec.yaml", SPEC.replace("ROUNDS", "6"))
    spec, text = load_spec(spec_file, ["transport.protocol=mqtt"])
    killed: list[int] = []

    def rounds_done() -> int:
        for db in (tmp_path / "emu").glob("*/results.db"):
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                    return int(conn.execute("SELECT COUNT(*) FROM rounds").fetchone()[0])
            except sqlite3.Error:
                return 0
        return 0

    def kill_broker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if rounds_done() >= 1:  # every device has said HELLO and finished a round
                subprocess.run(["pkill", "-f", f"mosquitto -c {tmp_path}"], check=False)
                killed.append(1)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_broker, daemon=True)
    killer.start()
    run_dir, summary = start_emulation(
        spec, text, tmp_path / "emu", tmp_path, EmulateOptions(time_scale=30.0), report=False
    )
    killer.join(timeout=5)
    assert killed == [1]
    _, rows, events = _final(run_dir)
    assert summary["rounds"] == 6 and summary.get("failure") is None
    assert {e["device"] for e in events if e["kind"] == "reconnect"} == {0, 1, 2}
    assert {r["round"] for r in rows if r["status"] == "ok"} >= {5, 6}  # back to work after the restart
    assert summary["final_accuracy"] > 0.5


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--broker", "mqtt://127.0.0.1:1"], "--broker applies to --transport mqtt"),
        (["--transport", "mqtt", "--tls"], "--transport mqtt runs without --tls"),
        (["--transport", "carrier-pigeon"], "--transport must be 'tcp' or 'mqtt'"),
        (["--transport", "mqtt", "--broker", "http://x"], "give an MQTT URL"),
        (["--transport", "mqtt", "--broker", "mqtt://127.0.0.1:9"], "no MQTT broker answers there"),
    ],
)
def test_bad_transport_input_is_one_line_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    spec_file = write_spec(tmp_path / "spec.yaml", SPEC.replace("ROUNDS", "2"))
    proc = run_cli("emulate", str(spec_file), *args, "--out", str(tmp_path / "runs"), "--quiet", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_mqtt_is_refused_for_decentralized_runs(tmp_path: Path) -> None:
    text = SPEC.replace("ROUNDS", "2").replace("name: fedavg", "name: gossip") + "transport: {protocol: mqtt}\n"
    proc = run_cli("run", str(write_spec(tmp_path / "spec.yaml", text)), "--out", str(tmp_path / "runs"), "--quiet")
    assert proc.returncode == 2 and "transport.protocol: mqtt carries fedavg and fedprox runs so far" in proc.stderr


def test_live_power_readings_from_mqtt_become_a_trace(tmp_path: Path) -> None:
    """A Tasmota-style plug publishes three readings (and a state message without one):
    `tinytwin energy listen` writes them as a trace that `energy integrate` reads."""
    broker = start_broker(tmp_path / "broker")
    try:
        out = tmp_path / "plug.csv"
        url = f"mqtt://{broker.host}:{broker.port}"
        command = ["energy", "listen", "--broker", url, "--topic", "tele/plug/SENSOR", "--out", str(out)]
        listener = subprocess.Popen(
            [sys.executable, "-m", "tinytwin.cli", *command, "--samples", "3", "--seconds", "30"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        plug = MqttClient(broker.host, broker.port, "plug", lambda t, p: None)
        plug.connect()
        assert listener.stdout is not None and listener.stdout.readline().startswith("listening on")
        for watts in (15, "state", 7, 8):
            body = {"ENERGY": {"Power": watts}} if watts != "state" else {"POWER": "ON"}
            plug.publish("tele/plug/SENSOR", json.dumps(body).encode(), 0)
            time.sleep(0.3)
        stdout, stderr = listener.communicate(timeout=30)
        plug.close()
        assert listener.returncode == 0, stderr
        rows = out.read_text().splitlines()
        assert rows[0] == "timestamp,watts" and [r.split(",")[1] for r in rows[1:]] == ["15", "7", "8"]
        proc = run_cli("energy", "integrate", str(out))
        assert proc.returncode == 0 and "3 samples" in proc.stdout
    finally:
        broker.stop()
