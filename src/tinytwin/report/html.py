"""One self-contained HTML report per run.

The report must survive being mailed, attached to a ticket or opened offline years later,
so it carries everything inline: CSS in a <style> block, interactive Plotly charts with
plotly.js and their data embedded (:mod:`tinytwin.report.interactive`; zoom, hover, the
fleet coloured by a chosen metric), the remaining plots as base64 PNG data URIs, and no
external links to load. The PNGs are still written to ``plots/`` for papers and slides. All text from the database goes through
``html.escape`` (run names, event details and the spec are user-controlled). The file is
written to a temp name and renamed, so a crash never leaves a half-written report.html.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from tinytwin.report.export import atomic_write, export_csv, open_run
from tinytwin.report.format import (
    MISSING,
    format_accuracy,
    format_bytes,
    format_energy,
    format_number,
    format_seconds,
)
from tinytwin.report.interactive import CSS as CHART_CSS
from tinytwin.report.interactive import charts_section
from tinytwin.report.labels import label as key_label
from tinytwin.report.labels import unit_of, value_text
from tinytwin.report.plots import make_plots
from tinytwin.store.db import RunInfo
from tinytwin.version import __version__

MAX_EVENTS = 200
MAX_ROUND_ROWS = 500  # above this the round table shows its head and tail; the CSV has all

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
 padding:1.5rem;color:#222;line-height:1.4}
h1{margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.meta{color:#666;margin-top:0}
.banner{padding:.8rem 1rem;border-radius:6px;font-weight:600;margin:1rem 0}
.banner.complete{background:#e6f4ea;color:#1e6b34;border:1px solid #9fd3ae}
.banner.incomplete{background:#fde8e8;color:#a11b1b;border:2px solid #e08a8a;font-size:1.15rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f4f5f7}tr:nth-child(even) td{background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv>tbody>tr>th{width:14rem}
table.inner{margin:0;font-size:.85rem}
.bad{color:#a11b1b;font-weight:600}.good{color:#1e6b34;font-weight:600}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#666;font-size:.85rem}
pre{background:#f6f8fa;padding:1rem;overflow-x:auto;border-radius:6px;font-size:.85rem}
.note{color:#666;font-size:.85rem}
"""


def esc(x: object) -> str:
    return escape(str(x), quote=True)


