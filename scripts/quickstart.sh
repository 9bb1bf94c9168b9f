#!/usr/bin/env bash
# The README's two commands:  bash scripts/quickstart.sh demo   |   bash scripts/quickstart.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
case "${1:-demo}" in
  demo) shift || true; exec .venv/bin/mesu-snn demo "$@" ;;
  test) shift || true; exec .venv/bin/python -m pytest -q "$@" ;;
  *) echo "usage: bash scripts/quickstart.sh demo|test [args...]" >&2; exit 2 ;;
esac
