"""Dashboard speed at 1 000 devices x 100 rounds (issue #15): page load and update latency.

1. A finished run (generated with the CLI unless one is given: the quickstart experiment with
   1 000 devices, IID, 1 local epoch, 100 rounds, --no-report) is served by a real
   ``tinytwin dashboard`` process. A headless Chromium opens ``/#run=KEY``; *page load* is the
   time from ``driver.get`` to the page showing all 100 rounds in the accuracy chart and all
   1 000 devices in the fleet chart (median of ``--repeats``). The JSON API calls are timed too.
2. *Update latency*: the same run is replayed into a new database in the served folder with
   the real RunStore, one round (1 000 device rows) every ``1/--rate`` s, while the page and a
   plain SSE client follow it. Latency of a round = arrival time − the writer's commit time
   (same machine, same clock): at the SSE client, in the page when the event is handled, and
   in the page once the four round charts are redrawn.

    .venv/bin/python benchmarks/bench_dashboard.py [--run RUN_DIR] [--rate 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser_util import chrome, dashboard_server, wait_for  # noqa: E402
from tinytwin.store.db import RunStore  # noqa: E402

READY = """
const a = document.getElementById('chart-acc-round'), f = document.getElementById('chart-fleet');
return !!(a && a.data && a.data[0].x.length === arguments[0] && f && f.data &&
          f.data[f.data.length - 1].x.length === arguments[1]);
"""


def make_big_run(out: Path, devices: int, rounds: int) -> Path:
    spec = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
    cmd = [sys.executable, "-m", "tinytwin.cli", "run", str(spec), "--out", str(out), "--quiet", "--no-report"]
    sets = [f"rounds={rounds}", f"fleet.groups.0.count={devices}", "algorithm.local_epochs=1", "partition.method=iid"]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, capture_output=True)
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def timed_get(url: str) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        n = len(r.read())
    return time.perf_counter() - t, n


def page_load(url: str, key: str, rounds: int, devices: int, repeats: int) -> dict[str, Any]:
    api = {}
    for name, path in [("run", f"api/run?run={key}"), ("fleet_first", f"api/fleet?run={key}&metric=energy_j"),
                       ("fleet_cached", f"api/fleet?run={key}&metric=status"), ("device", f"api/device?run={key}&device=7")]:  # fmt: skip
        s, n = timed_get(url + path)
        api[name] = {"s": round(s, 3), "bytes": n}
    loads = []
    with chrome() as driver:
        for _ in range(repeats):
            driver.get("about:blank")
            t = time.perf_counter()
            driver.get(f"{url}#run={key}")
            wait_for(lambda: driver.execute_script(READY, rounds, devices), 120, "the page", every=0.02)
            loads.append(time.perf_counter() - t)
    return {"page_load_s": [round(x, 3) for x in loads], "page_load_median_s": round(statistics.median(loads), 3),
            "api": api}  # fmt: skip


def replay(src: Path, dst: Path, rate: float, commits: dict[int, float], ready: threading.Event) -> None:
    """Write ``src``'s rounds into ``dst`` one by one at ``rate`` rounds/s, recording commit times."""
    source = RunStore(src / "results.db")
    info = source.run_info()
    rounds, drows, devices = source.rounds(info.run_id), source.device_rounds(info.run_id), source.devices(info.run_id)
    source.close()
    by_round: dict[int, list[dict[str, Any]]] = {}
    for r in drows:
        by_round.setdefault(r["round"], []).append(r)
    dst.mkdir(parents=True)
    store = RunStore(dst / "results.db")
    store.create_run("replay", "replay", "simulate", info.seed, info.spec_yaml, len(rounds), "0.1.0")
    store.add_devices("replay", devices)
    ready.wait(120)
    for row in rounds:
        t0 = time.time()
        store.write_round("replay", row, by_round.get(row["round"], []), [], None)
        commits[row["round"]] = time.time()
        time.sleep(max(0.0, 1.0 / rate - (time.time() - t0)))
    store.finish_run("replay", "complete", {})
    store.close()


def sse_client(url: str, arrivals: dict[int, float], stop: threading.Event, ready: threading.Event) -> None:
    with urllib.request.urlopen(url, timeout=300) as r:
        ready.set()
        event = None
        while not stop.is_set():
            line = r.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "rounds":
                for rnd in json.loads(line[6:])["rounds"]["round"]:
                    arrivals[rnd] = time.time()
                if json.loads(line[6:])["status"] == "complete":
                    return


def stats(lat: list[float]) -> dict[str, float]:
    lat = sorted(lat)
    return {"n": len(lat), "median_ms": round(1000 * statistics.median(lat), 1),
            "p95_ms": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1), "max_ms": round(1000 * lat[-1], 1)}  # fmt: skip


def update_latency(url: str, src: Path, served: Path, rate: float, rounds: int) -> dict[str, Any]:
    commits: dict[int, float] = {}
    arrivals: dict[int, float] = {}
    go, stop, client_ready = threading.Event(), threading.Event(), threading.Event()
    writer = threading.Thread(target=replay, args=(src, served / "replay", rate, commits, go))
    writer.start()
    with chrome() as driver:
        wait_for(lambda: (served / "replay" / "results.db").exists(), 60, "the replay database")
        time.sleep(0.5)
        driver.get(f"{url}#run=replay")
        wait_for(lambda: driver.execute_script("return !!document.getElementById('chart-fleet').data"), 60, "page")
        client = threading.Thread(target=sse_client, args=(url + "api/stream?run=replay", arrivals, stop, client_ready))
        client.start()
        client_ready.wait(30)
        go.set()
        writer.join()
        wait_for(lambda: driver.execute_script(READY, rounds, 1000), 60, "the last round on the page")
        time.sleep(1.0)
        page = driver.execute_script("return window.ttArrivals || []")
        stop.set()
        client.join(timeout=30)
    sse = [arrivals[r] - commits[r] for r in commits if r in arrivals]
    received = [a["received"] - commits[a["round"]] for a in page if a["round"] in commits]
    drawn = [a["drawn"] - commits[a["round"]] for a in page if a["round"] in commits and a["drawn"]]
    return {
        "rate_rounds_per_s": rate,
        "sse_client": stats(sse),
        "page_event": stats(received),
        "page_drawn": stats(drawn),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a finished run folder to use (default: generate one)")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--rate", type=float, default=4.0, help="rounds per second written during the replay")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        served = Path(tmp) / "served"
        served.mkdir()
        t = time.perf_counter()
        src = args.run or make_big_run(Path(tmp) / "gen", args.devices, args.rounds)
        gen_s = time.perf_counter() - t
        key = "big"
        shutil.copytree(src, served / key)
        with dashboard_server(served) as (url, _):
            result: dict[str, Any] = {"devices": args.devices, "rounds": args.rounds, "generate_s": round(gen_s, 1)}
            result.update(page_load(url, key, args.rounds, args.devices, args.repeats))
            result["update_latency"] = update_latency(url, src, served, args.rate, args.rounds)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
