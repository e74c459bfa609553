"""Where ``tinytwin compare`` writes: never over an earlier comparison by surprise.

Why: ``compare`` used to write ``runs/compare`` every time, silently replacing the last
comparison a user may still have open. Without ``--out`` each comparison now gets a new
folder (``runs/compare``, ``runs/compare-2``, ...); an explicit ``--out`` that already holds
a comparison is refused unless ``--force`` says to replace it.
"""

from __future__ import annotations

from pathlib import Path

from tinytwin.errors import TinyTwinError

DEFAULT = Path("runs") / "compare"
PAGE = "compare.html"


def next_free_folder(base: Path = DEFAULT) -> Path:
    """``base`` if it does not exist yet, else the first of ``base-2``, ``base-3``, ... that does not."""
    if not base.exists():
        return base
    n = 2
    while (candidate := base.with_name(f"{base.name}-{n}")).exists():
        n += 1
    return candidate


def comparison_folder(out: Path | None, force: bool) -> Path:
    """The folder this comparison goes to; raises if ``out`` holds a comparison and ``force`` is off."""
    if out is None:
        return next_free_folder()
    if (out / PAGE).exists() and not force:
        raise TinyTwinError(
            f"{out} already holds a comparison ({out / PAGE}); pass --force to replace it, "
            "or another --out (without --out each comparison gets a new runs/compare-N folder)"
        )
    if out.exists() and not out.is_dir():
        raise TinyTwinError(f"--out {out} is a file, not a folder; pass a folder for the comparison")
    return out
