"""Hierarchical emulation: local aggregator processes; models, bytes and costs match the simulator;
a killed local aggregator fails only its cluster's round; no torch in devices or aggregators."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_cli, write_spec
from dfl_util import run_engine, spec_dict
from emulate_util import stored_tables
from tinytwin.emulate.aggregator import aggregator_id, aggregator_key
from tinytwin.emulate.coordinator import EmulateOptions, check_emulatable, start_emulation
from tinytwin.emulate.device import DeviceRuntime
from tinytwin.emulate.frame_checks import Coordinator
from tinytwin.emulate.hier_coordinator import HierOptions
from tinytwin.emulate.wire_np import derive_key
from tinytwin.engines.runner import start_run
from tinytwin.errors import TinyTwinError
from tinytwin.report import compare_runs
from tinytwin.spec.load import validate_spec
from tinytwin.store import dfl as dfl_store
from tinytwin.wire import encoding as enc
from tinytwin.wire import frame as fm

# the aggregator link without per-packet headers, so that frames are the simulator's bytes exactly
LAN = {"lan": {"base": "ethernet", "header_bytes": 0, "sources": {"header_bytes": "test: no per-packet header"}}}
COST_KEYS = ("compute_s", "up_s", "down_s", "energy_j", "packets_lost")


def _raw(tmp_path: Path, hier: dict, lossless: bool = True, count: int = 8, **changes) -> dict:
    links = tmp_path / "links.yaml"
    links.write_text(yaml.safe_dump(LAN))
    group = {"profile": "esp32-s3", "count": count, "link": "wifi"}
    if lossless:
        group["link_overrides"] = {"loss": 0.0, "header_bytes": 0}
    algorithm = {
        "name": "hierarchical",
        "batch_size": 8,
        "lr": 0.1,
        "hierarchical": {"aggregator_link": "lan", **hier},
        **changes.pop("algorithm", {}),
    }
    return spec_dict(
        rounds=changes.pop("rounds", 4),
        fleet={"groups": [group], "links_file": str(links)},
        algorithm=algorithm,
        **changes,
    )


def _emulate(tmp_path: Path, raw: dict, **opts):
    return start_emulation(
        validate_spec(raw),
        yaml.safe_dump(raw),
        tmp_path / "emu",
        None,
        HierOptions(time_scale=0.0, **opts),
        report=False,
    )


def _tables(run_dir: Path):
    return stored_tables(run_dir, ledger=True)


# ---------------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize(
    "hier, changes, lossless",
    [
        (
            {
                "num_clusters": 2,
                "local_rounds": 2,
                "assignment": "min_comm_cost",
                "client_costs": [[1, 9], [9, 1]] * 4,
                "aggregator_costs": [5, 7],
            },
            {},
            True,
        ),
        ({"num_clusters": 1, "local_rounds": 1}, {"algorithm": {"momentum": 0.5}}, True),  # flat FL
        (
            {"num_clusters": 3, "local_rounds": 2, "assignment": "given", "clusters": [[0, 3, 6], [1, 4, 7], [2, 5]]},
            {
                "algorithm": {"server_optimizer": {"name": "fedavgm", "lr": 1.0, "momentum": 0.5}},
                "failures": {
                    "leave": [{"device": 4, "round": 2}],
                    "join": [{"device": 7, "round": 3}, {"device": 4, "round": 4}],  # 4 rejoins
                },
            },
            False,
        ),
        (
            {"num_clusters": 2, "local_rounds": 2, "assignment": "given", "clusters": [[0, 1, 2, 3], [4, 5, 6, 7]]},
            {
                "algorithm": {"aggregator": {"name": "median"}},
                "attacks": [
                    {"kind": "gaussian", "sigma": 0.3, "devices": [1]},
                    {"kind": "scale", "scale": -50.0, "devices": [4]},
                ],
            },
            True,
        ),
    ],
    ids=["2-clusters-mincommcost", "1-cluster-flat", "3-clusters-lossy-churn-fedavgm", "2-clusters-poisoned-median"],
)
def test_models_bytes_and_costs_match_the_simulator(tmp_path: Path, hier: dict, changes: dict, lossless: bool) -> None:
    raw = _raw(tmp_path, hier, lossless, **changes)
    sim, st, sim_store, sim_id = run_engine(tmp_path, raw, name="sim")
    run_dir, summary = _emulate(tmp_path, raw)
    info, rounds, dev_rows, events, rm, dm, ledger = _tables(run_dir)
    assert info.twin == "emulate" and info.status == "complete"
    models = np.load(run_dir / "emulate" / "final_models.npz")
    worst = float(np.abs(models["global"] - st.global_params.numpy()).max())
    assert worst <= 1e-4, worst  # measured ~1e-7 (float32 summation order)
    assert abs(summary["final_accuracy"] - st.accuracies[-1][1]) <= 0.01
    sim_rounds, sim_dev = sim_store.rounds(sim_id), sim_store.device_rounds(sim_id)
    if lossless:  # no packet headers, no loss: the frames written are the simulator's bytes exactly
        assert [r["bytes_up"] for r in rounds] == [r["bytes_up"] for r in sim_rounds]
        assert [r["bytes_down"] for r in rounds] == [r["bytes_down"] for r in sim_rounds]
    assert [(r["selected"], r["completed"]) for r in rounds] == [(r["selected"], r["completed"]) for r in sim_rounds]
    # the cost model's figures of every device and round, from the engine's draws
    assert [(d["round"], d["device"], d["status"]) for d in dev_rows] == [
        (d["round"], d["device"], d["status"]) for d in sim_dev
    ]
    for a, b in zip(dev_rows, sim_dev):
        for key in COST_KEYS:
            assert a[key] == pytest.approx(b[key], abs=1e-9), (a["round"], a["device"], key)
    assert summary["emulate"]["modelled_time_s"] == pytest.approx(st.sim_time_s, abs=1e-9)
    assert ledger == dfl_store.ledger(sim_store, sim_id)
    sim_rm = dfl_store.round_metrics(sim_store, sim_id)
    assert [m["messages"] for m in rm] == [m["messages"] for m in sim_rm]
    assert [m["components"] for m in rm] == [m["components"] for m in sim_rm]
    # local rounds a device has done: the simulator writes r·L for every online device, the emulation
    # counts what each device really did (less for a device that joined late)
    sim_lr = [m["local_rounds"] for m in dfl_store.device_metrics(sim_store, sim_id)]
    emu_lr = [m["local_rounds"] for m in dm]
    assert emu_lr == sim_lr if "failures" not in changes else all(a <= b for a, b in zip(emu_lr, sim_lr))
    assert summary["clusters"] == sim.summary(st, 0.0)["clusters"]
    assert summary["cost_total"] == pytest.approx(st.cost_spent)
    e = summary["emulate"]
    assert e["frames_rejected"] == {} and e["cluster_failures"] == []
    assert e["devices_with_torch"] == 0 and e["aggregators_with_torch"] == 0
    assert e["processes_with_torch_mapped"] == []  # /proc/PID/maps of every device and LA
    assert e["process_starts"] == {"devices": 8, "aggregators": sim.k}
    assert 0 < e["device_rss_kb"]["max"] <= 64 * 1024 and 0 < e["aggregator_rss_kb"]["max"] <= 64 * 1024
    assert any(ev["kind"] == "clusters" for ev in events)


def test_cnn_devices_run_unchanged_under_local_aggregators(tmp_path: Path) -> None:
    """lenet5 (the device runtime's numpy CNN): plain SGD keeps both twins together (with momentum,
    ReLU/max-pool ties make CNNs drift apart at the 1e-2 level: docs/emulation.md, Fidelity)."""
    raw = _raw(tmp_path, {"num_clusters": 2, "local_rounds": 2}, rounds=2, count=4)
    raw["model"] = {"name": "lenet5"}
    _, st, sim_store, sim_id = run_engine(tmp_path, raw, name="sim")
    run_dir, summary = _emulate(tmp_path, raw)
    worst = float(np.abs(np.load(run_dir / "emulate" / "final_models.npz")["global"] - st.global_params.numpy()).max())
    assert worst <= 1e-4, worst  # measured 4.5e-8
    _, rounds, *_ = _tables(run_dir)
    assert [r["test_accuracy"] for r in rounds] == pytest.approx([r["test_accuracy"] for r in sim_store.rounds(sim_id)])
    assert [r["bytes_up"] for r in rounds] == [r["bytes_up"] for r in sim_store.rounds(sim_id)]
    assert summary["emulate"]["devices_with_torch"] == 0 and summary["emulate"]["processes_with_torch_mapped"] == []


# ---------------------------------------------------------------------------------- faults


def test_a_killed_local_aggregator_fails_its_cluster_and_the_round_goes_on(tmp_path: Path) -> None:
    """LA 1 is SIGKILLed after its first local round of round 2; device 0 is killed in round 3,
    device 8 fails for good in round 3. Paced (time scale 1)."""
    raw = _raw(
        tmp_path, {"num_clusters": 3, "local_rounds": 2}, count=9, failures={"permanent": [{"device": 8, "round": 3}]}
    )
    run_dir, summary = start_emulation(
        validate_spec(raw),
        yaml.safe_dump(raw),
        tmp_path / "emu",
        None,
        HierOptions(time_scale=1.0, kill_aggregators={2: [1]}, kill_devices={3: [0]}),
        report=True,
    )
    _, rounds, dev_rows, events, rm, _, ledger = _tables(run_dir)
    assert [(r["round"], r["selected"], r["completed"], r["dropped"]) for r in rounds] == [
        (1, 9, 9, 0),
        (2, 9, 6, 0),
        (3, 9, 7, 2),
        (4, 8, 8, 0),
    ]
    status = {(d["round"], d["device"]): d["status"] for d in dev_rows}
    assert [status[(2, d)] for d in range(9)] == ["ok"] * 3 + ["la_failed"] * 3 + ["ok"] * 3
    assert status[(3, 0)] == status[(3, 8)] == "dropped" and (4, 8) not in status
    assert all(status[(4, d)] == "ok" for d in range(8))
    kinds = [(e["round"], e["device"], e["kind"]) for e in events]
    assert (2, None, "aggregator_killed") in kinds and (3, None, "restart") in kinds
    assert (3, 0, "killed") in kinds and (3, 8, "killed") in kinds and (4, 0, "restart") in kinds
    assert [m["components"] for m in rm] == [3, 2, 3, 3]  # clusters in each global aggregate
    la_rows = [(r["round"], r["src"]) for r in ledger if r["level"] == "la-ga"]
    assert (2, "la 1") not in la_rows and (3, "la 1") in la_rows
    # cluster 1's devices did one local round for nothing in round 2 (its model never reached the GA)
    la_failed = [d for d in dev_rows if d["status"] == "la_failed"]
    assert all(d["bytes_up"] == d["bytes_down"] > 0 for d in la_failed)
    e = summary["emulate"]
    assert e["cluster_failures"] == [{"round": 2, "cluster": 1, "why": "killed"}]
    assert e["process_starts"] == {"devices": 10, "aggregators": 4} and e["frames_rejected"] == {}
    assert e["devices_with_torch"] == 0 and e["aggregators_with_torch"] == 0
    assert rounds[-1]["test_accuracy"] > rounds[0]["test_accuracy"]
    assert (run_dir / "report.html").is_file()


def test_out_of_memory_devices_and_forged_frames_to_an_aggregator(tmp_path: Path) -> None:
    """Device 0 runs out of memory every round (restarted each time); an intruder sends garbage and
    forged frames to local aggregator 1's port. Nothing reaches an aggregate; everything is counted."""
    raw = _raw(tmp_path, {"num_clusters": 2, "local_rounds": 2}, rounds=3)
    run_dir = tmp_path / "emu" / "run"

    def intrude(r: int, _info: dict) -> None:
        if r != 1:
            return
        port = int(
            re.search(r"listening on port (\d+)", (run_dir / "emulate" / "logs" / "la1.log").read_text()).group(1)
        )

        def forged(sender, key):
            return fm.encode_frame(fm.Frame(fm.MsgType.HELLO, sender, 0xFFFFFFFF, 0, "none", 0, 1, b"{}"), key)

        for frame in (forged(9, b"k" * 32), forged(5, b"k" * 32)):  # not a member; a member's id, wrong key
            with socket.create_connection(("127.0.0.1", port)) as s1:  # (the first refused frame closes one)
                s1.sendall(frame)
        with socket.create_connection(("127.0.0.1", port)) as s2:
            s2.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(64))  # not a frame at all

    _, summary = start_emulation(
        validate_spec(raw),
        yaml.safe_dump(raw),
        tmp_path,
        None,
        HierOptions(time_scale=0.0, mem_budget_override={0: 0}),
        progress=intrude,
        run_dir=run_dir,
        report=False,
    )
    _, rounds, dev_rows, events, *_ = _tables(run_dir)
    assert [r["completed"] for r in rounds] == [7, 7, 7]
    assert [d["status"] for d in dev_rows if d["device"] == 0] == ["oom"] * 3
    assert [e["round"] for e in events if e["kind"] == "restart" and e["device"] == 0] == [2, 3]
    assert summary["emulate"]["frames_rejected"] == {"unknown_sender": 1, "bad_tag": 1, "bad_magic": 1}
    assert any(e["kind"] == "frame_rejected" and "local aggregator 1" in e["detail"] for e in events)