def page(title: str, body: str) -> str:
    """Wrap ``body`` in a complete HTML document with the inline stylesheet."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}{CHART_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure(path: Path, caption: str) -> str:
    return (
        f'<figure><img alt="{esc(caption)}" src="{png_data_uri(path)}"><figcaption>{esc(caption)}</figcaption></figure>'
    )


def table(
    header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] | None = None, cls: str = ""
) -> str:
    """HTML table from already-escaped cell markup; ``numeric`` columns are right-aligned."""
    num = list(numeric or [False] * len(header))
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if num[i] else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ---- summary values --------------------------------------------------------------------


def _titled(text: str, raw: object) -> str:
    """Formatted value with the exact stored number as a tooltip (and searchable in the source)."""
    return f'<span title="{esc(raw)}">{esc(text)}</span>'


def _yes_no(v: object) -> str:
    return '<span class="good">yes</span>' if v else '<span class="bad">no</span>'


def render_value(v: Any, key: str = "", unit: Callable[[Any], str] | None = None) -> str:
    """Readable markup for any JSON value: dicts as key/value tables with tidy labels, lists of dicts
    as tables; numbers in the unit their key names (``_s``, ``_j``, ``_bytes``), inherited by nested
    statistics (``energy_j_per_device: {min, median, max}``)."""
    unit = unit_of(key) or unit
    if isinstance(v, Mapping):
        if not v:
            return MISSING
        rows = [(f"<th>{esc(key_label(k))}</th>", render_value(x, k, unit)) for k, x in v.items()]
        return (
            '<table class="inner kv"><tbody>'
            + "".join(f"<tr>{k}<td>{x}</td></tr>" for k, x in rows)
            + "</tbody></table>"
        )
    if isinstance(v, list):
        if v and all(isinstance(x, Mapping) for x in v):
            cols = list(dict.fromkeys(k for x in v for k in x))
            return table(
                [key_label(c) for c in cols], ([render_value(x.get(c), c, unit) for c in cols] for x in v), cls="inner"
            )
        return ", ".join(render_value(x, key, unit) for x in v) if v else MISSING
    if isinstance(v, bool):
        return _yes_no(v)
    text = value_text(key, v, unit)
    return _titled(text, v) if text != format_number(v) else esc(text)


def _energy_stats(v: Mapping[str, Any]) -> str:
    parts = [f"{k} {format_energy(v[k])}" for k in ("min", "median", "max") if k in v]
    rest = {k: x for k, x in v.items() if k not in ("min", "median", "max")}
    return esc(" · ".join(parts)) + (render_value(rest) if rest else "")


def _components(c: Mapping[str, Any]) -> str:
    return esc(", ".join(f"{k.replace('_', ' ')} {format_bytes(b)}" for k, b in c.items()))


def _memory(groups: list[Mapping[str, Any]]) -> str:
    header = [
        "Group",
        "Profile",
        "RAM needed",
        "RAM available",
        "Flash needed",
        "Flash available",
        "Fits",
        "Components",
    ]
    known = {
        "group",
        "profile",
        "needed_bytes",
        "available_bytes",
        "flash_needed_bytes",
        "flash_available_bytes",
        "fits",
        "components",
        "flash_components",
    }
    rows = []
    for g in groups:
        extra = {k: x for k, x in g.items() if k not in known}
        rows.append(
            [
                esc(g.get("group", MISSING)),
                esc(g.get("profile", MISSING)),
                *(
                    _titled(format_bytes(g.get(k)), g.get(k))
                    for k in ("needed_bytes", "available_bytes", "flash_needed_bytes", "flash_available_bytes")
                ),
                _yes_no(g.get("fits")),
                "RAM: "
                + _components(g.get("components") or {})
                + ("<br>flash: " + _components(g["flash_components"]) if g.get("flash_components") else "")
                + (render_value(extra) if extra else ""),
            ]
        )
    return table(header, rows, cls="inner")


def _fmt(f: Callable[[Any], str]) -> Callable[[Any], str]:
    return lambda v: _titled(f(v), v)


SUMMARY_KEYS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "final_accuracy": ("Final accuracy", _fmt(format_accuracy)),
    "best_accuracy": ("Best accuracy", _fmt(format_accuracy)),
    "rounds": ("Rounds", lambda v: esc(format_number(v))),
    "sim_time_s": ("Simulated time", _fmt(format_seconds)),
    "wall_time_s": ("Wall-clock time", _fmt(format_seconds)),
    "bytes_up": ("Bytes up (all devices)", _fmt(format_bytes)),
    "bytes_down": ("Bytes down (all devices)", _fmt(format_bytes)),
    "energy_j": ("Energy (all devices)", _fmt(format_energy)),
    "energy_j_total": ("Energy (all devices)", _fmt(format_energy)),
    "energy_j_per_device": ("Energy per device", _energy_stats),
    "memory_fits": ("Memory fits every device", _yes_no),
    "memory": ("Memory plan per group", _memory),
    "num_devices": ("Devices", lambda v: esc(format_number(v))),
    "algorithm": ("Algorithm", render_value),
    "dataset": ("Dataset", render_value),
    "model": ("Model", render_value),
}


def render_summary(summary: Mapping[str, Any]) -> str:
    """Known keys first, prettified; any other key rendered generically so nothing is hidden."""
    rows = []
    ordered = [k for k in SUMMARY_KEYS if k in summary] + [k for k in summary if k not in SUMMARY_KEYS]
    for key in ordered:
        value = summary[key]
        label, fmt = SUMMARY_KEYS.get(key, (key_label(key), render_value))
        try:
            cell = fmt(value) if key in SUMMARY_KEYS else render_value(value, key)
        except (TypeError, ValueError, AttributeError, KeyError):
            cell = render_value(value, key)  # unexpected shape: show it generically rather than fail the report
        rows.append(f"<tr><th>{esc(label)}</th><td>{cell}</td></tr>")
    return f'<table class="kv"><tbody>{"".join(rows)}</tbody></table>'


def key_figures(rounds: list[dict[str, Any]], summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Headline numbers from the finished rounds, overridden by the run's summary where it has them.

    Incomplete runs have no summary, yet still deserve a final accuracy and totals.
    """
    evaluated = [r["test_accuracy"] for r in rounds if r.get("test_accuracy") is not None]
    figures: dict[str, Any] = {
        "final_accuracy": evaluated[-1] if evaluated else None,
        "best_accuracy": max(evaluated) if evaluated else None,
        "rounds": len(rounds),
        "sim_time_s": rounds[-1]["sim_time_s"] if rounds else None,
        "bytes_up": sum(r.get("bytes_up") or 0 for r in rounds),
        "bytes_down": sum(r.get("bytes_down") or 0 for r in rounds),
        "energy_j": sum(r.get("energy_j") or 0.0 for r in rounds),
        "wall_time_s": sum(r.get("wall_time_s") or 0.0 for r in rounds),
    }
    for key in figures:
        if summary and summary.get(key) is not None:
            figures[key] = summary[key]
    return figures


