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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tinytwin.algorithms import gist as G
from tinytwin.algorithms import gossip as GS
from tinytwin.algorithms.gist_np import validation_indices
from tinytwin.algorithms.local_update import LocalTraining
from tinytwin.algorithms.lr_schedules import LRSchedule
from tinytwin.algorithms.mixing import mix, mix_received, serverfree_weights
from tinytwin.algorithms.segments import REQUEST_PAYLOAD_BYTES, choose_replicas, contiguous_bounds, segment_pull
from tinytwin.engines.evaluate_many import evaluate_many
from tinytwin.engines.experiment import Experiment
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.engines.network import Network
from tinytwin.engines.state import Checkpointed
from tinytwin.engines.summary import common_summary
from tinytwin.fleet.cost import compute_flops, energy_joules, peer_transfer_cost, per_device
from tinytwin.fleet.memory import MemoryPlan, plan_memory
from tinytwin.models.accounting import training_memory
from tinytwin.net.topology import components, metropolis_hastings
from tinytwin.rng import Stream, stream_rng
from tinytwin.store import dfl as dfl_store
from tinytwin.store.db import RunStore
from tinytwin.wire.encoding import encoded_size
from tinytwin.wire.frame import frame_size
from tinytwin.wire.roundtrip import roundtrip_torch

ProgressFn = Callable[[int, dict[str, Any]], None]

#: Bytes of the age counter an age-weighted gossip message carries (uint32).
AGE_HEADER_BYTES = 4


# ---------------------------------------------------------------------------------- messages


@dataclass
class Messages:
    """A batch of device-to-device messages (M of them), what they carry and what they cost."""

    src: np.ndarray
    dst: np.ndarray
    payload: np.ndarray  # payload bytes (the frame adds its header)
    sent_at: np.ndarray
    data: dict[str, Any] = field(default_factory=dict)  # tensors (M, ...) or lists of length M
    arrive_at: np.ndarray | None = None
    wire: np.ndarray | None = None  # bytes on the link, retransmissions included
    lost: np.ndarray | None = None  # packets lost and resent
    airtime: np.ndarray | None = None  # seconds the sender sends and the receiver listens

    ARRAYS = ("src", "dst", "payload", "sent_at", "arrive_at", "wire", "lost", "airtime")

    def __len__(self) -> int:
        return int(self.src.size)

    @classmethod
    def empty(cls) -> Messages:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z.copy(), z.copy(), np.zeros(0), {}, np.zeros(0), z.copy(), z.copy(), np.zeros(0))

    def take(self, sel: np.ndarray) -> Messages:
        """The messages at ``sel`` (a boolean mask or an index array, in that order)."""
        sel = np.flatnonzero(sel) if np.asarray(sel).dtype == bool else np.asarray(sel, dtype=np.int64)
        data = {
            k: v[torch.from_numpy(sel)] if isinstance(v, Tensor) else [v[i] for i in sel] for k, v in self.data.items()
        }
        arrays = {k: None if getattr(self, k) is None else getattr(self, k)[sel] for k in self.ARRAYS}
        return Messages(data=data, **arrays)

    @staticmethod
    def concat(parts: list[Messages]) -> Messages:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Messages.empty()
        if len(parts) == 1:
            return parts[0]
        data: dict[str, Any] = {}
        for k in parts[0].data:
            vals = [p.data[k] for p in parts]
            data[k] = torch.cat(vals) if isinstance(vals[0], Tensor) else [x for v in vals for x in v]
        arrays = {
            k: None if any(getattr(p, k) is None for p in parts) else np.concatenate([getattr(p, k) for p in parts])
            for k in Messages.ARRAYS
        }
        return Messages(data=data, **arrays)


@dataclass
class Ctx:
    """What the algorithm may look at in one round (or tick)."""

    key: int  # round (sync) or tick index (async): keys the random streams
    online: np.ndarray  # (D,) bool
    edges: np.ndarray  # usable links now
    neighbours: tuple[np.ndarray, np.ndarray]
    now: float  # virtual time of the sends


# ---------------------------------------------------------------------------------- state


@dataclass
class DState(Checkpointed):
    """Everything that carries over between rounds (the checkpoint)."""

    round: int
    params: Tensor
    sim_time_s: float
    energy_j: np.ndarray
    local_rounds: np.ndarray
    lr_state: dict[str, Any]
    proto: dict[str, Any]
    clock: dict[str, Any]
    bytes_up: int = 0
    bytes_down: int = 0
    messages: int = 0
    accuracies: list[tuple[int, float]] = field(default_factory=list)
    last_metrics: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- protocols


