"""Plots of an orchestrated hierarchical run (seed 004 §2, its Figures 3–4 and 11–21).

From the results database alone: the spent cost against the budget with the reconfigurations
and the stop marked, and for every RVA decision the two fitted curves ``a + b·ln r`` (the
original configuration's, fitted before the change; the new one's, fitted in the window) with
their predicted accuracies at the rounds each would exhaust the budget. Cost per round by level,
with the change-cost spike, is the ledger plot of :mod:`tinytwin.report.dfl`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tinytwin.report.plot_style import PALETTE, new_axes, save
from tinytwin.store import dfl as dfl_store
from tinytwin.store.db import RunStore

BUDGET = "Spent communication cost against the budget; dotted lines: reconfigurations, dashed: RVA decisions."
RVA = (
    "RVA's decision: test accuracy per round, the original configuration's fitted curve a + b·ln r (before the change), "
    "the new one's (fitted in the validation window), and each curve's predicted accuracy at the round its "
    "configuration would exhaust the budget."
)


def orchestration_plots(
    store: RunStore, run_id: str, out_dir: Path, label: str, summary: dict[str, Any]
) -> dict[str, Path]:
    """The plots of an orchestrated run (none for a run without orchestration)."""
    orch = summary.get("orchestration")
    if not orch:
        return {}
    events = store.events(run_id)
    rounds = store.rounds(run_id)
    paths = {
        BUDGET: _budget_plot(dfl_store.ledger(store, run_id), events, orch.get("budget"), label, out_dir / "budget.png")
    }
    decisions = [e for e in events if e["kind"] in ("rva_keep", "rva_revert")]
    for i, e in enumerate(decisions, 1):
        since = max(
            (v["round"] for v in events if v["kind"] == "rva_validating" and v["round"] <= e["round"]), default=1
        )
        budget_mode = orch.get("budget") is not None  # else the predictions are costs to the target
        path = rva_plot(rounds, json.loads(e["detail"]), since, budget_mode, label, out_dir / f"rva_{i}.png")
        paths[f"{RVA} Decision {i} of {len(decisions)}."] = path
    return paths


def _budget_plot(
    ledger: list[dict[str, Any]], events: list[dict[str, Any]], budget: float | None, label: str, path: Path
) -> Path:
    fig, ax = new_axes(f"{label}: total cost", "Round", "Spent cost (link cost × MB)")
    per: dict[int, float] = {}
    for row in ledger:
        per[row["round"]] = per.get(row["round"], 0.0) + row["cost"]
    x = sorted(per)
    ax.plot(x, np.cumsum([per[r] for r in x]), color=PALETTE[0], linewidth=1.8, label="spent")
    if budget is not None:
        ax.axhline(budget, color=PALETTE[3], linewidth=1.2, label="budget")
    for e in events:
        if e["kind"] == "reconfigure":
            ax.axvline(e["round"], color="0.6", linestyle=":", linewidth=1.0)
        elif e["kind"] in ("rva_keep", "rva_revert"):
            ax.axvline(e["round"], color=PALETTE[2], linestyle="--", linewidth=1.0)
    ax.legend(frameon=False)
    return save(fig, path)


def rva_plot(
    rounds: list[dict[str, Any]], d: dict[str, Any], since: int, budget_mode: bool, label: str, path: Path
) -> Path:
    """One RVA decision ``d`` (an ``rva_keep`` / ``rva_revert`` event's detail) over the run's
    accuracies; ``since`` is the first round of the validation window."""
    fig, ax = new_axes(f"{label}: RVA {d['decision']} at round {d['round']}", "Round", "Test accuracy (%)")
    pts = [(r["round"], r["test_accuracy"]) for r in rounds if r["test_accuracy"] is not None]
    ax.plot([r for r, _ in pts], [100 * a for _, a in pts], "o", color="0.55", markersize=3, label="test accuracy")
    for (a, b), start, end, pred, colour, name in (
        (d["f_old"], 1, d["budget_round_old"], d["predicted_old"], PALETTE[0], "original"),
        (d["f_new"], since, d["budget_round_new"], d["predicted_new"], PALETTE[1], "new"),
    ):
        last = max(end if end is not None else d["round"], d["round"])
        r = np.linspace(max(start, 1), last, 200)
        ax.plot(
            r,
            100 * (a + b * np.log(r)),
            color=colour,
            linewidth=1.6,
            label=f"{name}: {a:.3f} {'−' if b < 0 else '+'} {abs(b):.3f}·ln r",
        )
        if budget_mode and end is not None and pred is not None:
            ax.plot([end], [100 * pred], "*", color=colour, markersize=12)
            ax.annotate(
                f"{100 * pred:.1f} % at round {end}",
                (end, 100 * pred),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize=8,
            )
    ax.axvline(d["round"], color=PALETTE[2], linestyle="--", linewidth=1.0)
    ax.legend(frameon=False, fontsize="small")
    return save(fig, path)
