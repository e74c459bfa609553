"""How a hierarchical emulation records a round: the local aggregators' reports and the
devices' statuses merged with the cost model's figures, the global model evaluated, one
transaction with the round's checkpoint.

A concern of :class:`tinytwin.emulate.hier_coordinator.HierEmulation`; the state it reads and
writes is typed once, in :class:`tinytwin.emulate.hier_state.HierState`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms import hierarchical as H
from tinytwin.algorithms.aggregators import weighted_mean
from tinytwin.emulate.aggregator import aggregator_id
from tinytwin.emulate.hier_plan import HierRoundPlan, ModelledRound, modelled_costs
from tinytwin.emulate.hier_resume import HierResume
from tinytwin.emulate.hier_state import RoundState
from tinytwin.engines.evaluate import accuracy_and_loss
from tinytwin.engines.evaluate_many import evaluate_many
from tinytwin.engines.hierarchical import HState, reconfiguration_rows
from tinytwin.store import dfl as dfl_store
from tinytwin.wire.roundtrip import roundtrip_torch


@dataclass
class HierTally:
    """The local aggregators' reports of one round, per device and local round."""

    L: int
    n: int
    got_model: list[set[int]] = field(init=False)  # per local round: devices that received the model
    done: list[set[int]] = field(init=False)  # per local round: devices that reported an update
    status: dict[int, str] = field(default_factory=dict)
    losses: np.ndarray = field(init=False)
    b_up: np.ndarray = field(init=False)
    b_down: np.ndarray = field(init=False)
    sent: np.ndarray = field(init=False)
    recv: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.got_model = [set() for _ in range(self.L)]
        self.done = [set() for _ in range(self.L)]
        self.losses = np.full(self.n, np.nan)
        self.b_up, self.b_down = np.zeros(self.n, dtype=np.int64), np.zeros(self.n, dtype=np.int64)
        self.sent, self.recv = np.zeros(self.n, dtype=np.int64), np.zeros(self.n, dtype=np.int64)


def _new_rejections(rej: dict[str, int], prev: dict[str, int]) -> dict[str, int]:
    """Frames rejected since the previous report (reports carry running totals)."""
    return {x: v - prev.get(x, 0) for x, v in rej.items() if v > prev.get(x, 0)}


def _round_metrics(
    r: int, dev_acc: np.ndarray, acc: float | None, loss: float | None, models: list[torch.Tensor], messages: int
) -> dict[str, Any]:
    """The round's ``round_metrics`` row: the devices' accuracies (their clusters' models), the
    global model's, the consensus distance of the reporting clusters' models."""
    ev = dev_acc[~np.isnan(dev_acc)]
    w = torch.stack(models).to(torch.float64) if models else None
    return {
        "round": r,
        "acc_mean": float(ev.mean()) if ev.size else None,
        "acc_min": float(ev.min()) if ev.size else None,
        "acc_max": float(ev.max()) if ev.size else None,
        "acc_std": float(ev.std()) if ev.size else None,
        "loss_mean": loss,
        "consensus_distance": float((w - w.mean(0, keepdim=True)).norm(dim=1).mean()) if w is not None else None,
        "global_accuracy": acc,
        "components": len(models),
        "messages": messages,
    }


def _round_row(
    new: HState, round_s: float, taking: list[int], t: HierTally, dropped: int, sent: tuple[int, int], mr: ModelledRound
) -> dict[str, Any]:
    """The round's ``rounds`` row (``new``: the state after it; ``sent``: the round's bytes up, down)."""
    finite = t.losses[~np.isnan(t.losses)]
    r, acc = new.round, new.accuracies[-1][1] if new.accuracies and new.accuracies[-1][0] == new.round else None
    return {
        "round": r,
        "sim_time_s": new.sim_time_s,
        "duration_s": round_s,
        "selected": len(taking),
        "completed": sum(1 for d in taking if t.status[d] == "ok"),
        "dropped": dropped,
        "stragglers": 0,
        "train_loss": float(finite.mean()) if finite.size else None,
        "test_accuracy": acc,
        "test_loss": new.last_metrics["loss_mean"],
        "bytes_up": sent[0],
        "bytes_down": sent[1],
        "energy_j": float(mr.energy_j.sum()),
        "wall_time_s": round_s,
    }


