"""The emulation's run folder, database and run key are never readable by another user, even under umask 0."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tinytwin.emulate.lifecycle import create_emulation_run, load_run_key
from tinytwin.spec.load import load_spec

ROOT = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_run_folder_and_key_are_private_from_creation(tmp_path: Path) -> None:
    spec, spec_yaml = load_spec(ROOT / "examples" / "quickstart.yaml", [])
    old = os.umask(0)
    try:
        run_dir, store, _ = create_emulation_run(spec, spec_yaml, tmp_path, None)
        edir = run_dir / "emulate"
        edir.mkdir()
        key = load_run_key(edir, resume=False)
    finally:
        os.umask(old)
        store.close()
    assert _mode(run_dir) == 0o700
    assert _mode(run_dir / "spec.yaml") == 0o600 and _mode(run_dir / "results.db") == 0o600
    assert _mode(edir / "run.key") == 0o600 and (edir / "run.key").read_bytes() == key and len(key) == 32
