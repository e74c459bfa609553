"""The MQTT broker of an emulation: Debian's mosquitto started for the run, or any broker by URL.

``tinytwin emulate --transport mqtt`` starts ``mosquitto`` on a free loopback port with a
configuration written into the run folder (anonymous clients on loopback only, no
persistence) and stops it when the run ends; ``--broker mqtt://host:port`` uses a broker
that is already running instead. A missing mosquitto or a broker that does not answer is one
line naming the fix.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tinytwin.errors import TinyTwinError

MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto")


@dataclass
class Broker:
    host: str
    port: int
    process: subprocess.Popen[bytes] | None = None  # None: someone else's broker
    command: list[str] | None = None

    def restart(self) -> None:
        """Start our broker again with the same configuration (same port)."""
        assert self.command is not None
        self.process = _launch(self.command, Path(self.command[-1]).parent)
        wait_for(self.host, self.port, 10.0)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _launch(command: list[str], folder: Path) -> subprocess.Popen[bytes]:
    """mosquitto with its log on stderr, appended to the run folder's ``mosquitto.log`` (written
    by us: a broker started as root drops to its own user, which may not write there)."""
    with open(folder / "mosquitto.log", "ab") as log:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://host[:port]`` (default port 1883) as (host, port)."""
    u = urlparse(url)
    if u.scheme != "mqtt" or not u.hostname:
        raise TinyTwinError(f"--broker {url!r}: give an MQTT URL such as mqtt://127.0.0.1:1883")
    return u.hostname, u.port or 1883


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def mosquitto_binary() -> str:
    for name in MOSQUITTO_PATHS:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    raise TinyTwinError(
        "--transport mqtt needs the mosquitto broker: run scripts/install_system_packages.sh "
        "(Debian package mosquitto), or pass --broker mqtt://host:port"
    )


def start_broker(folder: Path, url: str | None = None) -> Broker:
    """The run's broker: the one at ``url``, or a fresh mosquitto with its files in ``folder``."""
    if url:
        host, port = parse_broker_url(url)
        if not wait_for(host, port, 5.0):
            raise TinyTwinError(f"--broker {url}: no MQTT broker answers there; start one or drop --broker")
        return Broker(host, port)
    binary = mosquitto_binary()
    port = _free_port()
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n")
    command = [binary, "-c", str(conf)]
    proc = _launch(command, folder)
    if not wait_for("127.0.0.1", port, 10.0):
        proc.kill()
        raise TinyTwinError(f"mosquitto did not start (see {folder / 'mosquitto.log'})")
    return Broker("127.0.0.1", port, proc, command)
