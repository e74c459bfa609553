"""Benchmark 1 of issue #4: tinytwin against Flower on the same workload, in one run.

    .venv/bin/python benchmarks/bench_vs_flower.py [--cpus 2] [--keep DIR] [--idle-wait 300] [--nice 0]

The workload (benchmarks/specs/digits_vs_flower.yaml; benchmarks/flower_digits/ for Flower):
scikit-learn digits, first 1500 samples train and last 297 test; 100 clients with 15 IID
samples each; MLP 64-32-10; sample-weighted FedAvg over every client every round; 20 rounds
of 5 local epochs of plain SGD (lr 0.1, batch 8: 2 steps per epoch, the second of 7
samples); the global model evaluated on the test set after every round.

Steps:

1. Make sure the Flower virtualenv exists (runs benchmarks/flower_setup.sh when it does not).
2. Untimed preparation: export tinytwin's partition
   (``tinytwin.data.partition.partition(labels, 100, method="iid", seed=SEED)``) and a
   SHA-256 of tinytwin's digits arrays; the Flower app refuses to run if its own arrays
   differ, and trains client ``i`` on exactly tinytwin's device ``i`` samples. Both
   interpreters import torch once so neither pays for a cold page cache.
3. tinytwin: ``tinytwin run SPEC --quiet --no-report`` (the CLI, writing its run folder and
   results database; the CSV/plots/HTML report is skipped, as Flower renders none)
   in a child process of the project venv. A thin wrapper times ``Simulator.run`` (round 1
   start to last round end, including the per-round database writes), counts the local
   optimizer steps, and checks the partition the engine used against the exported one.
4. Flower: ``python -m flower_digits.run`` in a child process of the Flower venv
   (``flwr.simulation.run_simulation``, Ray with ``--cpus`` CPUs, one CPU per ClientApp
   actor); the ServerApp stamps the end of every round's centralized evaluation.
5. Print one JSON object: process wall times (child start to exit, measured here), loop
   times, flower/tinytwin ratios, final accuracies and their difference in percentage
   points, memory, the work each side did, and pass/fail for the issue's targets
   (loop >= 100x faster, process wall >= 20x faster, accuracy within 1 pp).

Memory: ``peak_rss_mb`` is the peak sum of RSS over the child and every process it started
(Ray's daemons and actors included), sampled every 0.1 s, or the child's ``ru_maxrss``
(from ``os.wait4``) where that is larger; ``memory_detail_mb`` adds the peak sum of PSS,
which splits shared pages (Ray's object store, shared libraries) between the processes
mapping them. ``contention`` says how many cores other processes used during each timed
run; before each, the script waits (``--idle-wait``) for the 2-core machine to go quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# CLOCK_MONOTONIC is system-wide on Linux: stamps taken here, in the tinytwin child and in
# Flower's ServerApp can be compared, which splits each process's wall time into phases.
_T_START = time.monotonic()

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SPEC = BENCH / "specs" / "digits_vs_flower.yaml"
FLOWER_VENV = BENCH / ".flower-venv"
FLOWER_PY = FLOWER_VENV / "bin" / "python"
PROJECT_PY = REPO / ".venv" / "bin" / "python"

TARGET_LOOP_SPEEDUP = 100.0
TARGET_WALL_SPEEDUP = 20.0
TARGET_ACCURACY_PP = 1.0


# --------------------------------------------------------------------------- children


def export_child(out_dir: Path) -> None:
    """Project venv: write the partition tinytwin will use and a digest of its digits arrays."""
    import hashlib

    import numpy as np
    import torch  # noqa: F401  (warms the page cache for the timed run)

    from tinytwin.data.datasets import load_dataset
    from tinytwin.data.partition import partition
    from tinytwin.engines.experiment import prepare
    from tinytwin.spec.load import load_spec

    spec, _ = load_spec(SPEC)
    # The engine's initial global model (torch default init under manual_seed(seed)): the
    # Flower side checks that its own Net() under the same seed starts from the same weights.
    np.save(out_dir / "initial_params.npy", prepare(spec, SPEC.parent).initial_params().numpy())
    ds = load_dataset(spec.dataset.name, digits_split=spec.dataset.split)
    n = spec.fleet.num_devices
    parts = partition(ds.y_train, n, method=spec.partition.method, seed=spec.seed)
    np.savez(
        out_dir / "partition.npz",
        indices=np.concatenate(parts),
        sizes=np.array([len(p) for p in parts], dtype=np.int64),
    )
    h = hashlib.sha256()
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        h.update(np.ascontiguousarray(a).tobytes())
    a = spec.algorithm
    info = {
        "digest": h.hexdigest(),
        "devices": n,
        "seed": spec.seed,
        "rounds": spec.rounds,
        "local_epochs": a.local_epochs,
        "batch_size": a.batch_size,
        "lr": a.lr,
        "train_samples": int(len(ds.y_train)),
        "test_samples": int(len(ds.y_test)),
        "samples_per_device": sorted({len(p) for p in parts}),
    }
    (out_dir / "export.json").write_text(json.dumps(info))


def tinytwin_child(result_path: Path, partition_path: Path, cli_args: list[str]) -> None:
    """Project venv: run the ``tinytwin`` CLI with a timing wrapper around the round loop."""
    from tinytwin.engines.simulate import Simulator

    timing: dict = {"steps": 0, "trained_devices": 0}
    seen: dict = {}
    original_run = Simulator.run

    def timed_run(self, state, progress=None):
        seen["parts"] = self.exp.parts
        trainer = getattr(self, "trainer", None)
        if trainer is not None and hasattr(trainer, "train"):
            train = trainer.train

            def counted(*args, **kwargs):
                res = train(*args, **kwargs)
                timing["steps"] += int(res.steps.sum())
                timing["trained_devices"] += int(len(res.steps))
                return res

            trainer.train = counted
        timing["process_start_mono"] = _T_START
        t0 = time.perf_counter()
        timing["loop_start_mono"] = time.monotonic()
        try:
            return original_run(self, state, progress)
        finally:
            timing["loop_s"] = time.perf_counter() - t0
            timing["loop_end_mono"] = time.monotonic()

    Simulator.run = timed_run
    from tinytwin.cli import main

    sys.argv = ["tinytwin", *cli_args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        if "parts" in seen:
            import numpy as np

            with np.load(partition_path) as f:
                exported = np.split(f["indices"], np.cumsum(f["sizes"])[:-1])
            timing["partition_matches_export"] = len(exported) == len(seen["parts"]) and all(
                np.array_equal(a, b) for a, b in zip(exported, seen["parts"])
            )
        result_path.write_text(json.dumps(timing))
    sys.exit(code)


# --------------------------------------------------------------------------- measuring


PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores; not idle, not iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by every process on the machine, with its command name."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    raw = fh.read()
                name = raw[raw.index("(") + 1 : raw.rindex(")")]
                st = raw.rsplit(")", 1)[1].split()
                out[int(entry.name)] = (name, (int(st[11]) + int(st[12])) / CLK_TCK)
            except (OSError, ValueError, IndexError):
                pass
    return out


class TreeSampler(threading.Thread):
    """Peak summed RSS and PSS of a process and all its descendants, sampled from /proc.

    Cheap on purpose, so the sampler does not slow down what it measures: the process tree
    is rescanned every 0.5 s, RSS (/proc/PID/statm) read every 0.1 s, PSS (smaps_rollup,
    which walks page tables) every 1 s. It also keeps each process's last-seen CPU time,
    so the CPU used by *other* processes during a measurement can be reported.
    """

    def __init__(self, root: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.known: set[int] = {root}
        self.alive: set[int] = {root}
        self.cpu_s: dict[int, float] = {}
        self.peak_rss_kb = self.peak_pss_kb = 0
        self.max_processes = 0
        self.stop_event = threading.Event()

    @staticmethod
    def _stat(pid: int) -> list[str] | None:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None

    def _rescan(self) -> None:
        parents = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                st = self._stat(int(entry.name))
                if st is not None:
                    parents[int(entry.name)] = int(st[1])
        # Keep processes once seen (Ray's daemons may be re-parented) and add their new children.
        alive = {p for p in self.known if p in parents}
        grew = True
        while grew:
            new = {p for p, pp in parents.items() if pp in alive and p not in alive}
            alive |= new
            grew = bool(new)
        self.known |= alive
        self.alive = alive
        self.max_processes = max(self.max_processes, len(alive))

    def sample(self, tick: int) -> None:
        if tick % 5 == 0:
            self._rescan()
        rss = pss = 0
        for pid in list(self.alive):
            try:
                with open(f"/proc/{pid}/statm") as fh:
                    rss += int(fh.read().split()[1]) * PAGE_KB
                st = self._stat(pid)
                if st is not None:
                    self.cpu_s[pid] = (int(st[11]) + int(st[12])) / CLK_TCK
                if tick % 10 == 0:
                    with open(f"/proc/{pid}/smaps_rollup") as fh:
                        for line in fh:
                            if line.startswith("Pss:"):
                                pss += int(line.split()[1])
                                break
            except (OSError, ValueError, IndexError):
                pass
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)

    def run(self) -> None:
        tick = 0
        while not self.stop_event.is_set():
            self.sample(tick)
            tick += 1
            self.stop_event.wait(self.interval)


def wait_until_idle(max_wait_s: float, threshold_cores: float = 0.2, window_s: float = 1.0, windows: int = 5) -> dict:
    """Wait (at most ``max_wait_s``) until other processes use < ``threshold_cores`` for ``windows`` windows.

    The machine has 2 cores: anything else running (a test suite, a pip install) halves
    what either framework gets and makes the comparison noise.
    """
    t0 = time.perf_counter()
    quiet, last = 0, 0.0
    while True:
        b0 = machine_busy_s()
        time.sleep(window_s)
        last = (machine_busy_s() - b0) / window_s
        quiet = quiet + 1 if last < threshold_cores else 0
        waited = time.perf_counter() - t0
        if quiet >= windows or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "busy_cores_before": round(last, 2), "idle": quiet >= windows}


def measure(cmd: list[str], env: dict[str, str], log_path: Path, idle_wait_s: float, nice: int = 0) -> dict:
    """Run ``cmd`` to completion: wall time from spawn to exit, peak memory, exit status, contention.

    ``nice`` (the same for both frameworks) is applied to the child and so to every process
    it starts; a negative value (root only) lets a timed run keep its cores on a shared machine.
    """
    gate = wait_until_idle(idle_wait_s)
    if not gate["idle"]:
        print(
            f"warning: the machine is still busy ({gate['busy_cores_before']} cores used by other processes) "
            f"after waiting {gate['waited_s']} s; timings will be slower than on an idle machine",
            file=sys.stderr,
            flush=True,
        )
    with open(log_path, "w") as log:
        busy0, procs0 = machine_busy_s(), cpu_by_process()
        t0 = time.perf_counter()
        spawn_mono = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        sampler = TreeSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy, procs1 = machine_busy_s() - busy0, cpu_by_process()
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop_event.set()
        sampler.join()
    # Ray's daemons can outlive the driver by a moment: count them, and wait for them to go.
    leftovers = [p for p in sampler.known if Path(f"/proc/{p}").exists() and p != proc.pid]
    t_exit = time.perf_counter()
    while any(Path(f"/proc/{p}").exists() for p in leftovers) and time.perf_counter() - t_exit < 60:
        time.sleep(0.1)
    still = [p for p in leftovers if Path(f"/proc/{p}").exists()]
    if proc.returncode != 0:
        sys.stderr.write(log_path.read_text()[-4000:])
        raise SystemExit(
            f"{cmd[0]} {' '.join(cmd[1:4])} ... failed with exit status {proc.returncode}; log: {log_path}"
        )
    # Who else used the CPU meanwhile (processes alive at the end, outside the measured tree).
    others = sorted(
        (
            (cpu - procs0.get(pid, ("", 0.0))[1], f"{name}[{pid}]")
            for pid, (name, cpu) in procs1.items()
            if pid not in sampler.known and pid != os.getpid()
        ),
        reverse=True,
    )
    child_cpu = usage.ru_utime + usage.ru_stime
    tree_cpu = max(child_cpu, sum(sampler.cpu_s.values()))
    return {
        "wall_s": wall,
        "spawn_mono": spawn_mono,
        "largest_process_maxrss_mb": usage.ru_maxrss / 1024,
        "peak_tree_rss_mb": sampler.peak_rss_kb / 1024,
        "peak_tree_pss_mb": sampler.peak_pss_kb / 1024,
        "max_processes": sampler.max_processes,
        "tree_cpu_s": tree_cpu,
        "other_processes_cores": max(0.0, busy - tree_cpu) / wall,
        "idle_gate": gate,
        "top_other_processes": [f"{who} {cpu:.1f}s" for cpu, who in others[:3] if cpu >= 0.5],
        "processes_left_at_exit": len(leftovers),
        "s_until_all_gone": round(time.perf_counter() - t_exit, 1) if leftovers else 0.0,
        "processes_still_running": still,
    }


def ensure_flower_venv() -> dict:
    info: dict = {"path": str(FLOWER_VENV.relative_to(REPO)), "setup_s": None}
    if not FLOWER_PY.exists():
        print(f"{FLOWER_VENV} is missing: running benchmarks/flower_setup.sh", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        subprocess.run(["bash", str(BENCH / "flower_setup.sh")], check=True, stdout=sys.stderr)
        info["setup_s"] = round(time.perf_counter() - t0, 1)
    du = subprocess.run(["du", "-sm", str(FLOWER_VENV)], capture_output=True, text=True)
    info["size_mb"] = int(du.stdout.split()[0]) if du.returncode == 0 else None
    versions = subprocess.run(
        [
            str(FLOWER_PY),
            "-c",
            "import importlib.metadata as m, json; "
            "print(json.dumps({p: m.version(p) for p in ('flwr', 'ray', 'torch', 'numpy', 'scikit-learn')}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    info["versions"] = json.loads(versions.stdout)
    return info


def read_rounds(run_dir: Path) -> list[dict]:
    con = sqlite3.connect(run_dir / "results.db")
    con.row_factory = sqlite3.Row
    try:
        return [
            dict(r)
            for r in con.execute("SELECT round, completed, test_accuracy, wall_time_s FROM rounds ORDER BY round")
        ]
    finally:
        con.close()


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs for Ray (one ClientApp actor each)")
    parser.add_argument("--keep", type=Path, help="keep the run folders and logs in this folder")
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=300.0,
        help="before each timed run, wait up to this many seconds for other processes to go quiet",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness increment for both timed runs (e.g. -10 as root on a shared machine)",
    )
    parser.add_argument("--export-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tinytwin-child", nargs=2, type=Path, metavar=("RESULT", "PARTITION"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.export_child:
        export_child(args.export_child)
        return
    if args.tinytwin_child:
        tinytwin_child(*args.tinytwin_child, [a for a in rest if a != "--"])
        return

    project_py = str(PROJECT_PY if PROJECT_PY.exists() else Path(sys.executable))
    flower = ensure_flower_venv()
    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="bench-vs-flower-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)

    # 2. untimed preparation
    subprocess.run([project_py, __file__, "--export-child", str(work)], check=True, env=env, cwd=REPO)
    export = json.loads((work / "export.json").read_text())
    subprocess.run(
        [str(FLOWER_PY), "-c", "import torch, sklearn, numpy, flwr.simulation, ray"], check=True, env=env, cwd=REPO
    )

    # 3. tinytwin
    tt_out = work / "tinytwin-runs"
    tt_result = work / "tinytwin-timing.json"
    tt = measure(
        [
            project_py,
            __file__,
            "--tinytwin-child",
            str(tt_result),
            str(work / "partition.npz"),
            "--",
            "run",
            str(SPEC),
            "--quiet",
            "--no-report",
            "--out",
            str(tt_out),
        ],
        env,
        work / "tinytwin.log",
        args.idle_wait,
        args.nice,
    )
    timing = json.loads(tt_result.read_text())
    (run_dir,) = [p for p in tt_out.iterdir() if p.is_dir()]
    rows = read_rounds(run_dir)
    tt_round_s = [r["wall_time_s"] for r in rows]
    tt_loop = timing.get("loop_s", sum(tt_round_s))
    tt_acc = rows[-1]["test_accuracy"]

    # 4. Flower
    fl_result = work / "flower-result.json"
    fl_env = dict(
        env,
        PYTHONPATH=str(BENCH),
        FLWR_TELEMETRY_ENABLED="0",
        FLOWER_DIGITS_PARTITION=str(work / "partition.npz"),
        FLOWER_DIGITS_RESULT=str(fl_result),
        FLOWER_DIGITS_INIT_CHECK=str(work / "initial_params.npy"),
        FLOWER_DIGITS_ROUNDS=str(export["rounds"]),
        FLOWER_DIGITS_CLIENTS=str(export["devices"]),
        FLOWER_DIGITS_SEED=str(export["seed"]),
        FLOWER_DIGITS_EPOCHS=str(export["local_epochs"]),
        FLOWER_DIGITS_BATCH=str(export["batch_size"]),
        FLOWER_DIGITS_LR=str(export["lr"]),
    )
    fl = measure(
        [str(FLOWER_PY), "-m", "flower_digits.run", "--cpus", str(args.cpus), "--check-digest", export["digest"]],
        fl_env,
        work / "flower.log",
        args.idle_wait,
        args.nice,
    )
    fr = json.loads(fl_result.read_text())
    fl_loop, fl_acc = fr["loop_s"], fr["final_accuracy"]

    def phases(m: dict, loop_start: float | None, loop_end: float | None) -> dict | None:
        if loop_start is None or loop_end is None:
            return None
        return {
            "spawn_to_loop_start": _r(loop_start - m["spawn_mono"], 2),
            "loop": _r(loop_end - loop_start, 3),
            "loop_end_to_exit": _r(m["spawn_mono"] + m["wall_s"] - loop_end, 2),
        }

    loop_ratio = fl_loop / tt_loop
    wall_ratio = fl["wall_s"] / tt["wall_s"]
    diff_pp = (tt_acc - fl_acc) * 100
    n, rounds = export["devices"], export["rounds"]
    steps_expected = n * rounds * export["local_epochs"] * -(-export["samples_per_device"][-1] // export["batch_size"])
    result = {
        "benchmark": "issue #4 benchmark 1: tinytwin vs Flower, digits, 100 IID clients, MLP 64-32-10, "
        "FedAvg, 20 rounds x 5 epochs, batch 8, SGD lr 0.1",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "ray_cpus": args.cpus,
            "nice": args.nice,
        },
        "flower_venv": flower,
        "process_wall_s": {"tinytwin": _r(tt["wall_s"]), "flower": _r(fl["wall_s"])},
        "loop_s": {"tinytwin": _r(tt_loop, 4), "flower": _r(fl_loop)},
        "process_wall_phases_s": {
            "tinytwin": phases(tt, timing.get("loop_start_mono"), timing.get("loop_end_mono")),
            "flower": phases(fl, fr.get("loop_start_mono"), fr.get("loop_end_mono")),
        },
        "ratio_flower_over_tinytwin": {"loop": _r(loop_ratio, 1), "process_wall": _r(wall_ratio, 1)},
        "final_accuracy": {"tinytwin": _r(tt_acc, 4), "flower": _r(fl_acc, 4)},
        "accuracy_diff_pp": _r(diff_pp, 2),
        "peak_rss_mb": {
            "tinytwin": _r(max(tt["peak_tree_rss_mb"], tt["largest_process_maxrss_mb"]), 1),
            "flower": _r(max(fl["peak_tree_rss_mb"], fl["largest_process_maxrss_mb"]), 1),
        },
        "memory_detail_mb": {
            side: {
                "largest_process_maxrss": _r(m["largest_process_maxrss_mb"], 1),
                "peak_tree_rss": _r(m["peak_tree_rss_mb"], 1),
                "peak_tree_pss": _r(m["peak_tree_pss_mb"], 1),
                "max_processes": m["max_processes"],
            }
            for side, m in (("tinytwin", tt), ("flower", fl))
        },
        "cpu_s": {"tinytwin": _r(tt["tree_cpu_s"], 2), "flower": _r(fl["tree_cpu_s"], 2)},
        "contention": {
            side: {
                "other_processes_cores_during_run": _r(m["other_processes_cores"], 2),
                "top_other_processes_cpu": m["top_other_processes"],
                "idle_gate": m["idle_gate"],
            }
            for side, m in (("tinytwin", tt), ("flower", fl))
        },
        "rounds_detail": {
            "tinytwin_round_wall_sum_s": _r(sum(tt_round_s), 4),
            "tinytwin_round1_s": _r(tt_round_s[0], 4),
            "tinytwin_median_round_s_2_to_last": _r(statistics.median(tt_round_s[1:]), 5),
            "flower_round1_s": _r(fr["round_s"][0]),
            "flower_median_round_s_2_to_last": _r(statistics.median(fr["round_s"][1:]), 4),
            "steady_state_ratio_median_round": _r(
                statistics.median(fr["round_s"][1:]) / statistics.median(tt_round_s[1:]), 1
            ),
            "flower_loop_excl_round1_s": _r(fl_loop - fr["round_s"][0]),
            "tinytwin_loop_excl_round1_s": _r(tt_loop - tt_round_s[0], 4),
        },
        "work_check": {
            "same_digits_arrays_sha256": export["digest"][:16],
            "tinytwin_partition_matches_export": timing.get("partition_matches_export"),
            "local_steps_expected": steps_expected,
            "local_steps": {"tinytwin": timing.get("steps"), "flower": sum(r["steps"] for r in fr["per_round"])},
            "client_updates": {
                "tinytwin": sum(r["completed"] for r in rows),
                "flower": sum(r["replies"] - r["errors"] for r in fr["per_round"]),
            },
            "train_samples_per_round": {"flower": sorted({r["samples"] for r in fr["per_round"]})},
            "evaluations_of_global_model": {
                "tinytwin": sum(r["test_accuracy"] is not None for r in rows),
                "flower": len(fr["accuracy"]) - 1,
            },
            "flower_same_initial_weights_as_tinytwin": fr.get("same_initial_weights"),
            "flower_processes_left_at_exit": fl["processes_left_at_exit"],
            "flower_s_until_they_exited": fl["s_until_all_gone"],
        },
        "accuracy_curve": {
            "tinytwin": [_r(r["test_accuracy"], 4) for r in rows],
            "flower": [_r(a, 4) for a in fr["accuracy"][1:]],
        },
        "targets": {
            "loop_speedup_ge_100x": {
                "target": TARGET_LOOP_SPEEDUP,
                "measured": _r(loop_ratio, 1),
                "pass": loop_ratio >= TARGET_LOOP_SPEEDUP,
            },
            "process_wall_speedup_ge_20x": {
                "target": TARGET_WALL_SPEEDUP,
                "measured": _r(wall_ratio, 1),
                "pass": wall_ratio >= TARGET_WALL_SPEEDUP,
            },
            "accuracy_within_1pp": {
                "target": TARGET_ACCURACY_PP,
                "measured": _r(abs(diff_pp), 2),
                "pass": abs(diff_pp) <= TARGET_ACCURACY_PP,
            },
        },
        "artifacts": str(work) if args.keep else None,
    }
    busy = {side: m["other_processes_cores"] for side, m in (("tinytwin", tt), ("flower", fl))}
    result["contention"]["contended"] = any(v > 0.2 for v in busy.values())
    if result["contention"]["contended"]:
        print(
            "warning: other processes used > 0.2 cores during a timed run (see 'contention'); "
            "rerun on a quiet machine for clean timings",
            file=sys.stderr,
            flush=True,
        )
    leftover = tt["processes_still_running"] + fl["processes_still_running"]
    if leftover:
        print(f"warning: processes started by the benchmark still running: {leftover}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
