"""CSV export of a run database, and the shared helpers for reading run folders.

CSV is the hand-off to spreadsheets and pandas: one file per table, one header row,
plain numbers (full precision, empty cell for NULL), so nothing needs the SQLite schema.
Files are written to a temporary name and then renamed, so a reader (or a crash) never
sees half a file.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tinytwin.errors import TinyTwinError
from tinytwin.store.db import DEVICE_ROUND_COLUMNS, EVENT_COLUMNS, ROUND_COLUMNS, RunInfo, RunStore
from tinytwin.store.files import write_error_line
from tinytwin.store.reader import open_checked

DB_NAME = "results.db"


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    A folder that is read-only or full gives one line (:class:`TinyTwinError`), and no temp file is left.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    # Not mkstemp: its 0600 mode would make reports unreadable to a web server or teammate;
    # O_EXCL with mode 0666 gives the same uniqueness guarantee and honours the umask.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise TinyTwinError(write_error_line(path.parent, exc)) from None
    return path


def open_run(run_dir: Path) -> tuple[RunStore, RunInfo]:
    """Open the run in ``run_dir`` read-only and checked (:func:`tinytwin.store.reader.open_checked`)."""
    return open_checked(Path(run_dir))


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


def csv_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    return _csv_text(columns, ([r.get(c) for c in columns] for r in rows))


def export_csv(store: RunStore, run_id: str, out_dir: Path) -> list[Path]:
    """Write rounds.csv, device_rounds.csv, devices.csv and events.csv; return their paths.

    devices.csv spreads the class histogram over ``class_0 … class_{K-1}`` columns so a
    spreadsheet can sum or plot it without parsing JSON.
    """
    out_dir = Path(out_dir)
    devices = store.devices(run_id)
    num_classes = max((len(d["class_hist"]) for d in devices), default=0)
    dev_header = ["device", "group", "profile", "link", "num_samples"] + [f"class_{k}" for k in range(num_classes)]
    dev_rows = (
        [
            d["device"],
            d["group"],
            d["profile"],
            d["link"],
            d["num_samples"],
            *d["class_hist"],
            *[0] * (num_classes - len(d["class_hist"])),
        ]
        for d in devices
    )
    return [
        atomic_write(out_dir / "rounds.csv", csv_table(store.rounds(run_id), ROUND_COLUMNS)),
        atomic_write(out_dir / "device_rounds.csv", csv_table(store.device_rounds(run_id), DEVICE_ROUND_COLUMNS)),
        atomic_write(out_dir / "devices.csv", _csv_text(dev_header, dev_rows)),
        atomic_write(out_dir / "events.csv", csv_table(store.events(run_id), EVENT_COLUMNS)),
    ]
