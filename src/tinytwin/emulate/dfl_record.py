"""How a decentralized emulation records a round: the devices' reports merged with the cost
model's figures (times, bytes, energy), the survivors' models evaluated with the simulator's
functions, one transaction with the round's checkpoint.

A mixin of :class:`tinytwin.emulate.dfl_coordinator.DflEmulation` (its state lives there)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from tinytwin.emulate.dfl_directory import RoundPlan
from tinytwin.emulate.skeleton import firmware_metrics
from tinytwin.engines.decentralized import round_metric_rows
from tinytwin.engines.evaluate_many import evaluate_many
from tinytwin.fleet.cost import energy_joules
from tinytwin.net.topology import components
from tinytwin.store import dfl as dfl_store


class DflRecording:
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
        exp = self.exp
        n = self.n
        reported = np.array(sorted(d for d in self.coord.metrics if d not in self.killed), dtype=np.int64)
        with_model = np.array([d for d in reported if int(d) in self.coord.updates], dtype=np.int64)
        met = {int(d): self.coord.metrics[int(d)] for d in reported}
        losses = np.full(n, np.nan)
        tx_s, rx_s = np.zeros(n), np.zeros(n)
        sent_b, recv_b, lost = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        n_sent, n_recv = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        compute_wall = np.zeros(n)
        for d, m in met.items():
            losses[d] = m.get("train_loss", np.nan)
            compute_wall[d] = float(m.get("compute_s", 0.0))
            self.local_rounds[d] = int(m.get("local_rounds", self.local_rounds[d]))
            for dst, nbytes, link_s, lost_p, ok in m.get("sent", []):
                if not ok:
                    continue
                tx_s[d] += link_s
                rx_s[int(dst)] += link_s
                sent_b[d] += int(nbytes)
                lost[d] += int(lost_p)
                n_sent[d] += 1
            for _, nbytes in m.get("received", []):
                recv_b[d] += int(nbytes)
                n_recv[d] += 1
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
        if reported.size:
            self.lr_sched.on_round_end(reported, self.local_rounds[reported], losses[reported])
        # modelled busy time and energy of the round (cost model: compute + radio, sync round)
        compute_model = np.where(np.isin(np.arange(n), reported), self.compute_s, 0.0)
        busy = compute_model + tx_s + rx_s
        round_model_s = float(busy[taking].max()) if taking.any() else 0.0
        energy = energy_joules(exp.fleet.power, compute_model, tx_s, rx_s, round_model_s, taking)
        self.energy += energy
        # evaluation and consensus of the survivors' models (the simulator's functions); the
        # models come in evaluation rounds only, so the consensus distance is recorded then
        acc, tloss, dist = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        consensus = None
        if with_model.size:
            w = torch.from_numpy(np.stack([self.coord.updates[int(d)] for d in with_model]))
            a_, l_ = evaluate_many(exp.module, exp.layout, w, self.x_test, self.y_test)
            acc[with_model], tloss[with_model] = a_.numpy(), l_.numpy()
            w64 = w.to(torch.float64)
            dd = (w64 - w64.mean(dim=0, keepdim=True)).norm(dim=1).numpy()
            dist[with_model] = dd
            consensus = float(dd.mean())
            for i, d in enumerate(with_model):
                self.models[int(d)] = w[i].numpy()
        survivors = np.zeros(n, dtype=bool)
        survivors[reported] = True
        e = plan.edges
        n_comp, _ = components(n, e[survivors[e[:, 0]] & survivors[e[:, 1]]], survivors)
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
            compute_s=compute_wall,
            tx_s=tx_s,
            rx_s=rx_s,
            sent_b=sent_b,
            recv_b=recv_b,
            lost=lost,
            energy=energy,
            losses=losses,
            acc=acc,
            test_loss=tloss,
            dist=dist,
            lr=self.lr_sched.lr,
            local_rounds=self.local_rounds,
            n_sent=n_sent,
            n_recv=n_recv,
            consensus=consensus,
            components=n_comp,
            messages=int(n_sent.sum()),
        )
        mean_acc = rm["acc_mean"]
        finite = losses[~np.isnan(losses)]
        st["round"] = r
        st["sim_time_s"] = st.get("sim_time_s", 0.0) + round_model_s  # the cost model's clock
        st["bytes_up"] += int(sent_b.sum())
        st["bytes_down"] += int(recv_b.sum())
        st["messages"] += int(n_sent.sum())
        st["planned_messages"] += plan.messages
        if mean_acc is not None:
            st["accuracies"].append((r, mean_acc))
        st["round_walls"].append(round_s)
        st["last_metrics"] = rm
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
