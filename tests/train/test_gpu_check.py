"""bench/gpu_check.py --smoke: the GPU check's whole path (store, CLI overrides, metrics parsing,
summary) on CPU, so the one run on a lent GPU cannot fail on a typo; and bench/gpu_session.sh, which
runs it with the GPU tests and the sampling benchmark in one call."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from trainer_util import REPO


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_smoke(tmp_path):
    """One compiled run (`plain`) besides eager and a variant: each compiled run on CPU builds its C++
    kernels from a cold cache, which under load took this test past a 300 s limit with two."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    variant = "bf16res: model.bf16_residual=true compile=false max_steps=4 SMALLGPT_CHECK_ENV=1"
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), "--smoke", "--runs", "plain,eager",
                           "--work-dir", str(tmp_path / "work"), "--variant", variant],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== gpu check on cpu" in proc.stdout
    summary = json.loads((tmp_path / "out/gpu_check.json").read_text())
    eager = summary["eager"]
    assert eager["exit_code"] == 0 and eager["steps"] == 6 and eager["tokens_per_s"] > 0
    assert eager["init_s"] is not None and eager["first_step_s"] is not None and eager["val_loss"] is not None
    assert (tmp_path / "out/train_eager.log").read_text().count("step 6/6") == 1
    # Order: built-in runs in their fixed order (whatever --runs says), then the variant, each its own
    # bin/train.py process.
    commands = [line for line in proc.stdout.splitlines() if line.startswith("$ ")]
    assert len(commands) == 3
    assert "compile=false" in commands[0] and "fused" not in commands[0]
    assert commands[1].endswith("model.fused_rope=false eval_batches=0") and "compile=true" in commands[1]
    assert "model.bf16_residual=true" in commands[2]
    # Cold caches per run, Triton's included (the model's own kernels would compile once for all runs).
    for command, name in zip(commands, ("eager", "plain", "bf16res"), strict=True):
        assert f"TRITON_CACHE_DIR={tmp_path / 'work' / name}-caches/triton " in command
        assert f"TORCHINDUCTOR_CACHE_DIR={tmp_path / 'work' / name}-caches/inductor " in command
    assert eager["steady"] and summary["steady_from"] == 3 and "not steady" not in proc.stdout
    # The variant ran with its overrides (and no evaluation) and its environment variable.
    extra = summary["bf16res"]
    assert extra["exit_code"] == 0 and extra["steps"] == 4 and extra["val_loss"] is None
    assert extra["overrides"][-1] == "eval_batches=0" and extra["env"] == {"SMALLGPT_CHECK_ENV": "1"}
    assert "bf16_residual: true" in (tmp_path / "out/train_bf16res.log").read_text()
    # plain: the model's own kernels off, no evaluation.
    plain = summary["plain"]
    assert plain["exit_code"] == 0 and plain["steps"] == 6 and plain["val_loss"] is None
    assert "model.fused_loss=false" in plain["overrides"] and "model.fused_rope=false" in plain["overrides"]
    assert "fused_swiglu: false" in (tmp_path / "out/train_plain.log").read_text()
    assert plain["params"] == eager["params"] and "plain: model.fused_loss=false" in proc.stdout


def test_gpu_check_rejects_a_malformed_variant_or_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out")}  # not the repository's runs/gpu-check
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), "--smoke", "--variant", "eager: lr=1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "new plain NAME" in proc.stderr
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), "--smoke", "--runs", "compiled,fast"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--runs takes compiled, eager, plain, deep512, wide128" in proc.stderr
    assert not (tmp_path / "out").exists()  # a refused call makes no output folder


def test_gpu_profile_smoke(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench/gpu_profile.py"), "--smoke", "--trace", "--work-dir",
                           str(tmp_path / "work"), "attention=math"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = (tmp_path / "out/profile.txt").read_text()
    assert "== profile on cpu" in report and "overrides: attention=math" in report
    assert "matmul" in report and "aten::mm" in report
    assert (tmp_path / "out/trace.json.gz").stat().st_size > 0


def test_runs_that_the_budget_cannot_fit_are_skipped_and_say_so(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), "--smoke", "--runs", "compiled,eager",
                           "--work-dir", str(tmp_path / "work"), "--budget", "0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "$ " not in proc.stdout  # no training started
    summary = json.loads((tmp_path / "out/gpu_check.json").read_text())
    for name in ("compiled", "eager"):
        assert "of --budget 0 left" in summary[name]["skipped"]
        assert f"{name:<12} skipped: " in proc.stdout


def test_a_run_gets_what_is_left_of_the_budget_or_is_skipped(gpu_check):
    assert gpu_check.run_timeout(left=540, per_run=150) == 150
    assert gpu_check.run_timeout(left=100, per_run=150) == 100
    assert gpu_check.run_timeout(left=gpu_check.SHORTEST_RUN_S - 1, per_run=150) is None
    assert gpu_check.run_timeout(left=30, per_run=20) == 20  # a short --timeout is its own minimum


def test_a_run_that_never_reached_the_steady_steps_reports_no_rates(gpu_check, tmp_path):
    def run(steps):
        (tmp_path / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "loss": 5.0, "tokens_per_s": 1000.0 * s, "mfu": 0.001 * s, "step_s": 1 / s}) + "\n"
            for s in steps))
        return gpu_check.summarise(tmp_path, 0, 1.0, steady_from=30)

    early = run([10, 20])  # e.g. killed while compiling: these steps include compile time
    assert not early["steady"] and early["tokens_per_s"] is None and early["mfu"] is None
    assert early["steps"] == 20 and early["last_loss"] == 5.0
    late = run([10, 20, 30, 40, 50])
    assert late["steady"] and late["tokens_per_s"] == 40000.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit on a machine without CUDA")
