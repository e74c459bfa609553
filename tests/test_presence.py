"""Leave / join timelines: a device is offline exactly between a leave and the next join, in the
timeline every twin reads; contradictory timelines are refused with one line."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO, run_cli
from tinytwin.errors import SpecError
from tinytwin.fleet.failures import OFFLINE, ONLINE, build_timeline
from tinytwin.spec.load import validate_spec
from tinytwin.spec.schema import FailureSpec


def _offline_rounds(failures: dict, device: int, rounds: int = 12) -> list[int]:
    timeline = build_timeline(FailureSpec.model_validate(failures), 4, rounds, seed=1)
    return [r + 1 for r in np.flatnonzero(timeline.state[:, device] == OFFLINE)]


def test_leave_then_rejoin_is_offline_exactly_in_between():
    got = _offline_rounds({"leave": [{"device": 1, "round": 4}], "join": [{"device": 1, "round": 7}]}, 1)
    assert got == [4, 5, 6]


def test_several_absences_of_one_device_and_a_new_device():
    failures = {
        "leave": [{"device": 2, "round": 3}, {"device": 2, "round": 9}],
        "join": [{"device": 2, "round": 5}, {"device": 0, "round": 6}],
    }
    assert _offline_rounds(failures, 2) == [3, 4, 9, 10, 11, 12]
    assert _offline_rounds(failures, 0) == [1, 2, 3, 4, 5]  # new device: offline until it joins
    assert _offline_rounds(failures, 3) == []


def test_changes_report_each_leave_and_rejoin():
    timeline = build_timeline(
        FailureSpec.model_validate({"leave": [{"device": 1, "round": 2}], "join": [{"device": 1, "round": 3}]}),
        2,
        4,
        seed=1,
    )
    assert [timeline.changes(r) for r in (1, 2, 3, 4)] == [[], [(1, "leave")], [(1, "join")], []]
    assert timeline.state[3, 1] == ONLINE


BASE = {
    "name": "presence",
    "rounds": 10,
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "hidden": [8]},
    "fleet": {"groups": [{"profile": "esp32-s3", "count": 4, "link": "wifi"}]},
}


@pytest.mark.parametrize(
    ("failures", "message"),
    [
        ({"leave": [{"device": 1, "round": 3}, {"device": 1, "round": 5}]}, "no join between them"),
        ({"join": [{"device": 1, "round": 3}, {"device": 1, "round": 5}]}, "no leave between them"),
        ({"leave": [{"device": 1, "round": 3}], "join": [{"device": 1, "round": 3}]}, "both at round 3"),
        ({"leave": [{"device": 1, "round": 11}]}, "failures.leave.0.round: 11 is after the last round (10)"),
        ({"join": [{"device": 2, "round": 12}]}, "failures.join.0.round: 12 is after the last round (10)"),
    ],
    ids=["two-leaves", "two-joins", "same-round", "leave-after-end", "join-after-end"],
)
def test_contradictory_timelines_are_refused(failures, message):
    with pytest.raises(SpecError, match="failures") as err:
        validate_spec({**BASE, "failures": failures})
    assert message in str(err.value)


def test_cli_refuses_a_contradictory_timeline_in_one_line(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        (REPO / "examples" / "quickstart.yaml").read_text()
        + "failures: {leave: [{device: 1, round: 2}, {device: 1, round: 4}]}\n"
    )
    r = run_cli("run", str(spec), "--out", str(tmp_path / "runs"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "device 1 has a leave at round 2 and another at round 4" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
