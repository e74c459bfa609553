"""What ``tinytwin run`` and ``tinytwin emulate`` print when a run ends: the summary table, and
the emulation's own lines (processes, link shaping, the orchestrator, firmware devices)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def print_summary(console: Console, s: dict[str, Any], run_dir: Path) -> None:
    """The summary table a run or an emulation prints at its end."""
    from tinytwin.report import format as fmt  # imported lazily: keeps `--help` fast

    table = Table(title="Summary", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    e = s["energy_j_per_device"]
    table.add_row("final accuracy", fmt.format_accuracy(s["final_accuracy"]))
    table.add_row("best accuracy", fmt.format_accuracy(s["best_accuracy"]))
    table.add_row("rounds", str(s["rounds"]))
    if "precision" in s:
        table.add_row("precision", s["precision"])
    table.add_row("simulated time", fmt.format_seconds(s["sim_time_s"]))
    table.add_row("bytes up / down", f"{fmt.format_bytes(s['bytes_up'])} / {fmt.format_bytes(s['bytes_down'])}")
    table.add_row(
        "energy per device min / median / max",
        f"{fmt.format_energy(e['min'])} / {fmt.format_energy(e['median'])} / {fmt.format_energy(e['max'])}",
    )
    for m in s["memory"]:
        verdict = "fits" if m["fits"] else "DOES NOT FIT"
        table.add_row(
            f"memory: {m['group']} ({m['profile']})",
            f"{verdict}: RAM {fmt.format_bytes(m['needed_bytes'])} of {fmt.format_bytes(m['available_bytes'])}, "
            f"flash {fmt.format_bytes(m['flash_needed_bytes'])} of {fmt.format_bytes(m['flash_available_bytes'])}",
        )
    for z in s.get("model_sizes", []):
        table.add_row(
            f"model {fmt.format_model_size(z)} ({', '.join(z['groups'])})",
            f"{fmt.format_accuracy(z['test_accuracy'])}, {z['params']:,} parameters, "
            f"{fmt.format_bytes(z['bytes_up'])} up, {fmt.format_energy(z['energy_j'])}",
        )
    if "battery" in s:
        b = s["battery"]
        q = b["charge_end_fraction"]
        table.add_row(
            "batteries",
            f"{b['devices']} devices, {b['empty_at_end']} empty at the end; charge min / median / max "
            f"{100 * q['min']:.0f} / {100 * q['median']:.0f} / {100 * q['max']:.0f} %",
        )
    if "orchestration" in s:
        o = s["orchestration"]
        stop = f"budget spent after round {o['stopped_round']}" if o.get("stopped_round") else "no stop"
        rva = ", ".join(o.get("rva_decisions") or []) or "none"
        table.add_row("orchestration", f"{o['strategy']}; {stop}; RVA decisions: {rva}")
    if "distillation" in s:
        dist = s["distillation"]
        table.add_row(
            "server distillation",
            f"{dist['rounds']} rounds, KL {dist['kl_last_round'][0]:.4f} -> {dist['kl_last_round'][1]:.4f} "
            f"(last round), {fmt.format_seconds(dist['server_s'])}, {fmt.format_energy(dist['server_energy_j'])}",
        )
    table.add_row("wall time", fmt.format_seconds(s["wall_time_s"]))
    console.print(table)
    console.print(f"run folder: {run_dir}")
    if (run_dir / "report.html").is_file():
        console.print(f"report:     {run_dir / 'report.html'}")


def print_emulate_summary(console: Console, e: dict[str, Any]) -> None:
    """The emulation's own lines after the summary: device processes, link shaping, firmware devices."""
    console.print(
        f"device processes: RSS median {e['device_rss_kb']['median'] / 1024:.1f} MiB "
        f"(max {e['device_rss_kb']['max'] / 1024:.1f}), PSS median {e['device_pss_kb']['median'] / 1024:.1f} MiB; "
        f"wall per round median {e['wall_per_round_s']['median']:.3f} s; "
        f"frames rejected {sum(e['frames_rejected'].values())}"
    )
    if e.get("shaping"):
        sh = e["shaping"]
        console.print(f"link shaping: {sh['mode']} (bandwidth: {sh['rate']}; latency and loss: {sh['latency_loss']})")
    if e.get("orchestration"):
        o = e["orchestration"]

        def ms(x: dict[str, Any]) -> str:
            return f"{x['median']:.0f} ms (max {x['max']:.0f})" if x["n"] else "none"

        console.print(
            f"orchestrator: joins heard after {ms(o['join_detect_ms'])}, leaves after {ms(o['leave_detect_ms'])}; "
            f"its own CPU {1e3 * o['orchestrator_cpu_s']:.1f} ms; global coordinator {o['coordinator_cores'] or 0:.2f} cores, "
            f"RSS {(o['coordinator_rss_kb'] or 0) / 1024:.0f} MiB"
        )
    if e.get("firmware"):
        fw = e["firmware"]
        imgs = ", ".join(
            f"{i['board']} text {i['text']:,} B, RAM {i['bss']:,} of {i['ram_budget']:,} B" for i in fw["images"]
        )
        insns = fw["insns_per_round_median"]
        console.print(
            f"firmware devices: {fw['devices']} ({imgs}); QEMU RSS median "
            f"{(fw['qemu_rss_kb']['median'] or 0) / 1024:.1f} MiB, PSS total "
            f"{fw['qemu_pss_kb']['total'] / 1024:.0f} MiB; instructions per round median "
            f"{insns or 0:,.0f} -> {fw['firmware_compute_s_median'] or 0:.3f} s on the device "
            f"(cost model {fw['cost_model_compute_s_median'] or 0:.3f} s)"
        )
