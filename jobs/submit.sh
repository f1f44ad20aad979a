#!/usr/bin/env bash
# Submit one stage to a running Ray cluster as a Ray job: jobs/submit.sh STAGE [ARGS...]
#
#   STAGE   a script in jobs/ (phantom, normalize, train_cpt, train_rad, train_dcd, evaluate)
#   ARGS    that stage's flags, e.g. --config configs/tiny.yaml --set storage.root=/mnt/shared/echo
#
# Environment:
#   RAY_ADDRESS    the cluster's dashboard (default http://127.0.0.1:8265)
#   ECHO_PYTHON    the interpreter *on the cluster nodes* that has echo_ray and torch installed
#                  (default: this shell's python3, right when the cluster is this machine). A bare
#                  `python` in the entrypoint would run whatever the Ray node finds first.
#   RAY_AUTH_MODE  Ray 2.60 clusters use token auth; the client must say so (default token). The
#                  token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
#
# Relative data/output paths are refused under a Ray job (they would land in Ray's temporary copy of
# this directory): pass absolute paths, s3:// URIs, or --set storage.root=<absolute dir or s3://>.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  sed -n '2,17p' "$0" >&2
  exit 2
fi
stage=$1
shift
cd "$(dirname "$0")/.."
[[ -f "jobs/$stage.py" ]] || { echo "jobs/submit.sh: no stage script jobs/$stage.py" >&2; exit 2; }
python=${ECHO_PYTHON:-$(command -v python3)}
ray_bin=$(dirname "$python")/ray
[[ -x "$ray_bin" ]] || ray_bin=ray
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
exec "$ray_bin" job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . -- \
  "$python" "jobs/$stage.py" "$@"