# ---- sections ---------------------------------------------------------------------------


def status_banner(info: RunInfo) -> str:
    progress = f"{info.rounds_done} of {info.rounds_planned} planned rounds"
    if info.status == "complete":
        return f'<div class="banner complete">Run complete — {esc(progress)}.</div>'
    why = {
        "running": "still running or was interrupted",
        "failed": "failed",
        "incomplete": "stopped before its last round",
    }.get(info.status, "not finished")
    return (
        f'<div class="banner incomplete">INCOMPLETE run (status: {esc(info.status)}, {esc(why)}) — '
        f"{esc(progress)} done ({info.rounds_done}/{info.rounds_planned}). "
        "Figures and tables cover the finished rounds only.</div>"
    )


ROUND_TABLE: list[tuple[str, str, Callable[[Any], str]]] = [
    ("Round", "round", format_number),
    ("Sim time", "sim_time_s", format_seconds),
    ("Duration", "duration_s", format_seconds),
    ("Selected", "selected", format_number),
    ("Completed", "completed", format_number),
    ("Dropped", "dropped", format_number),
    ("Stragglers", "stragglers", format_number),
    ("Train loss", "train_loss", format_number),
    ("Test acc.", "test_accuracy", format_accuracy),
    ("Test loss", "test_loss", format_number),
    ("Bytes up", "bytes_up", format_bytes),
    ("Bytes down", "bytes_down", format_bytes),
    ("Energy", "energy_j", format_energy),
    ("Wall time", "wall_time_s", format_seconds),
]


def rounds_table(rounds: list[dict[str, Any]]) -> str:
    if not rounds:
        return '<p class="note">No finished rounds.</p>'
    shown: list[dict[str, Any] | None] = list(rounds)
    note = ""
    if len(rounds) > MAX_ROUND_ROWS:
        half = MAX_ROUND_ROWS // 2
        shown = [*rounds[:half], None, *rounds[-half:]]
        note = f'<p class="note">{len(rounds)} rounds; middle rounds omitted here, all are in csv/rounds.csv.</p>'
    width = len(ROUND_TABLE)
    rows = [[esc(f(r.get(k))) for _, k, f in ROUND_TABLE] if r else ["…"] + [""] * (width - 1) for r in shown]
    return note + table([h for h, _, _ in ROUND_TABLE], rows, numeric=[True] * width)


