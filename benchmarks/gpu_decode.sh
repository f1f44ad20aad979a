#!/usr/bin/env bash
# GPU decode figures (issue 13): the static-slot engine vs the reference decoders on one GPU.
#
# 7B-shaped random Qwen2.5-VL (bf16), 1,024-token prompt, 256 new tokens, batch 1/16/64; AR,
# multi-step, one-step vanilla and fused (B=8) on the engine with and without CUDA graphs (eager_*)
# and on the reference decoders, plus device copy bandwidth and ms per decode forward against the
# weight-read floor. Needs torch + transformers + this repo only (no Ray, no vLLM, no weights).
# Measuring stops after BUDGET_S seconds (default 400; the rest is listed in `unmeasured`).
# benchmarks/gpu_check.sh runs the same figures as one part of the accelerator check. The JSON is
# the last line of stdout.
#
# Usage:
#   bash benchmarks/gpu_decode.sh                 # python from $PYTHON or python3
#   REPEATS=1 BATCHES=1,16 KINDS=ar,onestep_fused GRAPHS=on bash benchmarks/gpu_decode.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "gpu_decode.sh needs a CUDA device"
import echo_ray.decode.engine, sys  # the engine path must not pull in Ray
assert "ray" not in sys.modules, "the decode engine imported ray"
print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", file=sys.stderr)
PY
exec "$PY" benchmarks/decode.py --shape 7b --prompt-len 1024 --max-new 256 \
  --batches "${BATCHES:-1,16,64}" --kinds "${KINDS:-ar,multistep_fused,onestep_vanilla,onestep_fused}" \
  --graphs "${GRAPHS:-on,off}" --repeats "${REPEATS:-1}" --budget-s "${BUDGET_S:-400}" --mixed '' --no-identity --json
