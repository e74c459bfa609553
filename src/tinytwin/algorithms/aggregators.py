"""Aggregation rules: how a server (or an aggregator node) combines K client vectors.

Every twin calls these same functions, so an aggregation rule is defined exactly once.
Inputs are ``(K, P)`` tensors holding one flat parameter (or update) vector per row;
outputs are ``(P,)`` tensors (or, for :func:`krum_select`, row indices). All functions
are pure: they never modify their inputs and keep no state between calls, which is what
lets the simulator batch them and the emulator replay them.

Rows are *what the receiver decoded*, so they must be finite: receivers drop frames whose
payload is not finite (:func:`tinytwin.wire.frame.payload_is_finite`) before aggregating.
A non-finite row reaching an aggregator is a bug, and raises :class:`ValueError`.

Rules (cf. Flower's FedAvg, FedMedian, FedTrimmedAvg and Krum strategies):

- ``fedavg``       :func:`weighted_mean`, weights = local sample counts (McMahan et al. 2017)
- ``median``       :func:`coordinate_median` (Yin et al. 2018)
- ``trimmed_mean`` :func:`trimmed_mean` (Yin et al. 2018)
- ``krum``         :func:`krum` / multi-Krum (Blanchard et al. 2017)

:data:`AGGREGATORS` maps these names to callables with one uniform signature
``aggregate(updates, weights, **params)`` so that experiment files can name a rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from tinytwin.algorithms.aggregators_np import trim_count
from tinytwin.algorithms.norm_bounds import apply_norm_bound

__all__ = [
    "AGGREGATORS",
    "Aggregate",
    "aggregate",
    "aggregate_spec",
    "coordinate_median",
    "get_aggregator",
    "krum",
    "krum_select",
    "trim_count",
    "trimmed_mean",
    "weighted_mean",
]


def _check_updates(updates: Tensor, check_finite: bool = True) -> int:
    """Validate a ``(K, P)`` float matrix of finite rows with K >= 1; return K.

    ``check_finite=False`` skips the element-wise scan (K·P values); callers whose result
    provably turns NaN/Inf whenever an input has one check the (P,) result instead.
    """
    if not isinstance(updates, Tensor) or updates.dim() != 2:
        shape = tuple(updates.shape) if isinstance(updates, Tensor) else type(updates).__name__
        raise ValueError(f"updates must be a (K, P) tensor, got {shape}")
    if not updates.is_floating_point():
        raise ValueError(f"updates must be a floating-point tensor, got {updates.dtype}")
    k = updates.shape[0]
    if k < 1:
        raise ValueError("updates must hold at least one client vector (K >= 1)")
    if check_finite and not bool(torch.isfinite(updates).all()):
        raise ValueError("updates contain NaN or Inf; receivers must drop non-finite payloads first")
    return k


def weighted_mean(updates: Tensor, weights: Tensor) -> Tensor:
    """Sample-weighted mean of the client vectors (FedAvg).

    ``result = sum_k w_k * updates[k] / sum_k w_k``. The weights are normalised first,
    so their scale does not matter (sample counts or fractions give the same result).

    Args:
        updates: ``(K, P)`` client vectors.
        weights: ``(K,)`` non-negative finite weights with a positive sum, usually the
            number of local training samples of each client. Zero weights are allowed
            (that client is ignored).

    Returns:
        ``(P,)`` tensor with the dtype of ``updates``.

    Raises:
        ValueError: on a wrong shape, negative or non-finite weights, or a zero sum.
    """
    k = _check_updates(updates, check_finite=False)
    w = torch.as_tensor(weights, device=updates.device)
    if w.shape != (k,):
        raise ValueError(f"weights must have shape ({k},), got {tuple(w.shape)}")
    w = w.to(updates.dtype)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and non-negative")
    total = w.sum()
    if not bool(total > 0):
        raise ValueError("weights must have a positive sum")
    result = (w / total) @ updates
    # A NaN or Inf in any row reaches the weighted sum (0 * Inf is NaN too), so checking the
    # (P,) result rejects exactly what a scan of all K*P inputs would, K times cheaper.
    if not bool(torch.isfinite(result).all()):
        raise ValueError("updates contain NaN or Inf; receivers must drop non-finite payloads first")
    return result


def coordinate_median(updates: Tensor) -> Tensor:
    """Per-coordinate median of the client vectors (FedMedian).

    For odd K this is the middle value of each coordinate. For **even K it is the mean of
    the two middle values** (the textbook median), unlike :func:`torch.median`, which
    returns the lower one; that makes the result symmetric in the inputs and identical
    to ``numpy.median``.

    Args:
        updates: ``(K, P)`` client vectors.

    Returns:
        ``(P,)`` tensor.
    """
    k = _check_updates(updates)
    ordered = updates.sort(dim=0).values
    if k % 2 == 1:
        return ordered[k // 2].clone()
    return (ordered[k // 2 - 1] + ordered[k // 2]) / 2


def trimmed_mean(updates: Tensor, beta: float) -> Tensor:
    """Coordinate-wise trimmed mean (FedTrimmedAvg).

    For each coordinate independently, drop the ``b = floor(beta * K)`` largest and the
    ``b`` smallest values (see :func:`trim_count`) and average the remaining ``K - 2b``.
    ``beta = 0`` is the plain mean; because ``beta < 0.5`` at least one value remains.

    Args:
        updates: ``(K, P)`` client vectors.
        beta: fraction trimmed at each end, ``0 <= beta < 0.5``.

    Returns:
        ``(P,)`` tensor.

    Raises:
        ValueError: if ``beta`` is outside ``[0, 0.5)``.
    """
    k = _check_updates(updates)
    b = trim_count(k, beta)
    if b == 0:
        return updates.mean(dim=0)
    ordered = updates.sort(dim=0).values
    return ordered[b : k - b].mean(dim=0)


def _pairwise_sq_distances(updates: Tensor) -> Tensor:
    """``(K, K)`` squared Euclidean distances, via the Gram trick.

    ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` cancels catastrophically in float32 when the
    vectors are long and close together (exactly the honest clients Krum must rank), so
    the rows are centred first (distances are translation invariant) and the Gram matrix
    is computed in float64. Negative round-off is clamped to 0.
    """
    centred = (updates - updates.mean(dim=0, keepdim=True)).to(torch.float64)
    gram = centred @ centred.T
    sq_norms = gram.diagonal()
    dist = sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram
    return dist.clamp_min_(0.0)


def krum_select(updates: Tensor, num_byzantine: int, num_selected: int = 1) -> Tensor:
    """Indices chosen by Krum / multi-Krum (Blanchard et al. 2017).

    With K clients of which at most ``f = num_byzantine`` are Byzantine, each client i
    gets the score ``s_i = sum of the squared distances from updates[i] to its K - f - 2
    nearest other vectors``. Krum selects the client with the lowest score; multi-Krum
    selects the ``num_selected`` lowest scores, computed once (scores are not
    recomputed after each pick). Ties go to the lower index, so the choice is
    deterministic on every twin.

    Args:
        updates: ``(K, P)`` client vectors.
        num_byzantine: assumed upper bound ``f >= 0`` on Byzantine clients; Krum's
            guarantee needs ``K > 2f + 2``.
        num_selected: ``m``, with ``1 <= m <= K - f`` (selecting more than the honest
            count would always include a Byzantine vector).

    Returns:
        ``(m,)`` int64 tensor of row indices, lowest score first.

    Raises:
        ValueError: if ``K <= 2f + 2`` or ``m`` is out of range.
    """
    k = _check_updates(updates)
    f = int(num_byzantine)
    m = int(num_selected)
    if f < 0:
        raise ValueError(f"num_byzantine must be >= 0, got {f}")
    if k <= 2 * f + 2:
        raise ValueError(f"krum needs K > 2f + 2 clients: K={k}, f={f} (needs K >= {2 * f + 3})")
    if not 1 <= m <= k - f:
        raise ValueError(f"num_selected must be in [1, K - f] = [1, {k - f}], got {m}")
    dist = _pairwise_sq_distances(updates)
    dist.fill_diagonal_(math.inf)  # a vector is not its own neighbour
    nearest = dist.topk(k - f - 2, dim=1, largest=False).values
    scores = nearest.sum(dim=1)
    order = torch.sort(scores, stable=True).indices
    return order[:m]


def krum(
    updates: Tensor,
    num_byzantine: int,
    num_selected: int = 1,
    weights: Tensor | None = None,
) -> Tensor:
    """Krum aggregate: the mean of the vectors chosen by :func:`krum_select`.

    With ``num_selected = 1`` this is the selected vector itself (classic Krum). With
    ``weights`` (e.g. sample counts) the selected vectors are combined by
    :func:`weighted_mean` using their own weights, otherwise by a plain mean.

    Raises:
        ValueError: as :func:`krum_select`, or if the selected weights sum to 0.
    """
    idx = krum_select(updates, num_byzantine, num_selected)
    chosen = updates[idx]
    if weights is None:
        return chosen.mean(dim=0)
    w = torch.as_tensor(weights, device=updates.device)
    if w.shape != (updates.shape[0],):
        raise ValueError(f"weights must have shape ({updates.shape[0]},), got {tuple(w.shape)}")
    return weighted_mean(chosen, w[idx])


class Aggregate(Protocol):
    """Uniform aggregator signature used by :data:`AGGREGATORS`.

    ``weights`` is the ``(K,)`` sample counts (or ``None`` for equal weights); rules that
    are not weighted (median, trimmed mean) ignore it. ``params`` are the rule's own
    keyword parameters (``beta``; ``num_byzantine``, ``num_selected``).
    """

    def __call__(self, updates: Tensor, weights: Tensor | None, **params: float) -> Tensor: ...


def _fedavg(updates: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        _check_updates(updates)
        return updates.mean(dim=0)
    return weighted_mean(updates, weights)


def _median(updates: Tensor, weights: Tensor | None) -> Tensor:
    return coordinate_median(updates)


def _trimmed_mean(updates: Tensor, weights: Tensor | None, *, beta: float) -> Tensor:
    return trimmed_mean(updates, beta)


def _krum(updates: Tensor, weights: Tensor | None, *, num_byzantine: int, num_selected: int = 1) -> Tensor:
    return krum(updates, num_byzantine, num_selected, weights)


AGGREGATORS: dict[str, Callable[..., Tensor]] = {
    "fedavg": _fedavg,
    "median": _median,
    "trimmed_mean": _trimmed_mean,
    "krum": _krum,
    # Nested averaging (HeteroFL, algorithms/nested.py) over rows that are all the full model is
    # one coverage class: FedAvg by definition (tests/test_nested.py holds them equal bit for bit).
    "nested": _fedavg,
}
"""Name -> ``aggregate(updates, weights, **params)``; see :class:`Aggregate`.

Parameters: ``fedavg``, ``median``: none; ``trimmed_mean``: ``beta`` (required);
``krum``: ``num_byzantine`` (required), ``num_selected`` (default 1). An unknown
parameter raises :class:`TypeError`.
"""


def get_aggregator(name: str) -> Callable[..., Tensor]:
    """Look up ``name`` in :data:`AGGREGATORS`; a :class:`ValueError` lists the known names."""
    try:
        return AGGREGATORS[name]
    except KeyError:
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(sorted(AGGREGATORS))}") from None


_RULE_PARAMS = {
    "fedavg": (),
    "nested": (),
    "median": (),
    "trimmed_mean": ("beta",),
    "krum": ("num_byzantine", "num_selected"),
}


def aggregate(name: str, updates: Tensor, weights: Tensor | None, **options: Any) -> Tensor:
    """Apply rule ``name``, taking from ``options`` only the parameters that rule uses.

    Lets every engine hand over the experiment file's whole aggregator section
    (``beta``, ``num_byzantine``, ``num_selected``, ``norm_bound``) whatever the rule, in one
    call; a ``norm_bound`` (:mod:`tinytwin.algorithms.norm_bounds`) is applied to the updates first.
    """
    rule = get_aggregator(name)
    if options.get("norm_bound"):
        updates, weights = apply_norm_bound(updates, weights, options["norm_bound"])
    return rule(updates, weights, **{k: options[k] for k in _RULE_PARAMS[name] if k in options})


def aggregate_spec(spec: Any, updates: Tensor, weights: Tensor | None) -> tuple[Tensor | None, str | None]:
    """:func:`aggregate` with an experiment file's aggregator section (``AggregatorSpec``):
    ``(aggregate, None)``, or ``(None, reason)`` when the rule refuses the round's updates."""
    try:
        return aggregate(spec.name, updates, weights, **spec.model_dump(exclude={"name"})), None
    except ValueError as exc:
        return None, str(exc)
