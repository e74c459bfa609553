"""How a hierarchical emulation records a round: the local aggregators' reports and the
devices' statuses merged with the cost model's figures, the global model evaluated, one
transaction with the round's checkpoint.

A mixin of :class:`tinytwin.emulate.hier_coordinator.HierEmulation` (its state lives there)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms import hierarchical as H
from tinytwin.algorithms.aggregators import weighted_mean
from tinytwin.emulate.aggregator import aggregator_id
from tinytwin.emulate.hier_plan import HierRoundPlan, modelled_costs
from tinytwin.engines.evaluate import accuracy_and_loss
from tinytwin.engines.evaluate_many import evaluate_many
from tinytwin.engines.hierarchical import HState
from tinytwin.store import dfl as dfl_store
from tinytwin.wire.roundtrip import roundtrip_torch


@dataclass
class RoundState:
    """What the GA collects from the local aggregators during one global round."""

    clusters: list[int]
    local: dict[int, list[dict[str, Any]]]
    final: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    kill: set[int] = field(default_factory=set)
    killed: set[int] = field(default_factory=set)
    model_bytes: dict[int, int] = field(default_factory=dict)


class HierRecording:
    """Methods of :class:`~tinytwin.emulate.hier_coordinator.HierEmulation`: How a hierarchical emulation records a round: the local aggregators' reports and the"""

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
        exp, sim, a, spec = self.exp, self.sim, self.a, self.exp.spec
        n, k, L = self.n, self.k, self.L
        g = st.global_params
        for c, why in sorted(rs.failed.items()):
            self.cluster_failures.append((r, c, why))
            events.append(
                self._event(
                    r,
                    None,
                    "aggregator_killed" if why == "killed" else "cluster_failed",
                    f"local aggregator {c}: {why}; cluster {c} ({len(rs.local.get(c, []))} of "
                    f"{L} local rounds reported) left out of round {r}",
                )
            )
        reporting = [
            c for c in rs.clusters if c not in rs.failed and self._delivered(c) and rs.final[c].get("contributed")
        ]
        # per device: what the local aggregators reported, local round by local round
        got_model: list[set[int]] = [set() for _ in range(L)]
        done: list[set[int]] = [set() for _ in range(L)]
        status: dict[int, str] = {}
        losses = np.full(n, np.nan)
        b_up, b_down = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        sent, recv = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        for c in rs.clusters:
            for rep in rs.local.get(c, []):
                li = int(rep["local"]) - 1
                for ds, m in rep["devices"].items():
                    d = int(ds)
                    if m.get("got_model"):
                        got_model[li].add(d)
                        recv[d] += 1
                    b_down[d] += int(m.get("bytes_down", 0))
                    b_up[d] += int(m.get("bytes_up", 0))
                    if m["status"] == "ok":
                        done[li].add(d)
                        sent[d] += 1
                        if m.get("train_loss") is not None:
                            losses[d] = float(m["train_loss"])
                        if m.get("insns") is not None:  # a firmware device: its board's figures
                            self.fw_rounds.append(
                                (int(m["insns"]), float(m["firmware_compute_s"]), float(m["cost_model_compute_s"]))
                            )
                        if m.get("qemu_rss_kb") is not None:
                            cur = self.qemu_mem.setdefault(d, {})
                            for x in ("qemu_rss_kb", "qemu_pss_kb"):
                                cur[x] = max(cur.get(x, 0), int(m.get(x) or 0))
                    elif d not in status:
                        status[d] = m["status"]
                    rej = m.get("rejected") or {}
                    prev = self.device_rejected.get(d, {})
                    diff = {x: v - prev.get(x, 0) for x, v in rej.items() if v > prev.get(x, 0)}
                    if diff:
                        events.append(self._event(r, d, "frame_rejected", f"device {d} rejected frames: {diff}"))
                    if rej:
                        self.device_rejected[d] = dict(rej)
                rej = rep.get("rejected") or {}
                prev = self.la_rejected.get(c, {})
                diff = {x: v - prev.get(x, 0) for x, v in rej.items() if v > prev.get(x, 0)}
                if diff:
                    events.append(
                        self._event(r, None, "frame_rejected", f"local aggregator {c} rejected frames: {diff}")
                    )
                self.la_rejected[c] = dict(rej)
        for d in taking:
            c = int(sim.assign[d])
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
        mr = modelled_costs(
            plan,
            n,
            sim.assign,
            sim.compute_s,
            exp.fleet.power,
            got_model,
            done,
            set(reporting),
            k,
            taking_mask,
            extra_down,
        )
        # the global aggregate, as the engine: sample-weighted mean of the decoded cluster updates
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
        if a.downlink_encoding != "float32":
            new_global = roundtrip_torch(new_global[None], a.downlink_encoding, tensor_sizes=exp.model.tensor_sizes)[0]
        # evaluation: the global model, and every reporting cluster's model (what its devices hold)
        acc = loss = gacc = None
        dev_acc = np.full(n, np.nan)
        if r % spec.evaluation.every == 0 or r == spec.rounds:
            acc, loss = accuracy_and_loss(exp.module, exp.layout, new_global, sim.x_test, sim.y_test)
            gacc = acc
            if k > 1 and reporting:
                ca, _ = evaluate_many(
                    exp.module, exp.layout, torch.stack([cluster_models[c] for c in reporting]), sim.x_test, sim.y_test
                )
                by_c = dict(zip(reporting, ca.numpy().tolist()))
                for d in taking:
                    if int(sim.assign[d]) in by_c:
                        dev_acc[d] = by_c[int(sim.assign[d])]
            else:
                dev_acc[[d for d in taking if int(sim.assign[d]) in reporting]] = gacc
        ev = dev_acc[~np.isnan(dev_acc)]
        w = torch.stack([cluster_models[c] for c in reporting]).to(torch.float64) if reporting else None
        consensus = float((w - w.mean(0, keepdim=True)).norm(dim=1).mean()) if w is not None else None
        participants = np.array(sorted(set().union(*done)), dtype=np.int64)
        ledger = [
            row
            for row in H.round_ledger(sim.assign, sim.client_costs, sim.agg_costs, sim.model_mb, L, participants)
            if row["level"] != "la-ga" or int(row["src"].split()[1]) in reporting
        ]
        for row in ledger:
            row["round"] = r
            row["bytes"] = int(round(row.pop("mb") * H.MB))
        cost = float(sum(row["cost"] for row in ledger))
        la_up_b = sum(int(self.coord.update_bytes.get(aggregator_id(c), 0)) for c in reporting)
        la_down_b = sum(rs.model_bytes.values())
        self.la_ga_bytes += la_up_b + la_down_b
        messages = int(recv.sum() + sent.sum()) + len(rs.model_bytes) + len(reporting)
        rm = {
            "round": r,
            "acc_mean": float(ev.mean()) if ev.size else None,
            "acc_min": float(ev.min()) if ev.size else None,
            "acc_max": float(ev.max()) if ev.size else None,
            "acc_std": float(ev.std()) if ev.size else None,
            "loss_mean": loss,
            "consensus_distance": consensus,
            "global_accuracy": gacc,
            "components": len(reporting),
            "messages": messages,
        }
        device_rows, metric_rows = [], []
        for d in taking:
            self.local_rounds[d] += sent[d]
            device_rows.append(
                {
                    "round": r,
                    "device": d,
                    "status": status[d],
                    "num_samples": int(sim.n_train[d]),
                    "compute_s": float(mr.compute_s[d]),
                    "up_s": float(mr.up_s[d]),
                    "down_s": float(mr.down_s[d]),
                    "bytes_up": int(b_up[d]),
                    "bytes_down": int(b_down[d]),
                    "packets_lost": int(mr.lost[d]),
                    "energy_j": float(mr.energy_j[d]),
                    "train_loss": None if np.isnan(losses[d]) else float(losses[d]),
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
                    "lr": float(a.lr),
                    "local_rounds": int(self.local_rounds[d]),
                    "messages_sent": int(sent[d]),
                    "messages_received": int(recv[d]),
                    "airtime_s": float(mr.up_s[d] + mr.down_s[d]),
                }
            )
        for dev, detail in self.coord.reject_events:
            events.append(self._event(r, dev, "frame_rejected", f"global coordinator: {detail}"))
        self.coord.reject_events = []
        bytes_up = int(b_up.sum()) + (la_up_b if k > 1 else 0)
        bytes_down = int(b_down.sum()) + (la_down_b if k > 1 else 0)
        finite = losses[~np.isnan(losses)]
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
        )
        row = {
            "round": r,
            "sim_time_s": new.sim_time_s,
            "duration_s": round_s,
            "selected": len(taking),
            "completed": sum(1 for d in taking if status[d] == "ok"),
            "dropped": len(victims),
            "stragglers": 0,
            "train_loss": float(finite.mean()) if finite.size else None,
            "test_accuracy": acc,
            "test_loss": loss,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "energy_j": float(mr.energy_j.sum()),
            "wall_time_s": round_s,
        }
        self.final_models = {
            "global": new_global.numpy().copy(),
            **{f"la{c}": m.numpy().copy() for c, m in cluster_models.items()},
        }
        dfl_store.write_round(
            self.store, self.run_id, row, device_rows, events, self._checkpoint(new), rm, metric_rows, ledger
        )
        self.rs = None
        return new
