"""The figures quoted in the README come from results files, so they cannot drift from the runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import generated_block, load_benchmark

REPO = Path(__file__).resolve().parents[1]


def test_readme_results_table_is_the_one_rendered_from_the_results_file() -> None:
    gen = load_benchmark("example_results")
    results = json.loads(gen.RESULTS.read_text())
    readme = gen.README.read_text()
    block = generated_block(readme, gen.BEGIN, gen.END)
    assert block, "README.md lost its generated results block"
    assert block == gen.render_table(results), (
        "README results table differs from docs/results/examples.json: "
        "rerun `python benchmarks/example_results.py` (or --from-json)"
    )


def test_every_example_row_has_its_results_and_its_command() -> None:
    gen = load_benchmark("example_results")
    results = json.loads(gen.RESULTS.read_text())
    for example in gen.EXAMPLES:
        assert example.key in results, f"{example.key} missing from {gen.RESULTS}"
        assert results[example.key]["command"] == "tinytwin " + " ".join(example.command)
        assert (REPO / example.command[1]).exists()


def test_the_rendered_row_carries_the_stored_accuracy() -> None:
    gen = load_benchmark("example_results")
    results = {
        "quickstart": {
            "final_accuracy": 0.95623,
            "sim_time_s": 2.96,
            "twin": "simulate",
            "bytes_up": 6.3e6,
            "bytes_down": 6.2e6,
            "energy_j_per_device": {"median": 0.9729},
            "wall_time_s": 0.64,
        }
    }
    row = gen.render_row(gen.EXAMPLES[0], results)
    assert "95.62 %" in row and "3.0 s" in row and "6.30 / 6.20 MB" in row and "973 mJ" in row


def test_gpu_table_in_benchmarks_doc_matches_the_gpu_results_file() -> None:
    data = json.loads((REPO / "docs" / "results" / "gpu-h200.json").read_text())
    doc = (REPO / "docs" / "benchmarks.md").read_text()
    block = re.search(r"<!-- BEGIN gpu .*?<!-- END gpu -->", doc, re.DOTALL)
    assert block, "docs/benchmarks.md lost its GPU table"
    for size in data["sizes"]:
        row = (
            f"| {size['devices']:,} | {size['seconds_per_round_median']:.3f} ({size['seconds_per_round_min']:.3f}"
            f"–{size['seconds_per_round_max']:.3f}) | {size['device_updates_per_s']:,} "
            f"| {size['peak_gpu_memory_gb']:.1f} GB |"
        ).replace(",", " ")
        assert row in block.group(0), f"GPU row for {size['devices']} devices differs from the results file"


def test_orchestration_doc_is_the_one_rendered_from_its_results_file() -> None:
    ro = load_benchmark("reproduce_orchestration")
    results = json.loads(ro.RESULTS.read_text())
    assert ro.render(results) in ro.DOC.read_text()
    assert results["rejoin"]["change_cost_m"][10] == 0 and results["rejoin"]["change_cost_m"][20] > 0


def test_orchestration_emulation_figures_are_the_ones_rendered_from_its_results_file() -> None:
    bench = load_benchmark("bench_orchestration_emulate")
    results = json.loads(bench.RESULTS.read_text())
    assert bench.render(results) in bench.DOC.read_text()
    assert all(r["same_configurations"] and r["cost_emulate"] == r["cost_simulate"] for r in results["runs"])
    assert all(len(r["join_detect_ms"]) == 5 and len(r["leave_detect_ms"]) == 3 for r in results["runs"])


def test_sweep_benchmark_table_is_the_one_rendered_from_its_results_file() -> None:
    bench = load_benchmark("bench_sweep")
    result = json.loads((REPO / "docs" / "results" / "sweep-bench.json").read_text())
    assert result["runs"] == 48 and {r["mode"] for r in result["rows"]} == {"sequential", "pool", "ray"}
    assert bench.render(result) in bench.DOC.read_text()


def test_robustness_table_is_the_one_rendered_from_attacks_json() -> None:
    gen = load_benchmark("attack_table")
    results = json.loads(gen.RESULTS.read_text())
    block = generated_block(gen.DOC.read_text(), gen.BEGIN, gen.END)
    assert block == gen.render_table(results), "rerun benchmarks/attack_table.py (--from-json)"
    assert set(results["accuracy_pct"]) == set(gen.RULES)


def test_rva_cifar_table_is_the_one_rendered_from_its_results_file() -> None:
    bench = load_benchmark("reproduce_rva_cifar")
    results = json.loads(bench.RESULTS.read_text())
    assert bench.render(results) in bench.DOC.read_text()


@pytest.mark.parametrize("name", ["fedavg", "decfedavg", "fedavg-rows"])
def test_scale_revisions_block_is_rendered_from_its_results_file(name: str) -> None:
    gen = load_benchmark("bench_revisions")
    results = json.loads(gen.results_file(name).read_text())
    begin, end = gen.markers(name)
    block = generated_block(gen.DOC.read_text(), begin, end)
    assert block == gen.render(results), (
        f"rerun `python benchmarks/bench_revisions.py --from-json --workload {results['workload']} --name {name}`"
    )
    before, after = results["before"], results["after"]
    assert before["final_accuracy"] == after["final_accuracy"]  # the same models, only faster
    assert after["run_wall_s"][1] < before["run_wall_s"][1]


def test_startup_block_is_rendered_from_its_results_file() -> None:
    gen = load_benchmark("bench_startup")
    results = json.loads(gen.RESULTS.read_text())
    block = generated_block(gen.DOC.read_text(), gen.BEGIN, gen.END)
    assert block == gen.render(results), "rerun `python benchmarks/bench_startup.py --from-json`"
    seconds = results["seconds"]
    assert seconds["tinytwin devices"][1] < 1.0 and seconds["tinytwin plan examples/quickstart.yaml"][1] < 1.0


def test_precision_block_is_rendered_from_its_results_file() -> None:
    gen = load_benchmark("bench_precision")
    results = json.loads(gen.results_file("cpu").read_text())
    block = generated_block(gen.DOC.read_text(), *gen.markers("cpu"))
    assert block == gen.render(results), "rerun `python benchmarks/bench_precision.py --from-json`"
    assert set(results["seconds_per_round"]) == {"float32", "bfloat16", "float16"}
    accuracy = results["final_accuracy"]
    assert all(abs(accuracy[p] - accuracy["float32"]) < 0.02 for p in accuracy)  # as the doc says


def test_scale_mnist_block_is_rendered_from_its_results_file() -> None:
    gen = load_benchmark("bench_scale_mnist")
    results = json.loads(gen.RESULTS.read_text())
    block = generated_block(gen.DOC.read_text(), gen.BEGIN, gen.END)
    assert block == gen.render(results), "rerun `python benchmarks/bench_scale_mnist.py --from-json`"
    assert {r["devices"] for r in results["rows"]} >= {1_000, 10_000}


def test_flops_vs_sgemm_block_is_rendered_from_its_results_file() -> None:
    gen = load_benchmark("bench_flops_vs_sgemm")
    results = json.loads(gen.RESULTS.read_text())
    block = generated_block(gen.DOC.read_text(), gen.BEGIN, gen.END)
    assert block == gen.render(results), "rerun `python benchmarks/bench_flops_vs_sgemm.py --from-json`"
    assert results["devices"] == 10_000 and len(results["fraction"]) == len(results["train_s"]) >= 3
    assert all(
        abs(f - a / s) < 1e-9
        for f, a, s in zip(results["fraction"], results["achieved_gflops"], results["sgemm_gflops"])
    )


@pytest.mark.parametrize("name", [None, "loadavg-rule"])
def test_threads_blocks_are_rendered_from_their_results_files(name: str | None) -> None:
    gen = load_benchmark("bench_threads")
    results = json.loads(gen.results_file(name).read_text())
    block = generated_block(gen.DOC.read_text(), *gen.markers(name))
    assert block == gen.render(results, name), f"rerun `python benchmarks/bench_threads.py --from-json --name {name}`"
    for condition in results["conditions"].values():
        for workload in condition["runs"].values():
            assert len({r["model"] for arm in workload.values() for r in arm}) == 1  # threads change speed only


def test_readme_speed_paragraph_is_rendered_from_the_benchmarks_results() -> None:
    gen = load_benchmark("readme_speed")
    block = generated_block(gen.README.read_text(), gen.BEGIN, gen.END)
    assert block == gen.current(), "rerun `python benchmarks/readme_speed.py`"
    assert "10 000 devices" in block and "Flower" in block
