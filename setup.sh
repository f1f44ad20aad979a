#!/usr/bin/env bash
# Creates .venv in the repo root and installs echo_ray with its extras.
# torch is installed first as the CPU build (torch==2.13.0); a bare `torch` would pull CUDA wheels.
# On a GPU machine set ECHO_TORCH to the torch requirement you want (e.g. ECHO_TORCH="torch").
set -euo pipefail
cd "$(dirname "$0")"
EXTRAS="${ECHO_EXTRAS:-train,dev}"
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
PY=.venv/bin/python
$PY -m pip install -q --upgrade pip >/dev/null
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q "${ECHO_TORCH:-torch==2.13.0}"
$PY -m pip install -q -e ".[${EXTRAS}]"
