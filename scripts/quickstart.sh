#!/usr/bin/env bash
# Quick start, step 1: install everything (with the ray and dashboard extras) and run the default experiment on the embedded
# digits dataset. Prints a summary and writes runs/quickstart-*/report.html.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" ray,dashboard,search
cd "$ROOT"
exec .venv/bin/tinytwin run examples/quickstart.yaml "$@"
