"""Server optimizers against hand-computed steps on 3-element vectors."""

from __future__ import annotations

import io
import math

import pytest
import torch

from tinytwin.algorithms.server_optimizers import SERVER_OPTIMIZERS, make_server_optimizer

X0 = [1.0, 2.0, 3.0]
AGG1 = [2.0, 0.0, 3.0]  # delta1 = [1, -2, 0]


def vec(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def close(a: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(a, vec(expected), rtol=0, atol=1e-12)


def test_fedavg_lr1_returns_aggregate_exactly() -> None:
    opt = make_server_optimizer("fedavg")
    x = torch.tensor([0.1, 0.2, 0.3])
    agg = torch.tensor([1e-8, 7.0, -3.3])
    state = opt.init(x)
    new_x, new_state = opt.step(x, agg, state)
    assert state == {} and new_state == {}
    assert torch.equal(new_x, agg) and new_x is not agg


def test_fedavg_server_lr() -> None:
    opt = make_server_optimizer("fedavg", lr=0.5)
    new_x, _ = opt.step(vec(X0), vec(AGG1), {})
    close(new_x, [1.5, 1.0, 3.0])


def test_fedavgm_two_steps() -> None:
    opt = make_server_optimizer("fedavgm", lr=0.5, momentum=0.5)
    s0 = opt.init(vec(X0))
    close(s0["m"], [0.0, 0.0, 0.0])
    # m1 = delta1 = [1, -2, 0]; x1 = x0 + 0.5 m1
    x1, s1 = opt.step(vec(X0), vec(AGG1), s0)
    close(s1["m"], [1.0, -2.0, 0.0])
    close(x1, [1.5, 1.0, 3.0])
    # delta2 = [1, 1, -1]; m2 = 0.5 m1 + delta2 = [1.5, 0, -1]; x2 = x1 + 0.5 m2
    x2, s2 = opt.step(x1, vec([2.5, 2.0, 2.0]), s1)
    close(s2["m"], [1.5, 0.0, -1.0])
    close(x2, [2.25, 1.0, 2.5])


# fedadam / fedyogi: lr = 0.1, beta1 = 0.9, beta2 = 0.99, tau = 0.1, so v0 = tau^2 = 0.01.
ADAPTIVE = dict(lr=0.1, beta1=0.9, beta2=0.99, tau=0.1)
# Step 2 aggregate: x1 + delta2 with delta2 = [0.1, -1, 0.05];
# m2 = 0.9 m1 + 0.1 delta2 = [0.1, -0.28, 0.005] for both.
DELTA2 = [0.1, -1.0, 0.05]
M1 = [0.1, -0.2, 0.0]
M2 = [0.1, -0.28, 0.005]


def _x_next(x: list[float], m: list[float], v: list[float]) -> list[float]:
    return [xi + 0.1 * mi / (math.sqrt(vi) + 0.1) for xi, mi, vi in zip(x, m, v)]


def test_fedadam_two_steps() -> None:
    opt = make_server_optimizer("fedadam", **ADAPTIVE)
    s0 = opt.init(vec(X0))
    close(s0["v"], [0.01, 0.01, 0.01])
    x1, s1 = opt.step(vec(X0), vec(AGG1), s0)
    # v1 = 0.99 * 0.01 + 0.01 * delta1^2 = [0.0199, 0.0499, 0.0099]
    close(s1["m"], M1)
    close(s1["v"], [0.0199, 0.0499, 0.0099])
    close(x1, _x_next(X0, M1, [0.0199, 0.0499, 0.0099]))
    assert x1[2].item() == 3.0  # zero pseudo-gradient, zero momentum: no move
    x2, s2 = opt.step(x1, x1 + vec(DELTA2), s1)
    # v2 = 0.99 v1 + 0.01 delta2^2 = [0.019801, 0.059401, 0.009826]
    v2 = [0.019801, 0.059401, 0.009826]
    close(s2["m"], M2)
    close(s2["v"], v2)
    close(x2, _x_next(x1.tolist(), M2, v2))
    close(x2, [1.083024907962252, 1.8566929495183275, 3.0025109706541087])


def test_fedyogi_two_steps() -> None:
    opt = make_server_optimizer("fedyogi", **ADAPTIVE)
    x1, s1 = opt.step(vec(X0), vec(AGG1), opt.init(vec(X0)))
    # v0 = 0.01 < delta1^2 = [1, 4, 0] except the last: sign(v0 - delta1^2) = [-1, -1, +1]
    # v1 = v0 - 0.01 * delta1^2 * sign = [0.02, 0.05, 0.01]
    close(s1["v"], [0.02, 0.05, 0.01])
    # x1 = x0 + 0.1 * m1 / (sqrt(v1) + 0.1): 1 + 0.1(sqrt2 - 1), 2 - 0.05(sqrt5 - 1), 3
    close(x1, [0.9 + 0.1 * math.sqrt(2), 2.05 - 0.05 * math.sqrt(5), 3.0])
    x2, s2 = opt.step(x1, x1 + vec(DELTA2), s1)
    # delta2^2 = [0.01, 1, 0.0025]; sign(v1 - delta2^2) = [+1, -1, +1]
    # v2 = [0.02 - 0.0001, 0.05 + 0.01, 0.01 - 0.000025]  (Adam would give 0.99 v1 + ...)
    v2 = [0.0199, 0.06, 0.009975]
    close(s2["m"], M2)
    close(s2["v"], v2)
    close(x2, _x_next(x1.tolist(), M2, v2))


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS)
def test_pure_and_dtype_preserving(name: str) -> None:
    opt = make_server_optimizer(name, lr=0.3)
    x = torch.tensor(X0)
    agg = torch.tensor(AGG1)
    state = opt.init(x)
    snapshot = (x.clone(), agg.clone(), {k: v.clone() for k, v in state.items()})
    new_x, new_state = opt.step(x, agg, state)
    assert torch.equal(x, snapshot[0]) and torch.equal(agg, snapshot[1])
    assert all(torch.equal(state[k], snapshot[2][k]) for k in state)
    assert new_x.dtype == torch.float32 and all(v.dtype == torch.float32 for v in new_state.values())
    assert opt.name == name


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS)
def test_state_round_trips_through_torch_save(name: str) -> None:
    """Resuming from a checkpoint continues exactly as an uninterrupted run."""
    opt = make_server_optimizer(name, lr=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, generator=g)
    state = opt.init(x)
    aggs = [x + torch.randn(10, generator=g) for _ in range(4)]
    for agg in aggs[:2]:
        x, state = opt.step(x, agg, state)
    buf = io.BytesIO()
    torch.save({"x": x, "state": state}, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)
    xa, sa = x, state
    xb, sb = restored["x"], restored["state"]
    for agg in aggs[2:]:
        xa, sa = opt.step(xa, agg, sa)
        xb, sb = opt.step(xb, agg, sb)
    assert torch.equal(xa, xb)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_step_rejects_mismatched_shapes() -> None:
    opt = make_server_optimizer("fedadam")
    state = opt.init(torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        opt.step(torch.zeros(4), torch.zeros(4), state)
    with pytest.raises(ValueError, match="aggregate shape"):
        opt.step(torch.zeros(3), torch.zeros(2), state)
    with pytest.raises(ValueError, match="lacks"):
        opt.step(torch.zeros(3), torch.zeros(3), {})


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("fedsgd", {}),
        ("fedavg", {"lr": 0.0}),
        ("fedavgm", {"momentum": 1.0}),
        ("fedadam", {"beta1": -0.1}),
        ("fedyogi", {"beta2": 1.0}),
        ("fedadam", {"tau": 0.0}),
    ],
)
def test_invalid_parameters(name: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        make_server_optimizer(name, **kwargs)
