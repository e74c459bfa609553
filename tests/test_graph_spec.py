"""The forecasting experiment file (issue #13): examples load, bad input is one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli
from tinytwin.errors import SpecError
from tinytwin.graph.experiment import train_config
from tinytwin.spec.forecast import load_forecast_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "graph"


def test_examples_load_and_the_seed_one_is_the_seeds_configuration() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("stgnn-metr-la-*.yaml"))
    assert names == ["stgnn-metr-la-bench.yaml", "stgnn-metr-la-seed.yaml", "stgnn-metr-la-short.yaml"]
    cfg = train_config(load_forecast_spec(EXAMPLES / "stgnn-metr-la-seed.yaml"))
    assert (cfg.epochs, cfg.lr, cfg.weight_decay, cfg.step_size, cfg.gamma, cfg.batch_size) == (
        40,
        1e-4,
        1e-5,
        5,
        0.7,
        32,
    )
    assert (cfg.model.channels, cfg.model.ks, cfg.model.kt, cfg.model.dropout, cfg.model.ko) == (
        (64, 16, 64),
        3,
        3,
        0.5,
        4,
    )


def test_impossible_history_is_refused_naming_the_key() -> None:
    spec = load_forecast_spec(EXAMPLES / "stgnn-metr-la-short.yaml", ["model.blocks=3"])
    with pytest.raises(SpecError, match="model.blocks"):
        train_config(spec)


@pytest.mark.parametrize(
    ("override", "expected"),
    [("setups=[central]", "setups.0"), ("train.lr=-1", "train.lr"), ("dataset.name=pems-bay-graph", "dataset.name")],
)
def test_bad_values_name_their_key(override: str, expected: str) -> None:
    with pytest.raises(SpecError, match=expected.replace(".", r"\.")):
        load_forecast_spec(EXAMPLES / "stgnn-metr-la-short.yaml", [override])


def test_bad_forecast_file_is_one_line_exit_2() -> None:
    proc = run_cli("forecast", str(EXAMPLES / "stgnn-metr-la-short.yaml"), "--set", "model.chanels=[1]")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "model.chanels: unknown key" in lines[0], proc.stderr
