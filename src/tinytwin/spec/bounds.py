"""Limits every value of an experiment file must respect, whatever key it sits under.

Why here and not per field: many keys take free-form mappings (``overrides``, ``profiles``,
``link_overrides``) whose numbers flow into int64 arrays and float sums. A ``1e20`` byte count
there wrapped around to a negative simulated time. One walk over the raw tree bounds them all
before pydantic coerces anything; per-field maxima (``rounds``, ``local_epochs``, ...) live in
:mod:`tinytwin.spec.schema`.
"""

from __future__ import annotations

import math
from typing import Any

from tinytwin.errors import SpecError

MAX_MAGNITUDE = 10**15  # |number|: above any byte count, clock rate or FLOP figure a spec needs
MAX_STRING = 4096  # characters: paths and names are far shorter
MAX_ITEMS = 100_000  # entries of one list or mapping


def check_values(raw: Any, path: tuple[str, ...] = ()) -> None:
    """Refuse non-finite or absurd numbers, huge strings and non-string keys anywhere in ``raw``."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(raw, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            _check_number(value, where)
        elif isinstance(value, str):
            if len(value) > MAX_STRING:
                raise SpecError(_dotted(where), f"is {len(value):,} characters long; at most {MAX_STRING:,} allowed")
        elif isinstance(value, dict):
            _check_size(value, where)
            for key, item in value.items():
                if not isinstance(key, str):
                    raise SpecError(_dotted(where), f"key {key!r} must be a name (text), not {type(key).__name__}")
                stack.append((item, (*where, key)))
        elif isinstance(value, (list, tuple)):
            _check_size(value, where)
            stack.extend((item, (*where, str(i))) for i, item in enumerate(value))


def _check_number(value: int | float, where: tuple[str, ...]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(_dotted(where), f"must be a finite number, got {value}")
    if abs(value) > MAX_MAGNITUDE:
        shown = f"{value:g}" if isinstance(value, float) else f"{float(value):.3g}"
        raise SpecError(_dotted(where), f"{shown} is out of range; numbers in an experiment file must be within ±1e15")


def _check_size(value: dict[Any, Any] | list[Any] | tuple[Any, ...], where: tuple[str, ...]) -> None:
    if len(value) > MAX_ITEMS:
        raise SpecError(_dotted(where), f"has {len(value):,} entries; at most {MAX_ITEMS:,} allowed")


def _dotted(where: tuple[str, ...]) -> str:
    return ".".join(where) or "experiment file"
