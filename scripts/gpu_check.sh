#!/usr/bin/env bash
# One-shot GPU check for a lent GPU machine (H200: Python 3.12, torch, CuPy, onnxruntime CPU, no internet).
# Usage: bash scripts/gpu_check.sh [OUT_JSON] [extra options of scripts/tools/gpu_check.py]
#   OUT_JSON defaults to $OUT/gpu_check.json when $OUT is set (the device tool), else runs/gpu_check.json.
# Checks the CuPy scorer against NumPy on real-feature banks (1e-4), measures GPU extraction, CuPy scoring
# and end-to-end frames/s at batch 1/8/32 at 632x224 with a 46k x 256 bank; Triton only if a tritonserver
# is on PATH. Without a GPU it runs a small CPU fallback and lists what it skipped. Bounded to 7.5 minutes
# ($GPU_CHECK_TIMEOUT seconds, default 450).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ] && [[ "$1" != --* ]]; then out_json="$1"; shift; else out_json="${OUT:-runs}/gpu_check.json"; fi
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
echo "gpu_check: $py -> $out_json" >&2
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" >&2 || true
"$py" -c "import cupy; print('cupy', cupy.__version__)" >&2 || echo "cupy: not importable" >&2
exec timeout -k 10 "${GPU_CHECK_TIMEOUT:-450}" "$py" -m scripts.tools.gpu_check --out "$out_json" "$@"
