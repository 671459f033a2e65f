#!/usr/bin/env bash
# `make gpu-session`: what a lent GPU machine runs, in one call of the device tool (600 s a command):
# `make gpu-check`, then `make gpu-test`, then bench/sample.py on the GPU, each stopped at its own
# time (CHECK_S, TESTS_S, SAMPLE_S seconds; the defaults add up to 580). Arguments go to gpu_check.py.
# Logs land under $OUT (else runs/gpu-session and runs/gpu-check): the check's own, gpu_test.log and
# sample.log, 8 files with the check's five runs, the most the device tool brings back. The three
# summaries are printed last, where the tool's reply (the output's last 12,000 characters) keeps them.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONUNBUFFERED=1  # what a stopped step printed reaches its log
out=${OUT:-runs/gpu-session} check_s=${CHECK_S:-300} tests_s=${TESTS_S:-230} sample_s=${SAMPLE_S:-50}
mkdir -p "$out"
check_log=$(mktemp)
trap 'rm -f "$check_log"' EXIT

bash bench/gpu_check.sh --budget "$check_s" "$@" >"$check_log" 2>&1
check=$?
timeout "$tests_s" make -s gpu-test >"$out/gpu_test.log" 2>&1
tests=$?
timeout "$sample_s" "$PY" bench/sample.py --reps 2 >"$out/sample.log" 2>&1
sample=$?

stopped() { [[ $1 == 124 ]] && echo ", stopped at its $2 s"; }
echo "== make gpu-check: exit $check"
# Its summary table, or where it ended when it printed none (no CUDA device, a refused option).
if grep -q '^== gpu check' "$check_log"; then sed -n '/^== gpu check/,$p' "$check_log"; else tail -n 20 "$check_log"; fi
echo "== make gpu-test: exit $tests$(stopped "$tests" "$tests_s") ($out/gpu_test.log)"
tail -n 12 "$out/gpu_test.log"
echo "== bench/sample.py: exit $sample$(stopped "$sample" "$sample_s") ($out/sample.log)"
tail -n 6 "$out/sample.log"
exit $((check || tests || sample))
