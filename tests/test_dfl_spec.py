"""Experiment-file keys of decentralized and hierarchical learning: validation and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import run_cli, write_spec
from dfl_util import spec_dict
from tinytwin.engines.experiment import prepare
from tinytwin.engines.network import build_network
from tinytwin.errors import SpecError
from tinytwin.spec.load import validate_spec

CASES = [
    # (id, changes to the base spec, text expected in the one-line message)
    ("unknown-algorithm", {"algorithm": {"name": "gosip"}}, "algorithm.name"),
    ("unknown-topology", {"topology": {"kind": "mesh"}}, "topology.kind"),
    ("unknown-topology-key", {"topology": {"kind": "ring", "radius": 3}}, "topology.radius: unknown key"),
    (
        "async-decfedavg",
        {"algorithm": {"name": "decfedavg", "schedule": "async"}},
        "algorithm.schedule: async runs gossip and gist",
    ),
    (
        "gist-buffer",
        {"algorithm": {"name": "gist", "gist": {"buffer_size": 3, "min_received": 5}}},
        "algorithm.gist.min_received: 5 is more than buffer_size 3",
    ),
    ("gossip-merge", {"algorithm": {"name": "gossip", "gossip": {"merge": "median"}}}, "algorithm.gossip.merge"),
    (
        "pushpull-fifo",
        {"algorithm": {"name": "gossip", "gossip": {"merge": "fifo", "exchange": "push_pull"}}},
        "algorithm.gossip.exchange",
    ),
    (
        "lr-schedule-fedavg",
        {"algorithm": {"name": "fedavg", "lr_schedule": {"name": "adastair"}}},
        "algorithm.lr_schedule: per-device schedules are for decentralized",
    ),
    (
        "lr-schedule-name",
        {"algorithm": {"name": "gist", "lr_schedule": {"name": "adastairs"}}},
        "algorithm.lr_schedule.name",
    ),
    (
        "stair-factor",
        {"algorithm": {"name": "gist", "lr_schedule": {"name": "adastair", "stair_factor": 1}}},
        "algorithm.lr_schedule.stair_factor",
    ),
    ("hub", {"topology": {"kind": "star", "hub": 8}}, "topology.hub: 8 is not a device"),
    (
        "link-event",
        {"topology": {"kind": "ring", "link_events": [{"round": 2, "edges": [[0, 9]], "state": "down"}]}},
        "topology.link_events.0.edges.0",
    ),
    (
        "link-event-state",
        {"topology": {"kind": "ring", "link_events": [{"round": 2, "edges": [[0, 1]], "state": "off"}]}},
        "topology.link_events.0.state",
    ),
    ("file-missing", {"topology": {"kind": "file"}}, "topology.file: topology kind 'file' needs"),
    ("dropout", {"failures": {"dropout": 0.1}}, "failures.dropout: gossip has no server round"),
    (
        "lr-schedule-hierarchical",
        {"algorithm": {"name": "hierarchical", "lr_schedule": {"name": "adaloss"}}},
        "algorithm.lr_schedule: per-device schedules are for decentralized algorithms",
    ),
    (
        "server-optimizer-gossip",
        {"algorithm": {"name": "gossip", "server_optimizer": {"name": "fedadam"}}},
        "algorithm.server_optimizer.name: gossip has no server",
    ),
    (
        "robust-aggregator",
        {"algorithm": {"name": "gist", "aggregator": {"name": "median"}}},
        "algorithm.aggregator.name",
    ),
]


@pytest.mark.parametrize("case_id,changes,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_dfl_keys_name_the_key_path(case_id, changes, expected):
    raw = spec_dict()
    for section, value in changes.items():
        raw[section] = {**raw.get(section, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(SpecError) as info:
        validate_spec(raw)
    assert expected in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_defaults_keep_centralized_specs_unchanged():
    spec = validate_spec({"fleet": {"groups": [{"profile": "esp32-s3", "count": 3}]}})
    assert spec.algorithm.family == "centralized" and spec.topology.kind == "full"
    assert spec.algorithm.schedule == "sync" and spec.algorithm.lr_schedule.name == "none"
    for name, family in [("gist", "decentralized"), ("serverfree", "decentralized"), ("hierarchical", "hierarchical")]:
        assert validate_spec(spec_dict(algorithm={"name": name})).algorithm.family == family


def test_network_errors_are_spec_errors(tmp_path):
    spec = validate_spec(spec_dict(topology={"kind": "torus", "rows": 3}))
    with pytest.raises(SpecError, match="topology.rows"):
        build_network(spec, prepare(spec).fleet)
    spec = validate_spec(
        spec_dict(
            topology={"kind": "geometric"}, fleet={"groups": [{"profile": "esp32-s3", "count": 8, "link": "ethernet"}]}
        )
    )
    with pytest.raises(SpecError, match="topology.radius_m: group 'esp32-s3-0' uses link 'ethernet'"):
        build_network(spec, prepare(spec).fleet)
    spec = validate_spec(spec_dict(topology={"kind": "file", "file": str(tmp_path / "none.csv")}))
    with pytest.raises(SpecError, match="topology.file: file .* not found"):
        build_network(spec, prepare(spec).fleet)
    spec = validate_spec(
        spec_dict(topology={"kind": "ring", "link_events": [{"round": 2, "edges": [[0, 4]], "state": "down"}]})
    )
    with pytest.raises(SpecError, match="topology.link_events: 0-4 is not a link of the ring topology"):
        build_network(spec, prepare(spec).fleet)


def test_cli_bad_topology_file_one_line_exit_2_no_run_folder(tmp_path: Path):
    (tmp_path / "edges.csv").write_text("0,1\n1,99\n")
    spec = write_spec(tmp_path / "spec.yaml", yaml.safe_dump(spec_dict(topology={"kind": "file", "file": "edges.csv"})))
    out = tmp_path / "runs"
    proc = run_cli("run", str(spec), "--out", str(out), "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "topology.file" in lines[0] and "devices 0..7" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_every_example_spec_loads_and_decentralized_ones_build_their_network():
    from conftest import REPO
    from tinytwin.fleet.build import build_fleet
    from tinytwin.spec.load import load_spec

    examples = sorted((REPO / "examples").glob("*.yaml"))
    assert len(examples) >= 10
    built = 0
    for path in examples:
        spec, _ = load_spec(path)
        if spec.algorithm.family == "decentralized":
            net = build_network(spec, build_fleet(spec, path.parent), path.parent)
            assert net.topology.num_edges > 0, path.name
            built += 1
    assert built >= 7
    spec, _ = load_spec(REPO / "examples" / "seed004-cloudlets-serverfree.yaml")
    net = build_network(spec, build_fleet(spec, REPO / "examples"), REPO / "examples")
    assert net.describe()["components"] == 3 and net.topology.edges.tolist() == [[2, 3], [2, 4], [3, 5], [4, 5], [5, 6]]
