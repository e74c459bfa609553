"""The simulation twin for decentralized learning (no server): DecFedAvg, gossip, server-free
FL, segmented gossip and Gist, with optional AdaStair/AdaLoss learning rates.

Every device keeps its own model as one row of a ``(D, P)`` matrix. The algorithms are the
pure functions of :mod:`tinytwin.algorithms` (what a device sends, to whom, when it merges,
how); this module only drives them on the virtual clock of the cost model and records the
results, exactly as :mod:`tinytwin.engines.simulate` does for centralized FL:

- **sync** (lock-step rounds): in round r every online device trains one local round
  (:class:`~tinytwin.engines.local_training.LocalTrainer`, all devices batched, each from
  its own model with its own learning rate), then the algorithm communicates and merges.
  The round lasts as long as the busiest device (compute + its radio time, sent and
  received messages one after another on a half-duplex radio).
- **async** (gossip and Gist): each device runs on its own clock; its period is its
  local-round compute time plus the airtime of its sends (from the cost model), so a
  device twice as fast gossips twice as often. Events are processed in time order in
  ticks of ``tick_s`` (default: half the fastest period, so a device fires at most once
  per tick); devices that fire in the same tick train as one batch; a message is merged
  at the first tick that starts after it arrived. A reported round is ``round_s`` of
  virtual time (default: the slowest device's period).

Per round the run stores each device's accuracy on the shared test set, the consensus
distance, bytes, messages, airtime and energy per device (``round_metrics``,
``device_metrics``; the common ``rounds`` table holds the *mean* device accuracy as
``test_accuracy`` so the common report and ``compare`` work unchanged). Every finished
round is committed with a checkpoint; ``--resume`` continues exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms import gist as G
from tinytwin.algorithms.gist_np import validation_indices
from tinytwin.algorithms.local_update import LocalTraining
from tinytwin.algorithms.lr_schedules import LRSchedule
from tinytwin.algorithms.mixing import distances_to_mean
from tinytwin.engines.device import engine_device
from tinytwin.engines.dfl_messages import AGE_HEADER_BYTES, Ctx, DState, Messages
from tinytwin.engines.dfl_protocols import PROTOCOLS
from tinytwin.engines.evaluate_many import evaluate_many
from tinytwin.engines.experiment import Experiment
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.engines.network import Network
from tinytwin.engines.summary import common_summary, precision_summary
from tinytwin.fleet.cost import compute_flops, energy_joules, peer_transfer_cost, per_device
from tinytwin.fleet.memory import MemoryPlan, plan_memory
from tinytwin.models.accounting import training_memory
from tinytwin.net.topology import components
from tinytwin.rng import Stream, stream_rng
from tinytwin.store import dfl as dfl_store
from tinytwin.store.db import RunStore
from tinytwin.wire.encoding import encoded_size
from tinytwin.wire.frame import frame_size

ProgressFn = Callable[[int, dict[str, Any]], None]

# ---------------------------------------------------------------------------------- memory


def receive_buffer_bytes(exp: Experiment) -> int:
    """RAM a device needs to receive and merge under the run's algorithm (beyond training)."""
    a = exp.spec.algorithm
    p = exp.model.num_params
    model_frame = frame_size(encoded_size(p, a.encoding, tensor_sizes=exp.model.tensor_sizes))
    if a.name in ("decfedavg", "serverfree"):
        return model_frame + 4 * p  # one frame + the running weighted sum
    if a.name == "gossip":
        if a.gossip.merge == "fifo":
            return model_frame + 4 * p * a.gossip.buffer_size
        return model_frame + (AGE_HEADER_BYTES if a.gossip.merge == "age" else 0)
    if a.name == "segmented_gossip":
        return frame_size(4 * -(-p // a.segments.count)) + 4 * p
    if a.name == "gist":
        nnz = -(-p // a.gist.segments)
        return frame_size(G.payload_size(p, nnz)) + 2 * 4 * p  # one frame + the r and φ accumulators
    return model_frame


def memory_plans(exp: Experiment) -> list[MemoryPlan]:
    """Memory plan of every group for a decentralized run: training plus the algorithm's buffers."""
    a = exp.spec.algorithm
    plans = []
    for g in exp.fleet.groups:
        max_samples = max(len(exp.parts[d]) for d in g.devices)
        base = plan_memory(
            g.name,
            g.profile,
            exp.model,
            batch_size=a.batch_size,
            optimizer=a.optimizer,
            momentum=a.momentum,
            prox_mu=0.0,
            uplink_encoding=a.encoding,
            downlink_encoding=a.encoding,
            max_samples=max_samples,
        )
        send = frame_size(encoded_size(exp.model.num_params, a.encoding, tensor_sizes=exp.model.tensor_sizes))
        training = training_memory(
            exp.model.layers,
            a.batch_size,
            optimizer=a.optimizer,
            momentum=a.momentum,
            receive_bytes=receive_buffer_bytes(exp),
            send_bytes=send,
        )
        plans.append(replace(base, training=training))
    return plans


# ---------------------------------------------------------------------------------- engine


def round_metric_rows(
    r: int,
    devices: Any,
    status: Callable[[int], str],
    *,
    n_train: np.ndarray,
    compute_s: np.ndarray,
    tx_s: np.ndarray,
    rx_s: np.ndarray,
    sent_b: np.ndarray,
    recv_b: np.ndarray,
    lost: np.ndarray,
    energy: np.ndarray,
    losses: np.ndarray,
    acc: np.ndarray,
    test_loss: np.ndarray,
    dist: np.ndarray,
    lr: Any,
    local_rounds: Any,
    n_sent: np.ndarray,
    n_recv: np.ndarray,
    consensus: float | None,
    components: int,
    messages: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """A decentralized round's stored rows, written alike by the simulator and the emulation twin
    (emulate/dfl_coordinator.py): ``device_rounds`` and ``dfl_device_metrics`` rows of ``devices``
    (``status(d)`` each) and the ``dfl_round_metrics`` row (NaN: not evaluated / not trained)."""
    device_rows, metric_rows = [], []
    for d in devices:
        device_rows.append(
            {
                "round": r,
                "device": int(d),
                "status": status(d),
                "num_samples": int(n_train[d]),
                "compute_s": float(compute_s[d]),
                "up_s": float(tx_s[d]),
                "down_s": float(rx_s[d]),
                "bytes_up": int(sent_b[d]),
                "bytes_down": int(recv_b[d]),
                "packets_lost": int(lost[d]),
                "energy_j": float(energy[d]),
                "train_loss": None if np.isnan(losses[d]) else float(losses[d]),
                "accuracy": None,
            }
        )
        metric_rows.append(
            {
                "round": r,
                "device": int(d),
                "test_accuracy": None if np.isnan(acc[d]) else float(acc[d]),
                "test_loss": None if np.isnan(test_loss[d]) else float(test_loss[d]),
                "distance_to_mean": None if np.isnan(dist[d]) else float(dist[d]),
                "lr": float(lr[d]),
                "local_rounds": int(local_rounds[d]),
                "messages_sent": int(n_sent[d]),
                "messages_received": int(n_recv[d]),
                "airtime_s": float(tx_s[d] + rx_s[d]),
            }
        )
    evaluated = acc[~np.isnan(acc)]
    rm = {
        "round": r,
        "acc_mean": float(evaluated.mean()) if evaluated.size else None,
        "acc_min": float(evaluated.min()) if evaluated.size else None,
        "acc_max": float(evaluated.max()) if evaluated.size else None,
        "acc_std": float(evaluated.std()) if evaluated.size else None,
        "loss_mean": float(np.nanmean(test_loss)) if evaluated.size else None,
        "consensus_distance": consensus,
        "global_accuracy": None,
        "components": components,
        "messages": messages,
    }
    return device_rows, metric_rows, rm


def _traffic(sent: Messages, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per device: bytes sent and received (on the wire), messages sent and received, packets lost."""
    sent_b = per_device(sent.src, sent.priced("wire"), n).astype(np.int64)
    recv_b = per_device(sent.dst, sent.priced("wire"), n).astype(np.int64)
    lost = per_device(sent.src, sent.priced("lost"), n).astype(np.int64)
    return sent_b, recv_b, np.bincount(sent.src, minlength=n), np.bincount(sent.dst, minlength=n), lost


class DecentralizedSimulator:
    """Runs a decentralized :class:`Experiment` round by round, writing to a :class:`RunStore`."""

    def __init__(self, exp: Experiment, store: RunStore, run_id: str, network: Network) -> None:
        self.exp = exp
        self.store = store
        self.run_id = run_id
        self.net = network
        spec = exp.spec
        a = spec.algorithm
        self.seed = spec.seed
        self.n = exp.fleet.num_devices
        self.cfg = LocalTraining.from_spec(a)
        ds = exp.dataset
        self.device = engine_device(a.family, a.name, spec.engine.device)
        self.trainer = LocalTrainer.for_engine(exp, self.cfg, self.device)
        self.x_train, self.y_train = self.trainer.x, self.trainer.y
        self.x_test = torch.from_numpy(ds.x_test).to(self.device)
        self.y_test = torch.from_numpy(ds.y_test).to(self.device)
        val = torch.from_numpy(validation_indices(self.seed, len(ds.y_test), a.gist.validation_size)).to(self.device)
        self.x_val, self.y_val = self.x_test[val], self.y_test[val]
        self.train_idx = [p[: a.train_samples] if a.train_samples else p for p in exp.parts]
        self.n_train = np.array([len(p) for p in self.train_idx], dtype=np.int64)
        self.num_params = exp.model.num_params
        self.tensor_sizes = exp.model.tensor_sizes
        flops = compute_flops(self.n_train, a.local_epochs, a.batch_size, exp.flops_per_sample, exp.flops_per_step)
        self.compute_s = flops / exp.fleet.flops_per_s
        self.proto = PROTOCOLS[a.name](self)
        self.is_async = a.schedule == "async"
        # async clock: period of a device = its compute time + the airtime of its sends
        links = exp.fleet.links
        payload = frame_size(self.proto.message_payload_estimate())
        packets = -(-payload // links.mtu_bytes)
        send_s = links.latency_s + (payload + packets * links.header_bytes) * 8.0 / links.up_bps
        self.period_s = self.compute_s + self.proto.sends_per_round() * send_s
        if self.is_async:
            self.round_s = a.asynchronous.round_s or float(self.period_s.max())
            self.tick_s = a.asynchronous.tick_s or float(self.period_s.min()) / 2.0
            total = np.floor(spec.rounds * self.round_s / self.period_s + 1e-9).astype(np.int64)
        else:
            self.round_s = self.tick_s = 0.0
            total = np.full(self.n, spec.rounds, dtype=np.int64)
        ls = a.lr_schedule
        self.lr_sched = LRSchedule(
            ls.name,
            a.lr,
            np.maximum(total, 1),
            tuple(ls.stair_fractions),
            ls.stair_factor,
            tuple(ls.patience_fractions),
            ls.loss_factor,
            ls.min_lr,
        )

    # ---- lifecycle ----------------------------------------------------------------
    def initial_state(self) -> DState:
        params = self.exp.initial_params().to(self.device).expand(self.n, -1).clone()
        clock: dict[str, Any] = {}
        if self.is_async:
            clock = {"next_fire": self.period_s.copy(), "tick": 0, "inflight": Messages.empty()}
        return DState(
            0,
            params,
            0.0,
            np.zeros(self.n),
            np.zeros(self.n, dtype=np.int64),
            self.lr_sched.state(),
            self.proto.init_state(params),
            clock,
        )

    def state_from_checkpoint(self, ck: dict[str, Any]) -> DState:
        st = DState.from_checkpoint(ck)  # checkpoints hold CPU tensors; a run may resume on another device
        st.params = st.params.to(self.device)
        return st

    def register(self) -> None:
        exp = self.exp
        dfl_store.ensure_tables(self.store)
        self.store.add_devices(self.run_id, exp.device_rows(self.n_train))
        info = self.net.describe()
        detail = (
            f"{info['kind']} topology: {info['devices']} devices, {info['links']} links, degree "
            f"{info['degree_min']}..{info['degree_max']}, {info['components']} connected component(s)"
        )
        events = [{"round": 0, "sim_time_s": 0.0, "device": None, "kind": "topology", "detail": detail}]
        if info["components"] > 1:
            events.append(
                {
                    "round": 0,
                    "sim_time_s": 0.0,
                    "device": None,
                    "kind": "disconnected",
                    "detail": f"the graph is disconnected: component sizes {info['component_sizes']}; "
                    "models in different components never mix",
                }
            )
        self.store.add_events(self.run_id, events)

    def run(self, state: DState, progress: ProgressFn | None = None) -> DState:
        lr = self.lr_sched
        lr.load(state.lr_state)
        for r in range(state.round + 1, self.exp.spec.rounds + 1):
            state = self.step(state, r)
            if progress is not None:
                acc = state.accuracies[-1][1] if state.accuracies and state.accuracies[-1][0] == r else None
                progress(r, {"accuracy": acc, "sim_time_s": state.sim_time_s})
        return state

    # ---- one round ----------------------------------------------------------------
    def _ctx(self, r: int, key: int, online: np.ndarray, now: float) -> Ctx:
        edges = self.net.topology.active_edges(self.net.links.edge_up(r), online)
        return Ctx(key, online, edges, self.net.topology.neighbours(edges), now)

    def _train(self, st: DState, ids: np.ndarray, key: int, losses: np.ndarray) -> None:
        if not ids.size:
            return
        rows = torch.from_numpy(ids).to(self.device)
        res = self.trainer.train(st.params[rows], key, ids, [self.train_idx[d] for d in ids], lr=self.lr_sched.lr[ids])
        st.params[rows] = res.params
        losses[ids] = res.train_loss
        st.local_rounds[ids] += 1

    def step(self, st: DState, r: int) -> DState:
        wall0 = time.perf_counter()
        exp, n = self.exp, self.n
        t0 = st.sim_time_s
        events = self._events(r, t0)
        online = exp.timeline.online(r)
        losses = np.full(n, np.nan)
        compute_s = np.zeros(n)
        fires = np.zeros(n, dtype=np.int64)
        if self.is_async:
            sent = self._async_window(st, r, online, losses, compute_s, fires)
            round_s = self.round_s
        else:
            sent = self._sync_round(st, r, online, losses, compute_s, fires)
            round_s = 0.0
        tx_s = per_device(sent.src, sent.priced("airtime"), n)
        rx_s = per_device(sent.dst, sent.priced("airtime"), n)
        busy = compute_s + tx_s + rx_s
        if not self.is_async:
            round_s = float(busy[online].max()) if online.any() else 0.0
        # evaluation of every online device's own model on the shared test set
        ids = np.flatnonzero(online)
        acc, loss, dist, consensus = self._evaluate(st, r, ids)
        n_comp, _ = components(n, self._ctx(r, r, online, t0).edges, online)
        energy = energy_joules(exp.fleet.power, compute_s, tx_s, rx_s, round_s, online)
        sent_b, recv_b, n_sent, n_recv, lost = _traffic(sent, n)
        device_rows, metric_rows, rm = round_metric_rows(
            r,
            ids,
            lambda d: "ok" if fires[d] else "idle",
            n_train=self.n_train,
            compute_s=compute_s,
            tx_s=tx_s,
            rx_s=rx_s,
            sent_b=sent_b,
            recv_b=recv_b,
            lost=lost,
            energy=energy,
            losses=losses,
            acc=acc,
            test_loss=loss,
            dist=dist,
            lr=self.lr_sched.lr,
            local_rounds=st.local_rounds,
            n_sent=n_sent,
            n_recv=n_recv,
            consensus=consensus,
            components=n_comp,
            messages=int(len(sent)),
        )
        mean_acc = rm["acc_mean"]
        finite = losses[~np.isnan(losses)]
        st.round = r
        st.sim_time_s = t0 + round_s
        st.energy_j = st.energy_j + energy
        st.bytes_up, st.bytes_down = st.bytes_up + int(sent_b.sum()), st.bytes_down + int(recv_b.sum())
        st.messages += int(len(sent))
        st.accuracies = st.accuracies + ([(r, mean_acc)] if mean_acc is not None else [])
        st.lr_state, st.last_metrics = self.lr_sched.state(), rm
        round_row = {
            "round": r,
            "sim_time_s": st.sim_time_s,
            "duration_s": round_s,
            "selected": int(ids.size),
            "completed": int(fires.sum()),
            "dropped": 0,
            "stragglers": 0,
            "train_loss": float(finite.mean()) if finite.size else None,
            "test_accuracy": mean_acc,
            "test_loss": rm["loss_mean"],
            "bytes_up": int(sent_b.sum()),
            "bytes_down": int(recv_b.sum()),
            "energy_j": float(energy.sum()),
            "wall_time_s": time.perf_counter() - wall0,
        }
        dfl_store.write_round(
            self.store, self.run_id, round_row, device_rows, events, st.to_checkpoint(), rm, metric_rows
        )
        return st

    def _events(self, r: int, t0: float) -> list[dict[str, Any]]:
        """The round's timeline changes (devices, links) as ``events`` rows."""
        events: list[dict[str, Any]] = []
        for d, kind in self.exp.timeline.changes(r):
            events.append({"round": r, "sim_time_s": t0, "device": d, "kind": kind, "detail": f"device {d} {kind}"})
        for u, v, kind in self.net.links.changes(r):
            events.append(
                {"round": r, "sim_time_s": t0, "device": None, "kind": kind, "detail": f"link {u}-{v} {kind[5:]}"}
            )
        return events

    def _sync_round(
        self, st: DState, r: int, online: np.ndarray, losses: np.ndarray, compute_s: np.ndarray, fires: np.ndarray
    ) -> Messages:
        """A lock-step round: every online device trains, sends, and the messages are delivered."""
        ids = np.flatnonzero(online)
        ctx = self._ctx(r, r, online, st.sim_time_s)
        self.proto.before_train(st, ids, ctx)
        self._train(st, ids, r, losses)
        compute_s[ids] = self.compute_s[ids]
        fires[ids] = 1
        sent = self._price(self.proto.after_train(st, ids, ctx), r, 0)
        self.proto.deliver(st, sent)
        self.lr_sched.on_round_end(ids, st.local_rounds[ids], losses[ids])
        return sent

    def _evaluate(self, st: DState, r: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
        """Every online device's own model on the shared test set (evaluation rounds), its
        distance to the mean model, and the consensus distance."""
        exp, spec, n = self.exp, self.exp.spec, self.n
        acc, loss, dist = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        if (r % spec.evaluation.every == 0 or r == spec.rounds) and ids.size:
            rows = torch.from_numpy(ids).to(self.device)
            a_, l_ = evaluate_many(exp.module, exp.layout, st.params[rows], self.x_test, self.y_test)
            acc[ids], loss[ids] = a_.numpy(), l_.numpy()
        if not ids.size:
            return acc, loss, dist, None
        dd = distances_to_mean(st.params[torch.from_numpy(ids).to(self.device)])
        dist[ids] = dd
        return acc, loss, dist, float(dd.mean())

    def _price(self, msgs: Messages, *key: int) -> Messages:
        """Attach wire bytes, lost packets, airtime and arrival time to every message."""
        rng = stream_rng(self.seed, Stream.MSG_LOSS, *key)
        frames = np.array([frame_size(int(p)) for p in msgs.payload], dtype=np.int64)
        t = peer_transfer_cost(rng, frames, msgs.src, msgs.dst, self.exp.fleet.links)
        msgs.wire, msgs.lost, msgs.airtime = t.wire_bytes, t.lost_packets, t.time_s
        msgs.arrive_at = msgs.sent_at + t.time_s
        return msgs

    # ---- asynchronous schedule ------------------------------------------------------
    def _async_window(
        self, st: DState, r: int, online: np.ndarray, losses: np.ndarray, compute_s: np.ndarray, fires: np.ndarray
    ) -> Messages:
        """Advance every device's own clock through round r's window; return the messages sent in it."""
        start = st.sim_time_s
        end = start + self.round_s
        clock = st.clock
        sent_parts: list[Messages] = []
        a = start
        while a < end - 1e-12:
            b = min(a + self.tick_s, end)
            self._deliver_until(st, a)
            nf = clock["next_fire"]
            due = (nf >= a - 1e-12) & (nf < b - 1e-12) if b < end else (nf >= a - 1e-12) & (nf <= end + 1e-12)
            # offline devices skip their turn
            skipped = due & ~online
            nf[skipped] += self.period_s[skipped]
            ids = np.flatnonzero(due & online)
            if ids.size:
                key = int(clock["tick"])
                ctx = self._ctx(r, key, online, 0.0)
                self.proto.before_train(st, ids, ctx)
                self._train(st, ids, key, losses)
                compute_s[ids] += self.compute_s[ids]
                fires[ids] += 1
                msgs = self.proto.after_train(st, ids, ctx)
                # a message leaves when its initiator fires (a push-pull answer with its push)
                initiator = msgs.src.copy()
                if "reply" in msgs.data:
                    reply = msgs.data["reply"].numpy()
                    initiator[reply] = msgs.dst[reply]
                msgs.sent_at = nf[initiator].copy()
                msgs = self._price(msgs, key, 1)
                sent_parts.append(msgs)
                clock["inflight"] = Messages.concat([clock["inflight"], msgs])
                self.lr_sched.on_round_end(ids, st.local_rounds[ids], losses[ids])
                nf[ids] += self.period_s[ids]
                clock["tick"] = key + 1
            a = b
        self._deliver_until(st, end + 1e-12)
        return Messages.concat(sent_parts)

    def _deliver_until(self, st: DState, t: float) -> None:
        inflight: Messages = st.clock["inflight"]
        if not len(inflight):
            return
        due = np.asarray(inflight.priced("arrive_at") < t, dtype=bool)
        if not due.any():
            return
        now = inflight.take(due)
        now = now.take(np.argsort(now.priced("arrive_at"), kind="stable"))
        st.clock["inflight"] = inflight.take(~due)
        self.proto.deliver(st, now)

    # ---- summary ------------------------------------------------------------------
    def summary(self, state: DState, wall_time_s: float) -> dict[str, Any]:
        exp, spec = self.exp, self.exp.spec
        a = spec.algorithm
        m = state.last_metrics
        lr_part = f", lr {a.lr_schedule.name}" if a.lr_schedule.name != "none" else ""
        return {
            **common_summary(
                state.accuracies,
                state.round,
                state.sim_time_s,
                state.bytes_up,
                state.bytes_down,
                state.energy_j,
                memory_plans(exp),
                wall_time_s,
            ),
            "num_devices": self.n,
            "algorithm": f"{a.name} ({a.schedule}{lr_part})",
            "dataset": spec.dataset.name,
            "model": f"{exp.model.name} ({exp.model.num_params:,} parameters)",
            "final_accuracy_across_devices": {k: m.get(f"acc_{k}") for k in ("mean", "min", "max", "std")},
            "final_consensus_distance": m.get("consensus_distance"),
            "messages": state.messages,
            "topology": self.net.describe(),
            "message_payload_bytes": self.proto.message_payload_estimate(),
            **precision_summary(spec.engine.precision),
        }
