#!/usr/bin/env bash
# Quick start, step 2: install what the tests need and run the whole test suite, after the
# style and type checks (ruff lint, ruff format, mypy on src/), so CI fails on a regression.
# Tests that use real datasets read them from ../shared/data (or $TINYTWIN_SHARED_DATA).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" test,ray,dashboard,search,wasm
cd "$ROOT"
echo "ruff check / ruff format --check / mypy" >&2
.venv/bin/ruff check -q src tests benchmarks
.venv/bin/ruff format --check -q src tests benchmarks
.venv/bin/mypy --no-error-summary
# One pytest worker per core (at most 4; TINYTWIN_TEST_WORKERS overrides, 0 for none): the suite is
# mostly waiting on subprocesses, sockets and a browser, so two workers halve its wall time here.
exec .venv/bin/python -m pytest -q -n "${TINYTWIN_TEST_WORKERS:-auto}" --maxprocesses 4 "$@"