def test_gpu_profile_without_cuda_exits_2_before_building_a_store(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench/gpu_profile.py"), "--work-dir", str(tmp_path / "work")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "work").exists()
    # Its warmup is gpu_check's steady-state start, so both describe the same steps.
    helptext = subprocess.run([sys.executable, str(REPO / "bench/gpu_profile.py"), "--help"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120).stdout
    assert "(default 30)" in " ".join(helptext.split())


def test_a_silent_stalled_run_is_killed_at_its_timeout(tmp_path, monkeypatch, gpu_check):
    """A compile or autotuning stall prints nothing: the timeout must not wait for an output line."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/train.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    monkeypatch.setattr(gpu_check, "REPO", tmp_path)
    code, seconds = gpu_check.run_training([], tmp_path / "log.txt", timeout=1.0, extra_env={})
    assert code != 0 and seconds < 20
    assert (tmp_path / "log.txt").read_text() == "started\n"


def test_gpu_session_runs_the_check_tests_and_benchmark_each_in_its_time(tmp_path):
    """The check passes; the tests and the benchmark (minutes on CPU) are stopped at their 3 and 20 s:
    each is reported with its exit status, its summary after it, its log under $OUT (the benchmark's
    table head, printed within seconds, kept although it was killed), and the session fails."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1", "CHECK_S": "200", "TESTS_S": "3", "SAMPLE_S": "20"}
    env.pop("PYTHONUNBUFFERED", None)  # the script sets it: a stopped step's output must not be lost
    work = ["--work-dir", str(tmp_path / "work")]  # not the script's default under /tmp, shared by every run
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_session.sh"), "--smoke", "--runs", "eager", *work],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    heads = ["== make gpu-check: exit 0", "== gpu check on cpu", f"summary: {out / 'gpu_check.json'}",
             "== make gpu-test: exit 124, stopped at its 3 s", "== bench/sample.py: exit 124, stopped at its 20 s"]
    places = [proc.stdout.find(head) for head in heads]
    assert -1 not in places and places == sorted(places), proc.stdout
    assert {p.name for p in out.iterdir()} == {"gpu_check.json", "train_eager.log", "gpu_test.log", "sample.log"}
    assert "| preset | params |" in (out / "sample.log").read_text()
    # A check that ends before its table (here a refused option) shows where it ended instead.
    env |= {"TESTS_S": "1", "SAMPLE_S": "1"}
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_session.sh"), "--smoke", "--runs", "fast", *work],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "== make gpu-check: exit 2\n" in proc.stdout
    assert "--runs takes compiled, eager" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_gpu_session_without_cuda_stops_after_the_check(tmp_path):
    """It went on to gpu-test (whose CPU halves passed, saying nothing of CUDA) and to the sampling
    benchmark, killed at its limit: 97 s to learn there was no GPU (a reviewer's find)."""
    env = {**os.environ, "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_session.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("== no CUDA device: gpu-test and bench/sample.py not run")
    assert not (tmp_path / "out" / "gpu_test.log").exists()


def test_a_variant_named_twice_is_refused(gpu_check, capsys, monkeypatch, tmp_path):
    """The second run's results, log and table row replaced the first's."""
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--smoke", "--variant", "a: lr=1e-3", "--variant", "a: lr=2e-3", "--budget", "0",
                        "--work-dir", str(tmp_path / "work")])
    assert stop.value.code == 2 and "--variant: 'a' named twice" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_smoke_legend_says_the_shape_runs_kept_its_tiny_shape(gpu_check, capsys, monkeypatch, tmp_path):
    """--smoke runs wide128 at its tiny shape; the legend said 7 layers x 640 all the same."""
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    argv = ["--smoke", "--runs", "plain,wide128", "--budget", "0", "--work-dir", str(tmp_path / "work")]
    assert gpu_check.main(argv) == 1  # both skipped: nothing trains
    out = capsys.readouterr().out
    assert "  wide128: (--smoke: the tiny shape)" in out and "model.n_layer=7" not in out
    assert "  plain: model.fused_loss=false" in out


def test_a_variant_named_like_a_summary_key_is_refused(gpu_check, capsys, monkeypatch, tmp_path):
    """A variant named block_size (or steps, device, ...) had its result replaced by gpu_check.json's
    own value of that key at the end of the session, and the table crashed on it (TypeError)."""
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    argv = ["--smoke", "--runs", "plain", "--variant", "v: lr=1e-3", "--budget", "0", "--work-dir", str(tmp_path)]
    assert gpu_check.main(argv) == 1  # all skipped; the keys beside the runs' are the ones refused as names
    assert set(json.loads((tmp_path / "out/gpu_check.json").read_text())) - {"plain", "v"} <= set(
        gpu_check.SUMMARY_KEYS)
    for name in gpu_check.SUMMARY_KEYS:
        with pytest.raises(SystemExit):
            gpu_check.main(["--smoke", "--variant", f"{name}: lr=1e-3", "--budget", "0"])
        assert "with a new plain NAME" in capsys.readouterr().err
