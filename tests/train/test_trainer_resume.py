"""Bit-exact resume: through a real `kill -9` (bin/train.py killed once a checkpoint exists, rerun
with resume=auto, must log the very same loss at every step as an uninterrupted run), and in-process
from a checkpoint inside a log window and a run of skipped steps."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from trainer_util import REPO, make_store, make_trainer, nan_forward, tiny_config

from train.checkpoint import ResumeRefused, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from train.metrics import read_metrics
from train.optim import lr_at
from train.trainer import TrainingAborted

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
    # The same thread count in every run: same float sums. PYTHONUNBUFFERED out: stdout is a pipe, as
    # under `| tee`, and must not depend on the caller's environment to keep its lines in order.
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_ctrl_c_is_one_line_saying_how_to_continue(tmp_path):
    """Ctrl-C printed a KeyboardInterrupt traceback from deep in the prefetch thread's queue, exit 1. And
    without PYTHONUNBUFFERED the block-buffered progress lines on stdout came out after the message."""
    store = tmp_path / "store"
    make_store(store, docs=20, doc_len=100)
    run = run_train(store, tmp_path / "run", ["max_steps=1000000"])  # never ends before the Ctrl-C, under any load
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists() or not losses(tmp_path / "run"):
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 130 and "Traceback" not in out
    assert out.rstrip().splitlines()[-1] == ("interrupted: rerun the same command to continue from the newest "
                                             f"checkpoint in {tmp_path / 'run'} (if there is none yet, it starts over)")


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def stop(proc: subprocess.Popen) -> None:
    """SIGSTOP `proc` and wait until it has stopped (the signal is delivered asynchronously) or ended."""
    proc.send_signal(signal.SIGSTOP)
    with open(f"/proc/{proc.pid}/stat") as stat:
        while stat.read().rsplit(")", 1)[1].split()[0] not in ("T", "t", "Z", "X"):
            time.sleep(0.001)
            stat.seek(0)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_kill9_then_resume_matches_uninterrupted_run(tmp_path, optimizer):
    store = tmp_path / "store"
    make_store(store, docs=20, doc_len=100)
    straight = run_train(store, tmp_path / "straight", [f"optimizer={optimizer}"])
    killed_dir = tmp_path / "killed"
    victim = run_train(store, killed_dir, [f"optimizer={optimizer}"])
    # Kill a few steps past a checkpoint, so the resumed run must also drop logged steps. The run is
    # stopped while its files are read, so that the kill leaves what was read: running on, it once
    # finished its next checkpoint between the read and the kill, leaving nothing to drop.
    deadline = time.monotonic() + 120
    while victim.poll() is None and time.monotonic() < deadline:
        stop(victim)
        ckpt = latest_checkpoint(killed_dir)
        if ckpt and max(losses(killed_dir)) > int(ckpt.name[5:13]) + 3:
            break
        victim.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resume_from = int(list_checkpoints(killed_dir)[-1].name[5:13])
    assert resume_from < max(losses(killed_dir)) < STEPS

    resumed = run_train(store, killed_dir, [f"optimizer={optimizer}"])
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resumed from {killed_dir}/ckpt-" in out
    out, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, out

    expected, got = losses(tmp_path / "straight"), losses(killed_dir)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert got == expected  # exact float equality at every step, before and after the kill
    # Each step logged once: the resumed run dropped the killed run's records past its checkpoint.
    assert [r["step"] for r in read_metrics(killed_dir / "metrics.jsonl") if "loss" in r] == list(range(1, STEPS + 1))
    val = {r["step"]: r["val_loss"] for r in read_metrics(killed_dir / "metrics.jsonl") if "val_loss" in r}
    val_straight = {r["step"]: r["val_loss"] for r in read_metrics(tmp_path / "straight/metrics.jsonl")
                    if "val_loss" in r}
    assert val == val_straight


def fit(cfg, bad_calls=()):
    trainer = make_trainer(cfg)
    nan_forward(trainer.raw, set(bad_calls))
    try:
        return trainer.fit()
    finally:
        trainer.close()


def logged(run_dir):
    return [(r["step"], r["loss"], r["skipped"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def resume_copy(src_ckpt, run_dir, drop=()):
    """run_dir holding only a copy of src_ckpt, minus the state keys in `drop` (an older checkpoint)."""
    state = load_checkpoint(src_ckpt)
    for key in drop:
        del state[key]
    save_checkpoint(run_dir, src_ckpt.name[5:], state)


def test_resume_inside_a_log_window_logs_what_the_straight_run_logs(tmp_path):
    store = tmp_path / "store"
    make_store(store)
    kw = dict(max_steps=12, log_interval=4, ckpt_interval=6, eval_interval=0, keep_last=0, init_batch=False)
    fit(tiny_config(store, tmp_path / "straight", **kw), bad_calls={2})  # step 2 skipped
    straight = logged(tmp_path / "straight")
    assert [(step, skipped) for step, _, skipped in straight] == [(4, 1), (8, 1), (12, 1)]
    # ckpt-6 falls inside the window of steps 5-8: the resumed run must still average all four.
    resume_copy(tmp_path / "straight/ckpt-00000006", tmp_path / "resumed")
    fit(tiny_config(store, tmp_path / "resumed", **kw))
    assert logged(tmp_path / "resumed") == straight[1:]  # exact floats, skip total included
    # A checkpoint from before these fields were saved still resumes, counting from zero.
    resume_copy(tmp_path / "straight/ckpt-00000006", tmp_path / "old", drop=("stats",))
    fit(tiny_config(store, tmp_path / "old", **kw))
    assert [(step, skipped) for step, _, skipped in logged(tmp_path / "old")] == [(8, 0), (12, 0)]


def test_a_run_of_skips_continues_across_a_resume(tmp_path):
    store = tmp_path / "store"
    make_store(store)
    kw = dict(max_steps=12, log_interval=1, ckpt_interval=6, eval_interval=0, keep_last=0, max_skips=3,
              init_batch=False)
    with pytest.raises(TrainingAborted, match="stopping at step 7"):
        fit(tiny_config(store, tmp_path / "straight", **kw), bad_calls={5, 6, 7})
    resume_copy(tmp_path / "straight/ckpt-00000006", tmp_path / "resumed")
    with pytest.raises(TrainingAborted, match="3 consecutive steps .* stopping at step 7"):
        fit(tiny_config(store, tmp_path / "resumed", **kw), bad_calls={1})


def test_a_resume_takes_weight_decay_and_betas_from_its_config(tmp_path):
    """The optimizer's saved param groups overrode them: the printed config said weight_decay=0.9 while
    every step used the checkpoint's 0.1 (only the LR, set each step, followed the config)."""
    store = tmp_path / "store"
    make_store(store)
    kw = dict(max_steps=4, ckpt_interval=2, eval_interval=0, init_batch=False)
    fit(tiny_config(store, tmp_path / "run", **kw))
    trainer = make_trainer(tiny_config(store, tmp_path / "run", **kw | dict(max_steps=6), weight_decay=0.9,
                                       beta1=0.5, beta2=0.6))
    assert trainer.step == 4 and trainer.optimizer.state  # resumed, moments and all
    assert [(g["weight_decay"], g["betas"]) for g in trainer.optimizer.param_groups] == [(0.9, (0.5, 0.6)),
                                                                                          (0.0, (0.5, 0.6))]
    trainer.close()


