"""Seed 004 §4.1 as a plan (issue #19): tinytwin's predictions beside the seed's measurements.

Spec: examples/seed004-energy.yaml — CIFAR-100 over 8 boards (one Jetson AGX Orin on its CPU,
four Jetson Nano on their GPU, one on its CPU, two Raspberry Pi 4), Dirichlet(0.5), the
8,662,100-parameter WideResNet of the seed's Table 7, 15 rounds x 2 local epochs. The plan
needs no CIFAR-100 files (a stand-in with the published sizes), so this runs in a second.

Why a script and a results file: the doc's table must be generated, never typed, and
tests/test_seed004_energy_doc.py checks the doc against docs/results/seed004-energy.json.

The seed prints its energy totals as "227 kWh", "131 kWh", "120 kWh", "46 kWh", computed as
E = P·Δt/3600 per 30 s socket sample. With P in W and Δt in s that arithmetic gives Wh, and
15 W x 22 h is about 330 Wh, so the totals are read as Wh here (docs/devices.md says the same).

    .venv/bin/python benchmarks/seed004_energy_plan.py              # plan, write JSON and doc table
    .venv/bin/python benchmarks/seed004_energy_plan.py --from-json  # re-render the doc table only
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "seed004-energy.yaml"
OUT = ROOT / "docs" / "results" / "seed004-energy.json"
DOC = ROOT / "docs" / "energy.md"
BEGIN, END = "<!-- seed004-plan:begin -->", "<!-- seed004-plan:end -->"

# Seed 004 (AIoTwin D1.4) §4.1: one socket-measured board per kind; totals printed in "kWh".
SEED_PARAMS = 8_662_100
SEED_RUN_H = 22.0  # "The entire training process lasted approximately 22 hours."
SEED_SAMPLE_S = 30  # one socket reading every 30 s
SEED_BOARDS: dict[str, dict[str, Any]] = {
    "orin-cpu": {"board": "Jetson AGX Orin (CPU)", "watts": 15.0, "printed_total": 227.0},
    "nano-gpu": {"board": "Jetson Nano (GPU)", "watts": 8.0, "printed_total": 46.0},
    "nano-cpu": {"board": "Jetson Nano (CPU)", "watts": 7.0, "printed_total": 131.0},
    "rpi4": {"board": "Raspberry Pi 4 (CPU)", "watts": 6.0, "printed_total": 120.0},
}


def build_plan() -> tuple[Any, list[dict[str, Any]]]:
    """The experiment and per-group plan rows exactly as ``tinytwin plan`` builds them (cli.py)."""
    from tinytwin.engines.experiment import prepare
    from tinytwin.engines.planning import plan_groups
    from tinytwin.spec.load import load_spec

    spec, _ = load_spec(SPEC, [])
    exp = prepare(spec, SPEC.resolve().parent, check_memory=False, plan_only=True)
    return exp, plan_groups(exp)


def seed_figures(name: str) -> dict[str, Any]:
    """The seed's figures for one board kind, its printed total read as Wh, and what they imply."""
    s = SEED_BOARDS[name]
    return {
        "board": s["board"],
        "watts": s["watts"],
        "printed": f"{s['printed_total']:g} kWh",
        "wh": s["printed_total"],
        "hours_at_watts": s["printed_total"] / s["watts"],  # how long it drew its training power
        "mean_w_over_run": s["printed_total"] / SEED_RUN_H,
    }


def group_figures(group: Any, row: dict[str, Any], parts: list[int], round_s: float, rounds: int) -> dict:
    """One group's predictions (for its device with the most data, as the plan rows are) beside the seed.

    Energy is given without idle (the plan's own figure), with idle while waiting for the
    slowest device on the predicted clock (the cost model's full round energy), and with idle
    on the seed's 22 h clock (what a socket logging the whole seed run would see), the last
    only where the predicted busy time fits in 22 h.
    """
    p = group.profile.power
    busy = row["compute_s"] + row["up_s"] + row["down_s"]
    with_idle = row["energy_j"] + p.idle_w * (round_s - busy)
    seed_clock_s = SEED_RUN_H * 3600
    on_seed_clock = None
    if busy * rounds <= seed_clock_s:
        on_seed_clock = (rounds * row["energy_j"] + p.idle_w * (seed_clock_s - rounds * busy)) / 3600
    seed = seed_figures(group.name)
    return {
        "profile": group.profile.name,
        "count": row["count"],
        "samples_largest": row["samples"],
        "samples_per_device": parts,
        "flops_per_round": row["flops"],
        "flops_per_s": group.profile.flops_per_s,
        "compute_s": row["compute_s"],
        "up_s": row["up_s"],
        "down_s": row["down_s"],
        "busy_round_s": busy,
        "busy_run_s": rounds * busy,
        "busy_run_h": rounds * busy / 3600,
        "active_w": p.active_w,
        "idle_w": p.idle_w,
        "energy_round_j": row["energy_j"],
        "energy_run_j": rounds * row["energy_j"],
        "energy_run_wh": rounds * row["energy_j"] / 3600,
        "energy_round_with_idle_j": with_idle,
        "energy_run_with_idle_j": rounds * with_idle,
        "energy_run_with_idle_wh": rounds * with_idle / 3600,
        "energy_on_seed_clock_wh": on_seed_clock,
        "seed": seed,
        "busy_vs_seed_hours": rounds * busy / 3600 / seed["hours_at_watts"],
        "energy_vs_seed": rounds * row["energy_j"] / 3600 / seed["wh"],
    }


