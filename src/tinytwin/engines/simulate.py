"""The simulation twin for centralized federated learning.

Time is virtual: every round's duration comes from the cost model (the slowest
participant, or the deadline). Local training of all participants is one batched
computation (:class:`~tinytwin.engines.local_training.LocalTrainer`). Each finished round
is committed to the results database together with the checkpoint needed to continue, so
a killed run keeps its finished rounds and ``--resume`` finishes it exactly as an
uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms.aggregators import aggregate
from tinytwin.algorithms.local_update import LocalTraining
from tinytwin.algorithms.server_optimizers import make_server_optimizer
from tinytwin.engines.evaluate import accuracy_and_loss, predict_correct
from tinytwin.engines.experiment import Experiment
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.engines.round_costs import round_costs
from tinytwin.engines.state import Checkpointed
from tinytwin.engines.summary import common_summary
from tinytwin.engines.threads import intra_op_threads, threads_for
from tinytwin.rng import Stream, stream_rng
from tinytwin.store.db import RunStore
from tinytwin.wire.roundtrip import roundtrip_torch

ProgressFn = Callable[[int, dict[str, Any]], None]


@dataclass
class SimState(Checkpointed):
    """Everything that carries over from one round to the next (the checkpoint)."""

    round: int
    global_params: torch.Tensor
    server_state: dict[str, torch.Tensor]
    sim_time_s: float
    energy_j: np.ndarray  # cumulative per device
    bytes_up: int = 0
    bytes_down: int = 0
    accuracies: list[tuple[int, float]] = field(default_factory=list)


class Simulator:
    """Runs an :class:`Experiment` round by round, writing to a :class:`RunStore`."""

    def __init__(self, exp: Experiment, store: RunStore, run_id: str) -> None:
        self.exp = exp
        self.store = store
        self.run_id = run_id
        spec = exp.spec
        a = spec.algorithm
        self.cfg = LocalTraining.from_spec(a)
        ds = exp.dataset
        self.x_train = torch.from_numpy(ds.x_train)
        self.y_train = torch.from_numpy(ds.y_train)
        self.x_test = torch.from_numpy(ds.x_test)
        self.y_test = torch.from_numpy(ds.y_test)
        self.trainer = LocalTrainer(exp.module, exp.layout, self.x_train, self.y_train, self.cfg, spec.seed)
        so = a.server_optimizer
        self.server_opt = make_server_optimizer(
            so.name, lr=so.lr, momentum=so.momentum, beta1=so.beta1, beta2=so.beta2, tau=so.tau
        )
        self.up_bytes = exp.uplink_bytes()
        self.down_bytes = exp.downlink_bytes()
        self.flops_sample = exp.flops_per_sample
        self.flops_step = exp.flops_per_step

    # ---- lifecycle ----------------------------------------------------------------
    def initial_state(self) -> SimState:
        params = self.exp.initial_params()
        return SimState(0, params, self.server_opt.init(params), 0.0, np.zeros(self.exp.fleet.num_devices))

    def state_from_checkpoint(self, ck: dict[str, Any]) -> SimState:
        return SimState.from_checkpoint(ck)

    def register(self) -> None:
        """Write the per-device table (group, profile, link, data, class histogram)."""
        self.store.add_devices(self.run_id, self.exp.device_rows())

    def run(self, state: SimState, progress: ProgressFn | None = None) -> SimState:
        a = self.exp.spec.algorithm
        per_round = self.exp.fleet.num_devices if isinstance(a.clients_per_round, float) else a.clients_per_round
        threads = threads_for(per_round * a.batch_size * self.exp.model.num_params)
        for r in range(state.round + 1, self.exp.spec.rounds + 1):
            with intra_op_threads(threads):
                state = self.step(state, r)
            if progress is not None:
                acc = state.accuracies[-1][1] if state.accuracies and state.accuracies[-1][0] == r else None
                progress(r, {"accuracy": acc, "sim_time_s": state.sim_time_s})
        return state

    # ---- one round ----------------------------------------------------------------
    def step(self, state: SimState, r: int) -> SimState:
        wall0 = time.perf_counter()
        exp, spec = self.exp, self.exp.spec
        a, seed = spec.algorithm, spec.seed
        n_dev = exp.fleet.num_devices
        events: list[dict[str, Any]] = []
        t0 = state.sim_time_s

        for d, kind in exp.timeline.changes(r):
            events.append({"round": r, "sim_time_s": t0, "device": d, "kind": kind, "detail": f"device {d} {kind}"})
        events += link_events(exp, r, t0)
        online = exp.timeline.online(r)
        online_ids = np.flatnonzero(online)
        selected = select_participants(
            online_ids[exp.timeline.reachable(r)[online_ids]], spec.algorithm.clients_per_round, spec.seed, r
        )
        dropped_mask = stream_rng(seed, Stream.DROPOUT, r).random(n_dev)[selected] < spec.failures.dropout
        for d in selected[dropped_mask]:
            events.append(
                {
                    "round": r,
                    "sim_time_s": t0,
                    "device": int(d),
                    "kind": "dropout",
                    "detail": "dropped out after receiving the global model",
                }
            )

        # Costs of every selected device (arrays aligned with `selected`).
        costs = round_costs(exp, r, online_ids, selected, dropped_mask, self.up_bytes, self.down_bytes)
        straggler, n_samples = costs.straggler, exp.num_samples[selected]
        for d, t in zip(selected[straggler], costs.total_s[straggler]):
            events.append(
                {
                    "round": r,
                    "sim_time_s": t0,
                    "device": int(d),
                    "kind": "straggler",
                    "detail": f"needed {t:.3f} s, deadline {a.deadline_s} s",
                }
            )
        completed_mask = costs.completed
        completed = selected[completed_mask]
        round_s = costs.round_s

        # Learning: batched local training of the devices that will report back.
        new_global, train_losses = state.global_params, np.full(selected.size, np.nan)
        server_state = state.server_state
        if completed.size:
            result = self.trainer.train(state.global_params, r, completed, [exp.parts[d] for d in completed])
            train_losses[completed_mask] = result.train_loss
            deltas = result.params - state.global_params
            received = roundtrip_torch(deltas, a.encoding, tensor_sizes=exp.model.tensor_sizes)
            aggregate = self._aggregate(
                received, torch.from_numpy(n_samples[completed_mask]).to(received.dtype), events, r, t0
            )
            if aggregate is not None:
                new_global, server_state = self.server_opt.step(
                    state.global_params, state.global_params + aggregate, server_state
                )
        else:
            events.append(
                {
                    "round": r,
                    "sim_time_s": t0,
                    "device": None,
                    "kind": "empty_round",
                    "detail": "no device completed the round; the global model is unchanged",
                }
            )
        if a.downlink_encoding != "float32":
            new_global = roundtrip_torch(new_global[None], a.downlink_encoding, tensor_sizes=exp.model.tensor_sizes)[0]

        energy, bytes_up_dev, bytes_down_dev = costs.energy_j, costs.bytes_up, costs.bytes_down
        c_s, u_s, d_s = costs.cpu_s, costs.up_s, costs.down_s
        lost_down, lost_up = costs.down.lost_packets, costs.up.lost_packets

        # Evaluation of the new global model.
        acc = loss = None
        per_device_acc: dict[int, float] = {}
        if r % spec.evaluation.every == 0 or r == spec.rounds:
            acc, loss = accuracy_and_loss(exp.module, exp.layout, new_global, self.x_test, self.y_test)
            if spec.evaluation.per_device:
                correct, _ = predict_correct(exp.module, exp.layout, new_global, self.x_train, self.y_train)
                for d in online_ids:
                    per_device_acc[int(d)] = float(correct[torch.from_numpy(exp.parts[d])].float().mean())

        status = np.full(n_dev, "", dtype=object)
        status[online_ids] = np.where(exp.timeline.reachable(r)[online_ids], "idle", "link_down")
        status[selected] = [costs.status(i) for i in range(selected.size)]
        pos = {int(d): i for i, d in enumerate(selected)}
        device_rows = []
        for d in online_ids:
            i = pos.get(int(d))
            device_rows.append(
                {
                    "round": r,
                    "device": int(d),
                    "status": status[d],
                    "num_samples": int(exp.num_samples[d]),
                    "compute_s": float(c_s[i]) if i is not None else 0.0,
                    "up_s": float(u_s[i]) if i is not None else 0.0,
                    "down_s": float(d_s[i]) if i is not None else 0.0,
                    "bytes_up": int(bytes_up_dev[i]) if i is not None else 0,
                    "bytes_down": int(bytes_down_dev[i]) if i is not None else 0,
                    "packets_lost": int(lost_down[i] + lost_up[i]) if i is not None else 0,
                    "energy_j": float(energy[d]),
                    "train_loss": None if i is None or np.isnan(train_losses[i]) else float(train_losses[i]),
                    "accuracy": per_device_acc.get(int(d)),
                }
            )

        bytes_up, bytes_down = int(bytes_up_dev.sum()), int(bytes_down_dev.sum())
        finite = train_losses[~np.isnan(train_losses)]
        new_state = SimState(
            r,
            new_global,
            server_state,
            t0 + round_s,
            state.energy_j + energy,
            state.bytes_up + bytes_up,
            state.bytes_down + bytes_down,
            state.accuracies + ([(r, acc)] if acc is not None else []),
        )
        round_row = {
            "round": r,
            "sim_time_s": new_state.sim_time_s,
            "duration_s": round_s,
            "selected": int(selected.size),
            "completed": int(completed.size),
            "dropped": int(dropped_mask.sum()),
            "stragglers": int(straggler.sum()),
            "train_loss": float(finite.mean()) if finite.size else None,
            "test_accuracy": acc,
            "test_loss": loss,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "energy_j": float(energy.sum()),
            "wall_time_s": time.perf_counter() - wall0,
        }
        self.store.write_round(self.run_id, round_row, device_rows, events, new_state.to_checkpoint())
        return new_state

    def _aggregate(
        self, received: torch.Tensor, weights: torch.Tensor, events: list[dict[str, Any]], r: int, t0: float
    ) -> torch.Tensor | None:
        agg = self.exp.spec.algorithm.aggregator
        try:
            return aggregate(agg.name, received, weights, **agg.model_dump(exclude={"name"}))
        except ValueError as exc:
            events.append(
                {
                    "round": r,
                    "sim_time_s": t0,
                    "device": None,
                    "kind": "aggregation_skipped",
                    "detail": f"{agg.name}: {exc}",
                }
            )
            return None

    # ---- summary ------------------------------------------------------------------
    def summary(self, state: SimState, wall_time_s: float) -> dict[str, Any]:
        return centralized_summary(self.exp, state, wall_time_s, self.up_bytes, self.down_bytes)


def select_participants(online_ids: np.ndarray, clients_per_round: int | float, seed: int, r: int) -> np.ndarray:
    """The devices of round ``r``: a count, or a fraction (at least one) of the online devices,
    drawn from the (seed, SELECT, round) stream so every twin selects the same devices."""
    if online_ids.size == 0:
        return online_ids
    c = clients_per_round
    k = min(c if isinstance(c, int) else max(1, math.ceil(c * online_ids.size)), online_ids.size)
    if k == online_ids.size:
        return online_ids
    return np.sort(stream_rng(seed, Stream.SELECT, r).choice(online_ids, size=k, replace=False))


def link_events(exp: Experiment, r: int, t0: float, time_scale: float = 1.0) -> list[dict[str, Any]]:
    """Events of device-server links going down (``failures.link_down``) or coming back in round
    ``r``, which starts at ``t0``; a modelled second lasts ``time_scale`` of the twin's seconds."""
    out = []
    for d, kind, at in exp.timeline.link_changes(r):
        when = f" {at:g} s into round {r}" if at > 0 else f" at the start of round {r}"
        out.append(
            {
                "round": r,
                "sim_time_s": t0 + at * time_scale,
                "device": d,
                "kind": kind,
                "detail": f"link of device {d} {kind.split('_')[1]}{when}",
            }
        )
    return out


def centralized_summary(
    exp: Experiment, state: Any, wall_time_s: float, up_bytes: int, down_bytes: int
) -> dict[str, Any]:
    """The run summary of a centralized run, from either twin's state (accuracies, round, time,
    bytes, energy): one definition, so simulate and emulate summaries compare key for key."""
    spec = exp.spec
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
        "num_devices": exp.fleet.num_devices,
        "algorithm": f"{spec.algorithm.name} ({spec.algorithm.aggregator.name}, server {spec.algorithm.server_optimizer.name})",
        "dataset": spec.dataset.name,
        "model": f"{exp.model.name} ({exp.model.num_params:,} parameters)",
        "uplink_message_bytes": up_bytes,
        "downlink_message_bytes": down_bytes,
    }
