"""Commands that need no training start without importing torch (most of start-up time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from tinytwin.engines.runner import start_run
from tinytwin.spec.load import load_spec

PROBE = """
import json, sys
sys.argv = ["tinytwin", *json.loads(sys.argv[1])]
from tinytwin.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
print("PROBE " + json.dumps({"code": code, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def probe(*args: str) -> dict:
    """Run ``tinytwin ARGS`` in a fresh process; its exit code and whether torch got imported."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args))], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("PROBE ")]
    assert lines, proc.stderr
    return json.loads(lines[-1][6:])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    spec, text = load_spec(REPO / "examples" / "quickstart.yaml", ["rounds=2", "fleet.groups.0.count=4"])
    return start_run(spec, text, tmp_path_factory.mktemp("runs"), None, report=False).run_dir


@pytest.mark.parametrize("args", [["--help"], ["devices"], ["devices", "esp32-s3"], ["devices", "--links"]])
def test_help_and_catalogs_do_not_import_torch(args):
    assert probe(*args) == {"code": 0, "torch": False}


def test_report_and_compare_do_not_import_torch(run_dir, tmp_path):
    assert probe("report", str(run_dir)) == {"code": 0, "torch": False}
    assert (run_dir / "report.html").is_file()
    assert probe("compare", str(run_dir), str(run_dir), "--out", str(tmp_path / "cmp")) == {"code": 0, "torch": False}


def test_run_still_imports_torch_to_train(tmp_path):
    """The probe can see torch: a command that trains does import it."""
    got = probe(
        "run", "examples/quickstart.yaml", "--set", "rounds=1", "--out", str(tmp_path), "--quiet", "--no-report"
    )
    assert got == {"code": 0, "torch": True}


def test_plan_does_not_import_torch():
    assert probe("plan", "examples/quickstart.yaml") == {"code": 0, "torch": False}


@pytest.mark.parametrize("command", ["run", "emulate", "sweep"])
def test_a_refused_spec_is_refused_before_torch_is_imported(command, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nrounds: 3\nbogus: 1\n")
    assert probe(command, str(bad), "--out", str(tmp_path / "runs")) == {"code": 2, "torch": False}
    assert not (tmp_path / "runs").exists()
