"""Cloudlets as fleet devices (time and energy from the cost model) and forecasting run folders:
results database, CSV, report, ``tinytwin report`` and ``tinytwin compare`` (issue #13)."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from tinytwin.graph.cloudlets import partition_graph
from tinytwin.graph.fleet_costs import CloudletFleet, fleet_costs
from tinytwin.graph.stgcn import StgcnConfig, param_count, train_flops, training_memory

ROOT = Path(__file__).resolve().parents[1]
SHORT = ROOT / "examples" / "graph" / "stgnn-metr-la-short.yaml"


def _partition():
    """Two cloudlets on eight sensors in a line (tests/test_graph_cloudlets.py): remote halos {3, 4} and {1, 2}."""
    xy = np.array([[x * 1000.0, 0.0] for x in (0, 1, 2, 3.2, 4, 5, 6, 20)])
    adj = np.eye(8)
    for i in range(7):
        adj[i, i + 1] = 0.5
    return partition_graph(adj, xy, np.array([[1000.0, 0.0], [5000.0, 0.0]]), 4500.0, 2)


def test_traditional_fl_time_and_energy_equal_a_hand_calculation() -> None:
    part, model = _partition(), StgcnConfig(12, 3, 2, (8, 4, 8), 16, 3, 3, 0.0)
    fleet = CloudletFleet.from_names("raspberry-pi-4", "ethernet", "jetson-agx-orin-cpu")
    windows, steps = 10, 30
    got = fleet_costs("traditional", part, model, windows, steps, epochs=1, fleet=fleet, seed=0, batch=4)
    link, pi, orin = fleet.link, fleet.profile, fleet.server
    p4 = param_count(model) * 4

    def wire(payload: int) -> int:  # ethernet: no loss; a header per packet
        return payload + math.ceil(payload / link.mtu_bytes) * link.header_bytes

    rows = []
    for halo, remote in ((5, 2), (6, 2)):  # halos of 5 and 6 nodes, 2 remote nodes each
        compute = train_flops(model, halo, windows) / pi.flops_per_s
        down_bytes = wire(p4 + remote * steps * 4)
        up = link.latency_s + wire(p4) * 8 / link.up_bps
        down = link.latency_s + down_bytes * 8 / link.down_bps
        rows.append((compute, up, down, wire(p4), down_bytes))
    master = 2 * param_count(model) / orin.flops_per_s
    epoch = max(c + u + d for c, u, d, _, _ in rows) + master
    for site, (c, u, d, bu, bd) in zip(got["per_cloudlet"], rows, strict=True):
        assert site["compute_s"] == pytest.approx(c) and site["up_s"] == pytest.approx(u)
        assert site["down_s"] == pytest.approx(d)
        assert (site["bytes_up"], site["bytes_down"]) == (bu, bd)
        energy = pi.power.active_w * c + pi.power.tx_w * u + pi.power.rx_w * d + pi.power.idle_w * (epoch - c - u - d)
        assert site["energy_j"] == pytest.approx(energy)
    server = orin.power.active_w * master + orin.power.idle_w * (epoch - master)
    assert got["time_s"] == pytest.approx(epoch)
    assert got["energy_j"] == pytest.approx(sum(s["energy_j"] for s in got["per_cloudlet"]) + server)
    for site, (halo, remote) in zip(got["per_cloudlet"], ((5, 2), (6, 2)), strict=True):
        # weights, gradients, two Adam moments; 4 windows of stored values; the master's model and
        # the remote halo's series received, the own model sent
        mem = training_memory(model, halo, 4)
        assert mem.weights == mem.gradients == p4 and mem.optimizer_state == 2 * p4
        assert site["train_memory_bytes"] == mem.total + p4 + remote * steps * 4 + p4
    assert got["train_memory_bytes"] == max(s["train_memory_bytes"] for s in got["per_cloudlet"])
    three = fleet_costs("traditional", part, model, windows, steps, epochs=3, fleet=fleet, seed=0, batch=4)
    assert three["time_s"] == pytest.approx(3 * epoch) and three["bytes"] == 3 * got["bytes"]


def test_server_free_cloudlets_send_to_each_neighbour_and_centralized_only_computes() -> None:
    part, model = _partition(), StgcnConfig(12, 3, 2, (8, 4, 8), 16, 3, 3, 0.0)
    fleet = CloudletFleet.from_names("jetson-nano-cpu", "wifi", "raspberry-pi-4")
    free = fleet_costs("serverfree", part, model, 10, 30, 1, fleet, 0, 4)
    p4 = param_count(model) * 4
    assert all(s["bytes_up"] >= p4 for s in free["per_cloudlet"])  # one neighbour each
    central = fleet_costs("centralized", part, model, 10, 30, 2, fleet, 0, 4)
    compute = 2 * train_flops(model, 7, 10) / fleet.server.flops_per_s
    assert central["bytes"] == 0 and central["time_s"] == pytest.approx(compute)
    assert central["energy_j"] == pytest.approx(fleet.server.power.active_w * compute)


def test_a_forecast_writes_a_run_folder_that_report_and_compare_read(tmp_path: Path) -> None:
    sets = [
        "--set",
        "train.epochs=1",
        "--set",
        "setups=[centralized,traditional]",
        "--set",
        "cloudlets.profile=jetson-nano-cpu",
    ]
    r = run_cli("forecast", str(SHORT), *sets, "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((tmp_path / "r.json").read_text())
    assert json.loads((run_dir / "result.json").read_text())["setups"].keys() == {"centralized", "traditional"}
    db = sqlite3.connect(run_dir / "results.db")
    status, summary = db.execute("SELECT status, summary_json FROM runs").fetchone()
    assert status == "complete" and json.loads(summary)["task"] == "forecasting"
    mae = db.execute(
        "SELECT mae FROM forecast_metrics WHERE setup = 'traditional' AND horizon = '15min' AND cloudlet IS NULL"
    ).fetchone()[0]
    assert mae == pytest.approx(result["setups"]["traditional"]["test"]["15min"]["mae"])
    per_cloudlet = db.execute("SELECT COUNT(*) FROM forecast_costs WHERE setup = 'traditional'").fetchone()[0]
    assert per_cloudlet == len(result["owned_per_cloudlet"]) + 1  # every cloudlet and the master
    assert result["setups"]["traditional"]["fleet"]["profile"] == "jetson-nano-cpu"
    with (run_dir / "csv" / "forecast_metrics.csv").open() as fh:
        assert sum(1 for row in csv.DictReader(fh) if row["setup"] == "persistence") == 3  # three horizons
    html = (run_dir / "report.html").read_text()
    assert "Traditional FL" in html and "Per cloudlet" in html
    assert db.execute("SELECT rounds_done FROM runs").fetchone()[0] == 1
    assert run_cli("report", str(run_dir)).returncode == 0
    c = run_cli("compare", str(run_dir), str(run_dir), "--out", str(tmp_path / "cmp"))
    assert c.returncode == 0, c.stderr
    assert (tmp_path / "cmp" / "compare.html").read_text().count("Traditional FL") == 4  # two tables, two runs


def test_an_unknown_cloudlet_profile_is_one_line_and_no_run_folder(tmp_path: Path) -> None:
    r = run_cli("forecast", str(SHORT), "--set", "cloudlets.profile=pi5", "--out", str(tmp_path / "runs"))
    assert r.returncode == 2 and "cloudlets.profile" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_a_cloudlet_profile_too_small_to_train_is_refused_before_training(tmp_path: Path) -> None:
    r = run_cli("forecast", str(SHORT), "--set", "cloudlets.profile=esp32-s3", "--out", str(tmp_path / "runs"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cloudlets.profile" in r.stderr and "esp32-s3 has" in r.stderr and "largest site" in r.stderr
    assert not (tmp_path / "runs").exists()
