"""The emulation's run folder, database and run key are never readable by another user, even under umask 0."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from tinytwin.emulate.coordinator import EmulateOptions, start_emulation
from tinytwin.emulate.lifecycle import create_emulation_run, load_run_key
from tinytwin.spec.load import load_spec, validate_spec

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


def _walk_modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): _mode(p) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("family", ["fedavg", "gossip", "hierarchical"])
def test_every_file_an_emulation_writes_is_private_under_umask_0(tmp_path: Path, family: str) -> None:
    """Keys, shards, device configs and logs (written by the coordinator and by device processes)."""
    algorithm = {"name": family, "local_epochs": 1, "batch_size": 16, "lr": 0.1}
    if family == "hierarchical":
        algorithm["hierarchical"] = {"num_clusters": 2}
    raw = {
        "name": f"private-{family}",
        "seed": 1,
        "rounds": 1,
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [8]},
        "fleet": {"groups": [{"profile": "esp32-s3", "count": 4, "link": "wifi"}]},
        "topology": {"kind": "ring"},
        "algorithm": algorithm,
    }
    old = os.umask(0)
    try:
        run_dir, summary = start_emulation(
            validate_spec(raw), yaml.safe_dump(raw), tmp_path, None, EmulateOptions(time_scale=0.0), report=False
        )
    finally:
        os.umask(old)
    assert summary["rounds"] == 1
    modes = _walk_modes(run_dir)
    assert any(name.startswith("emulate/keys/") for name in modes)
    assert any(name.startswith("emulate/devices/d") for name in modes)
    assert any(name.startswith("emulate/logs/") for name in modes)
    loose = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o700 if (run_dir / name).is_dir() or name == "." else 0o600)
    }
    assert not loose, loose


def test_a_simulated_run_with_its_report_is_private_under_umask_0(tmp_path: Path) -> None:
    from tinytwin.engines.runner import start_run

    spec, spec_yaml = load_spec(ROOT / "examples" / "quickstart.yaml", ["rounds=2", "fleet.groups.0.count=4"])
    old = os.umask(0)
    try:
        run_dir = start_run(spec, spec_yaml, tmp_path, None, report=True).run_dir
        assert os.umask(0) == 0  # the caller's umask is given back
    finally:
        os.umask(old)
    modes = _walk_modes(run_dir)
    assert "report.html" in modes and any(name.startswith("csv/") for name in modes)
    loose = {n: oct(m) for n, m in modes.items() if m != (0o700 if (run_dir / n).is_dir() or n == "." else 0o600)}
    assert not loose, loose
