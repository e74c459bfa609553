"""Human-readable units for reports and the CLI summary table.

One place decides how a byte count, a duration or an energy reads, so the HTML report,
the comparison page and the terminal summary never disagree. Sizes use decimal SI
prefixes (1 kB = 1000 B), matching how link bandwidths and flash sizes are quoted.
"""

from __future__ import annotations

import math

MISSING = "—"


def _bad(value: float | int | None) -> bool:
    """None and NaN have no sensible unit; they all render as ``MISSING``."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _sign(value: float) -> str:
    return "-" if value < 0 else ""


def format_bytes(n: float | int | None) -> str:
    """``532`` → ``"532 B"``, ``12_345`` → ``"12.3 kB"``, ``4_500_000`` → ``"4.5 MB"``."""
    if _bad(n):
        return MISSING
    value = abs(float(n))  # type: ignore[arg-type]
    if round(value) < 1000:
        return f"{_sign(n)}{value:.0f} B"  # type: ignore[arg-type]
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000.0
        if round(value, 1) < 1000 or unit == "TB":
            return f"{_sign(n)}{value:.1f} {unit}"  # type: ignore[arg-type]
    raise AssertionError("unreachable")


def format_seconds(s: float | int | None) -> str:
    """``0.25`` → ``"250 ms"``, ``1.23`` → ``"1.2 s"``, ``184`` → ``"3 min 4 s"``, ``7560`` → ``"2.1 h"``."""
    if _bad(s):
        return MISSING
    sign, value = _sign(s), abs(float(s))  # type: ignore[arg-type]
    if value == 0:
        return "0 s"
    if value < 1e-3:
        return f"{sign}{value * 1e6:.0f} µs"
    if value < 1:
        return f"{sign}{value * 1e3:.0f} ms"
    if round(value, 1) < 60:
        return f"{sign}{value:.1f} s"
    if value < 3600:
        minutes, seconds = divmod(int(round(value)), 60)
        if minutes == 60:  # 3599.6 s rounds up to a full hour
            return f"{sign}1.0 h"
        return f"{sign}{minutes} min {seconds} s"
    return f"{sign}{value / 3600:.1f} h"


def format_energy(j: float | int | None) -> str:
    """``0.0123`` → ``"12.3 mJ"``, ``4.5`` → ``"4.50 J"``, ``2100`` → ``"2.1 kJ"``."""
    if _bad(j):
        return MISSING
    sign, value = _sign(j), abs(float(j))  # type: ignore[arg-type]
    if value == 0:
        return "0 J"
    if value < 1e-3:
        return f"{sign}{value * 1e6:.1f} µJ"
    if value < 1:
        return f"{sign}{value * 1e3:.1f} mJ"
    if value < 1000:
        return f"{sign}{value:.2f} J"
    if value < 1e6:
        return f"{sign}{value / 1e3:.1f} kJ"
    return f"{sign}{value / 1e6:.1f} MJ"


def format_accuracy(a: float | int | None) -> str:
    """Accuracies are stored as fractions; ``0.8765`` → ``"87.65 %"``."""
    if _bad(a):
        return MISSING
    return f"{float(a) * 100:.2f} %"  # type: ignore[arg-type]


def format_number(x: object) -> str:
    """Generic cell value: ints as-is with thousands separators, floats to 4 significant digits."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def format_model_size(size: dict) -> str:
    """A model size of a run summary's ``model_sizes``: ``rate 0.5`` or ``rate 0.5, 1 hidden layer``."""
    name = f"rate {size['rate']:g}"
    depth = size.get("depth")
    if depth is not None:
        name += f", {depth} hidden layer{'s' if depth != 1 else ''}"
    return name
