"""A hierarchical emulation's checkpoint and its resume: what the global coordinator holds
after a committed round, and how a resumed one adopts the local aggregators and devices that
outlived its predecessor.

A mixin of :class:`tinytwin.emulate.hier_coordinator.HierEmulation` (its state lives there)."""

from __future__ import annotations

import asyncio
from typing import Any

from tinytwin.emulate.fork_fleet import PEERS_FILE, WIRE_STRIDE
from tinytwin.emulate.processes import adopt_recorded
from tinytwin.emulate.rundir import write_json
from tinytwin.engines.hierarchical import HState


class HierResume:
    """Methods of :class:`~tinytwin.emulate.hier_coordinator.HierEmulation`: A hierarchical emulation's checkpoint and its resume: what the global coordinator holds"""

    def _checkpoint(self, st: HState) -> dict[str, Any]:
        """What the GA holds after a committed round (the local aggregators start every global round
        from the global model, the devices from their aggregator's model: they hold nothing to keep)."""
        return {
            "st": st.to_checkpoint(),
            "offset": self.offset,
            "startup_s": getattr(self, "startup_s", None),
            "counters": {x: getattr(self, x) for x in self._COUNTERS},
        }

    def restore(self, ck: dict[str, Any]) -> HState:
        """The GA's state after the checkpoint's round (the next wire offset); returns the run's state."""
        st = self.sim.state_from_checkpoint(ck["st"])
        self.offset = int(ck["offset"]) + WIRE_STRIDE
        self.startup_s = ck.get("startup_s")
        for x, v in ck["counters"].items():
            setattr(self, x, v)
        self.wall_offset = float(self.wall_s)
        return st

    def _write_peers(self) -> None:
        """``emulate/peers.json``: the fork server's pid and every LA's and device's (a resumed GA adopts them)."""
        if self.procs.proc is None:
            return
        pids = dict(self.procs.pids)
        write_json(
            self.edir / PEERS_FILE,
            {
                "forkserver": self.procs.proc.pid,
                "devices": {str(d): pid for d, pid in pids.items() if d < self.n},
                "aggregators": {str(key - self.n): pid for key, pid in pids.items() if key >= self.n},
                # adopted processes are children of an earlier coordinator's fork server
                "parents": {str(key): parent for key, parent in self.procs.adopted.items()},
            },
        )

    async def _resume_processes(self, st: HState) -> None:
        """Adopt the local aggregators and devices the killed GA's fork server left running, wait until
        the aggregators call again (each finishes the global round it was in first), and record who
        came back; what did not is started again by the next round."""
        R = st.round
        adopt_recorded(self.procs.adopt, self.edir / PEERS_FILE, skip=self.gone, aggregator_key=self._la_key)
        adopted_las = [c for c in range(self.k) if self._la_key(c) in self.procs.adopted]
        wait = self.opt.start_timeout_s + (self.L + 1) * self.opt.round_timeout_s

        async def hello(c: int) -> None:
            try:
                await asyncio.wait_for(self.la_hello[c].wait(), wait)
            except TimeoutError:
                pass

        await asyncio.gather(*(hello(c) for c in adopted_las))
        events: list[dict[str, Any]] = []
        devices_back = 0
        for c in range(self.k):
            info = self.la_hello_info.get(c)
            if c in self.la_writers and info is not None:
                self.reconnects += 1
                connected = [int(d) for d in info.get("connected", [])]
                back = [d for d in connected if d in self.procs.adopted and self.procs.alive(d)]
                devices_back += len(back)
                events.append(
                    self._event(
                        R,
                        None,
                        "reconnect",
                        f"local aggregator {c} (pid {info.get('pid')}) reconnected; "
                        f"{len(back)} of its {len(self.members[c])} devices still connected to it",
                    )
                )
                for d in back:
                    events.append(
                        self._event(
                            R, d, "reconnect", f"device {d} kept its connection to local aggregator {c}; adopted"
                        )
                    )
            else:
                self.procs.kill(self._la_key(c))  # started again (same port) by the next round
        alive = [d for d in range(self.n) if d not in self.gone and self.procs.alive(d)]
        events.append(
            self._event(
                R,
                None,
                "devices_resumed",
                f"{sum(1 for c in range(self.k) if c in self.la_writers)} of {self.k} local "
                f"aggregator(s) and {devices_back} of {self.n - len(self.gone)} device process(es) "
                f"of the killed coordinator reconnected; {len(alive)} device process(es) adopted; "
                f"continuing after round {R}",
            )
        )
        self.store.add_events(self.run_id, events)
