"""Device-server links and partitions going down (``failures.link_down``) and round deadlines,
in the simulator and the emulator: the same devices miss the same rounds, the emulator's
shaper really drops their frames and its coordinator does not wait for them, and both
twins write the cost model's times and energy to ``device_rounds``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emulate_util import QUICK, ROOT, stored_rows
from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.engines.experiment import prepare
from tinytwin.engines.round_costs import round_costs
from tinytwin.engines.runner import start_run
from tinytwin.errors import TinyTwinError
from tinytwin.fleet.failures import NEVER, build_timeline
from tinytwin.spec.load import load_spec
from tinytwin.spec.schema import FailureSpec

BASE = ["fleet.groups.0.count=5", "rounds=4", "fleet.groups.0.link=ble"]


_rows = stored_rows


def test_timeline_link_outages_and_partitions() -> None:
    spec = FailureSpec(
        link_down=[{"devices": [1, 2], "round": 2, "rounds": 2, "after_s": 0.5}, {"devices": [0], "round": 3}]
    )
    t = build_timeline(spec, 4, 6, 0)
    assert list(t.cut_s(2)) == [NEVER, 0.5, 0.5, NEVER]
    assert list(t.cut_s(3)) == [0.0, 0.0, 0.0, NEVER]
    assert list(t.reachable(2)) == [True] * 4 and list(t.reachable(3)) == [False, False, False, True]
    assert t.link_changes(2) == [(1, "link_down", 0.5), (2, "link_down", 0.5)]
    assert t.link_changes(3) == [(0, "link_down", 0.0)]
    assert t.link_changes(4) == [(0, "link_up", 0.0), (1, "link_up", 0.0), (2, "link_up", 0.0)]
    assert t.link_changes(5) == [] and build_timeline(FailureSpec(), 4, 6, 0).link_changes(2) == []


def test_link_down_spec_is_checked(tmp_path: Path) -> None:
    with pytest.raises(TinyTwinError, match=r"failures.link_down.0.devices: 7 is not a device"):
        load_spec(QUICK, BASE + ["failures.link_down=[{devices: [7], round: 2}]"])
    with pytest.raises(TinyTwinError, match=r"failures.link_down.0.round: 9 is after the last round"):
        load_spec(QUICK, BASE + ["failures.link_down=[{devices: [1], round: 9}]"])
    with pytest.raises(TinyTwinError, match=r"failures.link_down: .*topology.link_events"):
        load_spec(QUICK, BASE + ["algorithm.name=gossip", "failures.link_down=[{devices: [1], round: 2}]"])


def test_links_partitions_and_deadline_agree_between_twins(tmp_path: Path) -> None:
    # Device 1's link goes down half-way through its round-2 training (it gets the model,
    # its update is lost); devices 2 and 3 are cut off together for round 3 (a partition).
    spec, _ = load_spec(QUICK, BASE)
    exp = prepare(spec, ROOT / "examples")
    every = np.arange(5)
    c2 = round_costs(exp, 2, every, every, np.zeros(5, bool))
    after = float(c2.down.time_s[1] + 0.5 * c2.compute_s[1])
    c1 = round_costs(exp, 1, every, every, np.zeros(5, bool))
    totals = np.sort(c1.total_s)
    deadline = float(totals[-1] + totals[-2]) / 2  # the slowest device of round 1 misses it
    sets = BASE + [
        f"failures.link_down=[{{devices: [1], round: 2, after_s: {after}}}, {{devices: [2, 3], round: 3}}]",
        f"algorithm.deadline_s={deadline}",
    ]
    sim = start_run(*load_spec(QUICK, sets), tmp_path / "sim", ROOT / "examples", report=False)
    emu_dir, summary = start_emulation(
        *load_spec(QUICK, sets),
        tmp_path / "emu",
        ROOT / "examples",
        EmulateOptions(time_scale=0.05, round_timeout_s=30),
        report=False,
    )
    s_rounds, s_dev, s_ev = _rows(sim.run_dir)
    e_rounds, e_dev, e_ev = _rows(emu_dir)

    status = {(d["round"], d["device"]): d["status"] for d in e_dev}
    assert status == {(d["round"], d["device"]): d["status"] for d in s_dev}
    assert status[(2, 1)] == "link_down"
    assert status[(3, 2)] == status[(3, 3)] == "link_down"
    assert "straggler" in status.values()
    assert [r["completed"] for r in e_rounds] == [r["completed"] for r in s_rounds]
    assert all(r["test_accuracy"] is not None for r in e_rounds)  # every round completes with the reachable devices
    for a, b in zip(s_dev, e_dev):  # the cost model's figures, identical in both twins
        for col in ("compute_s", "up_s", "down_s", "energy_j"):
            assert a[col] == pytest.approx(b[col], rel=1e-9, abs=1e-12), (a, b, col)
    assert [r["energy_j"] for r in e_rounds] == pytest.approx([r["energy_j"] for r in s_rounds], rel=1e-9)
    assert summary["energy_j_per_device"] == pytest.approx(sim.summary["energy_j_per_device"], rel=1e-9)

    def link_events(events):
        return sorted((e["round"], e["device"], e["kind"]) for e in events if e["kind"].startswith("link_"))

    expected = [
        (2, 1, "link_down"),
        (3, 1, "link_up"),
        (3, 2, "link_down"),
        (3, 3, "link_down"),
        (4, 2, "link_up"),
        (4, 3, "link_up"),
    ]
    assert link_events(s_ev) == link_events(e_ev) == expected
    # The emulator really dropped device 1's round-2 update at its shaper, and did not wait for it.
    log1 = (emu_dir / "emulate" / "logs" / "d1.log").read_text()
    assert "round 2: update dropped by the link shaper (link down)" in log1
    assert "update dropped by the link shaper (deadline)" in "".join(
        p.read_text() for p in (emu_dir / "emulate" / "logs").glob("d*.log")
    )
    assert max(r["duration_s"] for r in e_rounds) < 10
    assert summary["emulate"]["frames_rejected"] == {}
