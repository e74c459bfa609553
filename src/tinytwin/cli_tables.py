"""Compact catalog tables for ``tinytwin devices``: one row per entry, fitting a 100-column terminal.

Why a module of its own: the listing used to print every cited figure of every device
(~350 lines, names cut at the terminal's edge). The overview now shows only the numbers
that tell devices apart; ``tinytwin devices NAME`` keeps the full table with sources.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from rich import box
from rich.table import Table

from tinytwin.report import format as fmt

_CPU_CLASS = re.compile(r"Cortex-[AMR]\d+[A-Z+]*|Xtensa \w+|\w+ GPU")


def cpu_class(cpu: str) -> str:
    """A short processor class for a table cell, e.g. ``Cortex-M4F`` from a full CPU description."""
    found = _CPU_CLASS.search(cpu)
    if found:
        return found.group(0)
    words = cpu.split()
    return " ".join(words[:2])[:14] if words else "?"


def _compact_table(title: str, columns: Iterable[str]) -> Table:
    # SIMPLE_HEAD already puts a space between columns: one more (right padding) is enough.
    table = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0), pad_edge=False, title_justify="left"
    )
    for i, col in enumerate(columns):
        table.add_column(col, no_wrap=True, justify="left" if i in (0, 1) else "right")
    return table


def _fit(table: Table) -> Table:
    """Fix every column at its widest cell: rich would otherwise shrink (and cut) cells
    proportionally whenever the table's natural width exceeds the terminal by a little."""
    for col in table.columns:
        cells = [str(c) for c in col.cells]
        col.width = max(len(str(col.header)), *(len(c) for c in cells)) if cells else None
    return table


def device_overview(profiles: Iterable[Any]) -> Table:
    """Name, processor class, clock, RAM and flash left for training, FLOP/s, active power, radios.

    Units sit in the headers where they are fixed, so the nine built-in devices fit 100 columns.
    """
    table = _compact_table(
        "Device catalog (RAM and flash: what is left for training)",
        ("name", "class", "MHz", "RAM", "flash", "FLOP/s", "active W", "radios"),
    )
    table.columns[-1].justify = "left"
    for p in profiles:
        table.add_row(
            p.name,
            cpu_class(p.cpu),
            f"{p.clock_hz / 1e6:g}",
            fmt.format_bytes(p.training_ram_bytes),
            fmt.format_bytes(p.model_flash_bytes),
            f"{p.flops_per_s:.2g}",
            f"{p.power.active_w:.3g}",
            ",".join(p.radios),
        )
    return _fit(table)


def link_overview(links: Iterable[Any]) -> Table:
    """Name, latency, bandwidth up and down, loss, MTU and per-packet header of each link model."""
    table = _compact_table("Link models", ("name", "latency", "up", "down", "loss", "MTU", "header"))
    table.columns[1].justify = "right"
    for l in links:
        table.add_row(
            l.name,
            fmt.format_seconds(l.latency_s),
            f"{l.up_bps / 1e3:,.1f} kbit/s",
            f"{l.down_bps / 1e3:,.1f} kbit/s",
            f"{l.loss:g}",
            f"{l.mtu_bytes} B",
            f"{l.header_bytes} B",
        )
    return _fit(table)
