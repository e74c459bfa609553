"""Per-round metrics of fixed small runs, stored once so the CPU path can be held bit-identical.

Bit-identical holds only for one CPU kernel family: PyTorch dispatches different vectorised
kernels by instruction set (AVX2, AVX512, ...), whose float sums round differently in the last
bits. The file therefore holds one reference per ``torch.backends.cpu.get_cpu_capability()``.
``python tests/cpu_reference.py`` records this machine's entry (keeping the others); an entry
must only be rewritten when a change of results is intended (and explained in the commit).
The entry ``unknown`` was recorded before the references were keyed by instruction set.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "data" / "cpu_reference.json"
# Learning metrics only: the cost model (time, energy, bytes) is owned elsewhere and may change.
KEYS = ("train_loss", "test_accuracy", "test_loss")


def cases() -> dict[str, dict[str, Any]]:
    """The runs held fixed: the quickstart (MLP fast path) and a small LeNet-5 fleet (CNN path)."""
    quick = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    quick["rounds"] = 5
    cnn = {
        "name": "cnn-ref",
        "seed": 7,
        "rounds": 2,
        "dataset": {"name": "digits"},
        "partition": {"method": "dirichlet", "alpha": 0.5},
        "model": {"name": "lenet5"},
        "fleet": {"groups": [{"profile": "raspberry-pi-4", "count": 6, "link": "wifi"}]},
        "algorithm": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
    }
    prox = {**quick, "name": "prox-ref", "algorithm": {**quick["algorithm"], "name": "fedprox", "mu": 0.1}}
    return {"quickstart": quick, "lenet5": cnn, "fedprox": prox}


def run_case(spec_dict: dict[str, Any], **engine: Any) -> list[dict[str, Any]]:
    """Per-round metrics (``KEYS``) of one run of ``spec_dict``, with optional engine keys set."""
    from tinytwin.engines.runner import start_run
    from tinytwin.spec.load import validate_spec
    from tinytwin.store.db import RunStore

    spec_dict = json.loads(json.dumps(spec_dict))
    if engine:
        spec_dict["engine"] = engine
    with tempfile.TemporaryDirectory() as tmp:
        out = start_run(validate_spec(spec_dict), "{}", Path(tmp), None, report=False)
        store = RunStore(out.run_dir / "results.db")
        rows = store.rounds(store.run_info().run_id)
        store.close()
    return [{k: row[k] for k in KEYS} for row in rows]


def cpu_capability() -> str:
    """The instruction set PyTorch's CPU kernels were dispatched for on this machine."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def load_references() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every recorded reference, by CPU capability."""
    return json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}


def main() -> None:
    data = load_references()
    data[cpu_capability()] = {name: run_case(spec) for name, spec in cases().items()}
    REFERENCE.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {REFERENCE} [{cpu_capability()}]", file=sys.stderr)


if __name__ == "__main__":
    main()
