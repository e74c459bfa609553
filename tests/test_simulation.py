"""The simulation twin end to end: determinism, accuracy bars, skew, failures, resume."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli, write_spec
from tinytwin.engines.experiment import prepare
from tinytwin.engines.runner import start_run
from tinytwin.spec.load import validate_spec
from tinytwin.store.db import RunStore


def spec_dict(**changes):
    base = {
        "name": "t",
        "seed": 3,
        "rounds": 5,
        "dataset": {"name": "digits"},
        "partition": {"method": "iid"},
        "model": {"name": "mlp", "hidden": [32]},
        "fleet": {"groups": [{"profile": "esp32-s3", "count": 10, "link": "wifi"}]},
        "algorithm": {"local_epochs": 1, "batch_size": 8, "lr": 0.1},
    }
    for key, value in changes.items():
        node = base
        *path, last = key.split("__")
        for p in path:
            node = node[p]
        node[last] = value
    return base


FAST = {"local_epochs": 2, "batch_size": 8, "lr": 0.3}  # reaches ~0.96 on digits in 6 rounds


def simulate(tmp_path: Path, **changes):
    out = start_run(validate_spec(spec_dict(**changes)), "{}", tmp_path, None)
    store = RunStore(out.run_dir / "results.db")
    info = store.run_info()
    return out, store, info.run_id


def test_same_spec_and_seed_give_identical_metrics(tmp_path):
    a, sa, ra = simulate(tmp_path / "a", partition={"method": "dirichlet", "alpha": 0.5})
    b, sb, rb = simulate(tmp_path / "b", partition={"method": "dirichlet", "alpha": 0.5})
    assert sa.rounds(ra) and [{k: v for k, v in r.items() if k != "wall_time_s"} for r in sa.rounds(ra)] == [
        {k: v for k, v in r.items() if k != "wall_time_s"} for r in sb.rounds(rb)
    ]
    assert a.summary["final_accuracy"] == b.summary["final_accuracy"]
    c, sc, rc = simulate(tmp_path / "c", seed=4, partition={"method": "dirichlet", "alpha": 0.5})
    assert (
        c.summary["final_accuracy"] != a.summary["final_accuracy"] or c.summary["sim_time_s"] != a.summary["sim_time_s"]
    )


def test_digits_iid_fedavg_reaches_093_within_30_rounds(tmp_path):
    out, store, run_id = simulate(tmp_path, rounds=30, algorithm={"local_epochs": 2, "batch_size": 8, "lr": 0.1})
    accs = [r["test_accuracy"] for r in store.rounds(run_id)]
    assert max(accs) >= 0.93, accs
    assert out.summary["memory_fits"]


@pytest.mark.slow
def test_mnist_50_devices_zfl_mlp_reaches_085_within_20_rounds(tmp_path, shared_data):
    out, store, run_id = simulate(
        tmp_path,
        rounds=20,
        dataset={"name": "mnist", "data_dir": str(shared_data)},
        model={"name": "mlp", "hidden": [16]},
        fleet={"groups": [{"profile": "raspberry-pi-4", "count": 50, "link": "wifi"}]},
        algorithm={"local_epochs": 1, "batch_size": 32, "lr": 0.1},
    )
    accs = [r["test_accuracy"] for r in store.rounds(run_id)]
    assert accs[-1] >= 0.85 and max(accs) >= 0.85, accs
    assert accs[-1] > accs[0]  # the curve rises


def test_dirichlet_01_is_skewed_and_fedavg_fedprox_both_learn(tmp_path):
    spec = validate_spec(spec_dict(partition={"method": "dirichlet", "alpha": 0.1}))
    exp = prepare(spec)
    hist = exp.class_hist
    top_share = (hist.max(axis=1) / hist.sum(axis=1)).mean()
    assert top_share > 0.5  # most of a device's data is one class
    iid = prepare(validate_spec(spec_dict())).class_hist
    assert (iid.max(axis=1) / iid.sum(axis=1)).mean() < 0.25
    for name in ("fedavg", "fedprox"):
        out, store, run_id = simulate(
            tmp_path / name,
            rounds=8,
            partition={"method": "dirichlet", "alpha": 0.1},
            algorithm={"name": name, "mu": 0.01, "local_epochs": 1, "batch_size": 8, "lr": 0.1},
        )
        assert out.summary["final_accuracy"] > 0.3, (name, out.summary["final_accuracy"])
        stored = store.devices(run_id)
        assert [d["class_hist"] for d in stored] == hist.tolist()


@pytest.mark.parametrize(
    "aggregator",
    [
        {"name": "median"},
        {"name": "trimmed_mean", "beta": 0.2},
        {"name": "krum", "num_byzantine": 1, "num_selected": 3},
    ],
)
def test_robust_aggregators_train(tmp_path, aggregator):
    out, _, _ = simulate(tmp_path, rounds=6, algorithm={**FAST, "aggregator": aggregator})
    assert out.summary["final_accuracy"] > 0.85


@pytest.mark.parametrize("server", ["fedavgm", "fedadam", "fedyogi"])
def test_server_optimizers_train(tmp_path, server):
    lr = {"fedavgm": 0.5, "fedadam": 0.1, "fedyogi": 0.1}[server]
    out, _, _ = simulate(tmp_path, rounds=6, algorithm={**FAST, "server_optimizer": {"name": server, "lr": lr}})
    assert out.summary["final_accuracy"] > 0.85


def test_int8_and_float16_encodings_count_fewer_bytes_and_still_learn(tmp_path):
    sizes = {}
    for enc in ("float32", "float16", "int8"):
        out, store, run_id = simulate(tmp_path / enc, rounds=6, algorithm={**FAST, "encoding": enc})
        sizes[enc] = out.summary["uplink_message_bytes"]
        assert out.summary["final_accuracy"] > 0.85
    p = 2410
    assert sizes["float32"] == 62 + 4 * p
    assert sizes["float16"] == 62 + 2 * p
    assert sizes["int8"] == 62 + p + 4 * 4  # one float32 scale per tensor (4 tensors)


def test_deadline_drops_stragglers_and_dropout_is_recorded(tmp_path):
    groups = [
        {"name": "fast", "profile": "raspberry-pi-4", "count": 5, "link": "wifi"},
        {"name": "slow", "profile": "rp2040", "count": 5, "link": "uart"},
    ]
    out, store, run_id = simulate(
        tmp_path, rounds=3, fleet={"groups": groups}, algorithm={"deadline_s": 5.0}, failures={"dropout": 0.2}
    )
    rows = store.device_rounds(run_id)
    slow = [r for r in rows if r["device"] >= 5 and r["status"] != "dropped"]
    assert slow and all(r["status"] == "straggler" for r in slow)
    assert all(r["down_s"] + r["compute_s"] + r["up_s"] <= 5.0 + 1e-9 for r in rows)
    rounds = store.rounds(run_id)
    assert all(r["duration_s"] == 5.0 for r in rounds)
    kinds = {e["kind"] for e in store.events(run_id)}
    assert "straggler" in kinds and "dropout" in kinds
    assert sum(r["dropped"] for r in rounds) == sum(1 for r in rows if r["status"] == "dropped") > 0


def test_leave_join_and_permanent_failures(tmp_path):
    out, store, run_id = simulate(
        tmp_path,
        rounds=4,
        failures={
            "leave": [{"device": 1, "round": 2}],
            "join": [{"device": 2, "round": 3}, {"device": 1, "round": 4}],
            "permanent": [{"device": 3, "round": 2}],
        },
    )
    by_round = {}
    for r in store.device_rounds(run_id):
        by_round.setdefault(r["round"], set()).add(r["device"])
    # device 1 leaves at round 2 and rejoins at round 4: offline in exactly rounds 2 and 3
    assert 1 in by_round[1] and 1 not in by_round[2] and 1 not in by_round[3] and 1 in by_round[4]
    assert 2 not in by_round[2] and 2 in by_round[3]
    assert 3 in by_round[1] and all(3 not in by_round[r] for r in (2, 3, 4))
    kinds = [(e["device"], e["kind"]) for e in store.events(run_id)]
    assert (1, "leave") in kinds and (2, "join") in kinds and (3, "failure") in kinds and (1, "join") in kinds


def test_batched_engine_equals_per_device_reference(tmp_path):
    spec = validate_spec(
        spec_dict(
            partition={"method": "dirichlet", "alpha": 0.5},
            algorithm={"local_epochs": 2, "batch_size": 8, "momentum": 0.5},
        )
    )
    exp = prepare(spec)
    from tinytwin.engines.simulate import Simulator

    sim = Simulator(exp, RunStore(tmp_path / "r.db"), "x")
    ids = np.arange(10)
    w = exp.initial_params()
    ref = w.clone()
    for r in (1, 2, 3):
        fast = sim.trainer.train(w, r, ids, exp.parts)
        slow = sim.trainer.train_reference(ref, r, ids, exp.parts)
        w = fast.params.mean(0)
        ref = slow.params.mean(0)
    assert float((w - ref).abs().max()) <= 1e-5


def test_resume_after_sigkill_gives_same_final_metrics(tmp_path):
    text = """
