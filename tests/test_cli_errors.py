"""Bad input: every wrong spec gives one line naming what is wrong, exit status 2, no run folder."""

from pathlib import Path

import pytest

from conftest import run_cli, write_spec

GOOD = """
name: t
rounds: 2
dataset: {name: digits}
model: {name: mlp, hidden: [16]}
fleet:
  groups:
    - {profile: esp32-s3, count: 3, link: wifi}
"""

CASES = [
    # (id, spec text or replacement, extra args, text expected in the message)
    ("unknown-key", GOOD + "modle: {}\n", [], "modle: unknown key"),
    ("alpha-zero", GOOD + "partition: {method: dirichlet, alpha: 0}\n", [], "partition.alpha"),
    ("zero-devices", GOOD.replace("count: 3", "count: 0"), [], "fleet.groups.0.count"),
    ("wrong-type", GOOD.replace("rounds: 2", "rounds: ten"), [], "rounds"),
    ("unknown-profile", GOOD.replace("esp32-s3", "esp99"), [], "fleet.groups.0.profile: unknown device 'esp99'"),
    ("unknown-link", GOOD.replace("link: wifi", "link: carrier-pigeon"), [], "fleet.groups.0.link"),
    ("bad-model", GOOD.replace("name: mlp", "name: resnet50"), [], "model.name"),
    (
        "fits-no-device",
        GOOD.replace("esp32-s3", "nrf52840")
        .replace("link: wifi", "link: ble")
        .replace("hidden: [16]", "hidden: [512, 512]"),
        [],
        "does not fit",
    ),
    ("missing-data", GOOD.replace("{name: digits}", "{name: mnist, data_dir: /nonexistent/folder}"), [], "mnist"),
    ("bad-yaml", "name: [unclosed\n", [], "not valid YAML"),
    ("bad-set", GOOD, ["--set", "algorithm.lr=-1"], "algorithm.lr"),
    ("bad-set-syntax", GOOD, ["--set", "algorithm.lr"], "key.path=value"),
    ("fraction-too-big", GOOD + "algorithm: {clients_per_round: 1.5}\n", [], "algorithm.clients_per_round"),
    ("failure-device", GOOD + "failures: {leave: [{device: 7, round: 1}]}\n", [], "failures.leave.0.device"),
]


@pytest.mark.parametrize("case_id,text,extra,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_one_line_exit_2_no_run_folder(tmp_path: Path, case_id, text, extra, expected):
    spec = write_spec(tmp_path / "spec.yaml", text)
    out = tmp_path / "runs"
    proc = run_cli("run", str(spec), "--out", str(out), "--quiet", *extra)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert expected in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_missing_spec_file(tmp_path):
    proc = run_cli("run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert "not found" in proc.stderr


def test_missing_data_message_names_files_and_fix(tmp_path):
    spec = write_spec(
        tmp_path / "spec.yaml", GOOD.replace("{name: digits}", "{name: mnist, data_dir: " + str(tmp_path) + "}")
    )
    proc = run_cli("run", str(spec), "--out", str(tmp_path / "runs"), "--quiet")
    assert proc.returncode == 2
    assert "mnist.npz" in proc.stderr and "train-images-idx3-ubyte.gz" in proc.stderr


def test_plan_reports_unfit_group_with_numbers(tmp_path):
    spec = write_spec(
        tmp_path / "spec.yaml",
        GOOD.replace("esp32-s3", "nrf52840")
        .replace("link: wifi", "link: ble")
        .replace("hidden: [16]", "hidden: [512, 512]"),
    )
    proc = run_cli("plan", str(spec))
    assert proc.returncode == 1
    assert "NO" in proc.stdout and "RAM total" in proc.stdout


REPO = Path(__file__).resolve().parents[1]

# (id, command line, text expected in the one line); {tmp} is the test's temporary folder.
USAGE_CASES = [
    ("bare", [], "missing command; choose one of: run, emulate, plan"),
    ("run-no-file", ["run"], "Missing argument 'SPEC_FILE'"),
    ("unknown-command", ["frob"], "No such command 'frob'"),
    ("unknown-flag", ["run", "examples/quickstart.yaml", "--bogus"], "No such option: --bogus"),
    ("bad-flag-value", ["emulate", "examples/quickstart.yaml", "--time-scale", "abc"], "'--time-scale'"),
    ("missing-file", ["run", "{tmp}/nope.yaml"], "nope.yaml not found"),
    ("report-several", ["report", "{tmp}/run-a", "{tmp}/run-b"], "report takes one run folder, got 2"),
    ("report-missing", ["report", "{tmp}/no-such-run"], "run folder does not exist"),
]


@pytest.mark.parametrize("case_id,args,expected", USAGE_CASES, ids=[c[0] for c in USAGE_CASES])
def test_usage_error_one_line_exit_2(tmp_path: Path, case_id: str, args: list[str], expected: str) -> None:
    """Whatever the command line, a mistake is one line on stderr and exit 2, never a traceback."""
    (tmp_path / "run-a").mkdir()
    (tmp_path / "run-b").mkdir()
    proc = run_cli(*(a.replace("{tmp}", str(tmp_path)) for a in args), cwd=REPO, timeout=60)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["report", "--help"]])
def test_help_still_exits_0(args: list[str]) -> None:
    proc = run_cli(*args, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: tinytwin" in proc.stdout and not proc.stderr.strip()


HUGE = ["--set", "model.hidden=[100000,100000]"]  # 10^10 parameters: 40 GB of weights alone


@pytest.mark.parametrize("command", ["run", "plan", "emulate"])
@pytest.mark.parametrize(
    "example,weights", [("quickstart.yaml", "weights 40,030,400,040"), ("nrf52840-ble.yaml", "weights 40,030,400,040")]
)
def test_oversized_model_refused_by_the_memory_plan_first(tmp_path: Path, command: str, example: str, weights: str):
    """The plan runs before any tensor or frame is built: numbers by component, not a traceback."""
    out = ["--out", str(tmp_path / "runs"), "--quiet"] if command != "plan" else []
    proc = run_cli(command, str(REPO / "examples" / example), *HUGE, *out, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "local training does not fit" in lines[0] and weights in lines[0] and "B of RAM" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_model_too_big_for_one_frame_but_fitting_ram(tmp_path: Path):
    """A Raspberry Pi has the RAM for a 37 MB update, but one frame carries 16 MiB: one line, exit 2."""
    spec = write_spec(
        tmp_path / "spec.yaml",
        GOOD.replace("esp32-s3", "raspberry-pi-4").replace("hidden: [16]", "hidden: [3000, 3000]"),
    )
    for command, extra in (("run", ["--out", str(tmp_path / "runs"), "--quiet"]), ("plan", [])):
        proc = run_cli(command, str(spec), *extra)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and "more than a frame carries (16,777,216 B)" in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()
