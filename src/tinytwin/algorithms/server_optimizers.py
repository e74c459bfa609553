"""Server optimizers: turn the aggregated client model into the next global model.

Following Reddi et al. 2021 ("Adaptive Federated Optimization", Algorithm 2), the server
treats the pseudo-gradient ``delta = aggregate - x`` (aggregated client model minus the
current global model ``x``) as a descent direction and applies an optimizer to it:

=========  ===============================================================================
name       update (all element-wise)
=========  ===============================================================================
fedavg     ``x <- x + lr * delta``  (``lr = 1`` gives the aggregate itself: plain FedAvg)
fedavgm    ``m <- momentum * m + delta;  x <- x + lr * m``  (Hsu et al. 2019)
fedadam    ``m <- b1 m + (1-b1) delta;  v <- b2 v + (1-b2) delta^2;  x <- x + lr m / (sqrt(v) + tau)``
fedyogi    ``m`` as fedadam; ``v <- v - (1-b2) delta^2 sign(v - delta^2);  x`` as fedadam
=========  ===============================================================================

Initial state: ``m_0 = 0``. For fedadam/fedyogi **``v_0 = tau^2``** (every coordinate),
as in Reddi et al. (Algorithm 2 initialises ``v_{-1} >= tau^2``). Flower's FedAdam and
FedYogi start from ``v_0 = 0`` instead; for fedadam the two differ after t rounds by
exactly ``b2^t tau^2`` in ``v``, i.e. only in the first rounds and only where
``delta`` is tiny. We follow the paper so that ``v`` is never below the ``tau^2`` floor
the paper's analysis assumes. No bias correction is applied (neither paper nor Flower use it).

Like optax's ``GradientTransformation``, a :class:`ServerOptimizer` is a pair of pure
functions: ``init(x) -> state`` and ``step(x, aggregate, state) -> (new_x, new_state)``.
The state is a plain ``dict[str, Tensor]`` so it can be checkpointed with
:func:`torch.save` and a run resumed exactly; ``step`` never modifies its inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SERVER_OPTIMIZERS", "ServerOptimizer", "State", "make_server_optimizer"]

State = dict[str, Tensor]

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")


@dataclass(frozen=True)
class ServerOptimizer:
    """A server optimizer as two pure functions.

    Attributes:
        name: one of :data:`SERVER_OPTIMIZERS`.
        init: ``init(x) -> state``: the initial state for global model ``x`` (flat
            ``(P,)`` tensor). Keys: fedavg ``{}``; fedavgm ``{"m"}``; fedadam and fedyogi
            ``{"m", "v"}``; each value has the shape, dtype and device of ``x``.
        step: ``step(x, aggregate, state) -> (new_x, new_state)`` where ``aggregate`` is
            the aggregated client model (same shape as ``x``, e.g. from
            :mod:`tinytwin.algorithms.aggregators`).
    """

    name: str
    init: Callable[[Tensor], State]
    step: Callable[[Tensor, Tensor, State], tuple[Tensor, State]]


def _check_step(x: Tensor, aggregate: Tensor, state: State, keys: tuple[str, ...]) -> Tensor:
    """Validate shapes (a resumed run with another model must fail loudly); return delta."""
    if aggregate.shape != x.shape:
        raise ValueError(f"aggregate shape {tuple(aggregate.shape)} != model shape {tuple(x.shape)}")
    for key in keys:
        if key not in state:
            raise ValueError(f"server optimizer state lacks {key!r}; was it made by init()?")
        if state[key].shape != x.shape:
            raise ValueError(f"state[{key!r}] shape {tuple(state[key].shape)} != model shape {tuple(x.shape)}")
    return aggregate.to(x.dtype) - x


def make_server_optimizer(
    name: str,
    *,
    lr: float = 1.0,
    momentum: float = 0.9,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> ServerOptimizer:
    """Build the server optimizer ``name`` (see the module docstring for the updates).

    Args:
        name: ``"fedavg"``, ``"fedavgm"``, ``"fedadam"`` or ``"fedyogi"``.
        lr: server learning rate (``eta`` in Reddi et al.), > 0. ``1.0`` suits fedavg
            and fedavgm; the adaptive optimizers move each coordinate by about
            ``lr`` per round, so they usually want ``1e-2 .. 1e-1``.
        momentum: fedavgm momentum, ``0 <= momentum < 1`` (0 is fedavg).
        beta1: first-moment decay of fedadam/fedyogi, ``0 <= beta1 < 1``.
        beta2: second-moment decay of fedadam/fedyogi, ``0 <= beta2 < 1``.
        tau: adaptivity constant of fedadam/fedyogi, > 0 (also ``v_0 = tau^2``).

    Raises:
        ValueError: for an unknown name or an out-of-range parameter.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if name == "fedavg":
        return ServerOptimizer(name, _fedavg_init, _fedavg_step(lr))
    if name == "fedavgm":
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        return ServerOptimizer(name, _momentum_init, _fedavgm_step(lr, momentum))
    if name in ("fedadam", "fedyogi"):
        if not 0.0 <= beta1 < 1.0 or not 0.0 <= beta2 < 1.0:
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {beta1}, {beta2}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        return ServerOptimizer(name, _adaptive_init(tau), _adaptive_step(name == "fedyogi", lr, beta1, beta2, tau))
    raise ValueError(f"unknown server optimizer {name!r}; known: {', '.join(SERVER_OPTIMIZERS)}")


def _fedavg_init(x: Tensor) -> State:
    return {}


def _fedavg_step(lr: float) -> Callable[[Tensor, Tensor, State], tuple[Tensor, State]]:
    def step(x: Tensor, aggregate: Tensor, state: State) -> tuple[Tensor, State]:
        delta = _check_step(x, aggregate, state, ())
        # lr == 1 returns the aggregate exactly, not x + (aggregate - x) with round-off.
        new_x = aggregate.to(x.dtype).clone() if lr == 1.0 else x + lr * delta
        return new_x, {}

    return step


def _momentum_init(x: Tensor) -> State:
    return {"m": torch.zeros_like(x)}


def _fedavgm_step(lr: float, momentum: float) -> Callable[[Tensor, Tensor, State], tuple[Tensor, State]]:
    def step(x: Tensor, aggregate: Tensor, state: State) -> tuple[Tensor, State]:
        delta = _check_step(x, aggregate, state, ("m",))
        m = momentum * state["m"] + delta
        return x + lr * m, {"m": m}

    return step


def _adaptive_init(tau: float) -> Callable[[Tensor], State]:
    def init(x: Tensor) -> State:
        return {"m": torch.zeros_like(x), "v": torch.full_like(x, tau * tau)}

    return init


def _adaptive_step(
    yogi: bool, lr: float, beta1: float, beta2: float, tau: float
) -> Callable[[Tensor, Tensor, State], tuple[Tensor, State]]:
    def step(x: Tensor, aggregate: Tensor, state: State) -> tuple[Tensor, State]:
        delta = _check_step(x, aggregate, state, ("m", "v"))
        m = beta1 * state["m"] + (1.0 - beta1) * delta
        sq = delta * delta
        if yogi:
            # Adam moves v by (1-b2)(delta^2 - v), proportional to the gap; Yogi by
            # (1-b2) delta^2 in the direction of delta^2, so a large v decays slowly.
            # v stays >= 0: when v > delta^2 it drops by less than delta^2.
            v = state["v"] - (1.0 - beta2) * sq * torch.sign(state["v"] - sq)
        else:
            v = beta2 * state["v"] + (1.0 - beta2) * sq
        return x + lr * m / (v.sqrt() + tau), {"m": m, "v": v}

    return step
