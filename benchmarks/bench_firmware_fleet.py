"""Scale of the firmware twin: N firmware devices (mps2-an386) doing FedAvg rounds of the digits MLP.

Each device is a device process (the emulation twin's networking) driving one QEMU instance;
weights go through per-instance semihosting files. Reports wall time per round (the issue's
target: <= 2 s per round at 50 devices), start-up time, and the memory of every process
(device processes and their QEMU instances: RSS and PSS summed from /proc/PID/smaps_rollup).

    .venv/bin/python benchmarks/bench_firmware_fleet.py [--devices 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.spec.load import load_spec
from tinytwin.store.db import RunStore

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sets = [f"fleet.groups.0.count={args.devices}", f"rounds={args.rounds}", "partition.method=iid"]
    spec, spec_yaml = load_spec(ROOT / "examples" / "quickstart.yaml", sets)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_dir, summary = start_emulation(
            spec,
            spec_yaml,
            Path(tmp),
            ROOT / "examples",
            EmulateOptions(time_scale=0.0, firmware_all=True),
            report=False,
        )
        total = time.perf_counter() - t0
        store = RunStore(run_dir / "results.db")
        rounds = store.rounds(store.run_info().run_id)
        store.close()
    e = summary["emulate"]
    fw = e["firmware"]
    walls = [r["wall_time_s"] for r in rounds]
    print(
        f"firmware devices: {fw['devices']} on {fw['images'][0]['board']}, digits MLP "
        f"({summary['model']}), {args.rounds} FedAvg rounds, weights through semihosting files"
    )
    print(f"wall per round: {', '.join(f'{w:.2f}' for w in walls)} s (median {sorted(walls)[len(walls) // 2]:.2f} s)")
    print(
        f"start-up (build + spawn + boot + HELLO): {e.get('startup_s') or float('nan'):.2f} s; whole run {total:.1f} s"
    )
    print(
        f"device processes: RSS total {e['device_rss_kb']['total'] / 1024:.0f} MiB, "
        f"PSS total {e['device_pss_kb']['total'] / 1024:.0f} MiB"
    )
    print(
        f"QEMU instances:   RSS total {fw['qemu_rss_kb']['total'] / 1024:.0f} MiB, "
        f"PSS total {fw['qemu_pss_kb']['total'] / 1024:.0f} MiB (median RSS {fw['qemu_rss_kb']['median'] / 1024:.1f} MiB)"
    )
    print(f"all device-side processes: PSS {(e['device_pss_kb']['total'] + fw['qemu_pss_kb']['total']) / 1024:.0f} MiB")
    print(
        f"instructions per device-round (median) {fw['insns_per_round_median']:,.0f} -> "
        f"{fw['firmware_compute_s_median']:.3f} s on the device; final accuracy {summary['final_accuracy']:.4f}"
    )


if __name__ == "__main__":
    main()
