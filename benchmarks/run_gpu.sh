#!/usr/bin/env bash
# One command for any CUDA machine: the CUDA tests, then the GPU benchmark (W + streaming).
#   bash benchmarks/run_gpu.sh [extra bench.py args]
# Results land in benchmarks/results/cuda_W_<date>.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'run_gpu.sh: no CUDA device visible to torch')"
"$PY" -m pytest -q tests/test_cuda.py tests/test_kernels.py tests/test_kernels_fused_update.py
"$PY" benchmarks/bench.py --device cuda "$@"
