#!/usr/bin/env bash
# Installs the system packages (scripts/install_system_packages.sh), creates .venv
# (Python >= 3.11) and installs tinytwin into it; called by the other scripts.
# On a fresh Debian machine python3-venv may be missing: it is installed with apt-get.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
EXTRAS="${1:-}"

# Compilers, QEMU and iproute2 for the emulation and firmware twins (skipped when present).
bash "$ROOT/scripts/install_system_packages.sh"

if [ ! -x "$ROOT/.venv/bin/python" ]; then
  if ! "$PY" -m venv "$ROOT/.venv" >/dev/null 2>&1; then
    echo "python3 venv module missing; installing python3-venv with apt-get" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv python3-pip >/dev/null
    rm -rf "$ROOT/.venv"
    "$PY" -m venv "$ROOT/.venv"
  fi
fi
# Every dependency at the exact version in constraints.txt (torch: the CPU build 2.13.0), so a
# new upstream release cannot change what a fresh checkout installs.
# pipefail: a failed install stops here; only pip's warnings are filtered out.
"$ROOT/.venv/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT${EXTRAS:+[$EXTRAS]}" 2>&1 \
  | { grep -v -i "warning" || true; }
"$ROOT/.venv/bin/python" -c "import tinytwin, torch; print(f'tinytwin {tinytwin.__version__} with torch {torch.__version__}')"