class HierRecording(HierResume):
    """How a hierarchical round is recorded (a concern of
    :class:`~tinytwin.emulate.hier_coordinator.HierEmulation`)."""

    def _record(
        self,
        r: int,
        st: HState,
        plan: HierRoundPlan,
        rs: RoundState,
        taking: list[int],
        taking_mask: np.ndarray,
        victims: set[int],
        failing: set[int],
        extra_down: dict[int, float],
        events: list[dict[str, Any]],
        wall0: float,
    ) -> HState:
        sim, k = self.sim, self.k
        self._note_cluster_failures(r, rs, events)
        reporting = [
            c for c in rs.clusters if c not in rs.failed and self._delivered(c) and rs.final[c].get("contributed")
        ]
        t = self._tally(r, rs, events)
        self._settle_statuses(r, rs, t, taking, victims, events)
        mr = modelled_costs(
            plan,
            self.n,
            sim.assign,
            sim.compute_s,
            self.exp.fleet.power,
            t.got_model,
            t.done,
            set(reporting),
            k,
            taking_mask,
            extra_down,
        )
        new_global, server_state, cluster_models = self._aggregate(r, st, rs, reporting, events)
        acc, loss, dev_acc = self._evaluate(r, taking, reporting, new_global, cluster_models)
        ledger, cost = self._ledger(r, reporting, t.done)
        if self.orchestrated:
            cost += self._orchestration_costs(
                r, st, acc, cost, float((st.energy_j + mr.energy_j).sum()), ledger, events
            )
        la_up_b = sum(int(self.coord.update_bytes.get(aggregator_id(c), 0)) for c in reporting)
        la_down_b = sum(rs.model_bytes.values())
        self.la_ga_bytes += la_up_b + la_down_b
        messages = int(t.recv.sum() + t.sent.sum()) + len(rs.model_bytes) + len(reporting)
        rm = _round_metrics(r, dev_acc, acc, loss, [cluster_models[c] for c in reporting], messages)
        device_rows, metric_rows = self._device_rows(r, taking, t, mr, dev_acc)
        events += [
            self._event(r, d, "frame_rejected", f"global coordinator: {x}") for d, x in self.coord.drain_rejects()
        ]
        bytes_up = int(t.b_up.sum()) + (la_up_b if k > 1 else 0)
        bytes_down = int(t.b_down.sum()) + (la_down_b if k > 1 else 0)
        round_s = time.perf_counter() - wall0
        self.round_walls.append(round_s)
        self.modelled_s += mr.round_s
        self.wall_s = self._wall()
        new = HState(
            r,
            new_global,
            server_state,
            st.sim_time_s + mr.round_s,
            st.energy_j + mr.energy_j,
            st.bytes_up + bytes_up,
            st.bytes_down + bytes_down,
            st.cost_spent + cost,
            st.accuracies + ([(r, acc)] if acc is not None else []),
            rm,
            st.orch,
        )
        row = _round_row(new, round_s, taking, t, len(victims), (bytes_up, bytes_down), mr)
        self.final_models = {
            "global": new_global.numpy().copy(),
            **{f"la{c}": m.numpy().copy() for c, m in cluster_models.items()},
        }
        dfl_store.write_round(
            self.store, self.run_id, row, device_rows, events, self._checkpoint(new), rm, metric_rows, ledger
        )
        self.rs = None
        return new

    def _orchestration_costs(
        self, r: int, st: HState, acc: float | None, cost: float, energy_j: float, ledger: list, events: list
    ) -> float:
        """After round r: RVA's decision and the objectives' stops (the simulator's); the round's
        change and revert costs, added to ``ledger`` and returned."""
        accuracies = st.accuracies + ([(r, acc)] if acc is not None else [])
        spent = st.cost_spent + cost + self.change_cost
        cpu0 = time.process_time()
        back = self.sim._validate(st, r, self.exp.timeline.online(r), accuracies, spent, energy_j, events)
        self.orchestrator_cpu_s += time.process_time() - cpu0
        charged = reconfiguration_rows(r, self.change_cost, back)
        ledger += charged
        return float(sum(row["cost"] for row in charged))

    def _note_cluster_failures(self, r: int, rs: RoundState, events: list[dict[str, Any]]) -> None:
        for c, why in sorted(rs.failed.items()):
            self.cluster_failures.append((r, c, why))
            events.append(
                self._event(
                    r,
                    None,
                    "aggregator_killed" if why == "killed" else "cluster_failed",
                    f"local aggregator {c}: {why}; cluster {c} ({len(rs.local.get(c, []))} of "
                    f"{self.L} local rounds reported) left out of round {r}",
                )
            )

    def _tally(self, r: int, rs: RoundState, events: list[dict[str, Any]]) -> HierTally:
        """Per device: what the local aggregators reported, local round by local round; frames
        rejected since the last report become events."""
        t = HierTally(self.L, self.n)
        for c in rs.clusters:
            for rep in rs.local.get(c, []):
                li = int(rep["local"]) - 1
                for ds, m in rep["devices"].items():
                    self._tally_device(r, t, li, int(ds), m, events)
                rej = rep.get("rejected") or {}
                diff = _new_rejections(rej, self.la_rejected.get(c, {}))
                if diff:
                    events.append(
                        self._event(r, None, "frame_rejected", f"local aggregator {c} rejected frames: {diff}")
                    )
                self.la_rejected[c] = dict(rej)
        return t

    def _tally_device(
        self, r: int, t: HierTally, li: int, d: int, m: dict[str, Any], events: list[dict[str, Any]]
    ) -> None:
        if m.get("got_model"):
            t.got_model[li].add(d)
            t.recv[d] += 1
        t.b_down[d] += int(m.get("bytes_down", 0))
        t.b_up[d] += int(m.get("bytes_up", 0))
        if m["status"] == "ok":
            t.done[li].add(d)
            t.sent[d] += 1
            if m.get("train_loss") is not None:
                t.losses[d] = float(m["train_loss"])
            if m.get("insns") is not None:  # a firmware device: its board's figures
                self.fw_rounds.append(
                    (int(m["insns"]), float(m["firmware_compute_s"]), float(m["cost_model_compute_s"]))
                )
            if m.get("qemu_rss_kb") is not None:
                cur = self.qemu_mem.setdefault(d, {})
                for x in ("qemu_rss_kb", "qemu_pss_kb"):
                    cur[x] = max(cur.get(x, 0), int(m.get(x) or 0))
        elif d not in t.status:
            t.status[d] = m["status"]
        rej = m.get("rejected") or {}
        diff = _new_rejections(rej, self.device_rejected.get(d, {}))
        if diff:
            events.append(self._event(r, d, "frame_rejected", f"device {d} rejected frames: {diff}"))
        if rej:
            self.device_rejected[d] = dict(rej)

    def _settle_statuses(
        self, r: int, rs: RoundState, t: HierTally, taking: list[int], victims: set[int], events: list[dict[str, Any]]
    ) -> None:
        """Every taking device's status of the round (how a device that died ended: its exit)."""
        status = t.status
        for d in taking:
            c = int(self.sim.assign[d])
            if c in rs.failed:
                status[d] = "la_failed"
            elif d in victims:
                status[d] = "dropped"
            elif d not in status:
                status[d] = "ok"
            elif status[d] in ("disconnected", "failed"):
                why = self._exit_kind(d)
                status[d] = why.split(" ")[0]  # oom, crash, firmware_fault (the detail goes to the event)
                if status[d] != "killed":
                    events.append(self._event(r, d, status[d], f"device {d}: {why}"))
            elif status[d] in ("timeout", "no_hello"):
                events.append(self._event(r, d, status[d], f"device {d}: {status[d]}"))
        for c in rs.clusters:  # a new aggregator process counts from zero again
            if c in rs.failed:
                self.rejected_retired.update(self.la_rejected.pop(c, {}))

    def _aggregate(
        self, r: int, st: HState, rs: RoundState, reporting: list[int], events: list[dict[str, Any]]
    ) -> tuple[torch.Tensor, Any, dict[int, torch.Tensor]]:
        """The global aggregate, as the engine: sample-weighted mean of the decoded cluster
        updates, the server optimizer's step, the downlink encoding; and the cluster models."""
        sim, k, g = self.sim, self.k, st.global_params
        cluster_models: dict[int, torch.Tensor] = {}
        for c in reporting:
            v = torch.from_numpy(np.asarray(self.coord.updates[aggregator_id(c)]))
            cluster_models[c] = v if k == 1 else g + v
        if k == 1 and reporting:
            proposal = cluster_models[0]
        elif reporting:
            cw = torch.tensor([float(sim.n_train[rs.final[c]["contributed"]].sum()) for c in reporting], dtype=g.dtype)
            deltas = torch.from_numpy(np.stack([np.asarray(self.coord.updates[aggregator_id(c)]) for c in reporting]))
            proposal = g + weighted_mean(deltas, cw)
        else:
            proposal = g
            events.append(self._event(r, None, "empty_round", "no cluster reported; the global model is unchanged"))
        new_global, server_state = (
            sim.server_opt.step(g, proposal, st.server_state) if reporting else (g, st.server_state)
        )
        if self.a.downlink_encoding != "float32":
            sizes = self.exp.model.tensor_sizes
            new_global = roundtrip_torch(new_global[None], self.a.downlink_encoding, tensor_sizes=sizes)[0]
        return new_global, server_state, cluster_models

    def _evaluate(
        self,
        r: int,
        taking: list[int],
        reporting: list[int],
        new_global: torch.Tensor,
        cluster_models: dict[int, torch.Tensor],
    ) -> tuple[float | None, float | None, np.ndarray]:
        """In evaluation rounds: the global model's accuracy and loss, and every taking device's
        accuracy (its reporting cluster's model, what it holds)."""
        exp, sim, spec = self.exp, self.sim, self.exp.spec
        acc = loss = None
        dev_acc = np.full(self.n, np.nan)
        if r % spec.evaluation.every == 0 or r == spec.rounds:
            acc, loss = accuracy_and_loss(exp.module, exp.layout, new_global, sim.x_test, sim.y_test)
            if self.k > 1 and reporting:
                ca, _ = evaluate_many(
                    exp.module, exp.layout, torch.stack([cluster_models[c] for c in reporting]), sim.x_test, sim.y_test
                )
                by_c = dict(zip(reporting, ca.numpy().tolist()))
                for d in taking:
                    if int(sim.assign[d]) in by_c:
                        dev_acc[d] = by_c[int(sim.assign[d])]
            else:
                dev_acc[[d for d in taking if int(sim.assign[d]) in reporting]] = acc
        return acc, loss, dev_acc

    def _ledger(self, r: int, reporting: list[int], done: list[set[int]]) -> tuple[list[dict[str, Any]], float]:
        """The round's cost ledger (the engine's), the LA -> GA rows of reporting clusters only."""
        sim = self.sim
        participants = np.array(sorted(set().union(*done)), dtype=np.int64)
        ledger = [
            row
            for row in H.round_ledger(sim.assign, sim.client_costs, sim.agg_costs, sim.model_mb, self.L, participants)
            if row["level"] != "la-ga" or int(row["src"].split()[1]) in reporting
        ]
        for row in ledger:
            row["round"] = r
            row["bytes"] = int(round(row.pop("mb") * H.MB))
        return ledger, float(sum(row["cost"] for row in ledger))

    def _device_rows(
        self, r: int, taking: list[int], t: HierTally, mr: ModelledRound, dev_acc: np.ndarray
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The round's ``device_rows`` and ``device_metrics`` rows (local rounds counted)."""
        device_rows, metric_rows = [], []
        for d in taking:
            self.local_rounds[d] += t.sent[d]
            device_rows.append(
                {
                    "round": r,
                    "device": d,
                    "status": t.status[d],
                    "num_samples": int(self.sim.n_train[d]),
                    "compute_s": float(mr.compute_s[d]),
                    "up_s": float(mr.up_s[d]),
                    "down_s": float(mr.down_s[d]),
                    "bytes_up": int(t.b_up[d]),
                    "bytes_down": int(t.b_down[d]),
                    "packets_lost": int(mr.lost[d]),
                    "energy_j": float(mr.energy_j[d]),
                    "train_loss": None if np.isnan(t.losses[d]) else float(t.losses[d]),
                    "accuracy": None,
                }
            )
            metric_rows.append(
                {
                    "round": r,
                    "device": d,
                    "test_accuracy": None if np.isnan(dev_acc[d]) else float(dev_acc[d]),
                    "test_loss": None,
                    "distance_to_mean": None,
                    "lr": float(self.a.lr),
                    "local_rounds": int(self.local_rounds[d]),
                    "messages_sent": int(t.sent[d]),
                    "messages_received": int(t.recv[d]),
                    "airtime_s": float(mr.up_s[d] + mr.down_s[d]),
                }
            )
        return device_rows, metric_rows
