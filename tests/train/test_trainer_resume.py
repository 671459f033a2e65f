"""Bit-exact resume through a real `kill -9`: bin/train.py killed once a checkpoint exists, rerun with
resume=auto, must log the very same loss at every step as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from trainer_util import REPO, make_store

from train.checkpoint import latest_checkpoint, list_checkpoints
from train.metrics import read_metrics

STEPS = 200
# Dropout exercises the torch RNG, grad_accum the micro-step loop, epoch mode the sampler's
# (epoch, pos) state and epoch-end checkpoints; the tiny store makes several epochs pass.
ARGS = [
    "model.n_layer=2", "model.n_head=2", "model.d_model=32", "model.block_size=16", "model.dropout=0.1",
    f"max_steps={STEPS}", "micro_batch=4", "grad_accum=2", "sampler_mode=epoch", "lr=3e-3", "warmup_steps=10",
    "eval_interval=50", "eval_batches=2", "ckpt_interval=20", "keep_last=2", "log_interval=1", "device=cpu",
]


def run_train(store, out_dir, extra=()):
    cmd = [sys.executable, str(REPO / "bin/train.py"), f"data={store}", f"out_dir={out_dir}", *ARGS, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every run: same float sums
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


@pytest.mark.slow
def test_kill9_then_resume_matches_uninterrupted_run(tmp_path):
    store = tmp_path / "store"
    make_store(store, docs=20, doc_len=100)
    straight = run_train(store, tmp_path / "straight")
    killed_dir = tmp_path / "killed"
    victim = run_train(store, killed_dir)
    # Kill a few steps past the first checkpoint, so the resumed run must also drop logged steps.
    deadline = time.monotonic() + 120
    while victim.poll() is None and time.monotonic() < deadline:
        ckpt = latest_checkpoint(killed_dir)
        if ckpt and max(losses(killed_dir)) > int(ckpt.name[5:13]) + 3:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resume_from = int(list_checkpoints(killed_dir)[-1].name[5:13])
    assert resume_from < max(losses(killed_dir)) < STEPS

    resumed = run_train(store, killed_dir)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resumed from {killed_dir}/ckpt-" in out
    out, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, out

    expected, got = losses(tmp_path / "straight"), losses(killed_dir)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert got == expected  # exact float equality at every step, before and after the kill
    val = {r["step"]: r["val_loss"] for r in read_metrics(killed_dir / "metrics.jsonl") if "val_loss" in r}
    val_straight = {r["step"]: r["val_loss"] for r in read_metrics(tmp_path / "straight/metrics.jsonl")
                    if "val_loss" in r}
    assert val == val_straight
