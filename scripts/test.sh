#!/usr/bin/env bash
# Quick start, step 2: install what the tests need and run the whole test suite.
# Tests that use real datasets read them from ../shared/data (or $TINYTWIN_SHARED_DATA).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" test
cd "$ROOT"
exec .venv/bin/python -m pytest -q "$@"