def test_a_resume_under_another_lr_schedule_says_the_lr_jumps(tmp_path):
    """Raising max_steps after a run ended recomputes the cosine over the new length: the LR went from
    min_lr back up to near its peak without a word. The same command resumed says nothing."""
    store = tmp_path / "store"
    make_store(store)
    kw = dict(max_steps=12, warmup_steps=2, ckpt_interval=6, eval_interval=0, init_batch=False)
    fit(tiny_config(store, tmp_path / "run", **kw))
    resume_copy(tmp_path / "run/ckpt-00000006", tmp_path / "again")
    for run_dir, max_steps in ((tmp_path / "again", 12), (tmp_path / "run", 24)):
        lines: list[str] = []
        cfg = tiny_config(store, run_dir, **kw | dict(max_steps=max_steps))
        make_trainer(cfg, lines).close()
        warnings = [line for line in lines if "LR schedule" in line]
        if max_steps == 12:
            assert warnings == []
        else:
            ran, now = lr_at(11, tiny_config(store, run_dir, **kw), 12), lr_at(11, cfg, 24)
            assert warnings == [jump_warning(11, ran, now)] and now > 3 * ran


def jump_warning(step: int, ran: float, now: float) -> str:
    return (f"warning: the LR schedule is not the checkpoint's (max_steps, epochs, lr, min_lr, warmup_steps, "
            f"lr_schedule or decay_frac changed): step {step} ran at lr {ran:.3g}, which it puts at {now:.3g}, "
            f"so the LR jumps there")


