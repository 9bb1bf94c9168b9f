#!/usr/bin/env bash
# Create (or reuse) .venv and install mesu_snn with its test and interop requirements.
# The venv sees the system site-packages, so a torch that is already installed (a CUDA
# build on a GPU machine) is kept; otherwise the pinned CPU build torch==2.13.0 is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv --system-site-packages .venv
fi
VPY=.venv/bin/python
pip_q() { "$VPY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing the CPU build torch==2.13.0"
  pip_q "torch==2.13.0"
fi
"$VPY" -c "import torch" || { echo "[setup] torch failed to install" >&2; exit 1; }
if ! "$VPY" -c "import mesu_snn, snntorch, norse, tonic, pytest, pytest_timeout, hypothesis, sklearn" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.mesu_installed ] || [ requirements-dev.txt -nt .venv/.mesu_installed ]; then
  echo "[setup] installing mesu_snn and its requirements into .venv"
  pip_q -r requirements-dev.txt
  pip_q --no-deps -r requirements-nodeps.txt
  pip_q --no-deps --no-build-isolation -e . || pip_q --no-deps -e .
  "$VPY" -c "import mesu_snn, snntorch, norse, tonic, pytest, pytest_timeout, hypothesis, sklearn" \
    || { echo "[setup] the environment is incomplete" >&2; exit 1; }
  touch .venv/.mesu_installed
fi