# ---------------------------------------------------------------------------------- keys and checks


def test_aggregator_links_have_their_own_keys_and_the_coordinators_checks() -> None:
    """The GA accepts LA c only under LA c's key; an LA's device-side checks are the coordinator's."""
    run_key, p, sizes = b"r" * 32, 6, [4, 2]
    ga = Coordinator(0, run_key, p, sizes, "float32")
    ga.keys = {aggregator_id(c): aggregator_key(run_key, c) for c in range(2)}
    la1 = DeviceRuntime(
        {"device": aggregator_id(1), "num_params": p, "tensor_sizes": sizes, "downlink_encoding": "float32"},
        aggregator_key(run_key, 1),
    )
    assert ga.handle(la1.make(fm.MsgType.HELLO, 0, "none", b"{}")) is not None
    forged = DeviceRuntime(
        {"device": aggregator_id(0), "num_params": p, "tensor_sizes": sizes, "downlink_encoding": "float32"},
        aggregator_key(run_key, 1),
    )  # LA 1 posing as LA 0
    assert ga.handle(forged.make(fm.MsgType.HELLO, 0, "none", b"{}")) is None
    device = DeviceRuntime(
        {"device": 3, "num_params": p, "tensor_sizes": sizes, "downlink_encoding": "float32"}, derive_key(run_key, 3)
    )  # a device key means nothing to the GA
    assert ga.handle(device.make(fm.MsgType.HELLO, 0, "none", b"{}")) is None
    assert ga.rejected == {"bad_tag": 1, "unknown_sender": 1}
    assert len({aggregator_key(run_key, 0), aggregator_key(run_key, 1), derive_key(run_key, 0)}) == 3
    # the GA's model frame to LA 1 passes the device runtime's checks, under LA 1's key only
    g = ga.make(fm.MsgType.MODEL, aggregator_id(1), 1, "float32", enc.encode(np.ones(p, np.float32), "float32"))
    assert la1.handle(g) is not None and forged.handle(g) is None
    # an LA holding device 3's key: updates of the wrong round or from others are refused
    la = Coordinator(0, b"", p, sizes, "float32")
    la.keys = {3: derive_key(run_key, 3)}
    la.round, la.expect = 5, {3}
    assert la.handle(device.make(fm.MsgType.HELLO, 0, "none", b"{}")) is not None

    def upd(r):
        return device.make(fm.MsgType.UPDATE, r, "float32", enc.encode(np.zeros(p, np.float32), "float32"))

    assert la.handle(upd(4), 3) is None
    got = la.handle(upd(5), 3)
    assert got is not None
    la.updates[3] = got[1]
    assert la.handle(upd(5), 3) is None  # a second update in the same local round
    assert la.rejected == {"stale_round": 1, "not_expected": 1}


