"""The WebAssembly benchmark's figures quoted in docs/wasm.md come from docs/results/wasm.json."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_wasm", REPO / "benchmarks" / "bench_wasm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_docs_block_is_the_one_rendered_from_the_results_file() -> None:
    bench = _bench()
    results = json.loads(bench.RESULTS.read_text())
    block = re.search(re.escape(bench.BEGIN) + ".*?" + re.escape(bench.END), bench.DOC.read_text(), re.DOTALL)
    assert block, "docs/wasm.md lost its generated block"
    assert block.group(0) == bench.render(results), (
        "docs/wasm.md differs from docs/results/wasm.json: rerun `python benchmarks/bench_wasm.py` (or --from-json)"
    )


def test_results_say_the_three_runtimes_agree_bit_for_bit() -> None:
    results = json.loads(_bench().RESULTS.read_text())
    for key in ("matmul", "epoch"):
        assert results[key]["bit_identical"], key
        assert results[key]["wasmtime"]["count"] > results[key]["qemu"]["count"] > 0