def plan_results() -> dict[str, Any]:
    """The results file: the model, the predicted run, and every group beside the seed."""
    from tinytwin.data.datasets import is_stand_in

    exp, rows = build_plan()
    spec = exp.spec
    busy = {g.name: r["compute_s"] + r["up_s"] + r["down_s"] for g, r in zip(exp.fleet.groups, rows)}
    slowest = max(busy, key=busy.__getitem__)
    round_s, rounds = busy[slowest], spec.rounds
    groups = {
        g.name: group_figures(g, r, [len(exp.parts[d]) for d in g.devices], round_s, rounds)
        for g, r in zip(exp.fleet.groups, rows)
    }
    return {
        "spec": str(SPEC.relative_to(ROOT)),
        "command": f"tinytwin plan {SPEC.relative_to(ROOT)}",
        "dataset": spec.dataset.name,
        "dataset_stand_in": bool(is_stand_in(exp.dataset)),
        "dirichlet_alpha": spec.partition.alpha,
        "model": {
            "name": exp.model.name,
            "params": exp.model.num_params,
            "seed_params": SEED_PARAMS,
            "params_vs_seed": exp.model.num_params / SEED_PARAMS,
            "train_flops_per_sample": exp.flops_per_sample,
        },
        "devices": exp.fleet.num_devices,
        "rounds": rounds,
        "local_epochs": spec.algorithm.local_epochs,
        "batch_size": spec.algorithm.batch_size,
        "slowest_group": slowest,
        "round_s": round_s,
        "run_s": rounds * round_s,
        "run_h": rounds * round_s / 3600,
        "seed": {
            "run_h": SEED_RUN_H,
            "sample_s": SEED_SAMPLE_S,
            "formula": "E = P * dt / 3600",
            "printed_unit": "kWh",
            "read_as": "Wh",
            # the unit check: the Orin's measured power over the whole run, in Wh
            "orin_w_times_run_wh": SEED_BOARDS["orin-cpu"]["watts"] * SEED_RUN_H,
        },
        "run_vs_seed": rounds * round_s / 3600 / SEED_RUN_H,
        "groups": groups,
    }


def h(x: float) -> str:
    """Hours, as the table and the prose quote them."""
    return f"{x:.2f} h"


def wh(x: float) -> str:
    """Watt-hours, as the table and the prose quote them."""
    return f"{x:.1f} Wh"


def render_table(results: dict[str, Any]) -> str:
    """The docs table, rendered from the results file only (tests/test_seed004_energy_doc.py)."""
    rows = [
        BEGIN,
        "| group | devices | largest share | time / round | busy, "
        f"{results['rounds']} rounds | seed: Wh ÷ W | active W: profile / seed | energy / round | "
        f"energy, {results['rounds']} rounds | + idle, predicted clock | + idle, seed's "
        f"{results['seed']['run_h']:g} h | seed's total (printed kWh, read as Wh) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, g in results["groups"].items():
        s = g["seed"]
        seed_clock = "— (busy longer)" if g["energy_on_seed_clock_wh"] is None else wh(g["energy_on_seed_clock_wh"])
        rows.append(
            f"| {name} | {g['count']} | {g['samples_largest']:,} | {g['busy_round_s'] / 60:.1f} min | "
            f"{h(g['busy_run_h'])} | {h(s['hours_at_watts'])} | {g['active_w']:g} / {s['watts']:g} W | "
            f"{g['energy_round_j'] / 1e3:.1f} kJ | {wh(g['energy_run_wh'])} | "
            f"{wh(g['energy_run_with_idle_wh'])} | {seed_clock} | {s['wh']:g} Wh |"
        )
    m = results["model"]
    rows += [
        "",
        f"Model: {m['name']}, {m['params']:,} parameters (seed: {m['seed_params']:,}), "
        f"{m['train_flops_per_sample'] / 1e9:.2f} GFLOP per training sample. Predicted run: "
        f"{results['rounds']} rounds × {results['round_s'] / 3600:.2f} h (the slowest group, "
        f"{results['slowest_group']}) = {h(results['run_h'])}; the seed: about {results['seed']['run_h']:g} h.",
        END,
    ]
    return "\n".join(rows)


def write_doc_table(results: dict[str, Any]) -> None:
    """Replace the block between the markers of docs/energy.md with the rendered table."""
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + render_table(results) + text[end:])


