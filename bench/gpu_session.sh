#!/usr/bin/env bash
# `make gpu-session`: what a lent GPU machine runs, in one call of the device tool (600 s a command):
# `make gpu-check`, then `make gpu-test`, then bench/sample.py on the GPU (float32, then bf16), each
# stopped at its own time (CHECK_S, TESTS_S, SAMPLE_S seconds; the defaults add up to 580). Arguments go to gpu_check.py
# (a --budget there overrides CHECK_S). Logs land under $OUT (else runs/gpu-session and
# runs/gpu-check): the check's own, gpu_test.log and sample.log, 8 files with the check's five runs,
# the most the device tool brings back (each --variant adds one more). Each step's summary is printed
# as it ends, short enough that the tool's reply (the output's last 12,000 characters) keeps all three.
# Carry .whl (`make gpu-wheels`) on a machine without the project's smaller dependencies: gpu-test
# installs them from there.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONUNBUFFERED=1  # what a stopped step printed reaches its log
out=${OUT:-runs/gpu-session} check_s=${CHECK_S:-300} tests_s=${TESTS_S:-220} sample_s=${SAMPLE_S:-60}
mkdir -p "$out"
check_log=$(mktemp)
trap 'rm -f "$check_log"' EXIT

# `timeout -k`: a process stuck in the driver may outlive TERM; KILL follows 10 s later.
status() { echo "exit $1$([[ $1 == 124 || $1 == 137 ]] && echo ", stopped at its $2 s")"; }

# The check keeps to its own budget; the outer limit only guards against a hang.
timeout -k 10 $((check_s + 30)) bash bench/gpu_check.sh --budget "$check_s" "$@" >"$check_log" 2>&1
check=$?
echo "== make gpu-check: $(status $check $((check_s + 30)))"
# Its summary table, or where it ended when it printed none (no CUDA device, a refused option).
if grep -q '^== gpu check' "$check_log"; then sed -n '/^== gpu check/,$p' "$check_log"; else tail -n 20 "$check_log"; fi
# Without a GPU the tests would only run their CPU halves (and pass), and the benchmark time out.
if grep -q '^error: no CUDA device' "$check_log"; then echo "== no CUDA device: gpu-test and bench/sample.py not run"; exit 2; fi

timeout -k 10 "$tests_s" make -s gpu-test >"$out/gpu_test.log" 2>&1
tests=$?
echo "== make gpu-test: $(status $tests "$tests_s") ($out/gpu_test.log)"
tail -n 12 "$out/gpu_test.log"

# float32, then what bin/sample.py runs on a GPU by default (bf16 autocast): two tables in one log, the
# second even when the first fails (float32's cached and uncached tokens parting exits 1).
timeout -k 10 "$sample_s" bash -c '"$0" bench/sample.py --reps 2 --dtype float32; f32=$?; "$0" bench/sample.py \
  --reps 2 --dtype auto && exit $f32' "$PY" >"$out/sample.log" 2>&1
sample=$?
echo "== bench/sample.py: $(status $sample "$sample_s") ($out/sample.log)"
tail -n 12 "$out/sample.log"
exit $((check || tests || sample))
