"""The time and energy cost model against a hand calculation (docs/cost-model.md, worked example)."""

import math

import numpy as np
import pytest

from tinytwin.engines.runner import start_run
from tinytwin.fleet.cost import LinkArrays, PowerArrays, compute_flops, energy_joules, transfer_cost
from tinytwin.spec.load import validate_spec
from tinytwin.store.db import RunStore
from tinytwin.wire.frame import FRAME_OVERHEAD


def one_link(loss=0.0):
    return LinkArrays(
        np.array([0.01]), np.array([1e5]), np.array([2e5]), np.array([loss]), np.array([1000]), np.array([20])
    )


def test_transfer_by_hand():
    t = transfer_cost(9702, np.array([1e5]), one_link(), np.zeros(1, dtype=np.int64))
    assert t.packets[0] == 10
    assert t.wire_bytes[0] == 9702 + 10 * 20
    assert t.time_s[0] == pytest.approx(0.01 + 9902 * 8 / 1e5)


def test_lost_packets_cost_bytes_and_time():
    t = transfer_cost(9702, np.array([1e5]), one_link(), np.array([3]))
    assert t.wire_bytes[0] == 9902 + 3 * (1000 + 20)
    assert t.time_s[0] == pytest.approx(0.01 + (9902 + 3060) * 8 / 1e5 + 3 * 2 * 0.01)


def test_energy_by_hand():
    p = PowerArrays(np.array([0.5]), np.array([0.1]), np.array([1.0]), np.array([0.8]))
    e = energy_joules(p, np.array([2.0]), np.array([1.0]), np.array([0.5]), 10.0, np.array([True]))
    assert e[0] == pytest.approx(0.5 * 2 + 1.0 * 1 + 0.8 * 0.5 + 0.1 * 6.5)


SPEC = {
    "name": "handcalc",
    "seed": 1,
    "rounds": 1,
    "dataset": {"name": "digits"},
    "partition": {"method": "iid"},
    "model": {"name": "mlp", "hidden": [32]},
    "fleet": {
        "profiles": {
            "bench": {
                "base": "esp32-s3",
                "flops_per_s": 1.0e6,
                "power": {"active_w": 0.5, "idle_w": 0.1, "tx_w": 1.0, "rx_w": 0.8},
            }
        },
        "groups": [
            {
                "name": "solo",
                "profile": "bench",
                "count": 1,
                "link": "wifi",
                "link_overrides": {
                    "latency_s": 0.01,
                    "up_bps": 1.0e5,
                    "down_bps": 2.0e5,
                    "loss": 0.0,
                    "mtu_bytes": 1000,
                    "header_bytes": 20,
                },
            }
        ],
    },
    "algorithm": {"local_epochs": 1, "batch_size": 8, "lr": 0.1},
}


def test_one_device_one_round_matches_hand_calculation(tmp_path):
    assert FRAME_OVERHEAD == 62  # 30-byte header + 32-byte HMAC tag (docs/protocol.md)
    spec = validate_spec(SPEC)
    out = start_run(spec, "{}", tmp_path, None)
    store = RunStore(out.run_dir / "results.db")
    info = store.run_info()
    (row,) = store.device_rounds(info.run_id)
    (rnd,) = store.rounds(info.run_id)

    n = 1500  # digits training set, one device
    fwd = 2 * 64 * 32 + 32 + 32 + 2 * 32 * 10 + 10 + 4 * 10
    bwd = 10 + 2 * 64 * 32 + 32 + 32 + 2 * 32 * 10 + 10 + 2 * 32 * 10
    steps = math.ceil(n / 8)
    flops = n * (fwd + bwd) + steps * 2 * 2410
    assert flops == 16_371_160
    assert compute_flops(np.array([n]), 1, 8, fwd + bwd, 2 * 2410)[0] == flops
    compute_s = flops / 1e6
    message = 2410 * 4 + 62
    wire = message + math.ceil(message / 1000) * 20
    down_s = 0.01 + wire * 8 / 2e5
    up_s = 0.01 + wire * 8 / 1e5
    energy = 0.5 * compute_s + 1.0 * up_s + 0.8 * down_s

    assert row["compute_s"] == pytest.approx(compute_s)
    assert row["down_s"] == pytest.approx(down_s)
    assert row["up_s"] == pytest.approx(up_s)
    assert row["bytes_up"] == row["bytes_down"] == wire == 9902
    assert row["energy_j"] == pytest.approx(energy)
    assert rnd["duration_s"] == pytest.approx(down_s + compute_s + up_s)
    assert rnd["sim_time_s"] == pytest.approx(17.5794)
    assert rnd["energy_j"] == pytest.approx(9.312604)