@pytest.mark.parametrize("schedule", ["wsd", "constant"])
def test_a_resume_under_another_lr_schedule_kind_says_the_lr_jumps(tmp_path, schedule):
    """Checkpointed at step 6 of a 12-step cosine run (the LR on its way down), resumed under wsd or
    constant (the LR back at its peak): the warning names lr_schedule among the causes."""
    store = tmp_path / "store"
    make_store(store)
    kw = dict(max_steps=12, warmup_steps=2, ckpt_interval=6, eval_interval=0, init_batch=False)
    fit(tiny_config(store, tmp_path / "run", **kw))
    resume_copy(tmp_path / "run/ckpt-00000006", tmp_path / "again")
    lines: list[str] = []
    cfg = tiny_config(store, tmp_path / "again", **kw, lr_schedule=schedule)
    make_trainer(cfg, lines).close()
    ran, now = lr_at(5, tiny_config(store, tmp_path / "run", **kw), 12), lr_at(5, cfg, 12)
    assert [line for line in lines if "LR schedule" in line] == [jump_warning(5, ran, now)] and now > 1.2 * ran


def test_a_resume_with_another_micro_batch_keeps_the_eval_set(tmp_path):
    """The set was eval_batches x this command's micro_batch windows: resumed at micro_batch 4 instead of 8,
    val_loss was taken over half as many windows from there on, and jumped. A changed eval_batches
    still gets a set of its own size, with a warning."""
    store = tmp_path / "store"
    make_store(store)
    kw = dict(max_steps=6, ckpt_interval=6, eval_interval=0, eval_batches=4, init_batch=False)
    fit(tiny_config(store, tmp_path / "run", **kw))

    def eval_set(lines, **changes):
        trainer = make_trainer(tiny_config(store, tmp_path / "run", **kw | dict(max_steps=8) | changes), lines)
        try:
            # The same windows: each batch comes sorted by start, so their order follows the batch size.
            return [len(x) for x, _ in trainer.eval_batches], sorted(torch.cat([x for x, _ in trainer.eval_batches])
                                                                    .tolist())
        finally:
            trainer.close()

    lines: list[str] = []
    sizes, straight = eval_set(lines)
    assert sizes == [8] * 4 and not any(line.startswith("eval:") for line in lines)
    sizes, smaller = eval_set(lines, micro_batch=4, grad_accum=2)
    assert sizes == [4] * 8 and smaller == straight
    assert "eval: the checkpoint's set of 32 windows (eval_batches x micro_batch as the run began), so " \
           "val_loss stays comparable" in lines
    sizes, _ = eval_set(lines, micro_batch=4, grad_accum=2, eval_batches=2)
    assert sizes == [4, 4] and ("warning: eval_batches 2 (was 4): a new eval set of 8 windows; val_loss before "
                                "and after step 6 is over different windows") in lines
    # A run that evaluated nothing (eval_batches=0) had no val_loss to compare with: nothing to say.
    fit(tiny_config(store, tmp_path / "off", **kw | dict(eval_batches=0)))
    lines.clear()
    make_trainer(tiny_config(store, tmp_path / "off", **kw | dict(max_steps=8)), lines).close()
    assert [line for line in lines if "eval set" in line or line.startswith("eval:")] == []


def test_a_resume_at_another_global_batch_says_so(tmp_path):
    """micro_batch or grad_accum changed on a resume changed the batch of every later step without a
    word; the same batch in another split (4 x 2 for 8 x 1) is no change."""
    store = tmp_path / "store"
    make_store(store)
    kw = dict(max_steps=4, ckpt_interval=4, eval_interval=0, init_batch=False)
    fit(tiny_config(store, tmp_path / "run", **kw))
    for changes, warned in ((dict(micro_batch=4, grad_accum=2), False), (dict(micro_batch=4), True)):
        lines: list[str] = []
        make_trainer(tiny_config(store, tmp_path / "run", **kw | dict(max_steps=6) | changes), lines).close()
        warning = ("warning: 4 sequences per step (ranks x micro_batch x grad_accum), the checkpoint's run took 8: "
                   "the run goes on at another batch (allow_world_size_change=true keeps 8)")
        assert [line for line in lines if "sequences per step" in line] == ([warning] if warned else [])


def test_a_corrupt_checkpoint_is_one_error_saying_what_to_do(tmp_path):
    """Truncated despite its COMPLETE marker: sample and eval said "not a readable checkpoint", training
    gave torch's traceback, and resume=<the one before> was refused as a branch behind a later one."""
    store = tmp_path / "store"
    make_store(store)
    kw = dict(max_steps=4, ckpt_interval=2, eval_interval=0, init_batch=False)
    fit(tiny_config(store, tmp_path / "run", **kw))
    state = tmp_path / "run/ckpt-00000004/state.pt"
    state.write_bytes(state.read_bytes()[:5000])
    with pytest.raises(ResumeRefused, match=r"ckpt-00000004: not a readable checkpoint .*; delete that folder"):
        make_trainer(tiny_config(store, tmp_path / "run", **kw | dict(max_steps=6)))
    shutil.rmtree(state.parent)
    trainer = make_trainer(tiny_config(store, tmp_path / "run", **kw | dict(max_steps=6)))
    assert trainer.step == 2
    trainer.close()
