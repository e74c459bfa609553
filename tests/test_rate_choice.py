"""model_rate auto: the planner's choice per board equals a hand calculation of the memory plan."""

from __future__ import annotations

import math

import pytest

from tinytwin.fleet.catalog import load_device_catalog
from tinytwin.fleet.rate_choice import choose_rate, mlp_plan_at

BATCH, SAMPLES = 4, 100
OPTIONS = dict(
    batch_size=BATCH,
    optimizer="sgd",
    momentum=0.0,
    prox_mu=0.0,
    uplink_encoding="float32",
    downlink_encoding="float32",
    max_samples=SAMPLES,
)


def hand_ram_and_flash(hidden: list[int], rate: float) -> tuple[int, int]:
    """MNIST MLP 784 -> h1 -> h2 -> 10 at float32: weights + gradients (4 B each per parameter),
    two framed float32 messages (62 B header + 4 B per parameter), activations of the batch
    (input, flatten, 2 x (linear, relu), output, plus two buffers the size of the largest)."""
    h1, h2 = (math.ceil(rate * h) for h in hidden)
    p = 784 * h1 + h1 + h1 * h2 + h2 + h2 * 10 + 10
    activations = BATCH * (784 + 784 + 2 * h1 + 2 * h2 + 10 + 2 * max(784, h1, h2)) * 4
    return 4 * p * 2 + 2 * (62 + 4 * p) + activations, 4 * p + SAMPLES * 784


def hand_choice(hidden: list[int], ram: int, flash: int) -> float | None:
    for rate in (1.0, 0.5, 0.25, 0.125):
        need_ram, need_flash = hand_ram_and_flash(hidden, rate)
        if need_ram <= ram and need_flash <= flash:
            return rate
    return None


@pytest.mark.parametrize(
    "hidden,expected",
    [
        ([64, 32], {"nrf52840": 0.125, "esp32-s3": 1.0, "raspberry-pi-4": 1.0}),
        ([1024, 512], {"nrf52840": None, "esp32-s3": 0.5, "raspberry-pi-4": 1.0}),
    ],
)
def test_auto_picks_the_hand_calculated_rate(hidden, expected):
    catalog = load_device_catalog()
    assert hand_ram_and_flash([64, 32], 0.125) == (152_700, 103_864)  # worked out on paper
    for name, rate in expected.items():
        profile = catalog[name]
        assert hand_choice(hidden, profile.training_ram_bytes, profile.model_flash_bytes) == rate
        choice = choose_rate(mlp_plan_at(name, profile, (1, 28, 28), 10, hidden, **OPTIONS))
        assert choice.chosen == rate, choice.explain()
        for considered, plan in choice.considered:
            assert (plan.ram_needed, plan.flash_needed) == hand_ram_and_flash(hidden, considered)
        assert [r for r, _ in choice.considered] == [1.0, 0.5, 0.25, 0.125][: len(choice.considered)]
        line = choice.explain()
        assert ("no rate fits" in line) if rate is None else line.endswith(f"chosen {rate:g}")