def prose_figures(results: dict[str, Any]) -> dict[str, str]:
    """Every figure the prose of docs/energy.md quotes, formatted as it quotes them.

    Why here: the test checks that each is in the prose and that the prose quotes no other
    number, so a rerun that moves a figure fails the test instead of leaving stale prose.
    """
    g, s = results["groups"], results["seed"]
    orin, gpu, cpu, pi = (g[k] for k in ("orin-cpu", "nano-gpu", "nano-cpu", "rpi4"))
    return {
        "params": f"{results['model']['params'] / 1e6:.2f} M-parameter",
        "rounds": f"{results['rounds']} rounds",
        "epochs": f"{results['local_epochs']} local epochs",
        "devices": f"{results['devices']} boards",
        "alpha": f"Dirichlet({results['dirichlet_alpha']:g})",
        "sample_s": f"every {s['sample_s']} s",
        "unit_check": f"{orin['seed']['watts']:g} W × {s['run_h']:g} h ≈ {s['orin_w_times_run_wh']:g} Wh",
        "gpu_busy": h(gpu["busy_run_h"]),
        "gpu_w": f"{gpu['active_w']:g} W",
        "gpu_energy": wh(gpu["energy_run_wh"]),
        "gpu_seed": f"{gpu['seed']['wh']:g} Wh",
        "gpu_seed_hours": h(gpu["seed"]["hours_at_watts"]),
        "orin_energy": wh(orin["energy_run_wh"]),
        "orin_seed": f"{orin['seed']['wh']:g} Wh",
        "orin_idle_w": f"{orin['idle_w']:g} W",
        "orin_seed_clock": wh(orin["energy_on_seed_clock_wh"]),
        "gpu_seed_mean_w": f"{gpu['seed']['mean_w_over_run']:.2f} W",
        "gpu_idle_w": f"{gpu['idle_w']:g} W",
        "gpu_seed_clock": wh(gpu["energy_on_seed_clock_wh"]),
        "cpu_busy": h(cpu["busy_run_h"]),
        "pi_busy": h(pi["busy_run_h"]),
        "cpu_energy": wh(cpu["energy_run_wh"]),
        "pi_energy": wh(pi["energy_run_wh"]),
        "cpu_seed_hours": h(cpu["seed"]["hours_at_watts"]),
        "pi_seed_hours": h(pi["seed"]["hours_at_watts"]),
        "run": h(results["run_h"]),
        "seed_run": f"about {s['run_h']:g} h",
        "run_vs_seed": f"{results['run_vs_seed']:.2f} ×",
        "cpu_rate": f"{cpu['flops_per_s'] / 1e9:.1f}",
        "pi_rate": f"{pi['flops_per_s'] / 1e9:.1f} GFLOP/s",
        "cpu_ratio": f"{cpu['busy_vs_seed_hours']:.2f}",
        "pi_ratio": f"{pi['busy_vs_seed_hours']:.2f} times",
        "cpu_share": f"{cpu['samples_largest']:,}",
        "pi_share": f"{pi['samples_largest']:,} samples",
    }


def print_figures(results: dict[str, Any]) -> None:
    """The key figures on stdout, so a run shows what the doc will say."""
    m = results["model"]
    print(f"{m['name']}: {m['params']:,} parameters, {m['train_flops_per_sample']:,} training FLOPs per sample")
    print(
        f"predicted run {h(results['run_h'])} (slowest {results['slowest_group']}); seed ~{results['seed']['run_h']:g} h"
    )
    for name, g in results["groups"].items():
        clock = g["energy_on_seed_clock_wh"]
        print(
            f"  {name:9s} x{g['count']}: busy {h(g['busy_run_h'])} (seed {h(g['seed']['hours_at_watts'])} at "
            f"{g['seed']['watts']:g} W), energy {wh(g['energy_run_wh'])} no idle, "
            f"{wh(g['energy_run_with_idle_wh'])} with idle, "
            f"{'—' if clock is None else wh(clock)} on the seed's clock; seed {g['seed']['wh']:g} Wh"
        )


def main() -> None:
    """Plan, write the results file and the doc table; or, with --from-json, re-render only."""
    if "--from-json" in sys.argv:
        results = json.loads(OUT.read_text())
    else:
        results = plan_results()
        OUT.write_text(json.dumps(results, indent=2) + "\n")
        print("wrote", OUT, file=sys.stderr)
    print_figures(results)
    write_doc_table(results)
    print("wrote the table of", DOC, file=sys.stderr)


if __name__ == "__main__":
    main()
