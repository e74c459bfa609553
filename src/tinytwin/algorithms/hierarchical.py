"""Hierarchical FL: clients under local aggregators (LAs) under a global aggregator (GA).

Cluster assignment and the communication-cost ledger of Čilić et al. (RVA, AIoTwin
fl-orchestrator branch ``icmlcn``; reference/algorithms.md §5.1–5.2; seed 004 §2).

Costs are abstract units per megabyte of a link: ``c(client, LA)`` for every client and
LA (a ``(D, K)`` matrix) and ``c(LA, GA)`` for every LA (``(K,)``); ``M`` is the model
message size in MB (10⁶ bytes).

- **Per-global-round cost** (uplink only, one model per link per aggregation):
  ``C_round = Σ_LA c(LA, GA)·M + Σ_clients L·c(client, parent)·M`` with ``L`` local
  rounds (``L = 0`` counts as 1). Flat FL (one aggregator) has no LA term: clients
  report to the GA directly (:func:`round_cost`).
- **Reconfiguration cost** (old → new assignment): ``Σ`` over clients that are new or
  changed parent of ``c(client, new parent)/2 · M`` (:func:`change_cost`).
- **minCommCost**: cluster sizes as balanced as possible (the first ``N mod K`` clusters
  get one extra client), then the assignment with those sizes that minimises
  ``Σ_LA c(LA, GA)·M + Σ_clients c(client, LA)·M``. The orchestrator enumerates every
  assignment (:func:`min_comm_cost_exhaustive`, kept as the executable definition); the
  engine solves the same problem exactly as a linear assignment of clients to LA slots
  (:func:`min_comm_cost`, polynomial), which a test holds equal to the enumeration.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "balanced_assignment",
    "balanced_sizes",
    "change_cost",
    "min_comm_cost",
    "min_comm_cost_exhaustive",
    "objective",
    "round_cost",
    "round_ledger",
]

MB = 1e6


def balanced_sizes(num_clients: int, num_clusters: int) -> np.ndarray:
    """Cluster sizes as equal as possible; the first ``N mod K`` clusters get one extra."""
    base, extra = divmod(num_clients, num_clusters)
    return np.full(num_clusters, base, dtype=np.int64) + (np.arange(num_clusters) < extra)


def balanced_assignment(num_clients: int, num_clusters: int) -> np.ndarray:
    """Contiguous blocks of device ids with :func:`balanced_sizes` (device order)."""
    return np.repeat(np.arange(num_clusters), balanced_sizes(num_clients, num_clusters))


def objective(
    assign: np.ndarray, client_costs: np.ndarray, aggregator_costs: np.ndarray, model_mb: float = 1.0
) -> float:
    """minCommCost's objective ``Σ_LA c(LA, GA)·M + Σ_clients c(client, LA)·M`` (LAs with clients)."""
    used = np.unique(assign)
    return float(model_mb * (aggregator_costs[used].sum() + client_costs[np.arange(assign.size), assign].sum()))


def _assignments(sizes: np.ndarray, n: int) -> Iterator[np.ndarray]:
    """Every assignment of n clients to clusters with exactly ``sizes`` members (recursive)."""
    assign = np.zeros(n, dtype=np.int64)
    left = sizes.copy()

    def rec(i: int) -> Iterator[np.ndarray]:
        if i == n:
            yield assign.copy()
            return
        for k in range(left.size):
            if left[k]:
                left[k] -= 1
                assign[i] = k
                yield from rec(i + 1)
                left[k] += 1

    yield from rec(0)


def min_comm_cost_exhaustive(client_costs: np.ndarray, aggregator_costs: np.ndarray) -> np.ndarray:
    """minCommCost by enumerating every balanced assignment (first minimum in enumeration order)."""
    c = np.asarray(client_costs, dtype=np.float64)
    n, k = c.shape
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    best, best_cost = None, np.inf
    for a in _assignments(balanced_sizes(n, k), n):
        cost = objective(a, c, np.asarray(aggregator_costs, dtype=np.float64))
        if cost < best_cost - 1e-12:
            best, best_cost = a, cost
    assert best is not None
    return best


def min_comm_cost(client_costs: np.ndarray, aggregator_costs: np.ndarray) -> np.ndarray:
    """minCommCost solved exactly as a linear assignment of clients to the LAs' slots."""
    c = np.asarray(client_costs, dtype=np.float64)
    n, k = c.shape
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    slot_of = np.repeat(np.arange(k), balanced_sizes(n, k))  # one column per slot
    rows, cols = linear_sum_assignment(c[:, slot_of])
    assign = np.empty(n, dtype=np.int64)
    assign[rows] = slot_of[cols]
    return assign


def round_cost(
    assign: np.ndarray, client_costs: np.ndarray, aggregator_costs: np.ndarray, model_mb: float, local_rounds: int
) -> float:
    """``C_round`` of one global round (flat FL when there is one aggregator)."""
    return float(sum(r["cost"] for r in round_ledger(assign, client_costs, aggregator_costs, model_mb, local_rounds)))


def round_ledger(
    assign: np.ndarray,
    client_costs: np.ndarray,
    aggregator_costs: np.ndarray,
    model_mb: float,
    local_rounds: int,
    clients: np.ndarray | None = None,
) -> list[dict]:
    """The ledger rows of one global round: one per client link and one per LA link.

    ``clients`` restricts the client rows to the devices that took part (default: all)."""
    L = max(1, int(local_rounds))
    k = int(np.asarray(client_costs).shape[1])
    ids = np.arange(assign.size) if clients is None else np.asarray(clients, dtype=np.int64)
    flat = k <= 1
    rows = []
    for d in ids:
        c = int(assign[d])
        rows.append(
            {
                "level": "client-ga" if flat else "client-la",
                "src": f"device {int(d)}",
                "dst": "ga" if flat else f"la {c}",
                "mb": L * model_mb,
                "cost": L * float(client_costs[d][c]) * model_mb,
            }
        )
    if not flat:
        for c in np.unique(assign[ids]):
            rows.append(
                {
                    "level": "la-ga",
                    "src": f"la {int(c)}",
                    "dst": "ga",
                    "mb": model_mb,
                    "cost": float(aggregator_costs[c]) * model_mb,
                }
            )
    return rows


def change_cost(
    old: np.ndarray | None,
    new: np.ndarray,
    client_costs: np.ndarray,
    model_mb: float,
    present_before: np.ndarray | None = None,
) -> float:
    """``Σ c(client, new parent)/2 · M`` over clients that are new or changed parent."""
    new = np.asarray(new)
    changed = np.ones(new.size, dtype=bool) if old is None else (np.asarray(old) != new)
    if present_before is not None:
        changed |= ~present_before
    idx = np.flatnonzero(changed)
    return float(sum(client_costs[d][new[d]] / 2.0 * model_mb for d in idx))
