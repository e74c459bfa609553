"""How a decentralized emulation records a round: the devices' reports merged with the cost
model's figures (times, bytes, energy), the survivors' models evaluated with the simulator's
functions, one transaction with the round's checkpoint.

A concern of :class:`tinytwin.emulate.dfl_coordinator.DflEmulation`; the state it reads and
writes is typed once, in :class:`tinytwin.emulate.dfl_state.DflState`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tinytwin.algorithms.mixing import distances_to_mean
from tinytwin.emulate.dfl_directory import RoundPlan
from tinytwin.emulate.dfl_resume import DflResume
from tinytwin.emulate.skeleton import firmware_metrics
from tinytwin.engines.decentralized import round_metric_rows
from tinytwin.engines.evaluate_many import evaluate_many
from tinytwin.fleet.cost import energy_joules
from tinytwin.net.topology import components
from tinytwin.store import dfl as dfl_store


def _components(n: int, edges: np.ndarray, reported: np.ndarray) -> int:
    """Connected components of the graph of the devices that reported, over the round's links."""
    survivors = np.zeros(n, dtype=bool)
    survivors[reported] = True
    n_comp, _ = components(n, edges[survivors[edges[:, 0]] & survivors[edges[:, 1]]], survivors)
    return int(n_comp)


def _advance(
    st: dict[str, Any], r: int, t: Tally, planned: int, rm: dict[str, Any], round_model_s: float, round_s: float
) -> None:
    """The run's totals (``st``) after round ``r``."""
    st["round"] = r
    st["sim_time_s"] = st.get("sim_time_s", 0.0) + round_model_s  # the cost model's clock
    st["bytes_up"] += int(t.sent_b.sum())
    st["bytes_down"] += int(t.recv_b.sum())
    st["messages"] += int(t.n_sent.sum())
    st["planned_messages"] += planned
    if rm["acc_mean"] is not None:
        st["accuracies"].append((r, rm["acc_mean"]))
    st["round_walls"].append(round_s)
    st["last_metrics"] = rm


@dataclass
class Tally:
    """The devices' reports of one round summed per device (links, bytes, messages, losses)."""

    losses: np.ndarray
    tx_s: np.ndarray
    rx_s: np.ndarray
    compute_wall: np.ndarray
    sent_b: np.ndarray
    recv_b: np.ndarray
    lost: np.ndarray
    n_sent: np.ndarray
    n_recv: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> Tally:
        i64 = [np.zeros(n, dtype=np.int64) for _ in range(5)]
        return cls(np.full(n, np.nan), np.zeros(n), np.zeros(n), np.zeros(n), *i64)


