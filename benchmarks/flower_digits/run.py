"""Run the Flower digits app with Flower's simulation engine (Ray), one virtual SuperNode per client.

    FLOWER_DIGITS_PARTITION=parts.npz FLOWER_DIGITS_RESULT=out.json \
        PYTHONPATH=benchmarks benchmarks/.flower-venv/bin/python -m flower_digits.run [--cpus 2]

Uses ``flwr.simulation.run_simulation``, the in-process Python entry point of Flower's
Simulation Runtime (1.41 marks it deprecated in favour of ``flwr run``, which drives the same
runtime through a local SuperLink and adds its own processes). Ray gets ``--cpus`` CPUs and
every ClientApp actor one CPU, so ``--cpus`` clients train in parallel.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to Ray (one per ClientApp actor)")
    parser.add_argument("--clients", type=int, default=int(os.environ.get("FLOWER_DIGITS_CLIENTS", "100")))
    parser.add_argument("--check-digest", help="expected SHA-256 of the digits arrays (from tinytwin's loader)")
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network here; never phone home mid-benchmark
    os.environ["FLOWER_DIGITS_CLIENTS"] = str(args.clients)
    # Ray's worker processes are started from this one and inherit its environment: make
    # `flower_digits` importable there too.
    pkg_root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p)
    if pkg_root not in sys.path:
        sys.path.insert(0, pkg_root)

    from flower_digits.task import data_digest

    if args.check_digest and data_digest() != args.check_digest:
        sys.exit("flower_digits: the digits arrays differ from tinytwin's; the comparison would not be fair")

    from flwr.simulation import run_simulation

    from flower_digits.client_app import app as client_app
    from flower_digits.server_app import app as server_app

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=args.clients,
        backend_config={"init_args": {"num_cpus": args.cpus}, "client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )


if __name__ == "__main__":
    main()