class Protocol:
    """One decentralized algorithm, wired to the engine. Subclasses implement the hooks."""

    name = ""
    is_async_capable = False

    def __init__(self, eng: DecentralizedSimulator) -> None:
        self.eng = eng
        self.a = eng.exp.spec.algorithm

    def init_state(self, params: Tensor) -> dict[str, Any]:
        return {}

    def before_train(self, st: DState, ids: np.ndarray, ctx: Ctx) -> None:
        """Merges due at the start of a device's local round (gossip's FIFO replace)."""

    def after_train(self, st: DState, ids: np.ndarray, ctx: Ctx) -> Messages:
        """Sends after local training; sync mixing algorithms also merge here."""
        raise NotImplementedError

    def deliver(self, st: DState, msgs: Messages) -> None:
        """Receivers take the messages (in arrival order) and merge when their rule says so."""

    def message_payload_estimate(self) -> int:
        return encoded_size(self.eng.num_params, self.a.encoding, tensor_sizes=self.eng.tensor_sizes)

    def sends_per_round(self) -> int:
        return 1

    # shared helpers
    def decoded(self, x: Tensor) -> Tensor:
        if self.a.encoding == "float32":
            return x.clone()
        return roundtrip_torch(x, self.a.encoding, tensor_sizes=self.eng.tensor_sizes)


class MixingProtocol(Protocol):
    """DecFedAvg (Metropolis–Hastings) and server-free FL (unweighted neighbour mean)."""

    def weights(self, ctx: Ctx):
        n = self.eng.n
        if self.name == "decfedavg":
            return metropolis_hastings(n, ctx.edges, ctx.online)
        return serverfree_weights(n, ctx.edges, ctx.online)

    def after_train(self, st: DState, ids: np.ndarray, ctx: Ctx) -> Messages:
        w = self.weights(ctx)
        steps = self.a.decfedavg.mixing_steps if self.name == "decfedavg" else 1
        x = st.params
        for _ in range(steps):
            x = mix(w, x) if self.a.encoding == "float32" else mix_received(w, x, self.decoded(x))
        st.params = x
        e = ctx.edges
        src = np.tile(np.concatenate([e[:, 0], e[:, 1]]), steps)
        dst = np.tile(np.concatenate([e[:, 1], e[:, 0]]), steps)
        size = self.message_payload_estimate()
        return Messages(src, dst, np.full(src.size, size, dtype=np.int64), np.full(src.size, ctx.now))

    def sends_per_round(self) -> int:
        return self.a.decfedavg.mixing_steps


class DecFedAvg(MixingProtocol):
    name = "decfedavg"


class ServerFree(MixingProtocol):
    name = "serverfree"


