#!/usr/bin/env bash
# `make gpu-check`: bench/gpu_check.py with the repo's venv when there is one, else the system python3
# (the lent GPU machines have torch, numpy and pyyaml installed globally and no venv).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_check.py "$@"