class DflRecording(DflResume):
    """Methods of :class:`~tinytwin.emulate.dfl_coordinator.DflEmulation`: How a decentralized emulation records a round: the devices' reports merged with the cost"""

    def _record(
        self,
        r: int,
        st: dict[str, Any],
        plan: RoundPlan,
        taking: np.ndarray,
        victims: list[int],
        events: list[dict[str, Any]],
        wall0: float,
    ) -> None:
        n = self.n
        reported = np.array(sorted(d for d in self.coord.metrics if d not in self.killed), dtype=np.int64)
        with_model = np.array([d for d in reported if int(d) in self.coord.updates], dtype=np.int64)
        met = {int(d): self.coord.metrics[int(d)] for d in reported}
        t = self._tally(r, met, st, events)
        losses, tx_s, rx_s, sent_b, recv_b, n_sent = t.losses, t.tx_s, t.rx_s, t.sent_b, t.recv_b, t.n_sent
        if reported.size:
            self.lr_sched.on_round_end(reported, self.local_rounds[reported], losses[reported])
        round_model_s, energy = self._modelled(t, reported, taking)
        # evaluation and consensus of the survivors' models (the simulator's functions); the
        # models come in evaluation rounds only, so the consensus distance is recorded then
        acc, tloss, dist, consensus = self._evaluate(with_model)
        n_comp = _components(n, plan.edges, reported)
        round_s = time.perf_counter() - wall0

        def status(d: int) -> str:
            if met.get(d) is not None:
                return "ok"
            return "dropped" if d in self.killed else self.dead.get(d, "timeout").split(" ")[0]

        device_rows, metric_rows, rm = round_metric_rows(
            r,
            map(int, np.flatnonzero(taking)),
            status,
            n_train=self.n_train,
            compute_s=t.compute_wall,
            tx_s=tx_s,
            rx_s=rx_s,
            sent_b=sent_b,
            recv_b=recv_b,
            lost=t.lost,
            energy=energy,
            losses=losses,
            acc=acc,
            test_loss=tloss,
            dist=dist,
            lr=self.lr_sched.lr,
            local_rounds=self.local_rounds,
            n_sent=n_sent,
            n_recv=t.n_recv,
            consensus=consensus,
            components=n_comp,
            messages=int(n_sent.sum()),
        )
        mean_acc = rm["acc_mean"]
        finite = losses[~np.isnan(losses)]
        _advance(st, r, t, plan.messages, rm, round_model_s, round_s)
        row = {
            "round": r,
            "sim_time_s": st["sim_time_s"],
            "duration_s": round_s,
            "selected": int(taking.sum()),
            "completed": int(reported.size),
            "dropped": len(victims),
            "stragglers": 0,
            "train_loss": float(finite.mean()) if finite.size else None,
            "test_accuracy": mean_acc,
            "test_loss": rm["loss_mean"],
            "bytes_up": int(sent_b.sum()),
            "bytes_down": int(recv_b.sum()),
            "energy_j": float(energy.sum()),
            "wall_time_s": round_s,
        }
        dfl_store.write_round(
            self.store, self.run_id, row, device_rows, events, self._checkpoint(st, row), rm, metric_rows
        )

    def _tally(self, r: int, met: dict[int, dict[str, Any]], st: dict[str, Any], events: list[dict[str, Any]]) -> Tally:
        """Sum the round's METRICS per device; update the run's counters (local rounds, merge
        timeouts, Gist merges, firmware figures) and note newly rejected frames as events."""
        t = Tally.zeros(self.n)
        for d, m in met.items():
            t.losses[d] = m.get("train_loss", np.nan)
            t.compute_wall[d] = float(m.get("compute_s", 0.0))
            self.local_rounds[d] = int(m.get("local_rounds", self.local_rounds[d]))
            for dst, nbytes, link_s, lost_p, ok in m.get("sent", []):
                if not ok:
                    continue
                t.tx_s[d] += link_s
                t.rx_s[int(dst)] += link_s
                t.sent_b[d] += int(nbytes)
                t.lost[d] += int(lost_p)
                t.n_sent[d] += 1
            for _, nbytes in m.get("received", []):
                t.recv_b[d] += int(nbytes)
                t.n_recv[d] += 1
            self.merge_timeouts += len(m.get("timeouts", []))
            self.gist_merges += int(bool(m.get("gist_merged")))
            firmware_metrics({d: m}, self.qemu_mem, self.fw_rounds)  # firmware devices: QEMU, insns
            if "merge_insns" in m:
                self.fw_merge_insns.append(int(m["merge_insns"]))
            prev = st["device_rejected"].get(d, {})  # the device reports running totals
            diff = {k: v - prev.get(k, 0) for k, v in m.get("rejected", {}).items() if v > prev.get(k, 0)}
            if diff:
                events.append(self._event(r, d, "frame_rejected", f"device {d} rejected frames: {diff}"))
            st["device_rejected"][d] = dict(m.get("rejected", {}))
        return t

    def _modelled(self, t: Tally, reported: np.ndarray, taking: np.ndarray) -> tuple[float, np.ndarray]:
        """The round's modelled time and each device's energy (cost model: compute + radio, a
        sync round); the energy is added to the run's."""
        compute_model = np.where(np.isin(np.arange(self.n), reported), self.compute_s, 0.0)
        busy = compute_model + t.tx_s + t.rx_s
        round_model_s = float(busy[taking].max()) if taking.any() else 0.0
        energy = energy_joules(self.exp.fleet.power, compute_model, t.tx_s, t.rx_s, round_model_s, taking)
        self.energy += energy
        return round_model_s, energy

    def _evaluate(self, with_model: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
        """Accuracy, test loss and distance to the mean of the reported models (the simulator's
        functions), the consensus distance; the models are kept as each device's last."""
        n, exp = self.n, self.exp
        acc, tloss, dist = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        if not with_model.size:
            return acc, tloss, dist, None
        w = torch.from_numpy(np.stack([self.coord.updates[int(d)] for d in with_model]))
        a_, l_ = evaluate_many(exp.module, exp.layout, w, self.x_test, self.y_test)
        acc[with_model], tloss[with_model] = a_.numpy(), l_.numpy()
        dd = distances_to_mean(w)
        dist[with_model] = dd
        for i, d in enumerate(with_model):
            self.models[int(d)] = w[i].numpy()
        return acc, tloss, dist, float(dd.mean())
