#!/usr/bin/env bash
# 2:4 semi-structured (cuda_2of4) measurement on large and small shapes, fp16 and bf16.
# Usage: scripts/gpu_check.sh [--json results/gpu_check.json]   (< 5 min on an H200; needs CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: error: no CUDA device visible to torch; run this on a machine with an NVIDIA GPU (Ampere or newer)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
exec timeout 300 "$PY" scripts/gpu_check.py "$@"
