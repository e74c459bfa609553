"""Reports from a run database: CSV, plots, the self-contained HTML page and comparisons.

The run databases here are written with the real RunStore and plausible numbers; they are
test data for the report code, standing in for what an engine writes during a run.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tinytwin.errors import TinyTwinError
from tinytwin.report import compare_runs, export_csv, make_plots, write_report
from tinytwin.report.format import format_accuracy, format_bytes, format_energy, format_seconds
from tinytwin.store.db import RunStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPEC = "name: quickstart\nnote: a<b & c\nrounds: 6\n"


def make_run(
    run_dir: Path,
    *,
    name: str = "quickstart",
    twin: str = "simulate",
    rounds_done: int = 6,
    rounds_planned: int = 6,
    finish: bool = True,
    num_devices: int = 8,
    num_classes: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a small run into ``run_dir/results.db``; return what a test needs to check against."""
    run_dir.mkdir(parents=True, exist_ok=True)
    store = RunStore(run_dir / "results.db")
    run_id = f"{name}-{twin}-{seed}"
    store.create_run(run_id, name, twin, seed, SPEC, rounds_planned, "0.1.0")
    groups = ["nrf52840", "esp32s3"]
    store.add_devices(
        run_id,
        [
            {
                "device": d,
                "group": groups[d % 2],
                "profile": groups[d % 2],
                "link": "ble" if d % 2 == 0 else "wifi",
                "num_samples": 60 + d,
                "class_hist": [(d * 7 + c * 3) % 13 for c in range(num_classes)],
            }
            for d in range(num_devices)
        ],
    )
    sim_time, accuracies = 0.0, []
    for rnd in range(1, rounds_done + 1):
        acc = None if rnd == 3 else 0.9 - 0.6 * 0.7**rnd - 0.02 * seed  # round 3 is not evaluated
        accuracies.append(acc)
        duration = 40.0 + rnd
        sim_time += duration
        statuses = ["ok"] * (num_devices - 2) + ["straggler", "dropped"]
        dev_rows = [
            {
                "round": rnd,
                "device": d,
                "status": statuses[d],
                "num_samples": 60 + d,
                "compute_s": 2.0 + d * 0.1,
                "up_s": 0.5,
                "down_s": 0.4,
                "bytes_up": 4_000 + d,
                "bytes_down": 4_200,
                "packets_lost": d % 3,
                "energy_j": 0.05 * (1 + d),
                "train_loss": 1.5 / rnd,
                "accuracy": acc,
            }
            for d in range(num_devices)
        ]
        store.write_round(
            run_id,
            {
                "round": rnd,
                "sim_time_s": sim_time,
                "duration_s": duration,
                "selected": num_devices,
                "completed": num_devices - 2,
                "dropped": 1,
                "stragglers": 1,
                "train_loss": 1.5 / rnd,
                "test_accuracy": acc,
                "test_loss": None if acc is None else 1.2 / rnd,
                "bytes_up": sum(r["bytes_up"] for r in dev_rows),
                "bytes_down": sum(r["bytes_down"] for r in dev_rows),
                "energy_j": sum(r["energy_j"] for r in dev_rows),
                "wall_time_s": 0.2,
            },
            dev_rows,
            [
                {
                    "round": rnd,
                    "sim_time_s": sim_time,
                    "device": num_devices - 1,
                    "kind": "dropout",
                    "detail": "battery <5% & link down",
                }
            ],
            None,
        )
    store.add_events(
        run_id, [{"round": rounds_done, "sim_time_s": sim_time, "device": None, "kind": "note", "detail": "end"}]
    )
    final = [a for a in accuracies if a is not None][-1]
    if finish:
        store.finish_run(
            run_id,
            "complete",
            {
                "final_accuracy": final,
                "best_accuracy": final,
                "rounds": rounds_done,
                "sim_time_s": sim_time,
                "bytes_up": 123_456,
                "bytes_down": 234_567,
                "energy_j_per_device": {"min": 0.3, "median": 1.2, "max": 2.4},
                "memory_fits": True,
                "memory": [
                    {
                        "group": "nrf52840",
                        "profile": "nrf52840",
                        "needed_bytes": 120_000,
                        "available_bytes": 256_000,
                        "flash_needed_bytes": 300_000,
                        "flash_available_bytes": 1_000_000,
                        "fits": True,
                        "components": {"weights": 40_000, "activations": 60_000},
                    }
                ],
                "wall_time_s": 1.7,
                "num_devices": num_devices,
                "algorithm": "fedavg",
                "dataset": "mnist",
                "model": {"name": "lenet", "params": 61_706},
                "custom_metric": {"nested": [1, 2, 3]},
            },
        )
    store.close()
    return {"run_id": run_id, "final_accuracy": final, "name": name}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_write_report_is_self_contained_and_matches_db(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    meta = make_run(run_dir)
    report = write_report(run_dir)

    assert report == run_dir / "report.html"
    text = report.read_text(encoding="utf-8")
    assert meta["name"] in text
    assert format_accuracy(meta["final_accuracy"]) in text
    assert "run complete" in text.lower()
    # Self-contained: plotly.js, the chart code and the data inline, nothing loaded from elsewhere.
    pngs = sorted((run_dir / "plots").glob("*.png"))
    assert len(pngs) == 6 and all(p.read_bytes().startswith(PNG_SIGNATURE) for p in pngs)
    # Every standard plot is interactive; the PNGs are listed, not embedded.
    assert not re.search(r"<img[^>]+data:image/png", text)
    assert all(f"plots/{p.name}" in text for p in pngs)
    markup = re.sub(r"<script.*?</script>", "", text, flags=re.S)  # plotly.js itself mentions plotly.com
    assert not re.search(r'(src|href)="(https?:)?//', markup) and not re.search(r"<script[^>]+src=", text)
    assert "Plotly" in text and "ttCharts" in text
    data = json.loads(re.search(r'<script type="application/json" id="tt-data">(.*?)</script>', text, re.S).group(1))
    assert data["rounds"]["round"] == list(range(1, 7)) and data["rounds"]["test_accuracy"][2] is None
    assert len(data["fleet"]["device"]) == 8 and data["fleet"]["metrics"]["energy_j"]["unit"] == "J"
    assert data["devices"]["3"]["rounds"]["energy_j"] == [pytest.approx(0.2)] * 6
    # Text from the database is escaped (spec and event details contain '<' and '&').
    assert "a&lt;b &amp; c" in text and "battery &lt;5% &amp; link down" in text
    # Summary: known keys prettified, unknown keys still shown.
    assert "Memory plan per group" in text and "Custom metric" in text and "lenet" in text
    summary = text[text.index("<h2>Summary</h2>") : text.index("<h2>Plots</h2>")]
    assert "{" not in summary and "_" not in re.sub(r"<[^>]+>", "", summary)  # no raw dicts or variable names
    assert "123.5 kB" in text
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))

    store = RunStore(run_dir / "results.db")
    rid = meta["run_id"]
    expected = {
        "rounds.csv": store.rounds(rid),
        "device_rounds.csv": store.device_rounds(rid),
        "devices.csv": store.devices(rid),
        "events.csv": store.events(rid),
    }
    for name, db_rows in expected.items():
        assert len(_csv_rows(run_dir / "csv" / name)) == len(db_rows) > 0, name
    devices = _csv_rows(run_dir / "csv" / "devices.csv")
    assert [int(devices[2][f"class_{c}"]) for c in range(10)] == store.devices(rid)[2]["class_hist"]
    rounds = _csv_rows(run_dir / "csv" / "rounds.csv")
    assert rounds[2]["test_accuracy"] == ""  # NULL stays empty, not "None"
    store.close()


