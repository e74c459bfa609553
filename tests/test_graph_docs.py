"""The figures of docs/graph-forecasting.md come from docs/results/stgnn.json (issue #13)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def test_doc_block_is_the_one_rendered_from_the_results_file() -> None:
    gen = load_benchmark("reproduce_stgnn")
    results = json.loads(gen.RESULTS.read_text())
    block = re.search(re.escape(gen.BEGIN) + ".*?" + re.escape(gen.END), gen.DOC.read_text(), re.DOTALL)
    assert block, "docs/graph-forecasting.md lost its generated block"
    assert block.group(0) == gen.render(results), "rerun `python benchmarks/reproduce_stgnn.py --from-json`"


def test_quoted_headline_figures_match_the_json() -> None:
    gen = load_benchmark("reproduce_stgnn")
    results = json.loads(gen.RESULTS.read_text())
    bench = results["bench"]
    central = bench["setups"]["centralized"]["test"]["15min"]["mae"]
    persistence = bench["persistence"]["15min"]["mae"]
    text = gen.DOC.read_text()
    assert f"({central:.2f} vs {persistence:.2f})" in text
    assert central < persistence  # the trained model beats the last-value baseline at 15 min
    assert set(bench["setups"]) >= {"centralized", "traditional", "serverfree", "gossip"}
