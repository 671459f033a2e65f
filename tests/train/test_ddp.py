"""Two-process DDP on CPU (torchrun, gloo): different windows per rank, identical parameters after
every optimizer step (with AdamW and with Muon), evaluation shared out and all-reduced, a NaN on one
rank skipped by both, and init_batch's micro-batch the minimum over ranks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from trainer_util import REPO, make_store, tiny_config

from common.config import from_dict, to_dict
from pipeline.store import TokenStore
from train import distributed as D
from train.checkpoint import ResumeRefused, load_checkpoint
from train.config import TrainConfig
from train.metrics import read_metrics
from train.sampler import WindowSampler
from train.trainer import Trainer


def run_workers(root, optimizer):
    make_store(root / "store")
    (root / "results").mkdir()
    # --log-dir: torchrun's default is a new /tmp/torchelastic_* folder per launch, never removed.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--log-dir", str(root / "torchrun"), str(REPO / "tests/train/ddp_worker.py"), str(root / "store"),
           str(root / "run"), str(root / "results"), optimizer]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FutureWarning" not in proc.stderr, proc.stderr  # torch 2.13 renamed DDP's broadcast_buffers
    ranks = [torch.load(root / "results" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return root, ranks, proc.stdout


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    return run_workers(tmp_path_factory.mktemp("ddp"), "adamw")


@pytest.fixture(scope="module")
def ddp_muon_run(tmp_path_factory):
    """The same run with optimizer=muon: each rank runs Muon's Newton-Schulz on the all-reduced gradient,
    and the skip flag is read on the host (Muon has no found_inf)."""
    return run_workers(tmp_path_factory.mktemp("ddp_muon"), "muon")


def test_init_batch_takes_the_smallest_micro_batch_any_rank_fits(ddp_run):
    """Rank 1 alone runs out of memory above 2 sequences (ddp_worker.py): both train at 2, with the
    accumulation raised to keep the configured 4 x 2 per rank."""
    _, ranks, _ = ddp_run
    assert [(r["micro_batch"], r["grad_accum"]) for r in ranks] == [(2, 4), (2, 4)]


def test_rank_0_decides_and_gathers_come_in_rank_order(ddp_run):
    """Rank 0 decides which checkpoint every rank resumes from and whether it may use the out_dir; a
    checkpoint's per-rank sampler and RNG states are indexed by rank."""
    _, ranks, _ = ddp_run
    assert [(r["broadcast"], r["gathered"]) for r in ranks] == [(0, [0, 1]), (0, [0, 1])]


def test_ranks_draw_different_windows(ddp_run):
    """Each rank trains on exactly its own sampler stream (seed, rank, step), and the two streams
    share no more windows than chance: compared window by window, not batch by batch."""
    root, ranks, _ = ddp_run
    store = TokenStore(root / "store")
    cfg = tiny_config(root / "store", root / "unused", micro_batch=2)  # as ddp_worker.py trains after init_batch
    for rank, result in enumerate(ranks):
        assert len(result["seen"]) == 24  # 6 steps x grad_accum 4
        own = WindowSampler(store, "train", cfg.model.block_size, cfg.micro_batch, cfg.seed, rank, 2)
        for seen in result["seen"]:
            assert torch.equal(seen, own.next_batch()[0])
    windows = [{tuple(row.tolist()) for batch in r["seen"] for row in batch} for r in ranks]
    # 48 random windows a rank out of ~8000 starts: ~0.3 shared by chance; a shared stream, dozens.
    assert len(windows[0] & windows[1]) <= 2


@pytest.mark.parametrize("run", ["ddp_run", "ddp_muon_run"])
def test_parameters_identical_across_ranks(run, request):
    _, (r0, r1), _ = request.getfixturevalue(run)
    assert torch.equal(r0["initial"], r1["initial"])
    assert torch.equal(r0["final"], r1["final"])
    assert not torch.equal(r0["initial"], r0["final"])


