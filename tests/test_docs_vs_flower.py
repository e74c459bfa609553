"""The tinytwin-vs-Flower figures of docs/benchmarks.md come from docs/results/vs-flower.json.

benchmarks/bench_vs_flower.py (issue #16) writes both; these tests keep the doc block from
drifting from the results file and check that the stored comparison is a fair one: both
workloads measured, every run on the same partition, accuracies within 1 pp.
"""

from __future__ import annotations

import json
import re

from conftest import generated_block, load_benchmark


def _load():
    bench = load_benchmark("bench_vs_flower")
    return bench, json.loads(bench.RESULTS.read_text())


def test_doc_block_is_the_one_rendered_from_the_results_file() -> None:
    bench, res = _load()
    doc = bench.DOC.read_text()
    block = generated_block(doc, bench.BEGIN, bench.END)
    assert block, "docs/benchmarks.md lost its generated vs-flower block"
    assert block == bench.render(res), (
        "the vs-flower block of docs/benchmarks.md differs from docs/results/vs-flower.json: "
        "rerun `python benchmarks/bench_vs_flower.py` (or --from-json)"
    )


def test_results_hold_both_workloads_of_the_issue() -> None:
    bench, res = _load()
    assert set(res["workloads"]) == {"100x20", "1000x5"}
    for key, w in res["workloads"].items():
        spec = bench.WORKLOADS[key]
        assert (w["clients"], w["rounds"]) == (spec["clients"], spec["rounds"])
        for side in ("tinytwin", "flower"):
            runs = w["runs"][side]
            assert len(runs) == res["reps"] >= 1, f"{key}: {side} has {len(runs)} runs, expected {res['reps']}"
            assert all(len(r["round_s"]) == w["rounds"] for r in runs)
        assert set(w["targets"]) == {"process_wall", "steady_round", "accuracy_within_1pp"}
        assert w["targets"]["process_wall"]["target"] == spec["targets"]["process_wall"]
        assert w["targets"]["steady_round"]["target"] == spec["targets"]["steady_round"]


def test_both_frameworks_trained_the_same_partition_with_the_same_work() -> None:
    _, res = _load()
    for key, w in res["workloads"].items():
        wc = w["work_check"]
        digest = wc["partition_sha256"]
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
        for side in ("tinytwin", "flower"):
            assert all(r["partition_sha256"] == digest for r in w["runs"][side]), f"{key}: {side} partition differs"
        assert all(r["partition_matches_export"] for r in w["runs"]["tinytwin"])
        assert wc["same_partition_every_run"] and wc["flower_same_initial_weights_as_tinytwin"]
        assert wc["local_steps"] == {"tinytwin": [wc["local_steps_expected"]], "flower": [wc["local_steps_expected"]]}
        assert wc["client_updates"]["tinytwin"] == wc["client_updates"]["flower"] == [w["clients"] * w["rounds"]]
        assert min(w["samples_per_device"]) >= 1, f"{key}: a client without samples"


def test_final_accuracies_agree_within_one_point() -> None:
    _, res = _load()
    for key, w in res["workloads"].items():
        for tt, fl in zip(w["runs"]["tinytwin"], w["runs"]["flower"], strict=True):
            diff_pp = abs(tt["final_accuracy"] - fl["final_accuracy"]) * 100
            assert diff_pp <= 1.0, f"{key} rep {tt['rep']}: accuracies differ by {diff_pp:.2f} pp"
        assert w["targets"]["accuracy_within_1pp"]["pass"]


def test_render_reports_a_missed_target_as_missed() -> None:
    bench, res = _load()
    res = json.loads(json.dumps(res))
    w = next(iter(res["workloads"].values()))
    w["targets"]["process_wall"]["pass"] = False
    first_row = next(line for line in bench.render(res).splitlines() if "| process wall |" in line)
    assert first_row.endswith(": **missed** |")