class Gossip(Protocol):
    name = "gossip"
    is_async_capable = True

    def init_state(self, params: Tensor) -> dict[str, Any]:
        g = self.a.gossip
        st: dict[str, Any] = {"age": torch.zeros(self.eng.n, dtype=torch.int64)}
        if g.merge == "fifo":
            # seed 004: the buffer starts with copies of the initial model
            st["buffer"] = params[:, None, :].repeat(1, g.buffer_size, 1).clone()
            st["count"] = torch.full((self.eng.n,), g.buffer_size, dtype=torch.int64)
            st["head"] = torch.zeros(self.eng.n, dtype=torch.int64)
        return st

    def message_payload_estimate(self) -> int:
        extra = AGE_HEADER_BYTES if self.a.gossip.merge == "age" else 0
        return super().message_payload_estimate() + extra

    def sends_per_round(self) -> int:
        return self.a.gossip.sends

    def before_train(self, st: DState, ids: np.ndarray, ctx: Ctx) -> None:
        if self.a.gossip.merge == "fifo" and ids.size:
            rows = torch.from_numpy(ids)
            p = st.proto
            st.params[rows] = GS.fifo_mean(p["buffer"], p["count"], rows)

    def after_train(self, st: DState, ids: np.ndarray, ctx: Ctx) -> Messages:
        st.proto["age"][torch.from_numpy(ids)] += 1
        g = self.a.gossip
        rng = stream_rng(self.eng.seed, Stream.PEERS, ctx.key)
        src, dst = GS.choose_peers(rng, ids, g.sends, ctx.online, None if g.peer == "random" else ctx.neighbours)
        rows = torch.from_numpy(src)
        data = {
            "model": self.decoded(st.params[rows]),
            "age": st.proto["age"][rows].clone(),
            "reply": torch.zeros(src.size, dtype=torch.bool),
        }
        size = self.message_payload_estimate()
        msgs = Messages(src, dst, np.full(src.size, size, dtype=np.int64), np.full(src.size, ctx.now), data)
        if g.exchange == "push_pull":  # the receiver's answer: costs bytes, merged with the push
            back = torch.from_numpy(dst)
            replies = Messages(
                dst.copy(),
                src.copy(),
                np.full(src.size, size, dtype=np.int64),
                np.full(src.size, ctx.now),
                {
                    "model": self.decoded(st.params[back]),
                    "age": st.proto["age"][back].clone(),
                    "reply": torch.ones(src.size, dtype=torch.bool),
                },
            )
            msgs = Messages.concat([msgs, replies])
        return msgs

    def deliver(self, st: DState, msgs: Messages) -> None:
        if not len(msgs):
            return
        mode = self.a.gossip.merge
        if self.a.gossip.exchange == "push_pull":
            push = msgs.take(~msgs.data["reply"].numpy())
            received = None if self.a.encoding == "float32" else self.decoded(st.params)
            GS.pairwise_merge(st.params, st.proto["age"], push.src, push.dst, mode, received)
            return
        dst = msgs.dst
        if mode == "fifo":
            p = st.proto
            GS.fifo_push(p["buffer"], p["count"], p["head"], dst, msgs.data["model"])
        elif mode == "average":
            recv = np.unique(dst)
            rows = torch.from_numpy(recv)
            pos = torch.from_numpy(np.searchsorted(recv, dst))
            sums = torch.zeros(len(recv), self.eng.num_params, dtype=st.params.dtype)
            sums.index_add_(0, pos, msgs.data["model"].to(st.params.dtype))
            counts = torch.bincount(pos, minlength=len(recv))
            st.params[rows] = GS.merge_average(st.params[rows], sums, counts)
            ages = torch.zeros(len(recv), dtype=torch.int64).scatter_reduce(0, pos, msgs.data["age"], "amax")
            st.proto["age"][rows] = torch.maximum(st.proto["age"][rows], ages)
        else:  # age-weighted, one received model at a time in arrival order
            rank = GS.message_rank(dst)
            for k in range(int(rank.max()) + 1):
                sel = np.flatnonzero(rank == k)
                rows = torch.from_numpy(dst[sel])
                s = torch.from_numpy(sel)
                merged, age = GS.merge_age(
                    st.params[rows], st.proto["age"][rows], msgs.data["model"][s], msgs.data["age"][s]
                )
                st.params[rows], st.proto["age"][rows] = merged, age


