"""The WebAssembly benchmark's figures quoted in docs/wasm.md come from docs/results/wasm.json."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import generated_block, load_benchmark

REPO = Path(__file__).resolve().parents[1]


def test_docs_block_is_the_one_rendered_from_the_results_file() -> None:
    bench = load_benchmark("bench_wasm")
    results = json.loads(bench.RESULTS.read_text())
    block = generated_block(bench.DOC.read_text(), bench.BEGIN, bench.END)
    assert block, "docs/wasm.md lost its generated block"
    assert block == bench.render(results), (
        "docs/wasm.md differs from docs/results/wasm.json: rerun `python benchmarks/bench_wasm.py` (or --from-json)"
    )


def test_results_say_the_three_runtimes_agree_bit_for_bit() -> None:
    results = json.loads(load_benchmark("bench_wasm").RESULTS.read_text())
    for key in ("matmul", "epoch"):
        assert results[key]["bit_identical"], key
        assert results[key]["wasmtime"]["count"] > results[key]["qemu"]["count"] > 0
