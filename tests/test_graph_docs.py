"""The figures of docs/graph-forecasting.md come from docs/results/stgnn.json (issue #13)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import generated_block, load_benchmark

REPO = Path(__file__).resolve().parents[1]


def test_doc_block_is_the_one_rendered_from_the_results_file() -> None:
    gen = load_benchmark("reproduce_stgnn")
    results = json.loads(gen.RESULTS.read_text())
    block = generated_block(gen.DOC.read_text(), gen.BEGIN, gen.END)
    assert block, "docs/graph-forecasting.md lost its generated block"
    assert block == gen.render(results), "rerun `python benchmarks/reproduce_stgnn.py --from-json`"


def test_cloudlet_batching_block_is_rendered_from_its_results_file() -> None:
    gen = load_benchmark("bench_cloudlet_batching")
    results = json.loads(gen.RESULTS.read_text())
    block = generated_block(gen.DOC.read_text(), gen.BEGIN, gen.END)
    assert block == gen.render(results), "rerun `python benchmarks/bench_cloudlet_batching.py --from-json`"
    for model in results["models"].values():
        assert model["max_abs_difference"] < 1e-5  # the batched way computes the same function
        # the doc's claim: sequential is the faster way on this CPU
        assert model["ms_per_step"]["sequential"][1] < model["ms_per_step"]["batched"][1]


def test_reproductions_headline_is_rendered_from_the_same_results_file() -> None:
    gen = load_benchmark("reproduce_stgnn")
    results = json.loads(gen.RESULTS.read_text())
    text = gen.SUMMARY_DOC.read_text()
    block = generated_block(text, gen.SUMMARY_BEGIN, gen.SUMMARY_END)
    assert block == gen.render_summary(results), "rerun `python benchmarks/reproduce_stgnn.py --from-json`"


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


def test_figures_24_and_25_are_drawn_from_the_results_file(tmp_path: Path) -> None:
    """The PNGs the doc shows are what `stgnn_figures.write_figures` draws from stgnn.json."""
    figures = load_benchmark("stgnn_figures")
    written = figures.write_figures(json.loads(figures.RESULTS.read_text()), tmp_path)
    assert [p.name for p in written] == ["stgnn-fig24.png", "stgnn-fig25.png"]
    doc = (REPO / "docs" / "graph-forecasting.md").read_text()
    for p in written:
        assert p.stat().st_size > 20_000
        assert f"reproductions/{p.name}" in doc and (REPO / "docs" / "reproductions" / p.name).exists()


def test_the_figure_24_reading_holds() -> None:
    """ "Cloudlets differ far more from each other than the setups do within a cloudlet"."""
    setups = json.loads((REPO / "docs" / "results" / "stgnn.json").read_text())["bench"]["setups"]
    wmape = {
        s: [row["15min"]["wmape"] for row in v["per_cloudlet"]] for s, v in setups.items() if v.get("per_cloudlet")
    }
    across = max(wmape["centralized"]) - min(wmape["centralized"])
    within = max(max(col) - min(col) for col in zip(*wmape.values()))
    assert across > 3 * within
