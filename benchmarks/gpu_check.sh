#!/usr/bin/env bash
# The GPU check on a fresh GPU machine holding this source tree and the wheels of
# benchmarks/gpu_wheels.txt (`make gpu-wheels` puts them in .whl/): installs the wheels into
# a temporary folder, then runs benchmarks/gpu_check.py (its docstring lists the steps).
#   GPU_CHECK_OUT=folder   where the results go (default reports/gpu_check)
#   GPU_CHECK_WHEELS=dir   the wheels (default .whl)
#   GPU_CHECK_DEVICE=cpu   run every step on the CPU with tiny sizes (a dry run)
#   PYTHON=python3         the interpreter that has torch
# Without CUDA (and without GPU_CHECK_DEVICE=cpu) it says so, skips every step and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
wheels=${GPU_CHECK_WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  site=$(mktemp -d)
  trap 'rm -rf "$site"' EXIT
  echo "gpu_check: installing $(ls "$wheels"/*.whl | wc -l) wheels from $wheels"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export MPLBACKEND=Agg MLFLOW_DISABLE_TELEMETRY=true
"$python" -m benchmarks.gpu_check "$@"
