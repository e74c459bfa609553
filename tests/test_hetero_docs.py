"""docs/heterogeneous.md quotes the figures of docs/results/hetero.json, rendered by the script that wrote it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def test_table_is_rendered_from_the_results_file():
    gen = load_benchmark("hetero_arms")
    results = json.loads(gen.OUT.read_text())
    doc = gen.DOC.read_text()
    block = re.search(re.escape(gen.BEGIN) + ".*?" + re.escape(gen.END), doc, re.DOTALL)
    assert block and block.group(0) == gen.render_table(results), "rerun benchmarks/hetero_arms.py --from-json"
    assert len(results["arms"]) == 6 and results["seeds"] == [0, 1, 2]


def test_the_prose_figures_and_verdict_match_the_results():
    gen = load_benchmark("hetero_arms")
    arms = json.loads(gen.OUT.read_text())["arms"]
    doc = gen.DOC.read_text()
    for key in ("iid/nested", "iid/smallest", "dirichlet/nested", "dirichlet/smallest"):
        assert f"{100 * arms[key]['accuracy_small_submodel_mean']:.2f} %" in doc, key
    for method in ("iid", "dirichlet"):
        nested, fit, small = (arms[f"{method}/{a}"]["accuracy_mean"] for a in ("nested", "fit-only", "smallest"))
        assert nested > small  # "beats the smallest-model arm"
        assert fit - 0.005 < nested < fit  # "does not beat ... within about 0.2 points below"
    assert "does **not**" in doc
