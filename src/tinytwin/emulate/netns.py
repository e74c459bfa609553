"""Network namespaces for the emulation twin (``tinytwin emulate --netns``): every device in
its own network namespace, behind a veth pair on a Linux bridge, with the kernel shaping
its link.

Why: the userspace shaper only *sleeps* for a message's modelled link time; in a
namespace the device's bytes really go through a rate-limited interface, so TCP's own
behaviour (segmentation, ACK clocking, queueing behind another message) is part of the
emulation. Layout (names carry a run-unique prefix ``tt`` + 6 hex digits, so concurrent
runs and tests never collide; ``remove_leftovers(prefix)`` clears what a killed run left)::

    root namespace: bridge PREFIXbr (10.X.0.1/16, the coordinator listens here)
       └─ PREFIXh<d>  ══ veth ══  PREFIXd<d> in namespace PREFIX-d<d> (10.X.a.b/16)

* bandwidth: ``tbf`` on the egress of both ends — the host end (toward the device) at the
  link's downlink rate, the device end at its uplink rate;
* latency and loss: ``netem`` under the ``tbf`` when the kernel has it (detected by adding
  one to a veth); otherwise they stay in the userspace shaper
  (:func:`tinytwin.emulate.shaper.userspace_share`). The result is recorded in the run's
  events and summary (``emulate.shaping``).

Only root on Linux with iproute2 (``ip``, ``tc``) can do this: :func:`require_netns` says
so in one line otherwise.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinytwin.emulate.shaper import KERNEL_NONE, KERNEL_RATE, KERNEL_RATE_DELAY, Link
from tinytwin.errors import TinyTwinError

ETH_FRAME = 1514
"""Largest Ethernet frame on a veth with MTU 1500: the smallest useful tbf bucket."""


def require_netns() -> None:
    """Raise a one-line :class:`TinyTwinError` unless namespaces can be made here."""
    if not sys.platform.startswith("linux"):
        raise TinyTwinError("--netns needs Linux network namespaces; this is " + sys.platform)
    if os.geteuid() != 0:
        raise TinyTwinError(
            "--netns needs root (creating namespaces, veth pairs and tc qdiscs); "
            "run as root or leave out --netns (userspace link shaper)"
        )
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        raise TinyTwinError(f"--netns needs iproute2; not found: {', '.join(missing)}")


def _run(args: Sequence[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), input=stdin, capture_output=True, text=True)
    if check and res.returncode != 0:
        what = " ".join(args) + (f" <<{stdin.splitlines()[0]!r}..." if stdin else "")
        raise TinyTwinError(f"netns: `{what}` failed: {(res.stderr or res.stdout).strip()}")
    return res


def new_prefix() -> str:
    """A run-unique name prefix (8 characters, so ``PREFIXh<device>`` fits IFNAMSIZ)."""
    return "tt" + secrets.token_hex(3)


def remove_leftovers(prefix: str) -> list[str]:
    """Delete every namespace and interface whose name starts with ``prefix``; return their names."""
    links = []
    for line in _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(prefix):
            links.append(name)
    spaces = [
        ln.split()[0]
        for ln in _run(["ip", "netns", "list"], check=False).stdout.splitlines()
        if ln.split() and ln.split()[0].startswith(prefix + "-")
    ]
    # Host veth ends first (deleting one end deletes the pair at once; a namespace's own
    # interfaces only go when the kernel frees it, asynchronously), then namespaces, bridge.
    order = sorted(links, key=lambda n: n.endswith("br"))
    cmds = [f"link del {n}" for n in order] + [f"netns del {s}" for s in spaces]
    if cmds:
        _run(["ip", "-force", "-batch", "-"], "\n".join(cmds) + "\n", check=False)
    return order + spaces


def _free_subnet(prefix: str) -> ipaddress.IPv4Network:
    """A 10.X.0.0/16 that no interface or route of this host uses (start from the prefix's hash)."""
    used = (
        _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
        + _run(["ip", "-4", "route", "show", "table", "all"], check=False).stdout
    )
    start = int(hashlib.sha256(prefix.encode()).hexdigest(), 16) % 128
    for i in range(128):
        x = 64 + (start + i) % 128
        if f"10.{x}." not in used:
            return ipaddress.IPv4Network(f"10.{x}.0.0/16")
    raise TinyTwinError("netns: no free 10.X.0.0/16 subnet (X in 64..191) on this host")


def tbf(dev: str, bps: float, netem: tuple[float, float] | None, netns: str | None = None) -> list[str]:
    """The ``tc`` lines (for ``tc -batch``) that shape ``dev``'s egress.

    The bucket holds one full frame (or 2 ms of tokens on fast links): a larger bucket
    lets the first bytes of every message through at line rate, a smaller one drops
    full-size frames. The queue holds 2 s of traffic (at least 64 kB) so a whole model
    waits in it instead of being dropped. ``netem``: (delay s, loss probability) or None.
    """
    rate = max(int(round(bps)), 8)
    burst = max(ETH_FRAME + 86, int(bps / 8 * 0.002))
    limit = max(64 * 1024, int(bps / 8 * 2.0))
    shape = f"tbf rate {rate}bit burst {burst} limit {limit}"
    if netem is None:
        return [f"qdisc replace dev {dev} root handle 1: {shape}"]
    delay, loss = netem
    em = f"netem delay {delay * 1000:.3f}ms" + (f" loss {loss * 100:.4f}%" if loss > 0 else "")
    return [f"qdisc replace dev {dev} root handle 1: {em}", f"qdisc replace dev {dev} parent 1:1 handle 10: {shape}"]


@dataclass
class NetnsFleet:
    """The namespaces, veths and bridge of one run (JSON-persisted in the run folder, so a
    resumed coordinator finds the same addresses)."""

    prefix: str
    num_devices: int
    subnet: str
    time_scale: float = 1.0
    netem: bool = False
    netem_error: str = ""
    links_down: list[int] = field(default_factory=list)

    # ---- names and addresses --------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def host_if(self, d: int) -> str:
        return f"{self.prefix}h{d}"

    def dev_if(self, d: int) -> str:
        return f"{self.prefix}d{d}"

    def ns(self, d: int) -> str:
        return f"{self.prefix}-d{d}"

    @property
    def _net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def bridge_ip(self) -> str:
        return str(self._net.network_address + 1)

    def device_ip(self, d: int) -> str:
        return str(self._net.network_address + 2 + d)

    def exec_prefix(self, d: int) -> list[str]:
        """Command prefix that runs a program inside device ``d``'s namespace."""
        return ["ip", "netns", "exec", self.ns(d)]

    # ---- lifecycle ------------------------------------------------------------------
    @classmethod
    def create(
        cls, num_devices: int, links: Sequence[Link], time_scale: float = 1.0, prefix: str | None = None
    ) -> NetnsFleet:
        """Build the bridge and one namespace per device, detect netem, shape every link."""
        require_netns()
        if num_devices > 65000:
            raise TinyTwinError(f"--netns: {num_devices} devices do not fit one /16 subnet (at most 65000)")
        prefix = prefix or new_prefix()
        remove_leftovers(prefix)
        self = cls(prefix, num_devices, str(_free_subnet(prefix)), time_scale=time_scale)
        try:
            self._build()
            self._detect_netem()
            self.shape(links)
        except BaseException:
            self.destroy()
            raise
        return self

    def _build(self) -> None:
        plen = self._net.prefixlen
        root = [
            f"link add {self.bridge} type bridge",
            f"link set {self.bridge} addrgenmode none",
            f"addr add {self.bridge_ip}/{plen} dev {self.bridge}",
            f"link set {self.bridge} up",
        ]
        for d in range(self.num_devices):
            root += [
                f"netns add {self.ns(d)}",
                f"link add {self.host_if(d)} type veth peer name {self.dev_if(d)} netns {self.ns(d)}",
                f"link set {self.host_if(d)} addrgenmode none",
                f"link set {self.host_if(d)} master {self.bridge} up",
            ]
        _run(["ip", "-batch", "-"], "\n".join(root) + "\n")
        for d in range(self.num_devices):
            _run(
                ["ip", "-n", self.ns(d), "-batch", "-"],
                f"link set {self.dev_if(d)} addrgenmode none\n"
                f"addr add {self.device_ip(d)}/{plen} dev {self.dev_if(d)}\n"
                f"link set {self.dev_if(d)} up\nlink set lo up\n",
            )

    def _detect_netem(self) -> None:
        """Try a netem qdisc on a real veth: the only reliable test (modules may load on demand)."""
        dev = self.host_if(0) if self.num_devices else self.bridge
        res = _run(["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms"], check=False)
        self.netem = res.returncode == 0
        self.netem_error = "" if self.netem else (res.stderr or res.stdout).strip()
        if self.netem:
            _run(["tc", "qdisc", "del", "dev", dev, "root"], check=False)

    @property
    def kernel(self) -> str:
        """What the kernel shapes (:data:`tinytwin.emulate.shaper.KERNEL_NONE` etc.)."""
        if self.time_scale <= 0:
            return KERNEL_NONE
        return KERNEL_RATE_DELAY if self.netem else KERNEL_RATE

    def shape(self, links: Sequence[Link]) -> None:
        """tbf (and netem, where the kernel has it) on both ends of every device's veth.

        Modelled time runs ``1 / time_scale`` times faster than the wall clock, so the
        kernel gets rate / time_scale and latency · time_scale; ``time_scale = 0`` (no
        pacing) leaves the veths unshaped.
        """
        if self.kernel == KERNEL_NONE:
            return
        ts = self.time_scale
        host: list[str] = []
        for d in range(self.num_devices):
            lk = links[d]
            em = (lk.latency_s * ts, lk.loss) if self.netem else None
            host += tbf(self.host_if(d), lk.down_bps / ts, em)
            _run(["tc", "-n", self.ns(d), "-batch", "-"], "\n".join(tbf(self.dev_if(d), lk.up_bps / ts, em)) + "\n")
        if host:
            _run(["tc", "-batch", "-"], "\n".join(host) + "\n")

    def intact(self) -> bool:
        """Whether the bridge and every namespace still exist (a killed run's, to adopt on resume)."""
        links = _run(["ip", "-o", "link", "show", self.bridge], check=False).returncode == 0
        spaces = set(_run(["ip", "netns", "list"], check=False).stdout.split())
        return links and all(self.ns(d) in spaces for d in range(self.num_devices))

    def destroy(self) -> None:
        """Remove every namespace, veth and the bridge of this prefix (idempotent)."""
        remove_leftovers(self.prefix)

    def set_link(self, d: int, up: bool) -> None:
        """Take device ``d``'s veth down (a link outage: nothing gets through) or up again."""
        _run(["ip", "link", "set", self.host_if(d), "up" if up else "down"])
        if up and d in self.links_down:
            self.links_down.remove(d)
        elif not up and d not in self.links_down:
            self.links_down.append(d)

    # ---- description and persistence -------------------------------------------------
    def shaping(self) -> dict[str, object]:
        """What shapes which part of a link time (for the summary and the events)."""
        none = self.kernel == KERNEL_NONE
        return {
            "mode": "netns",
            "rate": "none (time_scale 0)" if none else "kernel tbf",
            "latency_loss": "kernel netem" if self.kernel == KERNEL_RATE_DELAY else "userspace",
            "netem_available": self.netem,
            "netem_error": self.netem_error,
            "prefix": self.prefix,
            "subnet": self.subnet,
            "bridge_ip": self.bridge_ip,
        }

    def describe(self) -> str:
        where = f"network namespaces {self.prefix}-d0..{self.num_devices - 1} on bridge {self.bridge} ({self.subnet})"
        if self.kernel == KERNEL_NONE:
            return where + "; time_scale 0: links not shaped"
        head = where + "; bandwidth: kernel tbf on both directions; "
        if self.netem:
            return head + "latency and loss: kernel netem"
        return head + (
            f"latency and loss: userspace shaper (this kernel has no netem: {self.netem_error or 'tc refused it'})"
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> NetnsFleet:
        return cls(**json.loads(path.read_text()))
