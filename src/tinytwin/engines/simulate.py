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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms.aggregators import aggregate_spec
from tinytwin.algorithms.attacks import attack_of, attack_update
from tinytwin.algorithms.local_update import LocalTraining
from tinytwin.algorithms.server_optimizers import make_server_optimizer
from tinytwin.engines.device import engine_device
from tinytwin.engines.device_rows import device_columns
from tinytwin.engines.distill_round import DistillRound, distillation_summary
from tinytwin.engines.evaluate import accuracy_and_loss, predict_correct
from tinytwin.engines.experiment import Experiment
from tinytwin.engines.hetero_round import NestedFleet, size_summary
from tinytwin.engines.local_training import LocalTrainer
from tinytwin.engines.round_costs import round_costs
from tinytwin.engines.state import Checkpointed
from tinytwin.engines.streaming import StreamingMean
from tinytwin.engines.summary import common_summary, precision_summary
from tinytwin.engines.threads import intra_op_threads, threads_for
from tinytwin.fleet.battery import battery_summary, powered, settle_round
from tinytwin.rng import Stream, stream_rng
from tinytwin.spec.schema import AggregatorSpec
from tinytwin.store.db import RunStore
from tinytwin.wire.encoding import tensor_sizes_within
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
    attack_history: dict[str, np.ndarray] = field(default_factory=dict)  # the stale attack's (attacks.py)
    size_accuracies: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # per model size
    distillation: list[list[float]] = field(default_factory=list)  # per round: DistillRound.log_row()
    battery_j: np.ndarray | None = None  # per device charge (fleet/battery.py); None: no batteries
    battery_empty: np.ndarray | None = None


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
        self.device = engine_device(a.family, a.name, spec.engine.device)
        self.trainer = LocalTrainer.for_engine(exp, self.cfg, self.device)
        self.x_train, self.y_train = self.trainer.x, self.trainer.y
        self.x_test = torch.from_numpy(ds.x_test).to(self.device)
        self.y_test = torch.from_numpy(ds.y_test).to(self.device)
        self.nested = (
            NestedFleet(
                exp,
                self.x_train,
                self.y_train,
                self.cfg,
                chunk_size=self.trainer.chunk_size,
                device=self.device,
                dtype=self.trainer.dtype,
            )
            if exp.models.heterogeneous or a.distillation is not None
            else None
        )
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
        state = SimState(0, params, self.server_opt.init(params), 0.0, np.zeros(self.exp.fleet.num_devices))
        if self.exp.batteries is not None:
            state.battery_j, state.battery_empty = self.exp.batteries.start()
        return state

    def state_from_checkpoint(self, ck: dict[str, Any]) -> SimState:
        return SimState.from_checkpoint(ck)

    def register(self) -> None:
        """Write the per-device table (group, profile, link, data, class histogram)."""
        self.store.add_devices(self.run_id, self.exp.device_rows())

    def run(self, state: SimState, progress: ProgressFn | None = None) -> SimState:
        a = self.exp.spec.algorithm
        per_round = self.exp.fleet.num_devices if isinstance(a.clients_per_round, float) else a.clients_per_round
        macs = per_round * a.batch_size * self.exp.model.num_params
        threads = threads_for(macs, self.exp.spec.engine.threads)
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
        online = powered(exp.timeline.online(r), state.battery_empty)  # an empty battery: offline
        online_ids = np.flatnonzero(online)
        selected = select_participants(
            online_ids[exp.timeline.reachable(r)[online_ids]], spec.algorithm.clients_per_round, spec.seed, r
        )
        dropped_mask = stream_rng(seed, Stream.DROPOUT, r).random(n_dev)[selected] < spec.failures.dropout
        events += device_events(
            r, t0, "dropout", selected[dropped_mask], ["dropped out after receiving the global model"]
        )

        # Costs of every selected device (arrays aligned with `selected`).
        costs = round_costs(exp, r, online_ids, selected, dropped_mask)
        straggler, n_samples = costs.straggler, exp.num_samples[selected]
        needed = [f"needed {t:.3f} s, deadline {a.deadline_s} s" for t in costs.total_s[straggler]]
        events += device_events(r, t0, "straggler", selected[straggler], needed)
        completed_mask = costs.completed
        completed = selected[completed_mask]

        # Learning: batched local training of the devices that will report back.
        train_losses = np.full(selected.size, np.nan)
        history = dict(state.attack_history)  # the stale attack's, carried in the checkpoint
        new_global, server_state = self._update_global(
            state, r, completed, completed_mask, n_samples, train_losses, events, t0, history
        )

        energy, bytes_up_dev, bytes_down_dev = costs.energy_j, costs.bytes_up, costs.bytes_down
        round_s = costs.round_s + (self.distilled.server_s if self.distilled else 0.0)  # the server distils last
        acc, loss, per_device_acc, size_accs = self._evaluate_round(state, r, new_global, online_ids)
        device_rows = device_columns(exp, r, online_ids, selected, costs, train_losses, per_device_acc)

        bytes_up, bytes_down = int(bytes_up_dev.sum()), int(bytes_down_dev.sum())
        charge, empty, battery_rows = settle_round(
            exp.batteries, state.battery_j, state.battery_empty, energy, t0, t0 + round_s, r, events
        )
        new_state = SimState(
            r,
            new_global,
            server_state,
            t0 + round_s,
            state.energy_j + energy,
            state.bytes_up + bytes_up,
            state.bytes_down + bytes_down,
            state.accuracies + ([(r, acc)] if acc is not None else []),
            history,
            size_accs,
            state.distillation + ([self.distilled.log_row()] if self.distilled else []),
            charge,
            empty,
        )
        round_row = {
            "round": r,
            "sim_time_s": new_state.sim_time_s,
            "duration_s": round_s,
            "selected": int(selected.size),
            "completed": int(completed.size),
            "dropped": int(dropped_mask.sum()),
            "stragglers": int(straggler.sum()),
            "train_loss": finite_mean(train_losses),
            "test_accuracy": acc,
            "test_loss": loss,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "energy_j": float(energy.sum()),
            "wall_time_s": time.perf_counter() - wall0,
        }
        self.store.write_round(
            self.run_id, round_row, device_rows, events, new_state.to_checkpoint(), battery=battery_rows
        )
        return new_state

    def _evaluate_round(
        self, state: SimState, r: int, new_global: torch.Tensor, online_ids: np.ndarray
    ) -> tuple[float | None, float | None, dict[int, float], list[tuple[int, dict[str, float]]]]:
        """In the spec's evaluation rounds: the global model's accuracy and loss, per-device
        accuracies and (several model sizes) each size's; otherwise Nones and the old list."""
        spec = self.exp.spec
        size_accs = list(state.size_accuracies)
        if not (r % spec.evaluation.every == 0 or r == spec.rounds):
            return None, None, {}, size_accs
        acc, loss, per_device_acc = self._evaluate(new_global, online_ids)
        if self.nested is not None:
            size_accs.append((r, self.nested.accuracies(new_global, self.x_test, self.y_test)))
        return acc, loss, per_device_acc, size_accs

    def _update_global(
        self,
        state: SimState,
        r: int,
        completed: np.ndarray,
        completed_mask: np.ndarray,
        n_samples: np.ndarray,
        train_losses: np.ndarray,
        events: list[dict[str, Any]],
        t0: float,
        history: dict[str, np.ndarray],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Train, aggregate and step the server optimizer; fills ``train_losses`` of the completed devices.

        Returns the new global model (as the devices will receive it) and server state."""
        a = self.exp.spec.algorithm
        new_global, server_state = state.global_params, state.server_state
        self.distilled: DistillRound | None = None  # set by _learn when the server distils
        if completed.size:
            aggregate, train_losses[completed_mask] = self._learn(
                state.global_params, r, completed, n_samples[completed_mask], events, t0, history
            )
            if aggregate is not None:
                new_global, server_state = self.server_opt.step(
                    state.global_params, state.global_params + aggregate, server_state
                )
        else:
            detail = "no device completed the round; the global model is unchanged"
            events.append({"round": r, "sim_time_s": t0, "device": None, "kind": "empty_round", "detail": detail})
        if a.downlink_encoding != "float32":
            sizes = self.exp.model.tensor_sizes
            new_global = roundtrip_torch(new_global[None], a.downlink_encoding, tensor_sizes=sizes)[0]
        return new_global, server_state

    def _evaluate(self, new_global: torch.Tensor, online_ids: np.ndarray) -> tuple[float, float, dict[int, float]]:
        """Test accuracy and loss of the new global model, and (``evaluation.per_device``) its
        accuracy on each online device's own data, computed on the engine's device."""
        exp = self.exp
        on_device = new_global.to(self.device)
        acc, loss = accuracy_and_loss(
            exp.module, exp.layout, on_device[: exp.model.num_params], self.x_test, self.y_test
        )
        per_device_acc: dict[int, float] = {}
        if exp.spec.evaluation.per_device and self.nested is not None:
            per_device_acc = self.nested.device_accuracies(on_device, self.x_train, self.y_train, online_ids)
        elif exp.spec.evaluation.per_device:
            correct, _ = predict_correct(exp.module, exp.layout, on_device, self.x_train, self.y_train)  # one size
            correct = correct.cpu()
            for d in online_ids:
                per_device_acc[int(d)] = float(correct[torch.from_numpy(exp.parts[d])].float().mean())
        return acc, loss, per_device_acc

    def _learn(
        self,
        start: torch.Tensor,
        r: int,
        completed: np.ndarray,
        n_samples: np.ndarray,
        events: list[dict[str, Any]],
        t0: float,
        history: dict[str, np.ndarray],
    ) -> tuple[torch.Tensor | None, np.ndarray]:
        """Train the completed devices and aggregate what the server receives.

        Returns the aggregate delta (on the CPU, ``None`` when the rule refused) and the
        devices' training losses. Round state stays on the CPU; the work runs on the
        engine's device. More devices than one chunk with FedAvg stream: each chunk is
        reduced as it finishes (:class:`StreamingMean`), so memory is one chunk of models.
        """
        exp, a = self.exp, self.exp.spec.algorithm
        parts = exp.shards.take(completed)
        if self.nested is not None:
            delta, losses, self.distilled = self.nested.learn(start, r, completed, parts)
            if self.distilled is not None:
                events.append(self.distilled.event(r, t0))
            return delta, losses
        agg, losses, error = learn_round(
            self.trainer,
            start,
            r,
            completed,
            parts,
            n_samples,
            a.aggregator,
            a.encoding,
            exp.model.tensor_sizes,
            attacks=[at.model_dump() for at in exp.spec.attacks],
            seed=exp.spec.seed,
            num_devices=exp.fleet.num_devices,
            history=history,
        )
        if error is not None:
            events.append(
                {
                    "round": r,
                    "sim_time_s": t0,
                    "device": None,
                    "kind": "aggregation_skipped",
                    "detail": f"{a.aggregator.name}: {error}",
                }
            )
        return (None if agg is None else agg.cpu()), losses

    # ---- summary ------------------------------------------------------------------
    def summary(self, state: SimState, wall_time_s: float) -> dict[str, Any]:
        out = centralized_summary(self.exp, state, wall_time_s, self.up_bytes, self.down_bytes)
        if self.nested is not None:
            last = state.size_accuracies[-1][1] if state.size_accuracies else {}
            rows = self.store.device_rounds(self.run_id)
            out["model_sizes"] = size_summary(self.exp, state.energy_j, rows, last)
        return {**out, **distillation_summary(state.distillation)}


def finite_mean(values: np.ndarray) -> float | None:
    """Mean of the non-NaN entries (devices that trained), None when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else None


def device_events(r: int, t0: float, kind: str, devices: np.ndarray, details: list[str]) -> list[dict[str, Any]]:
    """Events of ``kind`` for ``devices`` at the start of round ``r``; one detail, or one per device."""
    return [
        {"round": r, "sim_time_s": t0, "device": int(d), "kind": kind, "detail": details[i if len(details) > 1 else 0]}
        for i, d in enumerate(devices)
    ]


def learn_round(
    trainer: LocalTrainer,
    start: torch.Tensor,
    r: int,
    device_ids: np.ndarray,
    parts: Sequence[np.ndarray],
    n_samples: np.ndarray,
    aggregator: AggregatorSpec,
    encoding: str,
    tensor_sizes: Any,
    attacks: Sequence[Mapping[str, Any]] = (),
    seed: int = 0,
    num_devices: int = 0,
    history: dict[str, np.ndarray] | None = None,
) -> tuple[torch.Tensor | None, np.ndarray, str | None]:
    """One round's learning: local training from ``start``, the server's decoding, aggregation.

    Returns the aggregate delta on the trainer's device (``None`` if the rule refused),
    the devices' training losses and the rule's reason for refusing. FedAvg over more
    devices than one chunk streams (:func:`stream_fedavg`); other rules see every row."""
    if (
        aggregator.name == "fedavg"
        and aggregator.norm_bound is None
        and not attacks
        and len(parts) > trainer.chunk_size
    ):
        return stream_fedavg(trainer, start, r, device_ids, parts, n_samples, encoding, tensor_sizes)
    result = trainer.train(start, r, device_ids, parts)
    received = roundtrip_torch(result.params - start.to(trainer.device), encoding, tensor_sizes=tensor_sizes)
    received = attacked_rows(received, device_ids, attacks, seed, r, num_devices, history)
    weights = torch.from_numpy(n_samples).to(received.dtype)
    received, weights = finite_updates(received, weights)
    if not len(received):
        return None, result.train_loss, "every update was non-finite"
    agg, refused = aggregate_spec(aggregator, received, weights)
    return agg, result.train_loss, refused


def stream_fedavg(
    trainer: LocalTrainer,
    start: torch.Tensor,
    r: int,
    device_ids: np.ndarray,
    parts: Sequence[np.ndarray],
    n_samples: np.ndarray,
    encoding: str,
    tensor_sizes: Any,
    attacks: Sequence[Mapping[str, Any]] = (),
    seed: int = 0,
    num_devices: int = 0,
) -> tuple[torch.Tensor | None, np.ndarray, str | None]:
    """FedAvg of the received deltas, one chunk of devices at a time (memory: one chunk).

    Returns the aggregate delta (``None`` if FedAvg refused), the devices' training losses
    and FedAvg's reason for refusing, if it did."""
    losses = np.zeros(len(parts))
    try:
        mean: StreamingMean | None = StreamingMean(torch.from_numpy(n_samples), start.shape[-1], trainer.device)
    except ValueError as exc:
        mean, error = None, str(exc)
    start_dev = start.to(trainer.device)
    for pos, result in trainer.train_chunks(start_dev, r, device_ids, parts):
        losses[pos] = result.train_loss
        if mean is None:
            continue
        offset = 0
        for layer in result.layers:  # each of the model's tensors on its own: no (n, P) copy
            rows = layer.reshape(len(pos), -1)
            size = rows.shape[1]
            if rows.dtype == start_dev.dtype:
                delta = rows.sub_(start_dev[offset : offset + size])  # the chunk's models are not needed again
            else:  # a lower training precision: the delta and its sum in float32
                delta = rows.to(start_dev.dtype).sub_(start_dev[offset : offset + size])
            sizes = tensor_sizes_within(tensor_sizes or [start_dev.shape[-1]], offset, size)
            mean.add(pos, roundtrip_torch(delta, encoding, tensor_sizes=sizes), offset)
            offset += size
    if mean is None:
        return None, losses, error
    try:
        return mean.result(), losses, None
    except ValueError as exc:
        return None, losses, str(exc)


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
        **battery_summary(exp.batteries, state.battery_j, state.battery_empty),
        **precision_summary(spec.engine.precision),
    }


