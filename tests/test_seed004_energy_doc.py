"""docs/energy.md's "Seed 004 §4.1 as a plan" quotes docs/results/seed004-energy.json, rendered by
benchmarks/seed004_energy_plan.py; a doc that drifts from its results file fails here."""

from __future__ import annotations

import json
import re
from types import ModuleType
from typing import Any

from conftest import generated_block, load_benchmark

NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
# Names with digits in them, not figures: the data set, a board, the seed's document and section.
NAMES = re.compile(r"CIFAR-100|Raspberry Pi 4|[Ss]eed 004 §4\.1")
STRUCTURAL = {"3600"}  # the seconds in an hour of the seed's formula


def _results() -> tuple[ModuleType, dict[str, Any], str]:
    gen = load_benchmark("seed004_energy_plan")
    return gen, json.loads(gen.OUT.read_text()), gen.DOC.read_text()


def _section_prose(gen: ModuleType, doc: str) -> str:
    """The section's own words: no table block, no code, up to the next section."""
    start = doc.index("## Seed 004 §4.1 as a plan")
    nxt = doc.find("\n## ", start + 1)
    text = doc[start : nxt if nxt >= 0 else len(doc)]
    text = text[: text.index(gen.BEGIN)] + text[text.index(gen.END) + len(gen.END) :]
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return NAMES.sub("", re.sub(r"`[^`]*`", "", text))


def test_table_is_rendered_from_the_results_file() -> None:
    gen, results, doc = _results()
    block = generated_block(doc, gen.BEGIN, gen.END)
    assert block == gen.render_table(results), "rerun benchmarks/seed004_energy_plan.py --from-json"
    assert list(results["groups"]) == ["orin-cpu", "nano-gpu", "nano-cpu", "rpi4"]
    assert [g["count"] for g in results["groups"].values()] == [1, 4, 1, 2]
    assert results["rounds"] == 15 and results["local_epochs"] == 2 and results["devices"] == 8


def test_the_model_is_the_seeds_wideresnet() -> None:
    _, results, _ = _results()
    model = results["model"]
    assert abs(model["params"] - 8_662_100) <= 0.01 * 8_662_100
    assert model["train_flops_per_sample"] > 3 * model["params"]  # forward + backward, a conv net


def test_the_seeds_totals_are_read_as_wh() -> None:
    _, results, _ = _results()
    seed = results["seed"]
    assert seed["printed_unit"] == "kWh" and seed["read_as"] == "Wh" and seed["run_h"] == 22
    for g in results["groups"].values():
        assert g["seed"]["printed"] == f"{g['seed']['wh']:g} kWh"
        # a board cannot draw more than its measured training power on average over the run
        assert g["seed"]["wh"] <= g["seed"]["watts"] * seed["run_h"]
        assert g["energy_run_wh"] == g["energy_run_j"] / 3600


def test_the_prose_figures_match_the_results() -> None:
    gen, results, doc = _results()
    prose = " ".join(_section_prose(gen, doc).split())
    figures = gen.prose_figures(results)
    for key, text in figures.items():
        assert text in prose, (key, text)
    allowed = {n for text in figures.values() for n in NUMBER.findall(text)} | STRUCTURAL
    stray = [n for n in NUMBER.findall(prose) if n not in allowed]
    assert not stray, f"the prose quotes figures that are not in the results file: {stray}"


def test_the_prose_verdicts_hold() -> None:
    _, results, _ = _results()
    g = results["groups"]
    gpu, orin, cpu, pi = g["nano-gpu"], g["orin-cpu"], g["nano-cpu"], g["rpi4"]
    # "the close one"
    assert abs(gpu["energy_vs_seed"] - 1) < 0.05 and abs(gpu["busy_vs_seed_hours"] - 1) < 0.05
    # "half the seed's", then idle over the seed's 22 h comes close
    assert 0.45 < orin["energy_vs_seed"] < 0.55
    assert abs(orin["energy_on_seed_clock_wh"] / orin["seed"]["wh"] - 1) < 0.05
    # "does not fit the Nano GPU": its mean over the run is below the profile's idle power
    assert gpu["seed"]["mean_w_over_run"] < gpu["idle_w"] and gpu["energy_on_seed_clock_wh"] > 1.5 * gpu["seed"]["wh"]
    # "each longer than the seed's whole run": the slow CPU boards set the predicted run
    for board in (cpu, pi):
        assert board["busy_run_h"] > results["seed"]["run_h"] and board["energy_on_seed_clock_wh"] is None
        assert board["busy_vs_seed_hours"] > 3
    assert results["slowest_group"] == "rpi4" and results["run_vs_seed"] > 3


def test_the_results_file_is_todays_plan() -> None:
    """The plan takes well under a second (no training, no CIFAR-100 files), so check that the
    results file is what the current cost model and catalog give, not only what the doc says."""
    gen, results, _ = _results()
    fresh = gen.plan_results()
    assert fresh["model"] == results["model"], "rerun benchmarks/seed004_energy_plan.py"
    for name, g in fresh["groups"].items():
        old = results["groups"][name]
        for key in ("samples_per_device", "flops_per_round", "active_w", "idle_w"):
            assert g[key] == old[key], (name, key)
        for key in ("busy_round_s", "energy_round_j", "energy_run_with_idle_j"):
            assert abs(g[key] - old[key]) <= 1e-9 * abs(old[key]), (name, key)
