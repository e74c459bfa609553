"""Emulation in network namespaces (``tinytwin emulate --netns``): real veths, a bridge and
kernel tbf shaping. Needs root on Linux with iproute2; CI runs as root, so a missing
privilege is an error here, never a skip."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netns_util import require_netns_privileges
from tinytwin.emulate.netns import ETH_FRAME, NetnsFleet, remove_leftovers, tbf
from tinytwin.emulate.shaper import Link

ROOT = Path(__file__).resolve().parents[1]
RATE = 100_000.0  # bit/s
PARAMS = 3000  # float32 model: 12 000-byte payload, a 12 062-byte frame -> ~1 s at 100 kbit/s


@pytest.fixture(scope="module")
def netns_ok() -> None:
    """Namespaces need root and iproute2: say which is missing and fail (CI runs as root)."""
    require_netns_privileges()


SENDER = """
import socket, sys, time
import numpy as np
from tinytwin.wire import encoding as enc, frame as fm
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
payload = enc.encode(np.random.default_rng(0).standard_normal(n).astype(np.float32), "float32")
data = fm.encode_frame(fm.Frame(fm.MsgType.MODEL, 0, 1, 1, "float32", 0, 1, payload), b"k" * 32)
for _ in range(200):
    try:
        s = socket.create_connection((host, port), timeout=5)
        break
    except OSError:
        time.sleep(0.05)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
time.sleep(0.3)  # handshake done, token buckets full again
t0 = time.monotonic()
s.sendall(data)
print(t0, len(data), flush=True)
s.recv(1)
"""

RECEIVER = """
import socket, sys, time
host, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen()
c, _ = srv.accept()
got = 0
while got < nbytes:
    chunk = c.recv(65536)
    if not chunk:
        break
    got += len(chunk)
