"""The attack library (#18): each kind's transform, the same in the simulator and the emulated
devices, and norm bounds that keep FedAvg at the clean run's accuracy under a x1e15 attacker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emulate_util import LOSSLESS, QUICK, ROOT
from tinytwin.algorithms.attacks import attack_of, attack_update, attacked_devices
from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.engines.runner import start_run
from tinytwin.spec.load import load_spec

DELTA = np.linspace(-1.0, 1.0, 8, dtype=np.float32)


@pytest.mark.parametrize(
    ("attack", "check"),
    [
        ({"kind": "sign_flip", "scale": -1.0}, lambda out: np.array_equal(out, -DELTA)),
        ({"kind": "scale", "scale": 1e4}, lambda out: np.allclose(out, DELTA * 1e4)),
        ({"kind": "gaussian", "sigma": 0.5}, lambda out: 0.1 < float(np.std(out - DELTA)) < 1.5),
        ({"kind": "nan"}, lambda out: bool(np.isnan(out).all())),
        ({"kind": "free_ride"}, lambda out: not out.any()),
    ],
)
def test_each_kind_transforms_the_update(attack: dict, check) -> None:
    out = attack_update(DELTA.copy(), attack, 0, 1, 3)
    assert out.dtype == np.float32 and out.shape == DELTA.shape and check(out)
    assert np.array_equal(attack_update(DELTA.copy(), None, 0, 1, 3), DELTA)  # honest: untouched


def test_devices_and_fractions_pick_the_attacked_devices() -> None:
    assert attacked_devices({"devices": [2, 99]}, 10, 0) == {2}
    frac = attacked_devices({"fraction": 0.3}, 10, 7)
    assert len(frac) == 3 and frac == attacked_devices({"fraction": 0.3}, 10, 7)
    assert attack_of([{"kind": "nan", "devices": [4]}], 4, 10, 0) == {"kind": "nan", "devices": [4]}
    assert attack_of([{"kind": "nan", "devices": [4]}], 5, 10, 0) is None


def _final(tmp: Path, sets: list[str], twin: str = "simulate") -> float:
    spec, spec_yaml = load_spec(QUICK, LOSSLESS + ["rounds=6", *sets])
    if twin == "simulate":
        return float(start_run(spec, spec_yaml, tmp, ROOT / "examples", report=False).summary["final_accuracy"])
    _, summary = start_emulation(spec, spec_yaml, tmp, ROOT / "examples", EmulateOptions(time_scale=0.0), report=False)
    return float(summary["final_accuracy"])


def test_norm_bounds_keep_fedavg_within_1pp_under_a_1e15_attacker(tmp_path: Path) -> None:
    attack = ['attacks=[{"kind": "scale", "scale": 1e15, "devices": [0]}]']
    bound = ['algorithm.aggregator.norm_bound={"mode": "reject", "multiple": 3.0}']
    clean = _final(tmp_path / "clean", [])
    attacked = _final(tmp_path / "attacked", attack)
    bounded = _final(tmp_path / "bounded", attack + bound)
    assert attacked < clean - 0.2  # the attack works without a bound
    assert abs(bounded - clean) <= 0.01
    emulated = _final(tmp_path / "emu", attack + bound, twin="emulate")
    assert abs(emulated - bounded) <= 0.01
    assert _final(tmp_path / "emu_attacked", attack, twin="emulate") < clean - 0.2  # emulated devices attack too
