#!/usr/bin/env bash
# The accelerator check (issue 28): engine GPU tests, one bf16 training step of each stage, and the
# 7B-shape decode figures, in one run under 8 minutes on one GPU; the JSON is the last line of stdout.
# Parts that need Ray or DeepSpeed skip with the reason where the image lacks them (see
# benchmarks/gpu_check.py for the parts). Needs torch + transformers + this repo, plus the packages the
# repo imports that the lent machines' image lacks (pydantic and its needs): fetch those here first
# with `--wheels` (into .whl/, git-ignored), and carry .whl to the device; they install to a temporary
# folder on PYTHONPATH there.
#
# Usage:
#   bash benchmarks/gpu_check.sh --wheels                  # here: fetch the wheels the device lacks
#   bash benchmarks/gpu_check.sh                           # on the device (run tool: carry [".whl"])
#   bash benchmarks/gpu_check.sh --dry-run                 # CPU rehearsal at a reduced 7B shape
#   bash benchmarks/gpu_check.sh --dry-run --without ray,deepspeed,pytest   # ... as on the device image
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --dry-run --parts train_torch
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

if [[ "${1:-}" == "--wheels" ]]; then
  # The device image (Python 3.12, x86-64) has torch, transformers, pillow, pyarrow, pytest; not these.
  # Pinned to the versions this checkout's environment runs, so the device imports what the suite tested.
  mkdir -p .whl
  pins=$("$PY" -c 'import importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in
    ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions")))')
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
  ls .whl
  exit 0
fi

dry=0
for a in "$@"; do [[ "$a" == "--dry-run" ]] && dry=1; done
if [[ $dry == 0 ]] && compgen -G ".whl/*.whl" >/dev/null; then
  site="$(mktemp -d /tmp/echo_site.XXXXXX)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site:$PYTHONPATH"
  echo "gpu_check: installed $(ls .whl | wc -l) carried wheels into $site" >&2
fi
exec "$PY" benchmarks/gpu_check.py "$@"