@pytest.mark.parametrize("run", ["ddp_run", "ddp_muon_run"])
def test_nan_on_one_rank_skips_the_step_on_both(run, request):
    root, (r0, r1), out = request.getfixturevalue(run)
    assert r0["skipped"] == r1["skipped"] == 1
    records = [r for r in read_metrics(root / "run/metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert records[2]["loss"] is None and records[2]["skipped"] == 1
    message = "step 3: non-finite loss or gradient norm on some rank; 1 of the last 1 step(s) skipped"
    assert out.count(message) == 1  # rank 0 logs


def test_eval_is_shared_and_all_reduced(ddp_run):
    root, (r0, r1), _ = ddp_run
    # eval_batches 4 x the configured micro-batch 4: 8 windows per rank, in batches of the fitted 2.
    assert [len(x) for x in r0["eval"]] == [len(x) for x in r1["eval"]] == [2] * 4
    assert not any(torch.equal(a, b) for a in r0["eval"] for b in r1["eval"])
    assert r0["val_loss"] == r1["val_loss"]
    # One process evaluating all 4 batches with the final weights gets the same number.
    cfg = from_dict(TrainConfig, to_dict(tiny_config(root / "store", root / "run", max_steps=6, micro_batch=4,
                                                     eval_batches=4, allow_world_size_change=True)))
    single = Trainer(cfg, D.init_distributed("cpu"), log=lambda _: None)
    assert single.evaluate() == pytest.approx(r0["val_loss"], rel=1e-6)


def test_checkpoint_holds_every_rank_and_refuses_other_world_size(ddp_run):
    root, _, _ = ddp_run
    state = load_checkpoint(root / "run")
    assert state["world_size"] == 2 and state["step"] == 6
    assert len(state["sampler"]) == len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    cfg = tiny_config(root / "store", root / "run", max_steps=8, micro_batch=4)
    with pytest.raises(ResumeRefused, match="written by 2 process"):
        Trainer(cfg, D.init_distributed("cpu"))


def test_an_error_on_one_rank_stops_the_job_instead_of_hanging(tmp_path):
    """Rank 0 failed to save a checkpoint and then waited in a barrier that rank 1, already in its next
    gradient all-reduce, never reached: the job hung for the process group's 30-minute timeout."""
    make_store(tmp_path / "store")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--log-dir", str(tmp_path / "torchrun"), str(REPO / "tests/train/ddp_fail_worker.py"),
           str(tmp_path / "store"), str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}:{REPO / 'tests/train'}"}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the job still ran 120 s after rank 0 failed")
    assert proc.returncode != 0
    assert "No space left on device" in proc.stdout + proc.stderr


def test_a_world_size_change_keeps_the_global_batch_where_it_can(ddp_run, tmp_path):
    """Resumed on another world size, the run kept micro_batch x grad_accum per rank, so the optimizer
    saw another batch and the LR schedule (counted in steps) stretched."""
    root, _, _ = ddp_run  # 2 ranks x micro_batch 4 x grad_accum 2: 16 sequences per step
    shutil.copytree(root / "run", tmp_path / "run")
    lines: list[str] = []
    cfg = tiny_config(root / "store", tmp_path / "run", max_steps=8, micro_batch=4, allow_world_size_change=True)
    trainer = Trainer(cfg, D.init_distributed("cpu"), lines.append)
    assert trainer.step == 6 and cfg.grad_accum == 4 and trainer.tokens_per_step == 16 * 32
    assert any("grad_accum 4 keeps the global batch of 16 sequences" in line for line in lines)
    trainer.close()

    lines.clear()
    cfg = tiny_config(root / "store", tmp_path / "run", max_steps=8, micro_batch=3, allow_world_size_change=True)
    trainer = Trainer(cfg, D.init_distributed("cpu"), lines.append)
    assert cfg.grad_accum == 1 and trainer.tokens_per_step == 3 * 32
    assert any(line.startswith("warning: the checkpoint's global batch of 16 sequences") for line in lines)
    trainer.close()


def test_a_rerun_after_a_world_size_change_keeps_its_global_batch(ddp_run, tmp_path):
    """Resumed on 1 rank from the 2-rank run and killed before its last checkpoint, the rerun of the
    same command resumed from a 1-rank checkpoint, so at the 'same' world size with the command's
    grad_accum: 4 sequences a step instead of the 16 the run that was not stopped kept."""
    root, _, _ = ddp_run  # 2 ranks x 16 sequences per step, checkpointed at step 6

    def run(out_dir):  # the same command every time
        cfg = tiny_config(root / "store", out_dir, max_steps=8, micro_batch=4, ckpt_interval=1,
                          allow_world_size_change=True)
        trainer = Trainer(cfg, D.init_distributed("cpu"), lambda _: None)
        try:
            trainer.fit()
        finally:
            trainer.close()
        return cfg.grad_accum

    def losses(out_dir):
        return [(r["step"], r["tokens"], r["loss"]) for r in read_metrics(out_dir / "metrics.jsonl") if "loss" in r]

    for name in ("straight", "killed"):
        shutil.copytree(root / "run", tmp_path / name)
    assert run(tmp_path / "straight") == 4
    run(tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed/ckpt-00000008")  # killed before it was written: step 7's is the newest
    assert run(tmp_path / "killed") == 4
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