def events_section(events: list[dict[str, Any]]) -> str:
    if not events:
        return '<p class="note">No events.</p>'
    kinds = Counter(e["kind"] for e in events)
    counts = ", ".join(f"{esc(k)}: {n}" for k, n in kinds.most_common())
    shown = events[:MAX_EVENTS]
    head = (
        f"<p>{len(events)} events ({counts})"
        + (f"; the first {MAX_EVENTS} are shown, all are in csv/events.csv" if len(events) > MAX_EVENTS else "")
        + ".</p>"
    )
    rows = [
        [
            esc(e["round"]),
            esc(format_seconds(e["sim_time_s"])),
            esc(MISSING if e["device"] is None else e["device"]),
            esc(e["kind"]),
            esc(e["detail"]),
        ]
        for e in shown
    ]
    return head + table(
        ["Round", "Sim time", "Device", "Kind", "Detail"], rows, numeric=[True, True, True, False, False]
    )


PLOT_CAPTIONS = {
    "accuracy_round": "Test accuracy against round (rounds without evaluation are skipped).",
    "accuracy_time": "Test accuracy against simulated time.",
    "bytes": "Cumulative bytes sent up and down, all devices.",
    "energy": "Cumulative energy of all devices.",
    "device_energy": "Total energy per device, coloured by group.",
    "class_hist": "Training samples per class on each device (data partition).",
}
STATIC_CAPTIONS = {  # figures the interactive charts do not replace
    "model_sizes": "Per model size: test accuracy of its slice of the global model, bytes and device energy.",
    "battery": "State of charge of each battery device after each round (an empty device is offline until recharged).",
}


def render_report(
    info: RunInfo,
    rounds: list[dict[str, Any]],
    events: list[dict[str, Any]],
    plots: Mapping[str, Path],
    csv_files: Sequence[Path],
    charts: str = "",
) -> str:
    """The page. ``charts`` is the interactive section (:func:`charts_section`); PNGs it already
    covers are then only listed (they are in ``plots/``), the others are embedded as images."""
    summary = (
        render_summary(info.summary)
        if info.summary
        else '<p class="note">No summary recorded (the run did not finish); figures from the finished rounds:</p>'
        + render_summary(key_figures(rounds))
    )
    shown = {k: p for k, p in plots.items() if not charts or k not in PLOT_CAPTIONS}
    figs = charts + "".join(figure(p, PLOT_CAPTIONS.get(k) or STATIC_CAPTIONS.get(k, k)) for k, p in shown.items())
    if charts:
        pngs = ", ".join(f"plots/{esc(p.name)}" for k, p in plots.items() if k in PLOT_CAPTIONS)
        figs += f'<p class="note">Drag to zoom, double-click to reset, hover for values. PNG versions: {pngs}.</p>'
    csv_list = ", ".join(f"csv/{esc(p.name)}" for p in csv_files)
    body = f"""
<h1>{esc(info.name)}</h1>
<p class="meta">run {esc(info.run_id)} · twin {esc(info.twin)} · seed {esc(info.seed)} · status {esc(info.status)}</p>
{status_banner(info)}
<h2>Summary</h2>
{summary}
<h2>Plots</h2>
{figs}
<h2>Rounds</h2>
{rounds_table(rounds)}
<h2>Events</h2>
{events_section(events)}
<h2>Experiment spec</h2>
<pre>{esc(info.spec_yaml)}</pre>
<p class="note">Generated by tinytwin {esc(__version__)} from results.db. Raw data next to this report: {csv_list}.</p>
"""
    return page(f"{info.name} — tinytwin report", body)


def write_report(run_dir: Path) -> Path:
    """Write csv/, plots/ and report.html into ``run_dir`` from its results.db; return the report path."""
    run_dir = Path(run_dir)
    store, info = open_run(run_dir)
    try:
        csv_files = export_csv(store, info.run_id, run_dir / "csv")
        plots = make_plots(store, info.run_id, run_dir / "plots")
        rounds, events = store.rounds(info.run_id), store.events(info.run_id)
    finally:
        store.close()
    charts = charts_section(run_dir / "results.db")
    return atomic_write(run_dir / "report.html", render_report(info, rounds, events, plots, csv_files, charts))
