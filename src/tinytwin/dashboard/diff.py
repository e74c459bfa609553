"""Twins side by side: per-round differences of several runs against the first one.

The twins of one experiment should agree; where they do not, the round where they part is
the finding. So the table lines rounds up by round number and gives, for every other run,
its difference to the first (the reference) in accuracy, simulated time, bytes and energy —
cumulative, because that is what a budget is spent against.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any

MAX_ROWS = 2_000


def _cumulative(values: list[Any]) -> list[float]:
    return list(accumulate((v or 0) for v in values))


def _by_round(rounds: dict[str, list[Any]]) -> dict[int, dict[str, Any]]:
    bytes_cum = _cumulative([(u or 0) + (d or 0) for u, d in zip(rounds["bytes_up"], rounds["bytes_down"])])
    energy_cum = _cumulative(rounds["energy_j"])
    return {
        r: {"acc": a, "sim_time_s": t, "bytes": b, "energy_j": e}
        for r, a, t, b, e in zip(rounds["round"], rounds["test_accuracy"], rounds["sim_time_s"], bytes_cum, energy_cum)
    }


def _delta(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else b - a


def round_differences(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows ``{round, acc: [...], d_acc: [...], d_sim_time_s: [...], d_bytes: [...], d_energy_j: [...]}``.

    ``runs`` is a list of ``{"label", "rounds"}`` (rounds column-wise, as :meth:`RunDB.rounds`
    returns them). Every ``d_*`` list has one entry per run after the first.
    """
    tables = [_by_round(r["rounds"]) for r in runs]
    all_rounds = sorted(set().union(*[t.keys() for t in tables])) if tables else []
    rows = []
    for rnd in all_rounds[:MAX_ROWS]:
        cells = [t.get(rnd, {}) for t in tables]
        ref = cells[0]
        rows.append(
            {
                "round": rnd,
                "acc": [c.get("acc") for c in cells],
                **{
                    f"d_{k}": [_delta(ref.get(k), c.get(k)) for c in cells[1:]]
                    for k in ("acc", "sim_time_s", "bytes", "energy_j")
                },
            }
        )
    return {"labels": [r["label"] for r in runs], "rows": rows, "truncated": len(all_rounds) > MAX_ROWS}
