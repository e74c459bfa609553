"""The GPU benchmark's smoke mode on the CPU: it runs the engine's path and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_bench_gpu_smoke_mode_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "benchmarks/bench_gpu.py", "--device", "cpu", "--sizes", "100,1000,100000000"]
    cmd += ["--rounds", "1", "--check-devices", "20", "--budget-s", "60", "--chunk", "300", "--out", str(out)]
    cmd += ["--dfl-sizes", "300,100000000"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["torch"]
    assert result["numerical_check"]["passed"] and result["numerical_check"]["max_rel_diff"] == 0.0
    small, large, huge = result["sizes"]
    for row in (small, large):
        assert row["status"] == "measured" and row["seconds_per_round_median"] > 0
        assert row["device_updates_per_s"] > 0
        assert row["accuracy_per_round"][-1] > row["accuracy_per_round"][0]  # FedAvg learns
    assert large["chunk_size"] == 300  # 1 000 devices streamed in chunks
    assert huge["status"] == "skipped" and "budget" in huge["reason"]  # the time guard
    dfl = result["decentralized"]
    assert dfl["numerical_check"]["passed"]
    mesh, too_big = dfl["sizes"]
    assert mesh["status"] == "measured" and mesh["edges"] > mesh["devices"]  # mean degree 8 on the geometric graph
    accs = mesh["mean_accuracy_of_sampled_devices"]
    assert accs[-1] > accs[0]  # DecFedAvg learns
    assert too_big["status"] == "skipped" and "budget" in too_big["reason"]


def test_bench_gpu_trains_the_timed_fleet_in_the_precision_asked(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "benchmarks/bench_gpu.py", "--device", "cpu", "--sizes", "200", "--rounds", "1"]
    cmd += [
        "--check-devices",
        "20",
        "--budget-s",
        "60",
        "--dfl-sizes",
        "",
        "--precision",
        "bfloat16",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["precision"] == "bfloat16" and result["numerical_check"]["passed"]
    (row,) = result["sizes"]
    assert row["status"] == "measured" and row["accuracy_per_round"][-1] > row["accuracy_per_round"][0]
