"""The simulation twin for hierarchical FL: clients → local aggregators → global aggregator.

A global round r has ``L = local_rounds`` local rounds. In local round l every online
client trains from its local aggregator's (LA's) model (all clients batched, local-round
key ``(r − 1)·L + l``), sends its update to its LA, and each LA aggregates its cluster
(the spec's aggregator, FedAvg by default: sample-weighted mean of the decoded updates).
After L local rounds the LAs send their models to the global aggregator (GA), which
averages them weighted by the clusters' sample counts, applies the server optimizer and
sends the new global model back to the LAs, which pass it to their clients.

With one cluster and one local round this is exactly FedAvg of
:mod:`tinytwin.engines.simulate` on the same seed (same training keys, same aggregation
arithmetic; a test holds them equal).

Time: a cluster's local round lasts as long as its slowest client (download + compute +
upload); a global round lasts as long as the slowest cluster including its LA ↔ GA
transfers over ``aggregator_link``. Costs: the RVA cost ledger of
:mod:`tinytwin.algorithms.hierarchical` (``ledger`` table: per round, level and link).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms import hierarchical as H
from tinytwin.algorithms.aggregators import aggregate, weighted_mean
from tinytwin.algorithms.local_update import LocalTraining
from tinytwin.algorithms.server_optimizers import make_server_optimizer
from tinytwin.engines.evaluate import accuracy_and_loss
from tinytwin.engines.evaluate_many import evaluate_many
from tinytwin.engines.experiment import Experiment
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.engines.network import Network
from tinytwin.engines.orchestrator import Orchestrator, OrchestratorState
from tinytwin.engines.round_costs import shared_medium_waits
from tinytwin.engines.simulate import attacked_rows, finite_updates
from tinytwin.engines.state import Checkpointed
from tinytwin.engines.summary import common_summary
from tinytwin.errors import SpecError
from tinytwin.fleet.build import _extra
from tinytwin.fleet.cost import (
    LinkArrays,
    Transfer,
    compute_flops,
    draw_lost_packets,
    energy_joules,
    take_links,
    transfer_cost,
)
from tinytwin.net.links import LinkModel, load_link_catalog
from tinytwin.net.medium import MediumArrays, dedicated
from tinytwin.rng import Stream, stream_rng
from tinytwin.store import dfl as dfl_store
from tinytwin.store.db import RunStore
from tinytwin.wire.roundtrip import roundtrip_torch

ProgressFn = Callable[[int, dict[str, Any]], None]


def aggregator_link(exp: Experiment, base_dir: Path | None = None) -> LinkModel:
    name = exp.spec.algorithm.hierarchical.aggregator_link
    links = load_link_catalog(_extra(exp.spec.fleet.links_file, "fleet.links_file", base_dir))
    if name not in links:
        raise SpecError(
            "algorithm.hierarchical.aggregator_link", f"unknown link {name!r}; known links: {', '.join(sorted(links))}"
        )
    return links[name]


def check_hierarchical(exp: Experiment, base_dir: Path | None = None) -> None:
    aggregator_link(exp, base_dir)


def reconfiguration_rows(r: int, change_cost: float, revert_cost: float) -> list[dict[str, Any]]:
    """The orchestrator's ledger rows of round ``r``: a reconfiguration's (or a revert's) model
    downloads are charged in the round that made it."""
    return [
        {"round": r, "level": level, "src": "orchestrator", "dst": "clients", "bytes": 0, "cost": extra}
        for level, extra in (("change", change_cost), ("revert", revert_cost))
        if extra
    ]


def cluster_assignment(exp: Experiment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster of every device, client costs (D, K), aggregator costs (K,)) from the spec."""
    h = exp.spec.algorithm.hierarchical
    n = exp.fleet.num_devices
    k = len(h.clusters) if h.assignment == "given" and h.clusters is not None else h.num_clusters
    cc = np.ones((n, k)) if h.client_costs is None else np.asarray(h.client_costs, dtype=np.float64)
    ac = np.ones(k) if h.aggregator_costs is None else np.asarray(h.aggregator_costs, dtype=np.float64)
    if h.assignment == "given":
        assign = np.empty(n, dtype=np.int64)
        for c, members in enumerate(h.clusters or []):
            assign[np.asarray(members, dtype=np.int64)] = c
    elif h.assignment == "min_comm_cost":
        assign = H.min_comm_cost(cc, ac)
    else:
        assign = H.balanced_assignment(n, k)
    return assign, cc, ac


@dataclass
class HState(Checkpointed):
    round: int
    global_params: torch.Tensor
    server_state: dict[str, torch.Tensor]
    sim_time_s: float
    energy_j: np.ndarray
    bytes_up: int = 0
    bytes_down: int = 0
    cost_spent: float = 0.0
    accuracies: list[tuple[int, float]] = field(default_factory=list)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    orch: OrchestratorState | None = None  # algorithm.hierarchical.orchestration's state


@dataclass
class _LocalPhase:
    """What a global round's local rounds leave: the LAs' models, per-device costs (summed over the
    local rounds) and last training loss, and every cluster's time."""

    la_models: torch.Tensor
    losses: np.ndarray
    compute_s: np.ndarray
    up_s: np.ndarray
    down_s: np.ndarray
    bytes_up: np.ndarray
    bytes_down: np.ndarray
    lost: np.ndarray
    cluster_time: np.ndarray


class HierarchicalSimulator:
    def __init__(
        self,
        exp: Experiment,
        store: RunStore,
        run_id: str,
        network: Network | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.exp, self.store, self.run_id, self.net = exp, store, run_id, network
        spec = exp.spec
        a = spec.algorithm
        self.h = a.hierarchical
        self.seed = spec.seed
        self.n = exp.fleet.num_devices
        self.attacks = [at.model_dump() for at in spec.attacks]  # poisoned devices (algorithms/attacks.py)
        self.cfg = LocalTraining.from_spec(a)
        ds = exp.dataset
        self.x_train, self.y_train = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
        self.x_test, self.y_test = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
        self.trainer = LocalTrainer(exp.module, exp.layout, self.x_train, self.y_train, self.cfg, spec.seed)
        self.train_idx = [p[: a.train_samples] if a.train_samples else p for p in exp.parts]
        self.n_train = np.array([len(p) for p in self.train_idx], dtype=np.int64)
        so = a.server_optimizer
        self.server_opt = make_server_optimizer(
            so.name, lr=so.lr, momentum=so.momentum, beta1=so.beta1, beta2=so.beta2, tau=so.tau
        )
        self.assign, self.client_costs, self.agg_costs = cluster_assignment(exp)
        self.k = self.client_costs.shape[1]
        self.up_bytes = exp.uplink_bytes()
        self.down_bytes = exp.downlink_bytes()
        o = self.h.orchestration
        # M of the cost model: the model's megabytes, or the spec's size factor (costs only, not bytes)
        self.model_mb = o.model_mb if o is not None and o.model_mb is not None else self.up_bytes / H.MB
        self.orch = (
            None
            if o is None
            else Orchestrator(o, self.client_costs, self.agg_costs, self.model_mb, self.h.local_rounds)
        )
        flops = compute_flops(self.n_train, a.local_epochs, a.batch_size, exp.flops_per_sample, exp.flops_per_step)
        self.compute_s = flops / exp.fleet.flops_per_s
        la = aggregator_link(exp, base_dir)
        self.la_links = LinkArrays(
            *(
                np.full(self.k, getattr(la, f), dtype=np.int64 if f in ("mtu_bytes", "header_bytes") else np.float64)
                for f in LinkArrays.__dataclass_fields__
            )
        )

    # ---- lifecycle ----------------------------------------------------------------
    def initial_state(self) -> HState:
        params = self.exp.initial_params()
        st = HState(0, params, self.server_opt.init(params), 0.0, np.zeros(self.n))
        if self.orch is not None:  # the first configuration holds the devices online in round 1
            st.orch = OrchestratorState(self.orch.configure(self.exp.timeline.online(1)))
            self.assign = st.orch.assign
        return st

    def state_from_checkpoint(self, ck: dict[str, Any]) -> HState:
        return HState.from_checkpoint(ck)

    def register(self) -> None:
        exp = self.exp
        dfl_store.ensure_tables(self.store)
        self.store.add_devices(self.run_id, exp.device_rows(self.n_train))
        sizes = np.bincount(self.assign, minlength=self.k)
        detail = (
            f"{self.k} cluster(s) ({self.h.assignment}), sizes {sizes.tolist()}; "
            f"C_round = {H.round_cost(self.assign, self.client_costs, self.agg_costs, self.model_mb, self.h.local_rounds):.4g}"
        )
        self.store.add_events(
            self.run_id, [{"round": 0, "sim_time_s": 0.0, "device": None, "kind": "clusters", "detail": detail}]
        )

    def run(self, state: HState, progress: ProgressFn | None = None) -> HState:
        for r in range(state.round + 1, self.exp.spec.rounds + 1):
            if state.orch is not None and state.orch.stopped_round is not None:
                break  # the communication budget is spent
            state = self.step(state, r)
            if progress is not None:
                acc = state.accuracies[-1][1] if state.accuracies and state.accuracies[-1][0] == r else None
                progress(r, {"accuracy": acc, "sim_time_s": state.sim_time_s})
        return state

    # ---- one global round -----------------------------------------------------------
    def _aggregate(self, received: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        agg = self.exp.spec.algorithm.aggregator
        return aggregate(agg.name, received, weights, **agg.model_dump(exclude={"name"}))

    def step(self, st: HState, r: int) -> HState:
        wall0 = time.perf_counter()
        exp = self.exp
        k = self.k
        t0 = st.sim_time_s
        events: list[dict[str, Any]] = []
        for d, kind in exp.timeline.changes(r):
            events.append({"round": r, "sim_time_s": t0, "device": d, "kind": kind, "detail": f"device {d} {kind}"})
        online = exp.timeline.online(r)
        change_cost = self._reconfigure(st, r, bool(events), online, events)
        ids = np.flatnonzero(online & (self.assign >= 0))
        cl = self.assign[ids]
        lp = self._local_rounds(st, r, ids, cl)
        present = np.unique(cl)
        la_up, la_down = self._aggregator_transfers(r, present)
        new_global, server_state = self._global_aggregate(st, r, lp.la_models, ids, cl, present, events)
        per_cluster = lp.cluster_time[present] + (la_up.time_s + la_down.time_s if k > 1 else 0.0)
        round_s = float(per_cluster.max()) if present.size else 0.0
        energy = energy_joules(exp.fleet.power, lp.compute_s, lp.up_s, lp.down_s, round_s, online)
        acc, loss, dev_acc = self._evaluate(r, new_global, lp.la_models, ids, cl, present)
        ledger, cost = self._ledger(r, ids)
        accs = st.accuracies + ([(r, acc)] if acc is not None else [])
        revert_cost = self._validate(
            st, r, online, accs, st.cost_spent + cost + change_cost, float((st.energy_j + energy).sum()), events
        )
        charged = reconfiguration_rows(r, change_cost, revert_cost)
        ledger += charged
        cost += sum(row["cost"] for row in charged)
        rm = self._round_metrics(r, loss, acc, dev_acc, lp.la_models, ids, present)
        device_rows, metric_rows = self._device_rows(r, ids, lp, energy, dev_acc)
        bytes_up = int(lp.bytes_up.sum()) + (int(la_up.wire_bytes.sum()) if k > 1 else 0)
        bytes_down = int(lp.bytes_down.sum()) + (int(la_down.wire_bytes.sum()) if k > 1 else 0)
        finite = lp.losses[~np.isnan(lp.losses)]
        st = HState(
            r,
            new_global,
            server_state,
            t0 + round_s,
            st.energy_j + energy,
            st.bytes_up + bytes_up,
            st.bytes_down + bytes_down,
            st.cost_spent + cost,
            st.accuracies + ([(r, acc)] if acc is not None else []),
            rm,
            st.orch,
        )
        round_row = {
            "round": r,
            "sim_time_s": st.sim_time_s,
            "duration_s": round_s,
            "selected": int(ids.size),
            "completed": int(ids.size),
            "dropped": 0,
            "stragglers": 0,
            "train_loss": float(finite.mean()) if finite.size else None,
            "test_accuracy": acc,
            "test_loss": loss,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "energy_j": float(energy.sum()),
            "wall_time_s": time.perf_counter() - wall0,
        }
        dfl_store.write_round(
            self.store, self.run_id, round_row, device_rows, events, st.to_checkpoint(), rm, metric_rows, ledger
        )
        return st

    # ---- orchestration (algorithm.hierarchical.orchestration) -----------------------
    def _reconfigure(self, st: HState, r: int, changed: bool, online: np.ndarray, events: list) -> float:
        """Apply the orchestrator's reconfiguration for the round's joins and leaves; its change cost."""
        if self.orch is None or st.orch is None:
            return 0.0
        self.assign = st.orch.assign
        new_events, cost = self.orch.before_round(st.orch, r, changed, online, st.accuracies, st.cost_spent)
        self.assign = st.orch.assign
        self.client_costs = self.orch.cc  # the round's link costs (orchestration.cost_changes)
        events.extend({**e, "sim_time_s": st.sim_time_s} for e in new_events)
        return cost

    def _validate(
        self, st: HState, r: int, online: np.ndarray, accuracies: list, spent: float, energy_j: float, events: list
    ) -> float:
        """RVA's decision and the objectives' stops at the end of round ``r``; the revert's cost."""
        if self.orch is None or st.orch is None:
            return 0.0
        new_events, back = self.orch.after_round(st.orch, r, online, accuracies, spent, energy_j)
        events.extend({**e, "sim_time_s": st.sim_time_s} for e in new_events)
        self.assign = st.orch.assign
        return back

    # ---- phases of a global round ---------------------------------------------------
    def _local_rounds(self, st: HState, r: int, ids: np.ndarray, cl: np.ndarray) -> _LocalPhase:
        """The round's L local rounds: every online client trains from its LA's model, each LA aggregates."""
        exp, n, L = self.exp, self.n, self.h.local_rounds
        links = take_links(exp.fleet.links, ids)
        medium = (exp.fleet.medium or dedicated(exp.fleet.num_devices)).take(ids)
        lp = _LocalPhase(
            la_models=st.global_params.expand(self.k, -1).clone(),
            losses=np.full(n, np.nan),
            compute_s=np.zeros(n),
            up_s=np.zeros(n),
            down_s=np.zeros(n),
            bytes_up=np.zeros(n, dtype=np.int64),
            bytes_down=np.zeros(n, dtype=np.int64),
            lost=np.zeros(n, dtype=np.int64),
            cluster_time=np.zeros(self.k),
        )
        for l in range(1, L + 1):
            if not ids.size:
                break
            self._local_round(lp, (r - 1) * L + l, ids, cl, links, medium)
        return lp

    def _local_round(
        self, lp: _LocalPhase, key: int, ids: np.ndarray, cl: np.ndarray, links: LinkArrays, medium: MediumArrays
    ) -> None:
        """One local round (training key ``key``): client costs and training, then per-cluster aggregation."""
        lost_d = draw_lost_packets(stream_rng(self.seed, Stream.LINK_LOSS, key, 0), self.down_bytes, links)
        down = transfer_cost(self.down_bytes, links.down_bps, links, lost_d)
        lost_u = draw_lost_packets(stream_rng(self.seed, Stream.LINK_LOSS, key, 1), self.up_bytes, links)
        up = transfer_cost(self.up_bytes, links.up_bps, links, lost_u)
        # devices behind one AP / central / gateway queue for its airtime (docs/cost-model.md); waiting is idle
        wait_d, wait_u = shared_medium_waits(
            medium, links, down, up, self.down_bytes, self.up_bytes, self.compute_s[ids], np.zeros(ids.size, bool)
        )
        la_models = lp.la_models
        res = self.trainer.train(la_models[torch.from_numpy(cl)], key, ids, [self.train_idx[d] for d in ids])
        lp.losses[ids] = res.train_loss
        total = wait_d + down.time_s + self.compute_s[ids] + wait_u + up.time_s
        lp.compute_s[ids] += self.compute_s[ids]
        lp.up_s[ids] += up.time_s
        lp.down_s[ids] += down.time_s
        lp.bytes_up[ids] += up.wire_bytes
        lp.bytes_down[ids] += down.wire_bytes
        lp.lost[ids] += lost_d + lost_u
        a, exp, n = self.exp.spec.algorithm, self.exp, self.n
        for c in np.unique(cl):
            m = np.flatnonzero(cl == c)
            lp.cluster_time[c] += float(total[m].max())
            start = la_models[c]
            deltas = res.params[torch.from_numpy(m)] - start
            received = roundtrip_torch(deltas, a.encoding, tensor_sizes=exp.model.tensor_sizes)
            received = attacked_rows(received, ids[m], self.attacks, self.seed, key, n)
            w = torch.from_numpy(self.n_train[ids[m]]).to(received.dtype)
            received, w = finite_updates(received, w)
            if len(received):  # else every update was refused: the LA keeps its model
                la_models[c] = start + self._aggregate(received, w)

    def _aggregator_transfers(self, r: int, present: np.ndarray) -> tuple[Transfer, Transfer]:
        """LA -> GA and GA -> LA transfers of the present clusters over the aggregator link."""
        la_l = take_links(self.la_links, present)
        la_up = transfer_cost(
            self.up_bytes,
            la_l.up_bps,
            la_l,
            draw_lost_packets(stream_rng(self.seed, Stream.LINK_LOSS, r, 2), self.up_bytes, la_l),
        )
        la_down = transfer_cost(
            self.down_bytes,
            la_l.down_bps,
            la_l,
            draw_lost_packets(stream_rng(self.seed, Stream.LINK_LOSS, r, 3), self.down_bytes, la_l),
        )
        return la_up, la_down

    def _global_aggregate(
        self,
        st: HState,
        r: int,
        la_models: torch.Tensor,
        ids: np.ndarray,
        cl: np.ndarray,
        present: np.ndarray,
        events: list[dict[str, Any]],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The GA's new global model (and server state) from the LAs' models; an empty round is an event."""
        exp, k = self.exp, self.k
        a = exp.spec.algorithm
        if present.size == 1 and k == 1:
            proposal = la_models[0]
        elif present.size:
            cw = torch.tensor([float(self.n_train[ids[cl == c]].sum()) for c in present], dtype=la_models.dtype)
            deltas = roundtrip_torch(
                la_models[torch.from_numpy(present)] - st.global_params, a.encoding, tensor_sizes=exp.model.tensor_sizes
            )
            proposal = st.global_params + weighted_mean(deltas, cw)
        else:
            proposal = st.global_params
            events.append(
                {
                    "round": r,
                    "sim_time_s": st.sim_time_s,
                    "device": None,
                    "kind": "empty_round",
                    "detail": "no client online; the global model is unchanged",
                }
            )
        new_global, server_state = (
            self.server_opt.step(st.global_params, proposal, st.server_state)
            if present.size
            else (st.global_params, st.server_state)
        )
        if a.downlink_encoding != "float32":
            new_global = roundtrip_torch(new_global[None], a.downlink_encoding, tensor_sizes=exp.model.tensor_sizes)[0]
        return new_global, server_state

    def _evaluate(
        self,
        r: int,
        new_global: torch.Tensor,
        la_models: torch.Tensor,
        ids: np.ndarray,
        cl: np.ndarray,
        present: np.ndarray,
    ) -> tuple[float | None, float | None, np.ndarray]:
        """(global accuracy, global loss, every device's accuracy): the global model, and every cluster's
        model (what its clients hold), on evaluation rounds; None / NaN otherwise."""
        exp, spec = self.exp, self.exp.spec
        acc = loss = None
        dev_acc = np.full(self.n, np.nan)
        if r % spec.evaluation.every == 0 or r == spec.rounds:
            acc, loss = accuracy_and_loss(exp.module, exp.layout, new_global, self.x_test, self.y_test)
            if self.k > 1 and present.size:
                ca, _ = evaluate_many(
                    exp.module, exp.layout, la_models[torch.from_numpy(present)], self.x_test, self.y_test
                )
                by_c = dict(zip(present.tolist(), ca.numpy().tolist()))
                dev_acc[ids] = [by_c[int(c)] for c in cl]
            else:
                dev_acc[ids] = acc
        return acc, loss, dev_acc

    def _ledger(self, r: int, ids: np.ndarray) -> tuple[list[dict[str, Any]], float]:
        """The round's RVA cost ledger rows (per level and link) and their total cost."""
        ledger = H.round_ledger(self.assign, self.client_costs, self.agg_costs, self.model_mb, self.h.local_rounds, ids)
        for row in ledger:
            row["round"] = r
            row["bytes"] = int(round(row.pop("mb") / self.model_mb * self.up_bytes))
        return ledger, float(sum(row["cost"] for row in ledger))

    def _round_metrics(
        self,
        r: int,
        loss: float | None,
        gacc: float | None,
        dev_acc: np.ndarray,
        la_models: torch.Tensor,
        ids: np.ndarray,
        present: np.ndarray,
    ) -> dict[str, Any]:
        """The round's metrics row: accuracy across devices, consensus of the clusters' models, messages."""
        ev = dev_acc[~np.isnan(dev_acc)]
        w64 = la_models[torch.from_numpy(present)].to(torch.float64) if present.size else None
        consensus = float((w64 - w64.mean(0, keepdim=True)).norm(dim=1).mean()) if w64 is not None else None
        return {
            "round": r,
            "acc_mean": float(ev.mean()) if ev.size else None,
            "acc_min": float(ev.min()) if ev.size else None,
            "acc_max": float(ev.max()) if ev.size else None,
            "acc_std": float(ev.std()) if ev.size else None,
            "loss_mean": loss,
            "consensus_distance": consensus,
            "global_accuracy": gacc,
            "components": int(present.size),
            "messages": int(2 * self.h.local_rounds * ids.size + 2 * present.size),
        }

    def _device_rows(
        self, r: int, ids: np.ndarray, lp: _LocalPhase, energy: np.ndarray, dev_acc: np.ndarray
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every online device's cost row and metric row for the round."""
        L, lr = self.h.local_rounds, float(self.exp.spec.algorithm.lr)
        device_rows, metric_rows = [], []
        for d in ids.tolist():
            device_rows.append(
                {
                    "round": r,
                    "device": int(d),
                    "status": "ok",
                    "num_samples": int(self.n_train[d]),
                    "compute_s": float(lp.compute_s[d]),
                    "up_s": float(lp.up_s[d]),
                    "down_s": float(lp.down_s[d]),
                    "bytes_up": int(lp.bytes_up[d]),
                    "bytes_down": int(lp.bytes_down[d]),
                    "packets_lost": int(lp.lost[d]),
                    "energy_j": float(energy[d]),
                    "train_loss": None if np.isnan(lp.losses[d]) else float(lp.losses[d]),
                    "accuracy": None,
                }
            )
            metric_rows.append(
                {
                    "round": r,
                    "device": int(d),
                    "test_accuracy": None if np.isnan(dev_acc[d]) else float(dev_acc[d]),
                    "test_loss": None,
                    "distance_to_mean": None,
                    "lr": lr,
                    "local_rounds": int(r * L),
                    "messages_sent": L,
                    "messages_received": L,
                    "airtime_s": float(lp.up_s[d] + lp.down_s[d]),
                }
            )
        return device_rows, metric_rows

    # ---- summary ------------------------------------------------------------------
    def summary(self, state: HState, wall_time_s: float) -> dict[str, Any]:
        exp, spec = self.exp, self.exp.spec
        a = spec.algorithm
        return {
            **common_summary(
                state.accuracies,
                state.round,
                state.sim_time_s,
                state.bytes_up,
                state.bytes_down,
                state.energy_j,
                exp.memory,
                wall_time_s,
            ),
            "num_devices": self.n,
            "algorithm": f"hierarchical ({self.k} clusters, {self.h.local_rounds} local rounds, "
            f"{a.aggregator.name}, server {a.server_optimizer.name})",
            "dataset": spec.dataset.name,
            "model": f"{exp.model.name} ({exp.model.num_params:,} parameters)",
            "clusters": [np.flatnonzero(self.assign == c).tolist() for c in range(self.k)],
            "cost_per_round": H.round_cost(
                self.assign, self.client_costs, self.agg_costs, self.model_mb, self.h.local_rounds
            ),
            "cost_total": state.cost_spent,
            "final_accuracy_across_devices": {
                kk: state.last_metrics.get(f"acc_{kk}") for kk in ("mean", "min", "max", "std")
            },
            "uplink_message_bytes": self.up_bytes,
            "downlink_message_bytes": self.down_bytes,
            **({} if state.orch is None else {"orchestration": self._orchestration_summary(state)}),
        }

    def _orchestration_summary(self, state: HState) -> dict[str, Any]:
        o = self.h.orchestration
        assert o is not None and state.orch is not None
        return {
            "strategy": o.strategy,
            "budget": o.budget,
            "rva": o.rva.enabled,
            "stopped_round": state.orch.stopped_round,
            "rva_decisions": [d["decision"] for d in state.orch.decisions],
        }