def test_incomplete_run_says_so(tmp_path: Path) -> None:
    run_dir = tmp_path / "crashed"
    make_run(run_dir, rounds_done=3, rounds_planned=10, finish=False)
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "incomplete" in text.lower()
    assert "3 of 10 planned rounds" in text
    assert "run complete" not in text.lower()


def test_big_fleet_switches_to_histogram_and_heat_map(tmp_path: Path) -> None:
    run_dir = tmp_path / "big"
    meta = make_run(run_dir, num_devices=150, rounds_done=2, rounds_planned=2)
    store = RunStore(run_dir / "results.db")
    try:
        plots = make_plots(store, meta["run_id"], tmp_path / "plots")
        csvs = export_csv(store, meta["run_id"], tmp_path / "csv")
    finally:
        store.close()
    assert set(plots) == {"accuracy_round", "accuracy_time", "bytes", "energy", "device_energy", "class_hist"}
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in plots.values())
    assert [p.name for p in csvs] == ["rounds.csv", "device_rounds.csv", "devices.csv", "events.csv"]


def test_compare_two_runs(tmp_path: Path) -> None:
    make_run(tmp_path / "a", twin="simulate")
    make_run(tmp_path / "b", twin="emulate", seed=1, rounds_done=4, rounds_planned=6, finish=False)
    out = compare_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp")
    text = out.read_text(encoding="utf-8")
    assert out == tmp_path / "cmp" / "compare.html"
    assert "quickstart (simulate)" in text and "quickstart (emulate)" in text
    assert "incomplete" in text
    pngs = sorted((tmp_path / "cmp").glob("compare_*.png"))
    assert len(pngs) == 4 and text.count("data:image/png;base64,") == 4
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in pngs)