t1 = time.monotonic()
print(t1, got, flush=True)
c.sendall(b"k")
"""


def _transfer(net: NetnsFleet, src: int, dst: int, nbytes: int) -> tuple[float, int]:
    """Send one model frame from device ``src``'s namespace to device ``dst``'s; (seconds, bytes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    port = 9000 + src
    recv = subprocess.Popen(
        [*net.exec_prefix(dst), sys.executable, "-c", RECEIVER, net.device_ip(dst), str(port), str(nbytes)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        send = subprocess.run(
            [*net.exec_prefix(src), sys.executable, "-c", SENDER, net.device_ip(dst), str(port), str(PARAMS)],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert send.returncode == 0, send.stderr
        out, _ = recv.communicate(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
    t0, sent = send.stdout.split()
    t1, got = out.split()
    assert int(got) == int(sent) == nbytes
    return float(t1) - float(t0), int(got)


def _tcp_header_bytes(net: NetnsFleet) -> int:
    ts = subprocess.run(
        [*net.exec_prefix(0), "cat", "/proc/sys/net/ipv4/tcp_timestamps"], capture_output=True, text=True
    ).stdout.strip()
    return 20 + (12 if ts != "0" else 0)


def test_two_namespaces_exchange_a_model_at_the_tbf_rate(netns_ok: None) -> None:
    link = Link(latency_s=0.0, up_bps=RATE, down_bps=RATE, loss=0.0, mtu_bytes=1500, header_bytes=0)
    net = NetnsFleet.create(2, [link, link], time_scale=1.0)
    try:
        nbytes = 62 + 4 * PARAMS
        # What the tbf counts: every TCP segment carries at most MSS payload bytes and
        # Ethernet (14) + IPv4 (20) + TCP (20, +12 with timestamps) header bytes.
        tcp = _tcp_header_bytes(net)
        mss = 1500 - 20 - tcp
        segments = math.ceil(nbytes / mss)
        wire = nbytes + segments * (14 + 20 + tcp)
        # The token bucket starts full: its `burst` bytes (one full frame, +86) leave at line rate.
        burst = int(tbf("x", RATE, None)[0].split("burst ")[1].split()[0])
        assert burst == ETH_FRAME + 86
        expected = (wire - burst) * 8 / RATE
        for src, dst in ((0, 1), (1, 0)):  # an exchange: each device sends its model to the other
            seconds, _ = _transfer(net, src, dst, nbytes)
            err = abs(seconds - expected) / expected
            print(
                f"netns tbf {RATE / 1000:g} kbit/s: {nbytes} B frame = {wire} B on the wire in {segments} "
                f"segments, device {src} -> {dst}: expected {expected:.3f} s (payload only "
                f"{nbytes * 8 / RATE:.3f} s), measured {seconds:.3f} s, error {err * 100:.1f} %"
            )
            assert err <= 0.20, (seconds, expected)
    finally:
        net.destroy()
    assert not remove_leftovers(net.prefix), "destroy() left namespaces or interfaces behind"


QUICK = ROOT / "examples" / "quickstart.yaml"
SMALL = ["--set", "fleet.groups.0.count=3", "--set", "fleet.groups.0.link=ble"]


def _run_dir(out: Path) -> Path:
    found = list(out.glob("quickstart-emulate-*"))
    assert len(found) == 1, found
    return found[0]


def _no_device_left(run_dir: Path) -> bool:
    from tinytwin.emulate.rundir import kill_recorded_devices

    return kill_recorded_devices(run_dir / "emulate") == []


def test_emulate_netns_end_to_end_records_its_shaping_path(netns_ok: None, tmp_path: Path) -> None:
    from conftest import run_cli
    from tinytwin.emulate import measured
    from tinytwin.store.db import RunStore

    res = run_cli(
        "emulate",
        str(QUICK),
        *SMALL,
        "--set",
        "rounds=2",
        "--netns",
        "--time-scale",
        "1",
        "--out",
        str(tmp_path),
        "--quiet",
        "--no-report",
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "link shaping: netns (bandwidth: kernel tbf" in res.stdout
    run_dir = _run_dir(tmp_path)
    store = RunStore(run_dir / "results.db")
    try:
        info = store.run_info()
        rounds, devs, events = store.rounds(info.run_id), store.device_rounds(info.run_id), store.events(info.run_id)
        walls = measured.rows(store, info.run_id)
    finally:
        store.close()
    assert info.status == "complete" and [r["completed"] for r in rounds] == [3, 3]
    shaping = info.summary["emulate"]["shaping"]
    assert shaping["mode"] == "netns" and shaping["rate"] == "kernel tbf"
    assert shaping["latency_loss"] == ("kernel netem" if shaping["netem_available"] else "userspace")
    detail = [e["detail"] for e in events if e["kind"] == "shaping"]
    assert len(detail) == 1 and "bandwidth: kernel tbf on both directions" in detail[0]
    assert ("netem" in detail[0]) and (shaping["netem_available"] or "userspace shaper" in detail[0])
    # The bytes really crossed 200 kbit/s veths: the measured transfer takes about the modelled
    # time (loopback without the tbf would take ~the 30 ms of userspace latency only).
    model = {(d["round"], d["device"]): d for d in devs}
    for w in walls:
        m = model[(w["round"], w["device"])]
        for wall, modelled in ((w["wall_down_s"], m["down_s"]), (w["wall_up_s"], m["up_s"])):
            assert 0.6 * modelled <= wall <= 1.5 * modelled + 0.1, (w, m)
    assert remove_leftovers(shaping["prefix"]) == [], "namespaces or veths left after the run"
    assert _no_device_left(run_dir)


def test_sigterm_removes_namespaces_and_device_processes(netns_ok: None, tmp_path: Path) -> None:
    import signal
    import sqlite3
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tinytwin.cli",
            "emulate",
            str(QUICK),
            *SMALL,
            "--set",
            "rounds=40",
            "--netns",
            "--time-scale",
            "1",
            "--out",
            str(tmp_path),
            "--quiet",
            "--no-report",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline and run_dir is None:
            found = list(tmp_path.glob("quickstart-emulate-*"))
            if found and (found[0] / "emulate" / "netns.json").is_file():
                con = sqlite3.connect(f"file:{found[0] / 'results.db'}?mode=ro", uri=True)
                try:
                    if con.execute("SELECT COUNT(*) FROM rounds").fetchone()[0] >= 1:
                        run_dir = found[0]
                except sqlite3.OperationalError:
                    pass
                finally:
                    con.close()
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        assert run_dir is not None, "no round finished in 60 s"
        prefix = json.loads((run_dir / "emulate" / "netns.json").read_text())["prefix"]
        assert any(
            n.startswith(prefix + "-")
            for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert proc.returncode == 143
        assert remove_leftovers(prefix) == [], "SIGTERM left namespaces or veths behind"
        assert _no_device_left(run_dir), "SIGTERM left device processes behind"
        con = sqlite3.connect(run_dir / "results.db")
        assert con.execute("SELECT status FROM runs").fetchone()[0] == "incomplete"
        con.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        if run_dir is not None:
            _no_device_left(run_dir)


def test_netns_without_root_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """Runs everywhere: a non-root user asking for --netns gets one error line, status 2, no run folder."""
    from tinytwin import cli

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sys, "argv", ["tinytwin", "emulate", str(QUICK), "--netns", "--out", str(tmp_path), "--quiet"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--netns needs root" in err
    assert list(tmp_path.iterdir()) == []
