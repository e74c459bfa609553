"""Strict spec loading (issue #18): alias bombs, deep nesting, bad UTF-8, duplicate keys, YAML 1.1
coercions and absurd numbers are refused with one line, before any run folder exists."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from tinytwin.errors import SpecError
from tinytwin.spec import strict_yaml
from tinytwin.spec.load import load_spec

GOOD = """name: t
rounds: 2
dataset: {name: digits}
model: {name: mlp, hidden: [16]}
fleet:
  groups:
    - {profile: esp32-s3, count: 3, link: wifi}
"""


def billion_laughs() -> bytes:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return ("\n".join(lines) + "\n").encode()


# (id, file bytes, --set items, text expected in the one line)
BAD: list[tuple[str, bytes, list[str], str]] = [
    ("billion-laughs", billion_laughs(), [], "alias"),
    ("deep-nesting", GOOD.encode() + b"x: " + b"[" * 5000 + b"]" * 5000 + b"\n", [], "nests deeper"),
    ("deep-mapping", GOOD.encode() + b"x: " + b"{a: " * 3000 + b"1" + b"}" * 3000 + b"\n", [], "nests deeper"),
    ("bad-utf8", GOOD.encode() + b"# caf\xe9\n", [], "not UTF-8"),
    ("duplicate-key", (GOOD + "rounds: 5\n").encode(), [], "'rounds' appears twice"),
    ("sexagesimal", GOOD.replace("rounds: 2", "rounds: 1:30").encode(), [], "rounds"),
    ("on-is-not-true", (GOOD + "evaluation: {per_device: on}\n").encode(), [], "evaluation.per_device"),
    ("lr-inf", (GOOD + "algorithm: {lr: .inf}\n").encode(), [], "algorithm.lr: must be a finite number"),
    ("lr-nan", (GOOD + "algorithm: {lr: .nan}\n").encode(), [], "algorithm.lr: must be a finite number"),
    ("lr-1e308", (GOOD + "algorithm: {lr: 1e308}\n").encode(), [], "algorithm.lr: 1e+308 is out of range"),
    (
        "header-bytes-1e20",
        GOOD.replace("link: wifi}", "link: wifi, link_overrides: {header_bytes: 1e20}}").encode(),
        [],
        "fleet.groups.0.link_overrides.header_bytes",
    ),
    ("seed-2-63", GOOD.replace("rounds: 2", f"rounds: 2\nseed: {2**63}").encode(), [], "seed"),
    ("huge-int", GOOD.replace("rounds: 2", "rounds: " + "9" * 5000).encode(), [], "digits"),
    ("local-epochs-1e9", (GOOD + "algorithm: {local_epochs: 1e9}\n").encode(), [], "algorithm.local_epochs"),
    (
        "mixing-steps-1e9",
        (GOOD + "algorithm: {name: decfedavg, decfedavg: {mixing_steps: 1000000000}}\n").encode(),
        [],
        "algorithm.decfedavg.mixing_steps",
    ),
    ("name-100k", GOOD.replace("name: t", "name: " + "n" * 100_000).encode(), [], "name"),
    (
        "krum-f-too-big",
        (GOOD + "algorithm: {aggregator: {name: krum, num_byzantine: 3}}\n").encode(),
        [],
        "num_byzantine",
    ),
    (
        "krum-m-too-big",
        GOOD.replace("count: 3", "count: 5").encode()
        + b"algorithm: {aggregator: {name: krum, num_byzantine: 1, num_selected: 5}}\n",
        [],
        "num_selected",
    ),
    ("file-too-big", GOOD.encode() + b"#" * (2 << 20) + b"\n", [], "at most"),
    ("set-sexagesimal", GOOD.encode(), ["rounds=1:30"], "rounds"),
    ("set-inf", GOOD.encode(), ["algorithm.lr=.inf"], "algorithm.lr"),
    ("set-on", GOOD.encode(), ["evaluation.per_device=on"], "evaluation.per_device"),
    ("set-alias-bomb", GOOD.encode(), ["model.hidden=" + billion_laughs().decode().replace("\n", ", ")], "model"),
]


@pytest.mark.parametrize("case_id,data,sets,expected", BAD, ids=[c[0] for c in BAD])
def test_bad_file_is_one_spec_error(tmp_path: Path, case_id: str, data: bytes, sets: list[str], expected: str):
    path = tmp_path / "spec.yaml"
    path.write_bytes(data)
    with pytest.raises(SpecError) as info:
        load_spec(path, sets)
    message = str(info.value)
    assert "\n" not in message and expected in message, message


def test_billion_laughs_refused_fast_and_small(tmp_path: Path):
    """Refused in well under a second and 100 MB, in a fresh process so the peak RSS is its own."""
    path = tmp_path / "bomb.yaml"
    path.write_bytes(billion_laughs())
    assert len(billion_laughs()) < 1500
    code = (
        "import resource, sys, time\n"
        "from tinytwin.spec.load import load_spec\n"
        "from tinytwin.errors import SpecError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        "try:\n    load_spec(sys.argv[1])\nexcept SpecError:\n    pass\nelse:\n    sys.exit(3)\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seconds, grown_kb = proc.stdout.split()
    assert float(seconds) < 1.0
    assert int(grown_kb) < 100 * 1024


@pytest.mark.parametrize("command", ["run", "plan", "emulate"])
@pytest.mark.parametrize("case_id", ["billion-laughs", "bad-utf8", "seed-2-63", "header-bytes-1e20"])
def test_cli_refuses_with_one_line_and_no_run_folder(tmp_path: Path, command: str, case_id: str):
    data = next(c[1] for c in BAD if c[0] == case_id)
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(data)
    out = tmp_path / "runs"
    extra = ["--out", str(out), "--quiet"] if command != "plan" else []
    t0 = time.monotonic()
    proc = run_cli(command, str(spec), *extra, timeout=120)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()
    assert time.monotonic() - t0 < 60


def test_yaml_12_core_schema_values():
    """Only core-schema plain scalars are typed; YAML 1.1's extras stay text."""
    text = "a: 1:30\nb: on\nc: yes\nd: 0777\ne: 1e3\nf: [.inf, 0x1F, 0o17, null, ~, true, FALSE]\ng: 2001-12-14\n"
    assert strict_yaml.parse(text, "t") == {
        "a": "1:30",
        "b": "on",
        "c": "yes",
        "d": 777,
        "e": 1000.0,
        "f": [float("inf"), 31, 15, None, None, True, False],
        "g": "2001-12-14",
    }


def test_dump_reads_back_identically_strict_or_not():
    import yaml

    value = {"name": "1e3", "x": "on", "y": "1:30", "z": [1.0e-5, 3, None, True, "null", "0x1F", "yes"], "w": 0.1}
    text = strict_yaml.dump(value)
    assert strict_yaml.parse(text, "t") == value
    assert yaml.safe_load(text) == value  # the dashboard and the API read stored specs this way


def test_good_spec_still_loads(tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text(GOOD + "algorithm: {aggregator: {name: krum, num_byzantine: 0}}\n")
    spec, text = load_spec(path, ["algorithm.lr=0.05", "name=run-1"])
    assert spec.algorithm.lr == 0.05 and spec.name == "run-1" and spec.rounds == 2
    assert strict_yaml.parse(text, "t")["algorithm"]["lr"] == 0.05
