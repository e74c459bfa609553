"""Host time to prepare a million-device round's sample indices: lists of arrays vs Shards (CSR).

    .venv/bin/python benchmarks/bench_shards.py [--devices 1000000] [--reps 3]

The work the GPU round's profile found on the host (docs/benchmarks.md, "GPU benchmark"): the
devices' sizes for the chunk plan, and per chunk of 65 536 devices (the GPU default) the chunk's
index arrays and their padded index matrix. Both representations, interleaved, min / median /
max of ``--reps``; the padded matrices are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tinytwin.engines.buckets import consecutive_chunks  # noqa: E402
from tinytwin.engines.schedule_torch import padded_indices  # noqa: E402
from tinytwin.engines.shards import Shards, sizes_of, take  # noqa: E402

SAMPLES, CHUNK = 60, 65_536


def prepare(parts: list[np.ndarray] | Shards) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    sizes = sizes_of(parts)
    last = np.zeros(0)
    for pos in consecutive_chunks(len(sizes), CHUNK):
        last = padded_indices(take(parts, pos))
    return time.perf_counter() - t0, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    idx = np.random.default_rng(0).integers(0, 60_000, (args.devices, SAMPLES))
    lists = list(idx)
    shards = Shards.from_offsets(idx.ravel(), np.arange(0, args.devices * SAMPLES + 1, SAMPLES))
    times: dict[str, list[float]] = {"lists": [], "shards": []}
    for _ in range(args.reps):
        for name, parts in (("lists", lists), ("shards", shards)):
            s, last = prepare(parts)
            times[name].append(s)
        assert np.array_equal(prepare(lists)[1], prepare(shards)[1])
    for name, ts in times.items():
        print(
            f"{name:7s} {args.devices:,} devices: {min(ts):.3f} / {statistics.median(ts):.3f} / {max(ts):.3f} s (min / median / max)"
        )


if __name__ == "__main__":
    main()