class SegmentedGossip(Protocol):
    name = "segmented_gossip"

    def after_train(self, st: DState, ids: np.ndarray, ctx: Ctx) -> Messages:
        sg = self.a.segments
        bounds = contiguous_bounds(self.eng.num_params, sg.count)
        s = len(bounds) - 1
        rng = stream_rng(self.eng.seed, Stream.PEERS, ctx.key)
        peers = choose_replicas(rng, ids, s, sg.replicas, ctx.online, None if sg.peer == "random" else ctx.neighbours)
        received = None if self.a.encoding == "float32" else self.decoded(st.params)
        weights = torch.from_numpy(self.eng.n_train.astype(np.float64))
        new = segment_pull(st.params, weights, ids, peers, bounds, received)
        st.params[torch.from_numpy(ids)] = new
        puller = np.repeat(ids, s * sg.replicas)
        seg = np.tile(np.repeat(np.arange(s), sg.replicas), ids.size)
        peer = peers.reshape(-1)
        ok = peer >= 0
        puller, seg, peer = puller[ok], seg[ok], peer[ok]
        seg_len = np.diff(bounds)[seg]
        resp = (
            np.array([encoded_size(int(n), self.a.encoding) for n in seg_len], dtype=np.int64)
            if self.a.encoding == "int8"
            else seg_len * (4 if self.a.encoding == "float32" else 2)
        )
        src = np.concatenate([puller, peer])  # request, then response
        dst = np.concatenate([peer, puller])
        payload = np.concatenate([np.full(puller.size, REQUEST_PAYLOAD_BYTES), resp]).astype(np.int64)
        return Messages(src, dst, payload, np.full(src.size, ctx.now))

    def sends_per_round(self) -> int:
        return self.a.segments.count * self.a.segments.replicas

    def message_payload_estimate(self) -> int:
        return 4 * -(-self.eng.num_params // self.a.segments.count)


class Gist(Protocol):
    name = "gist"
    is_async_capable = True

    def init_state(self, params: Tensor) -> dict[str, Any]:
        return {
            "buffer": [deque(maxlen=self.a.gist.buffer_size) for _ in range(self.eng.n)],
            "acc": torch.zeros(self.eng.n, dtype=torch.float64),
            "merges": np.zeros(self.eng.n, dtype=np.int64),
        }

    def sends_per_round(self) -> int:
        return self.a.gist.sends

    def message_payload_estimate(self) -> int:
        nnz = -(-self.eng.num_params // max(1, self.a.gist.segments))
        return G.payload_size(self.eng.num_params, nnz)

    def after_train(self, st: DState, ids: np.ndarray, ctx: Ctx) -> Messages:
        g = self.a.gist
        eng = self.eng
        rows = torch.from_numpy(ids)
        w = st.params[rows]
        acc, _ = evaluate_many(eng.exp.module, eng.exp.layout, w, eng.x_val, eng.y_val)
        st.proto["acc"][rows] = acc
        if g.segmentation == "importance":
            order = G.band_order(w)
        else:
            order = G.random_order(stream_rng(eng.seed, Stream.BANDS, ctx.key, 1), len(ids), eng.num_params)
        bounds = G.band_bounds(eng.num_params, g.segments)
        probs = G.selection_probabilities(G.band_importance(w, order, bounds), g.selection, g.exp_base, g.drop_lowest)
        rng = stream_rng(eng.seed, Stream.PEERS, ctx.key)
        src, dst = GS.choose_peers(rng, ids, g.sends, ctx.online, None if g.peer == "random" else ctx.neighbours)
        row_of = np.searchsorted(ids, src)
        cdf = probs.cumsum(dim=1).numpy()
        u = stream_rng(eng.seed, Stream.BANDS, ctx.key, 0).random(src.size)
        band = np.minimum((u[:, None] > cdf[row_of]).sum(axis=1), len(bounds) - 2)
        idx, vals = G.segments_of(w, G.band_of(order, bounds), torch.from_numpy(row_of), torch.from_numpy(band))
        nnz = np.array([i.numel() for i in idx], dtype=np.int64)
        payload = np.array([G.payload_size(eng.num_params, int(k)) for k in nnz], dtype=np.int64)
        data = {
            "acc": acc[torch.from_numpy(row_of)].clone() if src.size else torch.zeros(0, dtype=torch.float64),
            "idx": idx,
            "vals": vals,
        }
        return Messages(src, dst, payload, np.full(src.size, ctx.now), data)

    def deliver(self, st: DState, msgs: Messages) -> None:
        if not len(msgs):
            return
        g = self.a.gist
        buf = st.proto["buffer"]
        for m in range(len(msgs)):
            buf[int(msgs.dst[m])].append((float(msgs.data["acc"][m]), msgs.data["idx"][m], msgs.data["vals"][m]))
        ready = [int(d) for d in np.unique(msgs.dst) if len(buf[int(d)]) >= g.min_received]
        if not ready:
            return
        rows_l, idx_l, val_l, wt_l = [], [], [], []
        for r, d in enumerate(ready):
            for acc, idx, vals in buf[d]:
                rows_l.append(torch.full((idx.numel(),), r, dtype=torch.int64))
                idx_l.append(idx)
                val_l.append(vals)
                wt_l.append(torch.full((idx.numel(),), acc if g.merge == "success" else 1.0, dtype=torch.float64))
            buf[d].clear()
        p = self.eng.num_params
        rows = torch.from_numpy(np.array(ready, dtype=np.int64))
        r_sum, phi = G.accumulate(
            len(ready), p, torch.cat(rows_l), torch.cat(idx_l), torch.cat(val_l), torch.cat(wt_l), dtype=torch.float64
        )
        local = st.proto["acc"][rows] if g.merge == "success" else torch.ones(len(ready), dtype=torch.float64)
        merged = G.merge(st.params[rows].to(torch.float64), local, r_sum, phi)
        st.params[rows] = merged.to(st.params.dtype)
        st.proto["merges"][np.array(ready)] += 1


PROTOCOLS: dict[str, type[Protocol]] = {
    "decfedavg": DecFedAvg,
    "serverfree": ServerFree,
    "gossip": Gossip,
    "segmented_gossip": SegmentedGossip,
    "gist": Gist,
}


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
        self.x_train = torch.from_numpy(ds.x_train)
        self.y_train = torch.from_numpy(ds.y_train)
        self.x_test = torch.from_numpy(ds.x_test)
        self.y_test = torch.from_numpy(ds.y_test)
        val = validation_indices(self.seed, len(ds.y_test), a.gist.validation_size)
        self.x_val, self.y_val = self.x_test[torch.from_numpy(val)], self.y_test[torch.from_numpy(val)]
        self.trainer = LocalTrainer(exp.module, exp.layout, self.x_train, self.y_train, self.cfg, spec.seed)
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
        params = self.exp.initial_params().expand(self.n, -1).clone()
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
        return DState.from_checkpoint(ck)

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
        rows = torch.from_numpy(ids)
        res = self.trainer.train(st.params[rows], key, ids, [self.train_idx[d] for d in ids], lr=self.lr_sched.lr[ids])
        st.params[rows] = res.params
        losses[ids] = res.train_loss
        st.local_rounds[ids] += 1

    def step(self, st: DState, r: int) -> DState:
        wall0 = time.perf_counter()
        exp, spec = self.exp, self.exp.spec
        n = self.n
        t0 = st.sim_time_s
        events: list[dict[str, Any]] = []
        for d, kind in exp.timeline.changes(r):
            events.append({"round": r, "sim_time_s": t0, "device": d, "kind": kind, "detail": f"device {d} {kind}"})
        for u, v, kind in self.net.links.changes(r):
            events.append(
                {"round": r, "sim_time_s": t0, "device": None, "kind": kind, "detail": f"link {u}-{v} {kind[5:]}"}
            )
        online = exp.timeline.online(r)
        losses = np.full(n, np.nan)
        compute_s = np.zeros(n)
        fires = np.zeros(n, dtype=np.int64)
        if self.is_async:
            sent = self._async_window(st, r, online, losses, compute_s, fires)
            round_s = self.round_s
        else:
            ids = np.flatnonzero(online)
            ctx = self._ctx(r, r, online, t0)
            self.proto.before_train(st, ids, ctx)
            self._train(st, ids, r, losses)
            compute_s[ids] = self.compute_s[ids]
            fires[ids] = 1
            sent = self._price(self.proto.after_train(st, ids, ctx), r, 0)
            self.proto.deliver(st, sent)
            self.lr_sched.on_round_end(ids, st.local_rounds[ids], losses[ids])
            round_s = 0.0
        tx_s = per_device(sent.src, sent.airtime, n)
        rx_s = per_device(sent.dst, sent.airtime, n)
        busy = compute_s + tx_s + rx_s
        if not self.is_async:
            round_s = float(busy[online].max()) if online.any() else 0.0
        # evaluation of every online device's own model on the shared test set
        ids = np.flatnonzero(online)
        acc = np.full(n, np.nan)
        loss = np.full(n, np.nan)
        if (r % spec.evaluation.every == 0 or r == spec.rounds) and ids.size:
            a_, l_ = evaluate_many(exp.module, exp.layout, st.params[torch.from_numpy(ids)], self.x_test, self.y_test)
            acc[ids], loss[ids] = a_.numpy(), l_.numpy()
        dist = np.full(n, np.nan)
        consensus = None
        if ids.size:
            w = st.params[torch.from_numpy(ids)].to(torch.float64)
            dd = (w - w.mean(dim=0, keepdim=True)).norm(dim=1).numpy()
            dist[ids] = dd
            consensus = float(dd.mean())
        n_comp, _ = components(n, self._ctx(r, r, online, t0).edges, online)

        power = exp.fleet.power
        energy = energy_joules(power, compute_s, tx_s, rx_s, round_s, online)
        sent_b = per_device(sent.src, sent.wire, n).astype(np.int64)
        recv_b = per_device(sent.dst, sent.wire, n).astype(np.int64)
        n_sent = np.bincount(sent.src, minlength=n)
        n_recv = np.bincount(sent.dst, minlength=n)
        lost = per_device(sent.src, sent.lost, n).astype(np.int64)

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
        st.bytes_up += int(sent_b.sum())
        st.bytes_down += int(recv_b.sum())
        st.messages += int(len(sent))
        if mean_acc is not None:
            st.accuracies = st.accuracies + [(r, mean_acc)]
        st.lr_state = self.lr_sched.state()
        st.last_metrics = rm
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
        due = inflight.arrive_at < t
        if not due.any():
            return
        now = inflight.take(due)
        now = now.take(np.argsort(now.arrive_at, kind="stable"))
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
        }
