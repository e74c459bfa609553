"""The decentralized algorithms of the simulator, one :class:`Protocol` each (DecFedAvg,
server-free FL, gossip, segmented gossip, Gist), registered in :data:`PROTOCOLS`: the hooks
the engine (:class:`tinytwin.engines.decentralized.DecentralizedSimulator`) calls before and
after local training and when messages arrive, over the engine's batched state."""

from __future__ import annotations

from collections import deque
from typing import Any
from typing import Protocol as Interface

import numpy as np
import torch
from torch import Tensor

from tinytwin.algorithms import gist as G
from tinytwin.algorithms import gossip as GS
from tinytwin.algorithms.attacks import attack_of, attacked_model
from tinytwin.algorithms.mixing import mix, mix_received, serverfree_weights
from tinytwin.algorithms.robust_merge import ROBUST_MERGES, robust_merge
from tinytwin.algorithms.segments import REQUEST_PAYLOAD_BYTES, choose_replicas, contiguous_bounds, segment_pull
from tinytwin.engines.dfl_messages import AGE_HEADER_BYTES, Ctx, DState, Messages
from tinytwin.engines.evaluate_many import evaluate_many
from tinytwin.engines.experiment import Experiment
from tinytwin.net.topology import metropolis_hastings
from tinytwin.rng import Stream, stream_rng
from tinytwin.wire.encoding import encoded_size
from tinytwin.wire.roundtrip import roundtrip_torch


class Engine(Interface):
    """What a protocol reads of the engine."""

    exp: Experiment
    n: int
    n_train: np.ndarray
    num_params: int
    seed: int
    tensor_sizes: list[int]
    x_val: Tensor
    y_val: Tensor


# ---------------------------------------------------------------------------------- protocols


class Protocol:
    """One decentralized algorithm, wired to the engine. Subclasses implement the hooks."""

    name = ""
    is_async_capable = False

    def __init__(self, eng: Engine) -> None:
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
    """DecFedAvg (Metropolis–Hastings) and server-free FL (unweighted neighbour mean); with
    ``aggregator.name`` median / trimmed_mean, a robust merge (algorithms/robust_merge.py)."""

    def __init__(self, eng: Engine) -> None:
        super().__init__(eng)
        spec = eng.exp.spec
        n = eng.exp.fleet.num_devices
        attacks = [a.model_dump() for a in spec.attacks]
        self.attack = {
            d: a for d in range(n) if (a := attack_of(attacks, d, n, spec.seed)) and a["kind"] != "label_flip"
        }
        self.robust = self.a.aggregator.name if self.a.aggregator.name in ROBUST_MERGES else None
        self.start: Tensor | None = None

    def weights(self, ctx: Ctx):
        n = self.eng.n
        if self.name == "decfedavg":
            return metropolis_hastings(n, ctx.edges, ctx.online)
        return serverfree_weights(n, ctx.edges, ctx.online)

    def before_train(self, st: DState, ids: np.ndarray, ctx: Ctx) -> None:
        self.start = st.params.clone() if self.attack else None

    def sent(self, x: Tensor, r: int) -> Tensor:
        """What the neighbours receive: the models (a poisoning peer's attacked one) through the encoding."""
        if self.attack:
            assert self.start is not None
            x = x.clone()
            for d, attack in self.attack.items():
                row = attacked_model(x[d].cpu().numpy(), self.start[d].cpu().numpy(), attack, self.eng.seed, r, d)
                x[d] = torch.from_numpy(row).to(x.device)
        return self.decoded(x)

    def after_train(self, st: DState, ids: np.ndarray, ctx: Ctx) -> Messages:
        w = self.weights(ctx)
        steps = self.a.decfedavg.mixing_steps if self.name == "decfedavg" else 1
        x = st.params
        for _ in range(steps):
            if self.robust:
                x = self.robust_mix(x, self.sent(x, ctx.key), ctx)
            elif self.a.encoding == "float32" and not self.attack:
                x = mix(w, x)
            else:
                x = mix_received(w, x, self.sent(x, ctx.key))
        st.params = x
        e = ctx.edges
        src = np.tile(np.concatenate([e[:, 0], e[:, 1]]), steps)
        dst = np.tile(np.concatenate([e[:, 1], e[:, 0]]), steps)
        size = self.message_payload_estimate()
        return Messages(src, dst, np.full(src.size, size, dtype=np.int64), np.full(src.size, ctx.now))

    def robust_mix(self, own: Tensor, received: Tensor, ctx: Ctx) -> Tensor:
        """Every online device's robust merge of its own model and its online neighbours' (by id)."""
        assert self.robust is not None
        e = ctx.edges[ctx.online[ctx.edges[:, 0]] & ctx.online[ctx.edges[:, 1]]]
        out = own.clone()
        z, mine = received.cpu().numpy(), own.cpu().numpy()
        for i in np.flatnonzero(ctx.online):
            nb = np.unique(np.concatenate([e[e[:, 0] == i, 1], e[e[:, 1] == i, 0]]))
            if nb.size:
                merged = robust_merge(mine[i], [z[j] for j in nb], self.robust, self.a.aggregator.beta)
                out[i] = torch.from_numpy(merged).to(out.device)
        return out

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
