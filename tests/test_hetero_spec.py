"""fleet.groups[i].model_rate and aggregator nested: bad input is one line, exit 2, no run folder;
nested averaging over full-size models runs and gives FedAvg's curve."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import run_cli, write_spec
from tinytwin.engines.runner import start_run
from tinytwin.errors import SpecError
from tinytwin.spec.load import validate_spec
from tinytwin.store.db import RunStore

BASE = """
name: t
seed: 1
rounds: 2
dataset: {name: digits}
model: {name: mlp, hidden: [16]}
fleet:
  groups:
    - {profile: esp32-s3, count: 3, link: wifi, model_rate: RATE}
algorithm: {name: ALGO, aggregator: {name: AGG}}
"""


def spec_text(rate: str = "1.0", algo: str = "fedavg", agg: str = "nested") -> str:
    return BASE.replace("RATE", rate).replace("ALGO", algo).replace("AGG", agg)


CLI_CASES = [
    ("rate-above-one", spec_text(rate="1.5"), "fleet.groups.0.model_rate"),
    ("rate-without-nested", spec_text(rate="0.5", agg="fedavg"), "need algorithm.aggregator.name: nested"),
    (
        "auto-fits-nothing",
        spec_text(rate="auto").replace("hidden: [16]", "hidden: [4096, 4096]").replace("esp32-s3", "nrf52840"),
        "0.125: RAM 5,022,620 of 196,608 B",
    ),
    (
        "distillation-without-proxy",
        spec_text(rate="0.5").replace("{name: nested}}", "{name: nested}, distillation: {epochs: 2}}"),
        "algorithm.distillation.proxy",
    ),
    (
        "distillation-proxy-takes-every-sample",
        spec_text(rate="0.5").replace(
            "{name: nested}}", "{name: nested}, distillation: {proxy: {source: holdout, samples: 5000}}}"
        ),
        "leaves none to train",
    ),
    (
        "distillation-unknown-server",
        spec_text(rate="0.5").replace(
            "{name: nested}}", "{name: nested}, distillation: {proxy: {source: holdout}, server_profile: cray}}"
        ),
        "algorithm.distillation.server_profile: unknown profile 'cray'",
    ),
    ("attack-on-mixed-sizes", spec_text(rate="0.5") + "attacks: [{kind: sign_flip, devices: [0]}]\n", "attacks"),
    (
        "scaler-without-nested",
        spec_text(agg="fedavg").replace("{name: fedavg}}", "{name: fedavg, scaler: true}}"),
        "algorithm.aggregator.scaler: scales nested members",
    ),
    (
        "scaler-on-firmware",
        spec_text(rate="0.5")
        .replace("model_rate: 0.5}", "model_rate: 0.5, twin: firmware}")
        .replace("{name: nested}}", "{name: nested, scaler: true}}"),
        "has no scaler; use twin: process",
    ),
    (
        "depth-deeper-than-the-model",
        spec_text().replace("model_rate: 1.0}", "model_rate: 1.0, model_depth: 2}"),
        "fleet.groups.0.model_depth: 2 hidden layers, but model.hidden has 1; use 1 to 1",
    ),
    (
        "depth-on-a-cnn",
        spec_text().replace("name: mlp, hidden: [16]", "name: lenet5").replace("model_rate: 1.0}", "model_depth: 1}"),
        "depth variants apply to the mlp model",
    ),
    (
        "depth-without-nested",
        spec_text(agg="fedavg")
        .replace("hidden: [16]", "hidden: [16, 8]")
        .replace("model_rate: 1.0}", "model_depth: 1}"),
        "fleet.groups.0.model_depth: groups of different model sizes need algorithm.aggregator.name: nested",
    ),
]
IN_PROCESS_CASES = [
    ("rate-zero", spec_text(rate="0"), "fleet.groups.0.model_rate"),
    ("rate-word", spec_text(rate="half"), "fleet.groups.0.model_rate"),
    (
        "rate-on-wideresnet",
        spec_text(rate="0.5").replace("name: mlp, hidden: [16]", "name: wideresnet"),
        "wideresnet has none to scale",
    ),
    ("nested-on-gossip", spec_text(algo="gossip"), "algorithm.aggregator.name"),
    ("nested-on-hierarchical", spec_text(algo="hierarchical"), "nested averaging applies to fedavg"),
    (
        "distillation-without-nested",
        spec_text(agg="fedavg").replace("{name: fedavg}}", "{name: fedavg}, distillation: {proxy: {source: holdout}}}"),
        "set algorithm.aggregator.name: nested",
    ),
]


@pytest.mark.parametrize("case_id,text,expected", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_rate_one_line_exit_2_no_run_folder(tmp_path: Path, case_id, text, expected):
    spec = write_spec(tmp_path / "spec.yaml", text)
    out = tmp_path / "runs"
    proc = run_cli("run", str(spec), "--out", str(out), "--quiet")
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert expected in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("case_id,text,expected", IN_PROCESS_CASES, ids=[c[0] for c in IN_PROCESS_CASES])
def test_bad_rate_is_a_spec_error(case_id, text, expected):
    with pytest.raises(SpecError) as info:
        validate_spec(yaml.safe_load(text))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def _rounds(tmp_path: Path, agg: str) -> list[dict]:
    out = start_run(validate_spec(yaml.safe_load(spec_text(agg=agg))), "{}", tmp_path / agg, None)
    store = RunStore(out.run_dir / "results.db")
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in store.rounds(store.run_info().run_id)]


def test_nested_over_full_models_is_fedavg(tmp_path: Path):
    nested = _rounds(tmp_path, "nested")
    assert nested and "test_accuracy" in str(nested[0].keys())
    assert nested == _rounds(tmp_path, "fedavg")