def finite_updates(received: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The updates (and weights) without the non-finite ones: a receiver refuses a NaN/Inf payload
    (emulate/frame_checks.py, ``non_finite``), so the simulator aggregates without it too."""
    # Row sums first, one read of the matrix: a row holding NaN or Inf has a non-finite sum, and a
    # finite row whose sum overflows only costs the exact scan (17x faster at 100 x 2 410 values).
    if bool(torch.isfinite(received.sum(dim=1)).all()):
        return received, weights
    finite = torch.isfinite(received).all(dim=1)
    if bool(finite.all()):
        return received, weights
    return received[finite], weights[finite.to(weights.device)]


def attacked_rows(
    received: torch.Tensor,
    device_ids: np.ndarray,
    attacks: Sequence[Mapping[str, Any]],
    seed: int,
    r: int,
    n: int,
    history: dict[str, np.ndarray] | None = None,
) -> torch.Tensor:
    """``received`` with each attacked device's row replaced by what it sends (algorithms/attacks.py)."""
    if not attacks:
        return received
    rows = received.cpu().numpy().copy()
    for i, d in enumerate(device_ids):
        rows[i] = attack_update(rows[i], attack_of(attacks, int(d), n, seed), seed, r, int(d), history)
    return torch.from_numpy(rows).to(received.device)
