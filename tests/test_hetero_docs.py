"""docs/heterogeneous.md quotes the figures of docs/results/hetero.json, rendered by the script that wrote it."""

from __future__ import annotations

import json

from conftest import generated_block, load_benchmark


def _results():
    gen = load_benchmark("hetero_arms")
    return gen, json.loads(gen.OUT.read_text()), gen.DOC.read_text()


def test_table_is_rendered_from_the_results_file():
    gen, results, doc = _results()
    block = generated_block(doc, gen.BEGIN, gen.END)
    assert block == gen.render_table(results), "rerun benchmarks/hetero_arms.py --from-json"
    assert len(results["arms"]) == 12 and results["seeds"] == [0, 1, 2]


def test_the_prose_figures_and_verdict_match_the_results():
    gen, results, doc = _results()
    arms = results["arms"]
    prose = doc[doc.index(gen.END) :]

    def pct(key: str, field: str = "accuracy") -> str:
        return f"{100 * arms[key][field]['mean']:.2f} %"

    for method in ("iid", "dirichlet"):
        acc = {
            arm: arms[f"{method}/{arm}"]["accuracy"]["mean"] for arm in ("smallest", "fit-only", "nested", "distilled")
        }
        assert acc["nested"] > acc["smallest"] + 0.05 and acc["distilled"] > acc["smallest"] + 0.05
        assert acc["nested"] < acc["fit-only"] and acc["distilled"] < acc["fit-only"]  # "neither beats"
        assert acc["distilled"] < acc["nested"]  # "slightly below plain nested averaging"
        for arm in ("smallest", "fit-only", "nested", "distilled"):
            assert pct(f"{method}/{arm}") in prose, (method, arm)
        assert pct(f"{method}/nested", "accuracy_small") in prose
    assert "the expected result did not hold" in prose
    strength = results["distillation_strength"]
    for label, acc in strength.items():
        assert f"{100 * acc:.2f} %" in prose, label
    nested_seed0 = arms["dirichlet/nested"]["per_seed_accuracy"][0]
    assert f"{100 * nested_seed0:.2f} %" in prose
    for key in ("iid/fit-only", "iid/nested"):
        assert f"{arms[key]['sim_time_s'] / 60:.1f} min" in prose
        assert f"{arms[key]['energy_j'] / 1e3:.2f} kJ" in prose


def test_the_depth_variant_prose_matches_the_results():
    gen, results, doc = _results()
    arms = results["arms"]
    prose = doc[doc.index(gen.END) :]
    for method in ("iid", "dirichlet"):
        shallow, nested = arms[f"{method}/shallow"], arms[f"{method}/nested"]
        small = shallow["accuracy_small"]["mean"]
        assert small > nested["accuracy_small"]["mean"] + 0.2  # "raised ... from 62.48 % to 88.00 %"
        assert small > arms[f"{method}/smallest"]["accuracy"]["mean"]  # "above the smallest-model arm"
        assert shallow["accuracy"]["mean"] >= nested["accuracy"]["mean"]
        assert f"{100 * small:.2f} %" in prose and f"{100 * shallow['accuracy']['mean']:.2f} %" in prose
    assert arms["dirichlet/shallow"]["accuracy"]["mean"] < arms["dirichlet/fit-only"]["accuracy"]["mean"]


def test_the_scaler_prose_matches_the_results():
    gen, results, doc = _results()
    arms = results["arms"]
    prose = doc[doc.index(gen.END) :]
    for method in ("iid", "dirichlet"):
        scaled, nested = arms[f"{method}/scaled"], arms[f"{method}/nested"]
        assert abs(scaled["accuracy"]["mean"] - nested["accuracy"]["mean"]) < 0.01  # "moved ... a little"
        assert scaled["accuracy_small"]["mean"] < nested["accuracy_small"]["mean"]  # "made ... worse"
        for value in (scaled["accuracy"]["mean"], scaled["accuracy_small"]["mean"]):
            assert f"{100 * value:.2f} %" in prose