name: resumable
seed: 11
rounds: 30
dataset: {name: digits}
partition: {method: dirichlet, alpha: 0.5}
model: {name: mlp, hidden: [32]}
fleet: {groups: [{profile: esp32-s3, count: 20, link: wifi}]}
algorithm: {local_epochs: 1, batch_size: 8, lr: 0.05, server_optimizer: {name: fedavgm, lr: 1.0}}
failures: {dropout: 0.1}
"""
    spec = write_spec(tmp_path / "spec.yaml", text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinytwin.cli", "run", str(spec), "--out", str(tmp_path / "killed"), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    db = None
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list((tmp_path / "killed").glob("*/results.db"))
        if found:
            db = found[0]
            try:
                done = sqlite3.connect(db).execute("SELECT rounds_done FROM runs").fetchone()
            except sqlite3.Error:
                done = None
            if done and done[0] >= 5:
                break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert db is not None
    status, done = sqlite3.connect(db).execute("SELECT status, rounds_done FROM runs").fetchone()
    assert status == "running" and 5 <= done < 30  # killed mid-way, finished rounds kept

    resumed = run_cli("run", str(spec), "--resume", str(db.parent), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    full = run_cli("run", str(spec), "--out", str(tmp_path / "full"), "--quiet")
    assert full.returncode == 0, full.stderr

    def final(path):
        store = RunStore(path)
        info = store.run_info()
        rows = store.rounds(info.run_id)
        return (
            info.status,
            [(r["round"], r["test_accuracy"], r["sim_time_s"], r["bytes_up"], r["energy_j"]) for r in rows],
            info.summary,
        )

    s1, rows1, sum1 = final(db)
    s2, rows2, sum2 = final(next((tmp_path / "full").glob("*/results.db")))
    assert s1 == s2 == "complete"
    assert rows1 == rows2
    for key in ("final_accuracy", "sim_time_s", "bytes_up", "bytes_down", "energy_j_per_device"):
        assert sum1[key] == sum2[key]


def test_quickstart_cli_prints_summary_and_writes_report(tmp_path):
    proc = run_cli(
        "run", str(REPO / "examples" / "quickstart.yaml"), "--out", str(tmp_path), "--quiet", "--set", "rounds=3"
    )
    assert proc.returncode == 0, proc.stderr
    assert "final accuracy" in proc.stdout and "energy per device" in proc.stdout
    (run_dir,) = list(tmp_path.iterdir())
    assert (run_dir / "report.html").stat().st_size > 10_000
    assert (run_dir / "csv" / "rounds.csv").read_text().count("\n") == 4
    assert len(list((run_dir / "plots").glob("*.png"))) >= 6


PROX_MOMENTUM = {
    "name": "fedprox",
    "mu": 0.05,
    "local_epochs": 2,
    "batch_size": 8,
    "momentum": 0.5,
    "weight_decay": 1e-3,
}
PLAIN_SGD = {"local_epochs": 2, "batch_size": 8, "lr": 0.2}


@pytest.mark.parametrize(
    "model,algorithm",
    [
        ({"name": "mlp", "hidden": [32]}, PROX_MOMENTUM),
        ({"name": "mlp", "hidden": [24, 16]}, PROX_MOMENTUM),
        ({"name": "mlp", "hidden": [32]}, PLAIN_SGD),
        ({"name": "mlp", "hidden": [24, 16]}, PLAIN_SGD),
        ({"name": "lenet5"}, PROX_MOMENTUM),
    ],
)
def test_fast_mlp_gradients_equal_the_autograd_definition(tmp_path, model, algorithm):
    """The hand-written batched MLP paths (general and fused plain SGD), the vmap path and
    the per-device loop agree."""
    spec = validate_spec(spec_dict(model=model, partition={"method": "dirichlet", "alpha": 0.5}, algorithm=algorithm))
    exp = prepare(spec)
    from tinytwin.algorithms.local_update import LocalTraining
    from tinytwin.engines.local_training import LocalTrainer

    a = spec.algorithm
    cfg = LocalTraining(a.local_epochs, a.batch_size, a.lr, a.optimizer, a.momentum, a.weight_decay, a.prox_mu)
    x, y = torch.from_numpy(exp.dataset.x_train), torch.from_numpy(exp.dataset.y_train)
    fast = LocalTrainer(exp.module, exp.layout, x, y, cfg, seed=1)
    slow = LocalTrainer(exp.module, exp.layout, x, y, cfg, seed=1, fast_path=False)
    assert (fast._mlp_grad is not None) == (model["name"] == "mlp")
    ids = np.arange(10)
    w = exp.initial_params()
    r_fast = fast.train(w, 1, ids, exp.parts)
    r_slow = slow.train(w, 1, ids, exp.parts)
    r_ref = slow.train_reference(w, 1, ids, exp.parts)
    assert float((r_fast.params - r_slow.params).abs().max()) <= 1e-5
    assert float((r_fast.params - r_ref.params).abs().max()) <= 1e-5
    np.testing.assert_allclose(r_fast.train_loss, r_ref.train_loss, atol=1e-5)


def test_evaluation_every_k_rounds_and_per_device(tmp_path):
    out, store, run_id = simulate(tmp_path, rounds=5, evaluation={"every": 2, "per_device": True})
    rounds = store.rounds(run_id)
    assert [r["round"] for r in rounds if r["test_accuracy"] is not None] == [2, 4, 5]  # every 2 and the last
    rows = [r for r in store.device_rounds(run_id) if r["round"] == 4]
    assert len(rows) == 10 and all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert all(r["accuracy"] is None for r in store.device_rounds(run_id) if r["round"] == 3)


def test_report_compare_and_devices_commands(tmp_path):
    runs = []
    for enc in ("float32", "int8"):
        proc = run_cli(
            "run",
            str(REPO / "examples" / "quickstart.yaml"),
            "--out",
            str(tmp_path / enc),
            "--quiet",
            "--set",
            "rounds=2",
            "--set",
            f"algorithm.encoding={enc}",
            "--set",
            f"name=qs-{enc}",
        )
        assert proc.returncode == 0, proc.stderr
        runs.append(next((tmp_path / enc).iterdir()))
    (runs[0] / "report.html").unlink()
    assert run_cli("report", str(runs[0])).returncode == 0
    assert (runs[0] / "report.html").is_file()
    proc = run_cli("compare", *map(str, runs), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert "qs-float32" in html and "qs-int8" in html
    proc = run_cli("devices", "nrf52840")
    assert proc.returncode == 0 and "seed 003" in proc.stdout
    proc = run_cli("devices", "--links")
    assert proc.returncode == 0 and "ieee802154" in proc.stdout
    bad = run_cli("compare", str(tmp_path / "nothing"), "--out", str(tmp_path / "cmp2"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