def test_refused_hierarchical_runs_say_why_in_one_line(tmp_path: Path) -> None:
    raw = spec_dict(
        algorithm={
            "name": "hierarchical",
            "aggregator": {"name": "krum", "num_byzantine": 1},
            "hierarchical": {"num_clusters": 2},
        }
    )
    with pytest.raises(TinyTwinError, match="fedavg, median or trimmed_mean") as exc:
        check_emulatable(validate_spec(raw))
    assert "\n" not in str(exc.value)
    ok = spec_dict(algorithm={"name": "hierarchical", "hierarchical": {"num_clusters": 2}})
    with pytest.raises(TinyTwinError, match="netns"):
        start_emulation(validate_spec(ok), yaml.safe_dump(ok), tmp_path, None, EmulateOptions(netns=True))


# ---------------------------------------------------------------------------------- processes and CLI


def test_device_and_aggregator_processes_never_import_torch() -> None:
    code = (
        "import sys, tinytwin.emulate.forkserver, tinytwin.emulate.hier_procs, tinytwin.emulate.aggregator; "
        "assert 'torch' not in sys.modules, 'torch in a device or aggregator process'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_cli_emulates_a_hierarchical_spec_and_compares_it_with_the_simulator(tmp_path: Path) -> None:
    raw = _raw(tmp_path, {"num_clusters": 2, "local_rounds": 2}, rounds=3)
    spec = write_spec(tmp_path / "hier.yaml", yaml.safe_dump(raw))
    emu = run_cli("emulate", str(spec), "--out", str(tmp_path / "emu"), "--time-scale", "0", "--quiet")
    assert emu.returncode == 0, emu.stderr
    assert "frames rejected 0" in " ".join(emu.stdout.split())
    [emu_dir] = list((tmp_path / "emu").iterdir())
    assert (emu_dir / "report.html").is_file() and (emu_dir / "csv" / "ledger.csv").is_file()
    sim = start_run(validate_spec(raw), yaml.safe_dump(raw), tmp_path / "sim", None, report=False)
    page = compare_runs([sim.run_dir, emu_dir], tmp_path / "cmp")
    assert Path(page).is_file()


# ---------------------------------------------------------------------------------- firmware devices


def test_firmware_devices_under_local_aggregators_match_the_simulator(tmp_path: Path) -> None:
    """Every device runs the C client on QEMU (``--twin firmware``: HierOptions.firmware_all); the
    local aggregators and the GA cannot tell: the models are the simulator's to float32 rounding."""
    raw = _raw(tmp_path, {"num_clusters": 2, "local_rounds": 2}, rounds=3, count=4)
    _, st, sim_store, sim_id = run_engine(tmp_path, raw, name="sim")
    run_dir, summary = _emulate(tmp_path, raw, firmware_all=True)
    worst = float(np.abs(np.load(run_dir / "emulate" / "final_models.npz")["global"] - st.global_params.numpy()).max())
    assert worst <= 1e-5, worst  # the C is numpy's to ~1e-7 per step
    assert abs(summary["final_accuracy"] - st.accuracies[-1][1]) <= 0.01
    _, rounds, dev_rows, *_ = _tables(run_dir)
    assert [r["bytes_up"] for r in rounds] == [r["bytes_up"] for r in sim_store.rounds(sim_id)]
    assert all(d["status"] == "ok" for d in dev_rows)
    fw = summary["emulate"]["firmware"]
    assert fw["devices"] == 4 and fw["images"][0]["board"] == "mps2-an386"
    assert fw["insns_per_round_median"] > 1e5 and fw["qemu_rss_kb"]["median"] > 0
    assert summary["emulate"]["devices_with_torch"] == 0 and summary["emulate"]["frames_rejected"] == {}


def test_a_firmware_fault_fails_the_device_and_the_clusters_go_on(tmp_path: Path) -> None:
    """Device 1's image has a 4 KiB arena: it faults at run time in every round (exit 87, its
    fault.json); recorded as ``firmware_fault``, restarted, and every cluster completes its rounds."""
    raw = _raw(tmp_path, {"num_clusters": 2, "local_rounds": 2}, rounds=2, count=4)
    raw["fleet"]["groups"][0]["twin"] = "firmware"
    run_dir, summary = _emulate(tmp_path, raw, round_timeout_s=60, firmware_arena_override={1: 4096})
    _, rounds, dev_rows, events, rm, _, _ = _tables(run_dir)
    faults = [e for e in events if e["kind"] == "firmware_fault"]
    assert [(e["round"], e["device"]) for e in faults] == [(1, 1), (2, 1)]
    assert all("arena" in e["detail"] for e in faults)
    status = {(d["round"], d["device"]): d["status"] for d in dev_rows}
    assert [status[(r, 1)] for r in (1, 2)] == ["firmware_fault"] * 2
    assert all(status[(r, d)] == "ok" for r in (1, 2) for d in (0, 2, 3))
    assert [r["completed"] for r in rounds] == [3, 3] and all(r["test_accuracy"] is not None for r in rounds)
    assert [m["components"] for m in rm] == [2, 2]
    assert summary["emulate"]["firmware"]["devices"] == 4