def test_compare_rejects_folders_that_are_not_runs(tmp_path: Path) -> None:
    make_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TinyTwinError, match=r"empty.*results\.db"):
        compare_runs([tmp_path / "good", tmp_path / "empty"], tmp_path / "cmp")
    assert not (tmp_path / "cmp" / "compare.html").exists()
    with pytest.raises(TinyTwinError, match="does not exist"):
        compare_runs([tmp_path / "missing"], tmp_path / "cmp")
    # A foreign SQLite file named results.db is refused and left untouched.
    (tmp_path / "foreign").mkdir()
    conn = sqlite3.connect(tmp_path / "foreign" / "results.db")
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(TinyTwinError, match="not a tinytwin results database"):
        write_report(tmp_path / "foreign")
    conn = sqlite3.connect(tmp_path / "foreign" / "results.db")
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["t"]
    conn.close()
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "results.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(TinyTwinError, match="garbage"):
        write_report(tmp_path / "garbage")


@pytest.mark.parametrize(
    ("func", "value", "expected"),
    [
        (format_bytes, 532, "532 B"),
        (format_bytes, 12_345, "12.3 kB"),
        (format_bytes, 4_500_000, "4.5 MB"),
        (format_bytes, 999_960, "1.0 MB"),
        (format_bytes, 2_100_000_000, "2.1 GB"),
        (format_seconds, 0.25, "250 ms"),
        (format_seconds, 1.23, "1.2 s"),
        (format_seconds, 184, "3 min 4 s"),
        (format_seconds, 7560, "2.1 h"),
        (format_seconds, 0, "0 s"),
        (format_energy, 0.0123, "12.3 mJ"),
        (format_energy, 4.5, "4.50 J"),
        (format_energy, 2100, "2.1 kJ"),
        (format_accuracy, 0.8765, "87.65 %"),
        (format_bytes, None, "—"),
        (format_seconds, float("nan"), "—"),
    ],
)
def test_format_helpers(func: Any, value: Any, expected: str) -> None:
    assert func(value) == expected


def test_summary_labels_are_tidy_with_units() -> None:
    from tinytwin.report.html import render_summary

    html = render_summary(
        {
            "energy_j_total": 3.2549,
            "uplink_message_bytes": 9702,
            "final_accuracy_across_devices": {"mean": 0.81, "min": 0.7, "max": 0.9, "std": 0.05},
            "topology": {"kind": "ring", "devices": 8, "links": 8, "component_sizes": [8], "degree_mean": 2.0},
            "emulate": {
                "time_scale": 0.01,
                "wall_per_round_s": {"median": 0.25, "max": 1.5},
                "device_rss_kb": {"median": 30_000.0, "max": 31_000, "total": 240_000},
                "frames_rejected": {},
                "shaping": {"mode": "userspace"},
            },
        }
    )
    text = re.sub(r"<[^>]+>", " ", html)
    for label in ("Energy (all devices)", "Uplink message size", "Final accuracy across devices", "Topology",
                  "Emulation", "Wall time per round", "Device process memory (RSS)", "Mean degree"):  # fmt: skip
        assert label in text, label
    for value in ("3.25 J", "9.7 kB", "81.00 %", "250 ms", "1.5 s", "30.7 MB", "245.8 MB"):
        assert value in text, value
    assert "_" not in text and "{" not in text and "Energy j" not in text
