#!/usr/bin/env bash
# The whole pipeline proven on CUDA, one summary (scripts/gpu_suite.py; ~10 min on an H200):
# the smoke suite on device=cuda, an LTH quick run, 1-vs-all-GPUs data-parallel equivalence (nccl),
# train.replicates=5 vs 1 time, and the cuda_2of4 kernels on large and small shapes in fp16 / bf16.
# Usage: scripts/gpu_check.sh [--out DIR] [--only smoke,lth_quick,ddp,replicates,2of4]   (needs CUDA)
#        scripts/gpu_check.sh --device cpu     a rehearsal on the CPU (shorter settings, no 2:4)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if [[ " $* " != *" --device cpu "* ]] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: error: no CUDA device visible to torch; run this on a machine with an NVIDIA GPU (Ampere or newer), or pass --device cpu for a rehearsal" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
exec timeout 590 "$PY" scripts/gpu_suite.py "$@"
