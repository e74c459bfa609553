#!/usr/bin/env bash
# Create benchmarks/.flower-venv: the separate virtualenv that runs the Flower side of
# benchmarks/bench_vs_flower.py. Flower (with Ray, via the `simulation` extra) is kept out of
# tinytwin's own .venv so neither framework's dependencies can change the other's timings.
#
#   bash benchmarks/flower_setup.sh          # idempotent: does nothing when already installed
#
# Installs flwr[simulation] (the current PyPI release), torch==2.13.0 (CPU; the same build
# tinytwin uses, found on the machine's pip find-links), numpy and scikit-learn.
# Override the interpreter with PYTHON=/path/to/python3.11 and the Flower requirement with
# FLWR_REQ='flwr[simulation]==1.42.0'.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.flower-venv"
PY="${PYTHON:-python3}"
FLWR_REQ="${FLWR_REQ:-flwr[simulation]}"
TORCH_REQ="torch==2.13.0"

check() {
    "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as md
import flwr, ray, torch, numpy, sklearn  # noqa: F401
from flwr.simulation import run_simulation  # noqa: F401
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
print(f"flwr {md.version('flwr')}, ray {ray.__version__}, torch {torch.__version__}, "
      f"numpy {numpy.__version__}, scikit-learn {sklearn.__version__}")
EOF
}

if [ -x "$VENV/bin/python" ] && check >/dev/null; then
    echo "flower venv ready at $VENV: $(check)"
    exit 0
fi

if ! "$PY" -m venv --help >/dev/null 2>&1 || ! "$PY" -c "import ensurepip" >/dev/null 2>&1; then
    echo "python3-venv is missing; installing it with apt-get" >&2
    apt-get install -y python3-venv >/dev/null
fi

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# CPU-only torch: the exact version is on the find-links, so no multi-GB CUDA download.
# pip warns once per package about the machine's file:// extra indexes; keep the log readable.
quiet_pip() { "$VENV/bin/python" -m pip install --quiet "$@" 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }; }
quiet_pip --upgrade pip
quiet_pip "$TORCH_REQ" "$FLWR_REQ" numpy scikit-learn
echo "flower venv installed in $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1): $(check)"
