"""200 emulated devices gossiping device to device for 20 rounds (issue #5, scale benchmark).

Zwe³'s largest emulated fleet: 200 ESP32-S3-class devices on a small-world mesh (k = 4,
beta = 0.2), MNIST, 150 training samples each, MLP 784-32-10 (25 450 parameters, 101.9 kB
per model frame) — ``examples/zwe3-scalability.yaml`` with ``algorithm.name=gossip`` (push to
one random neighbour per round, average merge). Every device is its own OS process
(forked from one fork server), models go device to device over direct TCP connections,
the coordinator is only directory and metrics collector; models are reported to it for
evaluation every ``--every`` rounds. Prints wall time per round, the RSS and PSS of all
processes (coordinator + fork server + devices, /proc/PID/smaps_rollup, the largest total
over the sampling instants), coordinator and device CPU, and the simulator's accuracy on the
same spec for reference.

    .venv/bin/python benchmarks/bench_emulate_gossip.py [--devices 200] [--rounds 20] [--every 5]
        [--time-scale 0] [--no-simulate]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "zwe3-scalability.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--every", type=int, default=5, help="evaluation.every (models reported to the coordinator)")
    parser.add_argument("--time-scale", type=float, default=0.0)
    parser.add_argument("--no-simulate", action="store_true", help="skip the simulator reference run")
    args = parser.parse_args()

    from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
    from tinytwin.engines.runner import start_run
    from tinytwin.spec.load import load_spec
    from tinytwin.store.db import RunStore

    sets = [
        "algorithm.name=gossip",
        f"fleet.groups.0.count={args.devices}",
        f"rounds={args.rounds}",
        f"evaluation.every={args.every}",
    ]
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        spec, text = load_spec(SPEC, sets)
        t0 = time.perf_counter()
        run_dir, s = start_emulation(
            spec, text, Path(tmp) / "emu", SPEC.parent, EmulateOptions(time_scale=args.time_scale), report=False
        )
        wall = time.perf_counter() - t0
        store = RunStore(run_dir / "results.db")
        rows = store.rounds(store.run_info().run_id)
        store.close()
        sim_acc = None
        if not args.no_simulate:
            spec, text = load_spec(SPEC, sets)
            sim_acc = start_run(spec, text, Path(tmp) / "sim", SPEC.parent, report=False).summary["final_accuracy"]
    e = s["emulate"]
    per_round = [round(r["wall_time_s"], 2) for r in rows]
    walls = sorted(r["wall_time_s"] for r in rows)
    mib = 1 / 1024
    out = {
        "devices": args.devices,
        "rounds": args.rounds,
        "time_scale": args.time_scale,
        "model_frame_bytes": s["message_payload_bytes"] + 62,
        "loadavg_1_5_15_before": [round(x, 2) for x in load0],
        "startup_s": round(e["startup_s"], 2),
        "wall_per_round_s": {
            "median": round(walls[len(walls) // 2], 3),
            "mean": round(sum(walls) / len(walls), 3),
            "max": round(walls[-1], 3),
        },
        "wall_per_round_list_s": per_round,
        "wall_total_s": round(wall, 1),
        "all_processes_mib": {k.lower(): round(v * mib) for k, v in e["all_processes_kb"].items()},
        "device_rss_mib": {
            "median": round(e["device_rss_kb"]["median"] * mib, 1),
            "max": round(e["device_rss_kb"]["max"] * mib, 1),
            "total": round(e["device_rss_kb"]["total"] * mib),
        },
        "device_pss_mib": {
            "median": round(e["device_pss_kb"]["median"] * mib, 1),
            "max": round(e["device_pss_kb"]["max"] * mib, 1),
            "total": round(e["device_pss_kb"]["total"] * mib),
        },
        "coordinator_mib": {k.lower(): round(v * mib) for k, v in e["coordinator_kb"].items() if k in ("Rss", "Pss")},
        "forkserver_mib": {k.lower(): round(v * mib) for k, v in e["forkserver_kb"].items() if k in ("Rss", "Pss")},
        "coordinator_cpu_s": round(e["coordinator_cpu_s"], 2),
        "coordinator_cpu_s_per_round": round(e["coordinator_cpu_s"] / args.rounds, 3),
        "devices_cpu_s": round(e["devices_cpu_s"], 1),
        "memory_sampling_s": round(e["memory_sampling_s"], 2),
        "messages": s["messages"],
        "bytes_device_to_device": s["bytes_up"],
        "control_bytes": e["control_bytes"],
        "frames_rejected": e["frames_rejected"],
        "merge_timeouts": e["merge_timeouts"],
        "devices_with_torch": e["devices_with_torch"],
        "final_mean_accuracy_emulate": round(s["final_accuracy"], 4),
        "final_mean_accuracy_simulate": None if sim_acc is None else round(sim_acc, 4),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
