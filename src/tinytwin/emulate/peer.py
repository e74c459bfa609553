"""The peer runtime: one OS process per device of a decentralized emulation (numpy only).

Started by the fork server (:mod:`tinytwin.emulate.forkserver`) or as
``python -m tinytwin.emulate.peer CONFIG.json``. The process listens on its own TCP
port (:class:`~tinytwin.emulate.peer_net.PeerNet`), says HELLO to the coordinator with
that port, receives the *directory* (the listening ports of its link partners) and then,
for every round the coordinator starts with a ``CONTROL {"cmd": "round", ...}``:

1. gossip ``fifo``: replace its model by the mean of its FIFO of received models;
2. train locally (:func:`tinytwin.emulate.mlp_np.train`, the simulator's batch order and
   the learning rate the coordinator's per-device schedule gives — or, for a firmware
   device, the C client on QEMU: :mod:`tinytwin.emulate.peer_trainer`), reserve the RAM the
   memory plan says training needs, wait out the paced compute time;
3. send its model directly to the peers the round's directory entry names, one MODEL
   frame each, signed with the key of that link, each after the link shaper's delay
   (Gist: one SEGMENT frame per send — the device's accuracy on the shared validation
   set, then the bitmap and values of the band it drew, :mod:`tinytwin.algorithms.gist_np`);
4. wait until every expected neighbour's model has arrived, or that neighbour is known
   to be gone (its connection closed, the coordinator's ``peer_down``, or
   ``merge_timeout_s``), then merge what arrived, in the simulator's message order
   (:mod:`tinytwin.emulate.peer_merge`; Gist: into its segment buffer, merging once it
   holds ``min_received``; a firmware device merges on the board, ``M`` / ``G``);
5. report METRICS (JSON) to the coordinator and, in evaluation rounds, its model (UPDATE,
   float32), which the coordinator evaluates and uses for the consensus distance.

Every frame is checked by :class:`PeerRuntime` (the part testable without sockets):
authentication with the key of the sender's link (a device that is not a link partner
has no key: ``unknown_sender``), replay, receiver, the connection's sender, message
type, round, whether that sender was expected this round, payload and finiteness. A
rejected frame is logged, counted (reported in METRICS) and never merged.

A coordinator that vanishes (SIGKILL) does not stop the peer: it finishes its round with its
neighbours, keeps the report, calls the coordinator's address again for ``reconnect_grace_s``
and says HELLO again; a resumed coordinator's ``CONTROL {"cmd": "resume", "round": R}`` rolls
it back to its state after round R (kept before every round) and moves the frames' round
numbers past the abandoned attempt's (``wire``). See docs/emulation.md.

Exit codes as :mod:`tinytwin.emulate.device`: 0 normal, 86 out of memory (RLIMIT_DATA),
87 firmware fault (``fault.json`` in the device's firmware folder), 3 could not talk to
the coordinator.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import queue
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from tinytwin.algorithms.attacks import attacked_model
from tinytwin.algorithms.robust_merge import robust_merge
from tinytwin.emulate import mlp_np, shaper
from tinytwin.emulate.device import NO_COORDINATOR_EXIT, _arena, log, proc_status_kb, run_main
from tinytwin.emulate.peer_gist import GistPeer
from tinytwin.emulate.peer_merge import Fifo
from tinytwin.emulate.peer_net import COORDINATOR_CONN, PeerNet
from tinytwin.emulate.peer_runtime import AGE_HEADER, PULL_REQUEST, Exchanged, PeerRuntime, Received
from tinytwin.emulate.peer_trainer import NumpyPeerTrainer, make_peer_trainer
from tinytwin.emulate.runtime_env import vm_data_bytes, warm_blas
from tinytwin.emulate.trainers import FIRMWARE_FAULT_EXIT, DeviceFault, RoundResult
from tinytwin.emulate.wire_np import COORDINATOR_ID
from tinytwin.rng import Stream, stream_rng

SNAPSHOT = ("params", "age", "local_rounds", "fifo")
"""What a peer rolls back when a resumed coordinator replays a round it had not committed."""


class Peer:
    """One device's process: its model, its training data, the round loop.

    ``trainer`` trains and merges (:mod:`tinytwin.emulate.peer_trainer`: numpy here, or the
    device's firmware on QEMU); everything else — frames, links, waiting — is done here."""

    def __init__(
        self,
        cfg: dict[str, Any],
        rt: PeerRuntime,
        net: PeerNet,
        x: np.ndarray,
        y: np.ndarray,
        initial: np.ndarray,
        trainer: NumpyPeerTrainer | None = None,
    ) -> None:
        self.cfg, self.rt, self.net, self.x, self.y = cfg, rt, net, x, y
        self.id = rt.id
        self.alg = cfg["algorithm"]
        self.params = np.asarray(initial, dtype=np.float32).copy()
        self.age = 0
        self.local_rounds = 0
        self.fifo = Fifo(self.params, int(self.alg["buffer_size"])) if self.alg["merge"] == "fifo" else None
        self.linears = mlp_np.linears_from(cfg["linears"])
        self.trainer = trainer if trainer is not None else NumpyPeerTrainer(cfg, x, y)
        self.gist = (
            GistPeer(self.alg["gist"], cfg["validation_file"], self.linears, rt.n, int(cfg["seed"]))
            if self.alg["payload"] == "gist"
            else None
        )
        self.serving: tuple[np.ndarray, int, list[list[Any]]] | None = None  # segmented gossip
        self.answered = 0
        self.link = shaper.Link(**cfg["link"])
        self.partner_down_bps = {int(k): float(v) for k, v in cfg["partners"].items()}
        self.ts = float(cfg["time_scale"])
        self.seed = int(cfg["seed"])
        self.attack = cfg.get("attack")  # a poisoning peer (spec attacks): what it sends (algorithms/attacks.py)
        self.start = self.params
        self.deferred: list[dict[str, Any]] = []
        self.stopping = False
        # coordinator resume (docs/emulation.md): the state before the latest round, the last
        # round played, the wire number of the current round, whether the coordinator is gone
        self.done_round = 0
        self.snapshot: tuple[int, dict[str, Any]] | None = None
        self.wr = 0
        self.lost = False
        self.reconnects = 0

    # ---- events from the reader thread ---------------------------------------------------
    def pump(self, timeout: float | None) -> dict[str, Any] | None:
        """Handle one event; return a coordinator command if that is what it was."""
        try:
            ev = self.net.events.get(timeout=timeout)
        except queue.Empty:
            return None
        kind, conn = ev[0], ev[1]
        if kind == "frame":
            got = self.rt.handle(ev[2], conn)
            if got is not None and got[0] == "control":
                return got[1]
        elif kind == "eof":
            if conn == COORDINATOR_CONN:  # killed, or done: call its address again (reconnect_grace_s)
                return {"cmd": "lost"} if not self.stopping else None
            sender = self.rt.conn_sender.get(conn)
            if sender is not None:
                self.rt.peer_gone(sender)
        else:  # bad_header
            self.rt.reject(ev[2], f"{ev[3]} (header); connection closed", conn)
            if conn == COORDINATOR_CONN:
                return {"cmd": "stop", "reason": "bad header from the coordinator"}
        return None

    def run(self) -> int:
        while not self.stopping:
            cmd = self.deferred.pop(0) if self.deferred else self.pump(None)
            if cmd is not None:
                self.command(cmd)
            if self.lost and not self.stopping and not self.reconnect():
                return NO_COORDINATOR_EXIT
        return 0

    # ---- coordinator resume ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in SNAPSHOT}
        if self.gist is not None:
            state["gist"] = self.gist.state
        return copy.deepcopy(state)

    def reconnect(self) -> bool:
        """The coordinator's connection closed (it was killed): call its address every 0.2 s for
        ``reconnect_grace_s``, then say HELLO again (``reconnects`` >= 1, the last round played);
        the model stays here. False: nobody answered in time (the process exits)."""
        grace = float(self.cfg.get("reconnect_grace_s", 60.0))
        deadline = time.monotonic() + grace
        log(f"device {self.id}: lost the coordinator after round {self.done_round}; calling it again for {grace} s")
        while time.monotonic() < deadline:
            try:
                self.net.connect_coordinator(self.cfg["host"], int(self.cfg["port"]), timeout=2.0)
                break
            except OSError:
                time.sleep(0.2)
        else:
            log(f"device {self.id}: no coordinator within {grace} s; exiting")
            return False
        self.lost = False
        self.reconnects += 1
        hello = {"pid": os.getpid(), "port": self.net.port, "reconnects": self.reconnects, "round": self.done_round}
        try:
            self.net.send_coordinator(
                self.rt.make(self.rt.frame.MsgType.HELLO, COORDINATOR_ID, 0, "none", json.dumps(hello).encode())
            )
        except OSError:
            self.lost = True
            return self.reconnect() if time.monotonic() < deadline else False
        log(f"device {self.id}: connected to the coordinator again (connection {self.reconnects + 1})")
        return True

    def resume(self, cmd: dict[str, Any]) -> None:
        """A resumed coordinator continues after round ``cmd["round"]``: roll back to the state
        after that round (this device may have played one more round, never committed), take the
        new wire numbering (frames of the abandoned round are stale from now on), say whether it
        could."""
        r = int(cmd["round"])
        ok = True
        if self.done_round != r:
            if self.snapshot is not None and self.snapshot[0] == r:
                for k, v in self.snapshot[1].items():
                    if k == "gist" and self.gist is not None:
                        self.gist.state = v
                    else:
                        setattr(self, k, v)
                log(f"device {self.id}: rolled back from round {self.done_round} to round {r}")
                self.done_round = r
            else:
                ok = False
                log(f"device {self.id}: cannot resume after round {r}: last played {self.done_round}")
        self.snapshot = None
        rt = self.rt
        rt.round, rt.active, rt.inbox, rt.pending, rt.requests = int(cmd["wire"]), False, [], [], []
        self.wr = rt.round
        self.net.send_coordinator(
            rt.make(
                rt.frame.MsgType.METRICS,
                COORDINATOR_ID,
                rt.round,
                "none",
                json.dumps(
                    {"kind": "resumed", "ok": ok, "round": self.done_round, "local_rounds": self.local_rounds}
                ).encode(),
            )
        )

    def command(self, cmd: dict[str, Any]) -> None:
        c = cmd["cmd"]
        if c == "stop":
            log(f"device {self.id}: stop ({cmd.get('reason', 'coordinator')})")
            self.stopping = True
        elif c == "directory":
            self.net.ports = {int(k): int(v) for k, v in cmd["ports"].items()}
        elif c == "peer_down":
            self.rt.peer_gone(int(cmd["device"]))
        elif c == "round":
            self.play_round(cmd)
        elif c == "resume":
            self.resume(cmd)
        elif c == "lost":
            self.lost = True

    # ---- one round ------------------------------------------------------------------------
    def play_round(self, cmd: dict[str, Any]) -> None:
        r = int(cmd["round"])
        self.wr = int(cmd.get("wire", r))  # the frames' round number (differs from r after a resume)
        self.snapshot = (self.done_round, self._state())
        self.done_round = r
        online = bool(cmd.get("online", False))
        steps = int(cmd.get("steps", 1))
        outstanding: dict[int, list[tuple[int, int, int]]] = {}
        bounds = self.rt.bounds
        if bounds is not None:
            for seg, peer, _ in cmd.get("pulls", []):
                outstanding.setdefault(int(peer), []).append((int(seg), bounds[int(seg)], bounds[int(seg) + 1]))
        self.rt.start_round(self.wr, online, cmd.get("expect", {}), steps, cmd.get("requests"), outstanding)
        self.serving = None
        if not online:
            return
        tr = self.trainer
        self.start = self.params.copy()
        res, busy, compute_s = self._train(r, float(cmd["lr"]))
        params, loss, nsteps = res.params, res.train_loss, res.steps
        sent: list[list[Any]] = []
        extra: dict[str, Any] = dict(res.extra)
        merge_insns0 = tr.merge_insns
        if self.alg.get("exchange") == "push_pull":
            done = self._push_pull(params, r, cmd, sent)
        else:
            done = self._exchange_steps(params, r, cmd, steps, sent, extra)
        if done is None:  # told to stop
            return
        params, received, timeouts, wait_s = done
        self.params = params
        received += self.rt.requests  # segmented gossip: the pull requests answered
        if tr.merge_insns > merge_insns0:
            extra["merge_insns"] = tr.merge_insns - merge_insns0
        metrics = {
            "train_loss": loss,
            "steps": nsteps,
            "compute_s": compute_s,
            "busy_s": busy,
            "wait_s": wait_s,
            "sent": sent,
            "received": [[m.sender, m.nbytes] for m in received],
            "timeouts": timeouts,
            "gone": sorted(self.rt.dead),
            "local_rounds": self.local_rounds,
            "age": self.age,
            "rss_kb": proc_status_kb("VmRSS"),
            "hwm_kb": proc_status_kb("VmHWM"),
            "rejected": dict(self.rt.rejected),
            "torch_loaded": "torch" in sys.modules,
            **extra,
        }
        self.rt.finish_round()
        self._report(metrics, bool(cmd.get("report_model", True)))

    def _report(self, metrics: dict[str, Any], with_model: bool) -> None:
        """The round's METRICS to the coordinator, and in evaluation rounds (``with_model``) the
        model (for evaluation and the consensus distance)."""
        fm = self.rt.frame
        if self.lost:  # the coordinator is gone: the report goes nowhere (a resume replays the round)
            return
        try:
            self.net.send_coordinator(
                self.rt.make(fm.MsgType.METRICS, COORDINATOR_ID, self.wr, "none", json.dumps(metrics).encode())
            )
            if with_model:
                self.net.send_coordinator(
                    self.rt.make(
                        fm.MsgType.UPDATE,
                        COORDINATOR_ID,
                        self.wr,
                        "float32",
                        self.rt.enc.encode(self.params, "float32"),
                    )
                )
        except OSError:
            self.lost = True

    def _train(self, r: int, lr: float) -> tuple[RoundResult, float, float]:
        """(gossip ``fifo``: start from the buffer mean) train within the memory plan's arena,
        wait out the paced compute time; returns (result, busy s, compute s with the pacing)."""
        tr = self.trainer
        if self.fifo is not None:
            self.params = tr.fifo_mean(self.fifo.slots[: self.fifo.count])
        t0 = time.perf_counter()
        arena = _arena(int(self.cfg["arena_bytes"])) if tr.caps_process_memory else None
        res = tr.train(self.params, r, lr)
        if arena is not None:
            arena.close()
        busy = time.perf_counter() - t0
        pace = res.modelled_compute_s * self.ts - busy  # a firmware device: its instruction count's time
        if pace > 0:
            time.sleep(pace)
        self.age += 1
        self.local_rounds += 1
        return res, busy, time.perf_counter() - t0

    def _exchange_steps(
        self, params: np.ndarray, r: int, cmd: dict[str, Any], steps: int, sent: list[list[Any]], extra: dict[str, Any]
    ) -> Exchanged | None:
        """The round's exchange steps: send to the directory's ``send`` list, wait for the
        expected models of the step, merge them in the simulator's order. None: told to stop."""
        bounds = self.rt.bounds
        timeouts: list[int] = []
        received: list[Received] = []
        wait_s = 0.0
        for step in range(1, steps + 1):
            encoding, msg_type = self.rt.encoding, self.rt.msg_type
            if self.gist is not None:
                payloads, extra["val_accuracy"] = self.gist.payloads(params, cmd)
            elif bounds is not None:  # segmented gossip: pull requests; answer others' with this model
                payloads = [
                    PULL_REQUEST.pack(int(seg), bounds[int(seg)], bounds[int(seg) + 1])
                    for seg, _, _ in cmd.get("pulls", [])
                ]
                encoding, msg_type = "none", self.rt.frame.MsgType.CONTROL
                self.serving, self.answered = (params, r, sent), 0
            else:
                sent_model = attacked_model(params, self.start, self.attack, self.seed, r, self.id)  # spec attacks
                payloads = [self._payload(sent_model)] * len(cmd.get("send", []))
            for k, dst in enumerate(cmd.get("send", [])):
                sent.append(self._send(int(dst), r, payloads[k], step, k, encoding, msg_type))
            t_wait = time.perf_counter()
            timeouts += self._wait(step)
            wait_s += time.perf_counter() - t_wait
            msgs = self.rt.take(step)
            received += msgs
            params = self._merge(params, msgs, cmd, extra)
            if self.stopping:
                return None
        return params, received, timeouts, wait_s

    def _push_pull(self, params: np.ndarray, r: int, cmd: dict[str, Any], sent: list[list[Any]]) -> Exchanged | None:
        """gossip ``exchange: push_pull`` (the simulator's ``pairwise_merge``): this device's
        pairs in the round's global order (``send``: the partner of each pair). Per pair it sends
        its current model and age (with a lossy encoding: its model after training, which is what
        the simulator decodes for every pair of the round), waits for the partner's, and merges
        the two (average, or age-weighted). The j-th model from a partner is its side of the
        j-th pair with it (one connection per direction keeps a sender's order). A pair whose
        partner is gone, or late past ``merge_timeout_s``, does not merge. None: told to stop."""
        trained, timeouts, received, wait_s = params, [], [], 0.0
        seen: Counter[int] = Counter()
        for k, partner in enumerate(int(p) for p in cmd.get("send", [])):
            src = params if self.rt.encoding == "float32" else trained
            sent.append(self._send(partner, r, self._payload(src), 1, k))
            j = seen[partner]
            seen[partner] += 1
            t_wait = time.perf_counter()
            timeouts += self._wait(1, functools.partial(self._awaiting, partner, j))
            wait_s += time.perf_counter() - t_wait
            if self.stopping:
                return None
            theirs = [m for m in self.rt.inbox if m.sender == partner]
            if len(theirs) <= j:
                continue
            m = theirs[j]
            received.append(m)
            if self.alg["merge"] == "age":
                params, self.age = self.trainer.age(params, self.age, [(m.values, m.age)])
            else:
                params = self.trainer.average(params, [m.values])
        return params, received, timeouts, wait_s

    def _awaiting(self, partner: int, j: int) -> list[int]:
        """``[partner]`` until its j-th model (0-based) of the round is in, or it is gone."""
        return [] if partner in self.rt.dead or self.rt.got[partner] > j else [partner]

    def _payload(self, params: np.ndarray) -> bytes:
        body = self.rt.enc.encode(params, self.rt.encoding, tensor_sizes=self.rt.tensor_sizes)
        return AGE_HEADER.pack(self.age) + body if self.rt.with_age else body

    def _send(
        self, dst: int, r: int, payload: bytes, step: int, k: int, encoding: str | None = None, msg_type: Any = None
    ) -> list[Any]:
        """Shaped send of one MODEL (Gist, segmented gossip: SEGMENT; a pull request: CONTROL)
        frame; returns [dst, frame bytes, link s, lost packets, delivered]."""
        data = self.rt.make(msg_type or self.rt.msg_type, dst, self.wr, encoding or self.rt.encoding, payload)
        link = self.link
        lost = shaper.draw_lost(stream_rng(self.seed, Stream.MSG_LOSS, r, step, self.id, k), len(data), link)
        bps = min(link.up_bps, self.partner_down_bps.get(dst, link.up_bps))
        link_s, _ = shaper.transfer(len(data), bps, link, lost)
        if link_s * self.ts > 0:
            time.sleep(link_s * self.ts)
        ok = self.net.send(dst, data)
        return [dst, len(data), link_s, lost, ok]

    def _wait(self, step: int, waiting: Callable[[], list[int]] | None = None) -> list[int]:
        """Handle events until every live expected neighbour's models of ``step`` are in
        (``waiting``: who is still awaited, if not that); return the neighbours given up on
        after ``merge_timeout_s``."""
        pending = waiting if waiting is not None else (lambda: self.rt.waiting_for(step))
        deadline = time.monotonic() + float(self.cfg["merge_timeout_s"])
        while True:
            self._serve()
            if not pending():
                break
            left = deadline - time.monotonic()
            if left <= 0:
                late = pending()
                log(
                    f"device {self.id}: round {self.rt.round}: no model from {late} within "
                    f"{self.cfg['merge_timeout_s']} s; merging what arrived"
                )
                return late
            cmd = self.pump(left)
            if cmd is None:
                continue
            if cmd["cmd"] == "peer_down":
                self.rt.peer_gone(int(cmd["device"]))
            elif cmd["cmd"] == "lost":  # the coordinator is gone: finish the round with the neighbours
                self.lost = True
            elif cmd["cmd"] == "stop":
                self.command(cmd)
                return []
            else:  # the coordinator moved on without us: merge what we have, then obey
                self.deferred.append(cmd)
                return pending()
        return []

    def _serve(self) -> None:
        """Segmented gossip: answer the pull requests that came in, in arrival order, each with
        the requested segment of this round's trained model (before this device's own merge)."""
        if self.serving is None:
            return
        params, r, sent = self.serving
        reqs = self.rt.requests
        while self.answered < len(reqs):
            msg = reqs[self.answered]
            assert msg.request is not None
            _, lo, hi = msg.request
            body = self.rt.enc.encode(params[lo:hi], self.rt.encoding)
            sent.append(self._send(msg.sender, r, body, 2, self.answered))
            self.answered += 1

    def _pull_merge(self, params: np.ndarray, msgs: list[Received], cmd: dict[str, Any]) -> np.ndarray:
        """segment_pull of :mod:`tinytwin.algorithms.segments` for this device: per segment
        ``(n_i·w_i + Σ n_p·w_p) / (n_i + Σ n_p)`` over the answers that arrived (float32, pulls
        in the simulator's order: segment, then replica)."""
        bounds = self.rt.bounds
        assert bounds is not None
        answers: dict[tuple[int, int], np.ndarray] = {}
        seen: Counter[int] = Counter()
        for m in msgs:  # take() gives each peer's answers in the order of the requests
            answers[(m.sender, seen[m.sender])] = m.values
            seen[m.sender] += 1
        asked: Counter[int] = Counter()
        per_seg: dict[int, list[tuple[float, np.ndarray]]] = {}
        for seg, peer, weight in cmd.get("pulls", []):
            z = answers.get((int(peer), asked[int(peer)]))
            asked[int(peer)] += 1
            if z is not None:
                per_seg.setdefault(int(seg), []).append((float(weight), z))
        out = params.copy()
        own_w = float(cmd.get("own_weight", 1.0))
        for seg, pulled in sorted(per_seg.items()):
            lo, hi = bounds[seg], bounds[seg + 1]
            out[lo:hi] = self.trainer.pull_merge(params[lo:hi], own_w, pulled)
        return out

    def _merge(
        self, params: np.ndarray, msgs: list[Received], cmd: dict[str, Any], extra: dict[str, Any]
    ) -> np.ndarray:
        """Merge the step's messages by the rule the algorithm's block names (``merge``)."""
        tr = self.trainer
        merge = self.alg["merge"]
        if merge == "pull":
            return self._pull_merge(params, msgs, cmd)
        if merge == "mix":
            weights = {int(k): float(v) for k, v in cmd.get("weights", {}).items()}  # none: isolated
            got = [(weights[m.sender], m.values) for m in msgs]
            missing = sum(weights.values()) - sum(w for w, _ in got)
            return tr.mix(params, float(cmd.get("self_weight", 1.0)), got, max(missing, 0.0))
        if merge == "robust":  # own model and the step's received ones, in sender order (algorithms/robust_merge.py)
            models = [m.values for m in sorted(msgs, key=lambda m: m.sender)]
            return robust_merge(params, models, self.alg["rule"], float(self.alg["beta"])) if models else params
        if merge == "gist":
            assert self.gist is not None
            return self.gist.merge(params, msgs, extra, tr)
        if merge == "average":
            return tr.average(params, [m.values for m in msgs])
        if merge == "age":
            params, self.age = tr.age(params, self.age, [(m.values, m.age) for m in msgs])
            return params
        assert self.fifo is not None
        for m in msgs:
            self.fifo.push(m.values)
        return params


def _load_keys(path: str) -> tuple[bytes, dict[int, bytes]]:
    with open(path) as fh:
        raw = json.load(fh)
    return bytes.fromhex(raw["coordinator"]), {int(k): bytes.fromhex(v) for k, v in raw["links"].items()}


def run(cfg: dict[str, Any]) -> int:
    ckey, links = _load_keys(cfg["key_file"])
    shard = np.load(cfg["data_file"])
    x, y = shard["x"].astype(np.float32), shard["y"].astype(np.int64)
    initial = np.load(cfg["initial_file"])
    alg = cfg["algorithm"]
    rt = PeerRuntime(
        int(cfg["device"]),
        ckey,
        links,
        int(cfg["num_params"]),
        list(cfg["tensor_sizes"]),
        cfg["encoding"],
        with_age=alg["merge"] == "age",
        gist=alg["payload"] == "gist",
        segment_bounds=alg.get("segment_bounds") if alg["payload"] == "segments" else None,
    )
    # Numpy or firmware (QEMU) training and merging; QEMU is started before any cap (it
    # reserves a large translation buffer) and before the reader thread exists.
    try:
        trainer = make_peer_trainer(cfg, x, y)
    except DeviceFault as fault:
        log(f"device {rt.id}: firmware fault at start-up {fault.kind}: {fault.detail}")
        return FIRMWARE_FAULT_EXIT
    net = PeerNet(int(cfg["max_frame"]), cfg.get("tls_ca"))
    warm_blas()  # BLAS's work buffers belong to the baseline, not to the budget (runtime_env)
    try:
        net.connect_coordinator(cfg["host"], int(cfg["port"]))
    except OSError as exc:
        log(f"device {rt.id}: cannot connect to the coordinator: {exc}")
        return NO_COORDINATOR_EXIT
    net.start()
    baseline = vm_data_bytes()
    cap = baseline + int(cfg["mem_budget_bytes"])
    hello = {"pid": os.getpid(), "port": net.port, "vmdata_baseline": baseline, "rlimit_data": cap}
    net.send_coordinator(rt.make(rt.frame.MsgType.HELLO, COORDINATOR_ID, 0, "none", json.dumps(hello).encode()))
    if trainer.caps_process_memory:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    log(
        f"device {rt.id}: pid {os.getpid()} port {net.port}, {len(links)} link keys, {trainer.kind} trainer, "
        f"VmData baseline {baseline} B, RLIMIT_DATA {cap if trainer.caps_process_memory else 'none'} B"
    )
    try:
        return Peer(cfg, rt, net, x, y, initial, trainer).run()
    except DeviceFault as fault:
        log(f"device {rt.id}: round {rt.round}: firmware fault {fault.kind}: {fault.detail}")
        return FIRMWARE_FAULT_EXIT
    finally:
        trainer.close()
        net.close()


def main(argv: list[str] | None = None) -> int:
    return run_main(run, argv, lost_coordinator_exits=True)


if __name__ == "__main__":
    sys.exit(main())
