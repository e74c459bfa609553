"""Issue #16: tinytwin against Flower on the same workloads, interleaved, in one run.

    .venv/bin/python benchmarks/bench_vs_flower.py [--reps 3] [--workloads 100x20 1000x5] [--cpus 2]
        [--keep DIR] [--idle-wait 300] [--nice 0] [--pause PID ...] [--from-json]

The workload (benchmarks/specs/digits_vs_flower.yaml; benchmarks/flower_digits/ for Flower):
scikit-learn digits, first 1500 samples train and last 297 test; IID clients; MLP 64-32-10;
sample-weighted FedAvg over every client every round; 5 local epochs of plain SGD (lr 0.1,
batch 8, the last batch short); the global model evaluated on the test set after every
round. Two sizes (the spec's ``fleet.groups.0.count`` and ``rounds`` set with ``--set``):

- ``100x20``: 100 clients of 15 samples, 20 rounds (2 steps per epoch);
- ``1000x5``: 1 000 clients of 1 or 2 samples (tinytwin's IID split of 1 500 samples:
  sizes differ by at most one, so every client holds at least one), 5 rounds (1 step per epoch).

Steps:

1. Make sure the Flower virtualenv exists (runs benchmarks/flower_setup.sh when it does not).
2. Untimed preparation, per workload: export tinytwin's partition
   (``tinytwin.data.partition.partition(labels, N, method="iid", seed=SEED)``), its SHA-256,
   and a SHA-256 of tinytwin's digits arrays; the Flower app refuses to run if its own arrays
   differ, trains client ``i`` on exactly tinytwin's device ``i`` samples and reports the
   digest of the partition it loaded; the tinytwin wrapper checks the partition its engine
   used against the export. Both interpreters import torch once so neither pays for a cold
   page cache.
3. ``--reps`` rounds of runs: in each, for each workload, one tinytwin and one Flower run,
   their order alternating from rep to rep (tinytwin first in even reps).

   - tinytwin: ``tinytwin run SPEC --set ... --quiet --no-report`` (the CLI, writing its run
     folder and results database; the CSV/plots/HTML report is skipped, as Flower renders
     none) in a child process of the project venv. A thin wrapper stamps (CLOCK_MONOTONIC,
     machine-wide) the end of the CLI import, of the engine import (torch), the start and
     end of ``Simulator.run`` and the end of every round (database write included), counts
     the local optimizer steps, and checks the partition.
   - Flower: ``python -m flower_digits.run`` in a child process of the Flower venv
     (``flwr.simulation.run_simulation``, Ray with ``--cpus`` CPUs, one CPU per ClientApp
     actor); the ServerApp stamps the end of every round's centralized evaluation.

4. Per workload, min / median / max over the reps of: process wall (child start to exit,
   measured here), loop (round 1 start to last round end), steady-state round (median of
   rounds 2..R on each side, so Flower's first round, which starts Ray's actors, is
   excluded), the Flower/tinytwin ratios of these (rep i's Flower run over rep i's tinytwin
   run), final accuracies and their difference in percentage points, peak memory, the
   phases of tinytwin's process; pass/fail of the issue's targets on the median ratio:

   - ``100x20``: process wall >= 25x, steady-state round >= 150x;
   - ``1000x5``: process wall >= 30x, steady-state round >= 150x;
   - both: final accuracies within 1 pp.

5. Write docs/results/vs-flower.json and the generated block of docs/benchmarks.md
   (``--from-json`` re-renders the block only); print the JSON.

Memory: ``peak_rss_mb`` is the peak sum of RSS over the child and every process it started
(Ray's daemons and actors included), sampled every 0.1 s, or the child's ``ru_maxrss``
(from ``os.wait4``) where that is larger; ``peak_pss_mb`` is the peak sum of PSS, which
splits shared pages (Ray's object store, shared libraries) between the processes mapping
them. ``contention`` says how many cores other processes used during each timed run; before
each, the script waits (``--idle-wait``) for the 2-core machine to go quiet. ``--pause PID``
stops (SIGSTOP) that process and its children for each timed run, from before the idle wait
until the run's processes are gone, and resumes them (SIGCONT) right after, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

from tinytwin.engines.cpu_load import machine_busy_s  # torch-free: the driver stays light

# CLOCK_MONOTONIC is system-wide on Linux: stamps taken here, in the tinytwin child and in
# Flower's ServerApp can be compared, which splits each process's wall time into phases.
_T_START = time.monotonic()

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))
from idle import wait_for_idle  # noqa: E402  (one idle wait for the benchmarks)

SPEC = BENCH / "specs" / "digits_vs_flower.yaml"
FLOWER_VENV = BENCH / ".flower-venv"
FLOWER_PY = FLOWER_VENV / "bin" / "python"
PROJECT_PY = REPO / ".venv" / "bin" / "python"
RESULTS = REPO / "docs" / "results" / "vs-flower.json"
DOC = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- BEGIN vs-flower (generated by benchmarks/bench_vs_flower.py; do not edit) -->"
END = "<!-- END vs-flower -->"

#: The issue's workloads and targets (Flower / tinytwin, on the median over the reps).
WORKLOADS: dict[str, dict[str, Any]] = {
    "100x20": {"clients": 100, "rounds": 20, "targets": {"process_wall": 25.0, "steady_round": 150.0}},
    "1000x5": {"clients": 1000, "rounds": 5, "targets": {"process_wall": 30.0, "steady_round": 150.0}},
}
TARGET_ACCURACY_PP = 1.0


def overrides(workload: str) -> list[str]:
    """The ``--set`` items that turn the spec (100 clients, 20 rounds) into ``workload``."""
    w = WORKLOADS[workload]
    return [f"fleet.groups.0.count={w['clients']}", f"rounds={w['rounds']}"]


def partition_digest(parts: list) -> str:
    """SHA-256 of a partition: every client's int64 indices, in order, and the client sizes."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    h.update(np.array([len(p) for p in parts], dtype=np.int64).tobytes())
    for p in parts:
        h.update(np.ascontiguousarray(p, dtype=np.int64).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- children


def export_child(out_dir: Path, sets: list[str]) -> None:
    """Project venv: write the partition tinytwin will use and a digest of its digits arrays."""
    import hashlib

    import numpy as np
    import torch  # noqa: F401  (warms the page cache for the timed run)

    from tinytwin.data.datasets import load_dataset
    from tinytwin.data.partition import partition
    from tinytwin.engines.experiment import prepare
    from tinytwin.spec.load import load_spec

    spec, _ = load_spec(SPEC, sets)
    # The engine's initial global model (torch default init under manual_seed(seed)): the
    # Flower side checks that its own Net() under the same seed starts from the same weights.
    np.save(out_dir / "initial_params.npy", prepare(spec, SPEC.parent).initial_params().numpy())
    ds = load_dataset(spec.dataset.name, digits_split=spec.dataset.split)
    n = spec.fleet.num_devices
    p = spec.partition
    parts = partition(
        ds.y_train,
        n,
        method=p.method,
        seed=spec.seed,
        min_samples=p.min_samples,
        samples_per_device=p.samples_per_device,
    )
    np.savez(
        out_dir / "partition.npz",
        indices=np.concatenate(parts),
        sizes=np.array([len(p) for p in parts], dtype=np.int64),
    )
    h = hashlib.sha256()
    for arr in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        h.update(np.ascontiguousarray(arr).tobytes())
    a = spec.algorithm
    info = {
        "digest": h.hexdigest(),
        "partition_sha256": partition_digest(parts),
        "devices": n,
        "seed": spec.seed,
        "rounds": spec.rounds,
        "local_epochs": a.local_epochs,
        "batch_size": a.batch_size,
        "lr": a.lr,
        "train_samples": int(len(ds.y_train)),
        "test_samples": int(len(ds.y_test)),
        "samples_per_device": sorted({len(p) for p in parts}),
        # Local optimizer steps both sides must take: every client, every round, every epoch.
        "local_steps_expected": spec.rounds * a.local_epochs * sum(-(-len(p) // a.batch_size) for p in parts),
    }
    (out_dir / "export.json").write_text(json.dumps(info))


def tinytwin_child(result_path: Path, partition_path: Path, cli_args: list[str]) -> None:
    """Project venv: run the ``tinytwin`` CLI with timing stamps around its phases."""
    timing: dict = {"steps": 0, "trained_devices": 0, "process_start_mono": _T_START}
    from tinytwin.cli import main

    timing["cli_imported_mono"] = time.monotonic()
    # The engine (torch) is imported here rather than inside `tinytwin run`: the same import,
    # stamped, so the process's time splits into imports, setup, loop and exit.
    from tinytwin.engines import runner
    from tinytwin.engines.simulate import Simulator

    timing["engine_imported_mono"] = time.monotonic()
    seen: dict = {}
    original_run, original_start = Simulator.run, runner.start_run

    def timed_start(*args, **kwargs):
        timing["start_run_mono"] = time.monotonic()
        try:
            return original_start(*args, **kwargs)
        finally:
            timing["start_run_end_mono"] = time.monotonic()

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
        step = self.step
        stamps = timing["round_end_mono"] = []

        def stamped_step(*args, **kwargs):
            try:
                return step(*args, **kwargs)
            finally:
                stamps.append(time.monotonic())

        self.step = stamped_step
        t0 = time.perf_counter()
        timing["loop_start_mono"] = time.monotonic()
        try:
            return original_run(self, state, progress)
        finally:
            timing["loop_s"] = time.perf_counter() - t0
            timing["loop_end_mono"] = time.monotonic()

    Simulator.run = timed_run
    runner.start_run = timed_start

    sys.argv = ["tinytwin", *cli_args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        timing["cli_return_mono"] = time.monotonic()
        if "parts" in seen:
            import numpy as np

            with np.load(partition_path) as f:
                exported = np.split(f["indices"], np.cumsum(f["sizes"])[:-1])
            timing["partition_matches_export"] = len(exported) == len(seen["parts"]) and all(
                np.array_equal(a, b) for a, b in zip(exported, seen["parts"])
            )
            timing["partition_sha256"] = partition_digest(list(seen["parts"]))
        timing["main_end_mono"] = time.monotonic()
        result_path.write_text(json.dumps(timing))
    if code == 0:  # what the `tinytwin` console script does after a successful command
        from tinytwin.fast_exit import exit_now_if_safe

        exit_now_if_safe()
    sys.exit(code)


# --------------------------------------------------------------------------- measuring


PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def pause_processes(pids: list[int]) -> list[int]:
    """SIGSTOP ``pids`` and their children (as of now); returns the ones stopped, for :func:`resume_processes`."""
    targets = []
    for pid in pids:
        targets.append(pid)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                targets += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    stopped = []
    for pid in targets:
        try:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return stopped


def resume_processes(pids: list[int]) -> None:
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            pass


def measure(
    cmd: list[str], env: dict[str, str], log_path: Path, idle_wait_s: float, nice: int = 0, pause: list[int] = ()
) -> dict:
    """Run ``cmd`` to completion: wall time from spawn to exit, peak memory, exit status, contention.

    ``nice`` (the same for both frameworks) is applied to the child and so to every process
    it starts; a negative value (root only) lets a timed run keep its cores on a shared machine.
    ``pause``: processes stopped from before the idle wait until the run's processes are gone.
    """
    stopped = pause_processes(list(pause))
    try:
        return _measure(cmd, env, log_path, idle_wait_s, nice)
    finally:
        resume_processes(stopped)


def _measure(cmd: list[str], env: dict[str, str], log_path: Path, idle_wait_s: float, nice: int) -> dict:
    gate = wait_for_idle(idle_wait_s)
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


def spread(values: list[float], nd: int = 4) -> list[float]:
    """[min, median, max]."""
    return [_r(min(values), nd), _r(statistics.median(values), nd), _r(max(values), nd)]


def run_tinytwin(work: Path, name: str, workload: str, project_py: str, env: dict, args: argparse.Namespace) -> dict:
    out, result = work / f"{name}-runs", work / f"{name}-timing.json"
    sets = [x for s in overrides(workload) for x in ("--set", s)]
    cli = ["run", str(SPEC), *sets, "--quiet", "--no-report", "--out", str(out)]
    cmd = [project_py, __file__, "--tinytwin-child", str(result), str(work / "partition.npz"), "--", *cli]
    m = measure(cmd, env, work / f"{name}.log", args.idle_wait, args.nice, args.pause)
    t = json.loads(result.read_text())
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    rows = read_rounds(run_dir)
    ends = [t["loop_start_mono"], *t["round_end_mono"]]
    round_s = [b - a for a, b in zip(ends, ends[1:])]
    spawn, exit_ = m["spawn_mono"], m["spawn_mono"] + m["wall_s"]
    stamps = [
        ("interpreter start + wrapper imports", spawn, t["process_start_mono"]),
        ("CLI import", t["process_start_mono"], t["cli_imported_mono"]),
        ("engine import (torch)", t["cli_imported_mono"], t["engine_imported_mono"]),
        ("spec, data, partition, model, run folder", t["engine_imported_mono"], t["loop_start_mono"]),
        ("loop", t["loop_start_mono"], t["loop_end_mono"]),
        ("after the loop (summary, database close)", t["loop_end_mono"], t["start_run_end_mono"]),
        ("summary print", t["start_run_end_mono"], t["cli_return_mono"]),
        ("benchmark wrapper's partition check", t["cli_return_mono"], t["main_end_mono"]),
        ("exit (interpreter teardown)", t["main_end_mono"], exit_),
    ]
    return {
        **common(m),
        "loop_s": _r(t["loop_s"], 5),
        "round_s": [_r(x, 5) for x in round_s],
        "round_db_wall_time_s": [_r(r["wall_time_s"], 5) for r in rows],
        "final_accuracy": _r(rows[-1]["test_accuracy"], 4),
        "accuracy": [_r(r["test_accuracy"], 4) for r in rows],
        "phases_s": {k: _r(b - a, 4) for k, a, b in stamps},
        "partition_sha256": t.get("partition_sha256"),
        "partition_matches_export": t.get("partition_matches_export"),
        "local_steps": t["steps"],
        "client_updates": sum(r["completed"] for r in rows),
        "evaluations": sum(r["test_accuracy"] is not None for r in rows),
    }


def run_flower(work: Path, name: str, export: dict, env: dict, args: argparse.Namespace) -> dict:
    result = work / f"{name}-result.json"
    fl_env = dict(
        env,
        PYTHONPATH=str(BENCH),
        FLWR_TELEMETRY_ENABLED="0",
        FLOWER_DIGITS_PARTITION=str(work / "partition.npz"),
        FLOWER_DIGITS_RESULT=str(result),
        FLOWER_DIGITS_INIT_CHECK=str(work / "initial_params.npy"),
        FLOWER_DIGITS_ROUNDS=str(export["rounds"]),
        FLOWER_DIGITS_CLIENTS=str(export["devices"]),
        FLOWER_DIGITS_SEED=str(export["seed"]),
        FLOWER_DIGITS_EPOCHS=str(export["local_epochs"]),
        FLOWER_DIGITS_BATCH=str(export["batch_size"]),
        FLOWER_DIGITS_LR=str(export["lr"]),
    )
    cmd = [str(FLOWER_PY), "-m", "flower_digits.run", "--cpus", str(args.cpus), "--check-digest", export["digest"]]
    m = measure(cmd, fl_env, work / f"{name}.log", args.idle_wait, args.nice, args.pause)
    fr = json.loads(result.read_text())
    spawn, exit_ = m["spawn_mono"], m["spawn_mono"] + m["wall_s"]
    return {
        **common(m),
        "loop_s": _r(fr["loop_s"], 4),
        "round_s": [_r(x, 4) for x in fr["round_s"]],
        "final_accuracy": _r(fr["final_accuracy"], 4),
        "accuracy": [_r(a, 4) for a in fr["accuracy"][1:]],
        "phases_s": {
            "spawn to round 1 start (imports, Ray start)": _r(fr["loop_start_mono"] - spawn, 3),
            "loop": _r(fr["loop_end_mono"] - fr["loop_start_mono"], 3),
            "after the loop to exit (Ray shutdown)": _r(exit_ - fr["loop_end_mono"], 3),
        },
        "partition_sha256": fr.get("partition_sha256"),
        "same_initial_weights": fr.get("same_initial_weights"),
        "local_steps": sum(r["steps"] for r in fr["per_round"]),
        "client_updates": sum(r["replies"] - r["errors"] for r in fr["per_round"]),
        "train_samples_per_round": sorted({r["samples"] for r in fr["per_round"]}),
        "evaluations": len(fr["accuracy"]) - 1,
        "processes_left_at_exit": m["processes_left_at_exit"],
        "s_until_all_gone": m["s_until_all_gone"],
    }


def common(m: dict) -> dict:
    return {
        "process_wall_s": _r(m["wall_s"], 3),
        "peak_rss_mb": _r(max(m["peak_tree_rss_mb"], m["largest_process_maxrss_mb"]), 1),
        "peak_pss_mb": _r(m["peak_tree_pss_mb"], 1),
        "largest_process_maxrss_mb": _r(m["largest_process_maxrss_mb"], 1),
        "max_processes": m["max_processes"],
        "cpu_s": _r(m["tree_cpu_s"], 2),
        "other_processes_cores": _r(m["other_processes_cores"], 2),
        "top_other_processes": m["top_other_processes"],
        "idle_gate": m["idle_gate"],
        "processes_still_running": m["processes_still_running"],
    }


def derived(run: dict) -> dict:
    """Loop without round 1 and the steady-state round (median of rounds 2..R) of one run."""
    return {
        "round1_s": run["round_s"][0],
        "loop_excl_round1_s": sum(run["round_s"][1:]),
        "steady_round_s": statistics.median(run["round_s"][1:]),
    }


def summarize(w: dict) -> dict:
    """Min / median / max over the reps, ratios pairing rep i's runs, and the targets."""
    tt, fl = w["runs"]["tinytwin"], w["runs"]["flower"]
    dt, df = [derived(r) for r in tt], [derived(r) for r in fl]
    series = {
        "process_wall_s": ([r["process_wall_s"] for r in tt], [r["process_wall_s"] for r in fl]),
        "loop_s": ([r["loop_s"] for r in tt], [r["loop_s"] for r in fl]),
        "loop_excl_round1_s": ([d["loop_excl_round1_s"] for d in dt], [d["loop_excl_round1_s"] for d in df]),
        "steady_round_s": ([d["steady_round_s"] for d in dt], [d["steady_round_s"] for d in df]),
        "round1_s": ([d["round1_s"] for d in dt], [d["round1_s"] for d in df]),
    }
    s: dict[str, Any] = {}
    for key, (a, b) in series.items():
        s[key] = {"tinytwin": spread(a, 5), "flower": spread(b, 4), "ratio": spread([y / x for x, y in zip(a, b)], 1)}
    diff = [(x["final_accuracy"] - y["final_accuracy"]) * 100 for x, y in zip(tt, fl)]
    s["final_accuracy"] = {
        "tinytwin": spread([r["final_accuracy"] for r in tt]),
        "flower": spread([r["final_accuracy"] for r in fl]),
    }
    s["accuracy_diff_pp"] = spread(diff, 2)
    for key in ("peak_rss_mb", "peak_pss_mb", "cpu_s"):
        s[key] = {side: spread([r[key] for r in runs], 1) for side, runs in (("tinytwin", tt), ("flower", fl))}
    s["max_processes"] = {
        side: max(r["max_processes"] for r in runs) for side, runs in (("tinytwin", tt), ("flower", fl))
    }
    s["phases_s"] = {
        side: {k: spread([r["phases_s"][k] for r in runs], 3) for k in runs[0]["phases_s"]}
        for side, runs in (("tinytwin", tt), ("flower", fl))
    }
    s["other_processes_cores"] = {
        side: spread([r["other_processes_cores"] for r in runs], 2) for side, runs in (("tinytwin", tt), ("flower", fl))
    }
    targets = WORKLOADS[w["workload"]]["targets"]
    t: dict[str, Any] = {}
    for key, series_key in (("process_wall", "process_wall_s"), ("steady_round", "steady_round_s")):
        lo, mid, hi = s[series_key]["ratio"]
        t[key] = {"target": targets[key], "measured_median": mid, "min": lo, "max": hi, "pass": mid >= targets[key]}
    worst = max(abs(d) for d in diff)
    t["accuracy_within_1pp"] = {"target": TARGET_ACCURACY_PP, "measured_worst": _r(worst, 2), "pass": worst <= 1.0}
    return {"summary": s, "targets": t}


def work_check(w: dict, export: dict) -> dict:
    tt, fl = w["runs"]["tinytwin"], w["runs"]["flower"]
    return {
        "same_digits_arrays_sha256": export["digest"][:16],
        "partition_sha256": export["partition_sha256"],
        "same_partition_every_run": all(r["partition_sha256"] == export["partition_sha256"] for r in tt + fl)
        and all(r["partition_matches_export"] for r in tt),
        "flower_same_initial_weights_as_tinytwin": all(r["same_initial_weights"] for r in fl),
        "local_steps_expected": export["local_steps_expected"],
        "local_steps": {
            "tinytwin": sorted({r["local_steps"] for r in tt}),
            "flower": sorted({r["local_steps"] for r in fl}),
        },
        "client_updates": {
            "tinytwin": sorted({r["client_updates"] for r in tt}),
            "flower": sorted({r["client_updates"] for r in fl}),
        },
        "flower_train_samples_per_round": sorted({n for r in fl for n in r["train_samples_per_round"]}),
        "evaluations_of_global_model": {
            "tinytwin": sorted({r["evaluations"] for r in tt}),
            "flower": sorted({r["evaluations"] for r in fl}),
        },
    }


# --------------------------------------------------------------------------- rendering


def _triple(v: list[float], unit: str = "s") -> str:
    if unit == "s" and v[1] < 1:
        return " / ".join(f"{x * 1000:.1f}" for x in v) + " ms"
    nd = 1 if v[1] >= 10 else 2
    return " / ".join(f"{x:.{nd}f}" for x in v) + f" {unit}"


def _ratio(v: list[float]) -> str:
    return " / ".join(f"{x:.0f}" if x >= 100 else f"{x:.1f}" for x in v) + "×"


def _acc(v: list[float]) -> str:
    return f"{v[0] * 100:.2f} %" if v[0] == v[2] else " / ".join(f"{x * 100:.2f}" for x in v) + " %"


def _n(x: int) -> str:
    return f"{x:,}".replace(",", " ")


def _verdict(t: dict, fmt: str) -> str:
    return fmt.format(**t) + (": met" if t["pass"] else ": **missed**")


def render(res: dict[str, Any]) -> str:
    """The docs/benchmarks.md block, from the results JSON alone."""
    v = res["flower_venv"]["versions"]
    names = sorted({next((Path(a).name for a in c.split() if a.endswith(".py")), c) for c in res.get("paused") or []})
    paused = (
        f" Background jobs ({len(res['paused'])} processes: {', '.join(f'`{n}`' for n in names)}) were paused "
        "(SIGSTOP) during each timed run."
        if names
        else ""
    )
    lines = [
        BEGIN,
        f"Measured {res['date']} on {res['machine']['description']}: `{res['command']}` — "
        f"{res['reps']} run{'s' if res['reps'] != 1 else ''} of each framework per workload, tinytwin and Flower interleaved (order alternating), "
        f"each in a fresh process; Flower {v['flwr']} (`run_simulation`, Ray {v['ray']} with "
        f"{res['machine']['ray_cpus']} CPUs), torch {v['torch']} on both sides.{paused} "
        "Figures are min / median / max over the runs; a ratio pairs the runs of one rep, and a target "
        "is judged on the median ratio.",
        "",
        "| workload | measure | tinytwin | Flower | Flower / tinytwin | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for w in res["workloads"].values():
        s, t = w["summary"], w["targets"]
        label = f"{_n(w['clients'])} clients × {w['rounds']} rounds"
        rows = [
            ("process wall", "process_wall_s", _verdict(t["process_wall"], "≥ {target:.0f}×")),
            ("loop (round 1 start to last round end)", "loop_s", ""),
            ("round 1", "round1_s", ""),
            (f"rounds 2–{w['rounds']} (sum)", "loop_excl_round1_s", ""),
            (
                f"steady-state round (median of rounds 2–{w['rounds']})",
                "steady_round_s",
                _verdict(t["steady_round"], "≥ {target:.0f}×"),
            ),
        ]
        for i, (name, k, target) in enumerate(rows):
            lines.append(
                f"|{' ' + label if i == 0 else ''} | {name} | {_triple(s[k]['tinytwin'])} | {_triple(s[k]['flower'])} "
                f"| {_ratio(s[k]['ratio'])} |{' ' + target if target else ''} |"
            )
        diff = " / ".join(f"{x:+.2f}" for x in s["accuracy_diff_pp"]) + " pp"
        lines.append(
            f"| | final accuracy (difference) | {_acc(s['final_accuracy']['tinytwin'])} "
            f"| {_acc(s['final_accuracy']['flower'])} | {diff} "
            f"| {_verdict(t['accuracy_within_1pp'], 'within {target:.0f} pp')} |"
        )
        rss, pss = s["peak_rss_mb"], s["peak_pss_mb"]
        lines.append(
            f"| | peak memory, process tree RSS (PSS) | {rss['tinytwin'][1]:.0f} MB ({pss['tinytwin'][1]:.0f}) "
            f"| {rss['flower'][1]:.0f} MB ({pss['flower'][1]:.0f}), {s['max_processes']['flower']} processes "
            f"| {rss['flower'][1] / rss['tinytwin'][1]:.1f}× (median) | |"
        )
    lines.append("")
    for w in res["workloads"].values():
        s, wc = w["summary"], w["work_check"]
        ph = "; ".join(f"{k} {v[1]:.3f}" for k, v in s["phases_s"]["tinytwin"].items())
        fph = "; ".join(f"{k} {v[1]:.2f}" for k, v in s["phases_s"]["flower"].items())
        same = "the same" if wc["same_partition_every_run"] else "**not the same**"
        steps = wc["local_steps"]
        lines.append(
            f"- **{_n(w['clients'])} × {w['rounds']}**: both sides trained {same} partition "
            f"(SHA-256 `{wc['partition_sha256'][:12]}`, {'–'.join(str(n) for n in w['samples_per_device'])} "
            f"samples per client) from {'the same' if wc['flower_same_initial_weights_as_tinytwin'] else '**different**'} "
            f"initial weights, {_n(steps['tinytwin'][0])} / {_n(steps['flower'][0])} local steps "
            f"(expected {_n(wc['local_steps_expected'])}). tinytwin's process, median seconds: {ph}. "
            f"Flower's: {fph}. Other processes used up to {s['other_processes_cores']['tinytwin'][2]:.2f} cores "
            f"during a tinytwin run and up to {s['other_processes_cores']['flower'][2]:.2f} during a Flower run."
        )
    return "\n".join([*lines, END])


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="runs of each framework per workload")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
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
    parser.add_argument(
        "--pause",
        type=int,
        nargs="*",
        default=[],
        metavar="PID",
        help="stop these processes (and their children) during each timed run, resume them right after",
    )
    parser.add_argument("--from-json", action="store_true", help="re-render the doc block from the last results")
    parser.add_argument("--no-write", action="store_true", help="print the JSON only; write no results file or doc")
    parser.add_argument("--export-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--tinytwin-child", nargs=2, type=Path, metavar=("RESULT", "PARTITION"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.export_child:
        export_child(args.export_child, args.override)
        return
    if args.tinytwin_child:
        tinytwin_child(*args.tinytwin_child, [a for a in rest if a != "--"])
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not args.from_json:
        # SIGTERM / SIGHUP unwind like Ctrl-C, so paused processes are always resumed.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
        res = measure_all(args)
        print(json.dumps(res, indent=2))
        if args.no_write:
            return
        RESULTS.write_text(json.dumps(res, indent=1) + "\n")
    from reproduce_orchestration import replace_block  # one doc writer (imported here: not in the timed children)

    block = render(json.loads(RESULTS.read_text()))
    replace_block(DOC, BEGIN, END, block)
    import readme_speed  # the README quotes these figures

    readme_speed.refresh()
    print(block)


def measure_all(args: argparse.Namespace) -> dict:
    project_py = str(PROJECT_PY if PROJECT_PY.exists() else Path(sys.executable))
    flower = ensure_flower_venv()
    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="bench-vs-flower-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)

    # 2. untimed preparation
    exports, workloads = {}, {}
    for key in args.workloads:
        (work / key).mkdir(exist_ok=True)
        sets = [x for s in overrides(key) for x in ("--override", s)]
        subprocess.run([project_py, __file__, "--export-child", str(work / key), *sets], check=True, env=env, cwd=REPO)
        exports[key] = export = json.loads((work / key / "export.json").read_text())
        workloads[key] = {
            "workload": key,
            "clients": export["devices"],
            "rounds": export["rounds"],
            "samples_per_device": export["samples_per_device"],
            "runs": {"tinytwin": [], "flower": []},
        }
    subprocess.run(
        [str(FLOWER_PY), "-c", "import torch, sklearn, numpy, flwr.simulation, ray"], check=True, env=env, cwd=REPO
    )
    paused = []
    for pid in args.pause:
        try:
            paused.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
        except OSError:
            pass

    # 3. interleaved runs
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    try:
        for rep in range(args.reps):
            for key in args.workloads:
                wdir, w = work / key, workloads[key]
                order = ("tinytwin", "flower") if rep % 2 == 0 else ("flower", "tinytwin")
                for side in order:
                    name = f"rep{rep}-{side}"
                    print(
                        f"[{time.perf_counter() - t0:6.0f} s] {key} rep {rep + 1}/{args.reps}: {side}", file=sys.stderr
                    )
                    if side == "tinytwin":
                        run = run_tinytwin(wdir, name, key, project_py, env, args)
                    else:
                        run = run_flower(wdir, name, exports[key], env, args)
                    run["rep"] = rep
                    w["runs"][side].append(run)
                    print(
                        f"    process {run['process_wall_s']:.2f} s, loop {run['loop_s']:.3f} s, "
                        f"steady round {statistics.median(run['round_s'][1:]):.4f} s, "
                        f"accuracy {run['final_accuracy']:.4f}, other processes {run['other_processes_cores']:.2f} cores",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        resume_processes(list(args.pause))
    load1 = os.getloadavg()

    for key, w in workloads.items():
        w.update(summarize(w))
        w["work_check"] = work_check(w, exports[key])
    contended = [
        f"{key} rep {r['rep'] + 1} {side}: {r['other_processes_cores']:.2f} cores ({', '.join(r['top_other_processes'])})"
        for key, w in workloads.items()
        for side, runs in w["runs"].items()
        for r in runs
        if r["other_processes_cores"] > 0.2
    ]
    if contended:
        print(
            "warning: other processes used > 0.2 cores during timed runs:\n  " + "\n  ".join(contended), file=sys.stderr
        )
    leftover = [
        p for w in workloads.values() for runs in w["runs"].values() for r in runs for p in r["processes_still_running"]
    ]
    if leftover:
        print(f"warning: processes started by the benchmark still running: {leftover}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    cmd = "python benchmarks/bench_vs_flower.py" + (f" --reps {args.reps}" if args.reps != 3 else "")
    if args.workloads != list(WORKLOADS):
        cmd += " --workloads " + " ".join(args.workloads)
    return {
        "benchmark": "issue #16: tinytwin vs Flower, digits, IID, MLP 64-32-10, FedAvg every client every round, "
        "5 local epochs, batch 8, SGD lr 0.1; 100 clients x 20 rounds and 1 000 clients x 5 rounds",
        "command": cmd,
        "date": date.today().isoformat(),
        "reps": args.reps,
        "machine": {
            "description": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "ray_cpus": args.cpus,
            "nice": args.nice,
            "load_average_before_after": [_r(load0[0], 2), _r(load1[0], 2)],
            "timed_window_s": _r(time.perf_counter() - t0, 1),
        },
        "paused": paused,
        "flower_venv": flower,
        "contended_runs": contended,
        "workloads": workloads,
        "artifacts": str(work) if args.keep else None,
    }


if __name__ == "__main__":
    main()
