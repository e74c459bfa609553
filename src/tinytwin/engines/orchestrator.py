"""The adaptive orchestrator of a hierarchical run (seed 004 §2; reference §5).

At the start of a round in which devices join or leave, it recomputes the cluster
configuration over the devices that are online with the spec's strategy, applies it and
charges ``C_change`` (moved or new clients download the model from their new parent). With
RVA, a configuration that affords fewer rounds of the budget than the current one is
validated: after W rounds the two accuracy curves are fitted and the original configuration
is restored (charging the change back) when it is predicted higher at the round the budget
would run out. Once the spent cost reaches the budget, training stops.

A device outside the configuration (``assign == -1``: not yet joined, or a joiner dropped
by a revert) takes no part. The orchestrator's state is plain data in the run's checkpoint,
so a resumed run makes the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinytwin.algorithms import hierarchical as H
from tinytwin.algorithms.rva import (
    Decision,
    LogFit,
    fit_log,
    should_validate,
    should_validate_for_target,
    target_decision,
    validation_decision,
)
from tinytwin.spec.orchestration import OrchestrationSpec

NOT_CONFIGURED = -1


@dataclass
class OrchestratorState:
    assign: np.ndarray  # cluster of every device, NOT_CONFIGURED outside the configuration
    stopped_round: int | None = None  # the round after which the budget was spent
    pending: dict[str, Any] | None = None  # an RVA validation under way
    decisions: list[dict[str, Any]] = field(default_factory=list)


class Orchestrator:
    """Decisions over ``OrchestratorState``; costs from the hierarchical cost model (``H``)."""

    def __init__(
        self,
        spec: OrchestrationSpec,
        client_costs: np.ndarray,
        agg_costs: np.ndarray,
        model_mb: float,
        local_rounds: int,
    ) -> None:
        self.spec = spec
        self.base_cc, self.cc, self.ac = client_costs, client_costs, agg_costs
        self.model_mb, self.local_rounds = model_mb, local_rounds
        self.k = client_costs.shape[1]

    # ---- configurations and their costs ----------------------------------------------
    def configure(self, present: np.ndarray) -> np.ndarray:
        """The strategy's configuration of the ``present`` devices (the others NOT_CONFIGURED)."""
        ids = np.flatnonzero(present)
        assign = np.full(present.size, NOT_CONFIGURED, dtype=np.int64)
        if self.spec.strategy == "min_comm_cost":
            assign[ids] = H.min_comm_cost(self.cc[ids], self.ac)
        else:
            assign[ids] = H.balanced_assignment(ids.size, self.k)
        return assign

    def round_cost(self, assign: np.ndarray, online: np.ndarray) -> float:
        """``C_round`` of ``assign`` with the clients that would take part (online and configured)."""
        ids = np.flatnonzero(online & (assign != NOT_CONFIGURED))
        rows = H.round_ledger(assign, self.cc, self.ac, self.model_mb, self.local_rounds, ids)
        return float(sum(r["cost"] for r in rows))

    def change_cost(self, old: np.ndarray, new: np.ndarray, online: np.ndarray) -> float:
        """``C_change``: online clients of ``new`` that are new to the configuration or moved."""
        ids = np.flatnonzero(online & (new != NOT_CONFIGURED))
        return H.change_cost(old[ids], new[ids], self.cc[ids], self.model_mb, present_before=old[ids] != NOT_CONFIGURED)

    def costs_at(self, r: int) -> np.ndarray:
        """The clients' link costs in round ``r``: the spec's, with every cost change up to ``r``."""
        cc = self.base_cc
        for ch in self.spec.cost_changes:
            if ch.round <= r:
                cc = cc.copy() if cc is self.base_cc else cc
                cc[ch.device] = ch.client_costs
        return cc

    # ---- the round hooks ------------------------------------------------------------------
    def before_round(
        self, st: OrchestratorState, r: int, changed: bool, online: np.ndarray, accuracies: list, spent: float
    ) -> tuple[list[dict[str, Any]], float]:
        """Reconfigure on a join, a leave or a link-cost change; the events to record and the change cost."""
        self.cc = self.costs_at(r)
        moved = [ch for ch in self.spec.cost_changes if ch.round == r]
        if not changed and not moved:
            return [], 0.0
        old = st.assign
        new = self.configure(online)
        c_change = self.change_cost(old, new, online)
        c_old, c_new = self.round_cost(old, online), self.round_cost(new, online)
        st.assign = new
        detail = {
            "old": _clusters(old, self.k),
            "new": _clusters(new, self.k),
            "change_cost": c_change,
            "round_cost_old": c_old,
            "round_cost_new": c_new,
        }
        events = [_cost_event(r, ch.device, ch.client_costs) for ch in moved] + [_event(r, "reconfigure", detail)]
        if st.pending is not None:  # a newer event supersedes the validation under way
            events.append(_event(r, "rva_cancelled", {"since": st.pending["t_change"]}))
            st.pending = None
        if self.spec.rva.enabled and accuracies:
            f_old = fit_log([t for t, _ in accuracies], [a for _, a in accuracies])
            if self._worth_validating(f_old, r, spent, c_old, c_new, c_change):
                until = r + self.spec.rva.window - 1
                st.pending = {"t_change": r, "old_assign": old, "f_old": [f_old.a, f_old.b], "eval_round": until}
                events.append(_event(r, "rva_validating", {"until_round": until, "f_old": [f_old.a, f_old.b]}))
        return events, c_change

    def _worth_validating(
        self, f_old: LogFit, r: int, spent: float, c_old: float, c_new: float, c_change: float
    ) -> bool:
        """RVA validates a configuration that affords fewer rounds (budget) or costs more to the target."""
        if self.spec.budget is not None:
            return should_validate(self.spec.budget - spent, c_old, c_new, c_change)
        assert self.spec.target_accuracy is not None
        return should_validate_for_target(f_old, r, self.spec.target_accuracy, c_old, c_new, c_change)

    def _decide(
        self, f_old: LogFit, f_new: LogFit, r: int, spent: float, back: float, c_old: float, c_new: float
    ) -> Decision:
        if self.spec.budget is not None:
            return validation_decision(f_old, f_new, r, self.spec.budget - spent, back, c_old, c_new)
        assert self.spec.target_accuracy is not None
        return target_decision(f_old, f_new, r, self.spec.target_accuracy, back, c_old, c_new)

    def after_round(
        self, st: OrchestratorState, r: int, online: np.ndarray, accuracies: list, spent: float, energy_j: float
    ) -> tuple[list[dict[str, Any]], float]:
        """RVA's decision at the end of the window, then the objectives' stops; events and revert cost."""
        events: list[dict[str, Any]] = []
        c_back = 0.0
        p = st.pending
        if p is not None and r >= p["eval_round"]:
            window = [(t, a) for t, a in accuracies if t >= p["t_change"]]
            f_old, f_new = LogFit(*p["f_old"]), fit_log([t for t, _ in window], [a for _, a in window])
            old = p["old_assign"]
            back = self.change_cost(st.assign, old, online)
            d = self._decide(
                f_old, f_new, r, spent, back, self.round_cost(old, online), self.round_cost(st.assign, online)
            )
            decision = {
                "round": r,
                "decision": "revert" if d.revert else "keep",
                "f_old": [f_old.a, f_old.b],
                "f_new": [f_new.a, f_new.b],
                "budget_round_old": d.round_old,
                "budget_round_new": d.round_new,
                "predicted_old": d.predicted_old,
                "predicted_new": d.predicted_new,
                "revert_cost": back if d.revert else 0.0,
            }
            st.decisions.append(decision)
            events.append(_event(r, f"rva_{decision['decision']}", decision))
            if d.revert:
                st.assign, c_back = old, back
            st.pending = None
        events += self._stops(st, r, accuracies, spent + c_back, energy_j)
        return events, c_back

    def _stops(self, st: OrchestratorState, r: int, accuracies: list, spent: float, energy_j: float) -> list:
        """The objectives' stops after round ``r``: budget spent, target reached, energy spent."""
        o = self.spec
        reasons = []
        if o.budget is not None and spent >= o.budget:
            reasons.append(_event(r, "budget_spent", {"spent": spent, "budget": o.budget}))
        reached = bool(accuracies) and accuracies[-1][0] == r and accuracies[-1][1] >= (o.target_accuracy or 2.0)
        if reached:
            reasons.append(_event(r, "target_reached", {"accuracy": accuracies[-1][1], "spent": spent}))
        if o.energy_budget_j is not None and energy_j >= o.energy_budget_j:
            reasons.append(_event(r, "energy_spent", {"energy_j": energy_j, "budget_j": o.energy_budget_j}))
        if reasons:
            st.stopped_round = r
        return reasons


def _clusters(assign: np.ndarray, k: int) -> list[list[int]]:
    return [np.flatnonzero(assign == c).tolist() for c in range(k)]


def _event(r: int, kind: str, detail: dict[str, Any]) -> dict[str, Any]:
    import json

    return {"round": r, "device": None, "kind": kind, "detail": json.dumps(detail, default=float)}


def _cost_event(r: int, device: int, costs: list[float]) -> dict[str, Any]:
    return {"round": r, "device": device, "kind": "cost_change", "detail": f"device {device}: link costs now {costs}"}
