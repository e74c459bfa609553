"""Fork-server children of a hierarchical emulation: a device or a local aggregator.

The global coordinator starts ``python -m tinytwin.emulate.forkserver
tinytwin.emulate.hier_procs``; the fork server imports this module (numpy, the device
runtime and the aggregator runtime — never torch) once and forks one child per request.
A child reads its config's ``role``: ``aggregator`` runs :mod:`tinytwin.emulate.aggregator`,
anything else the centralized twin's device runtime (:mod:`tinytwin.emulate.device`).
"""

from __future__ import annotations

import json
import sys

from tinytwin.emulate import aggregator, device


def main(argv: list[str]) -> int:
    with open(argv[0]) as fh:
        role = json.load(fh).get("role", "device")
    return aggregator.main(argv) if role == "aggregator" else device.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
