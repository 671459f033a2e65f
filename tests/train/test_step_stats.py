"""Step numbers kept on the device: the accumulator itself, and a Trainer that reads them only at its
sync points yet reports skipped steps and aborts on a run of them within max_skips steps."""

from __future__ import annotations

import math

import pytest
import torch
from trainer_util import make_store, make_trainer, nan_forward, tiny_config

from train.metrics import read_metrics
from train.step_stats import StepStats, check_skips
from train.trainer import TrainingAborted


def test_accumulates_applied_losses_and_counts_runs_of_skips():
    stats = StepStats(torch.device("cpu"))
    for loss, gnorm, skipped in ((2.0, 1.0, 0), (math.nan, math.nan, 1), (math.inf, 3.0, 1), (4.0, 0.5, 0)):
        stats.add(torch.tensor([loss, gnorm, float(skipped)]))
    assert stats.read() == {"loss_sum": 6.0, "applied": 2, "skipped": 2, "consecutive": 0, "longest": 2,
                            "grad_norm": 0.5}
    for _ in range(3):
        stats.add(torch.tensor([math.nan, 1.0, 1.0]))
    # The sums restart after a read; the run of consecutive skips does not.
    assert stats.read() == {"loss_sum": 0.0, "applied": 0, "skipped": 3, "consecutive": 3, "longest": 3,
                            "grad_norm": 1.0}
    stats.add(torch.tensor([math.nan, 1.0, 1.0]))
    assert stats.read()["consecutive"] == 4
    assert stats.skipped == 6


def test_longest_run_between_reads_and_log_window_across_reads():
    stats = StepStats(torch.device("cpu"))
    for loss, skipped in ((1.0, 0), (math.nan, 1), (math.nan, 1), (math.nan, 1), (2.0, 0)):
        stats.add(torch.tensor([loss, 1.0, float(skipped)]))
    # A run of 3 that ended before the read is still seen; a read inside the log window keeps its sums.
    window = stats.read(end_window=False)
    assert (window["longest"], window["consecutive"], window["loss_sum"], window["applied"]) == (3, 0, 3.0, 2)
    stats.add(torch.tensor([4.0, 1.0, 0.0]))
    window = stats.read()
    assert (window["longest"], window["loss_sum"], window["applied"], stats.skipped) == (0, 7.0, 3, 3)
    assert stats.read()["loss_sum"] == 0.0


def test_state_round_trip_continues_the_log_window_and_the_run_of_skips():
    stats = StepStats(torch.device("cpu"))
    for loss, skipped in ((0.1, 0), (math.nan, 1), (0.7, 0), (math.nan, 1)):
        stats.add(torch.tensor([loss, 1.0, float(skipped)]))
    stats.read(end_window=False)
    resumed = StepStats(torch.device("cpu"))
    resumed.load_state_dict(stats.state_dict())
    for s in (stats, resumed):
        for _ in range(2):
            s.add(torch.tensor([math.nan, 1.0, 1.0]))
        s.add(torch.tensor([0.3, 1.0, 0.0]))
    assert resumed.read() == stats.read()  # bit-identical float32 sums, and the run of 3 skips
    assert resumed.skipped == stats.skipped == 4


def test_state_counts_skips_not_read_yet():
    """A checkpoint between two reads must carry the skips since the last read, not only those read."""
    stats = StepStats(torch.device("cpu"))
    stats.add(torch.tensor([math.nan, 1.0, 1.0]))
    stats.read()
    stats.add(torch.tensor([math.nan, 1.0, 1.0]))
    stats.add(torch.tensor([1.0, 1.0, 0.0]))
    assert stats.state_dict() == {"skipped": 2, "consecutive": 0, "loss_sum": 1.0, "applied": 1}


def test_check_skips_is_silent_without_skips_and_aborts_at_max_skips():
    lines: list[str] = []
    window = {"skipped": 0, "consecutive": 0, "longest": 0}
    check_skips(window, 10, 10, 3, lines.append, lambda: None)
    assert lines == []  # a log line on every read would only say nothing was skipped
    check_skips({"skipped": 2, "consecutive": 2, "longest": 2}, 10, 20, 3, lines.append, lambda: None)
    assert lines == ["step 20: non-finite loss or gradient norm on some rank; 2 of the last 10 step(s) skipped "
                     "(2 in a row now, longest run 2, max_skips=3)"]
    with pytest.raises(TrainingAborted, match="The last checkpoint is ckpt-9"):
        check_skips({"skipped": 3, "consecutive": 0, "longest": 3}, 10, 30, 3, lines.append, lambda: "ckpt-9")
    # Before the first checkpoint it said "The last checkpoint is None."
    with pytest.raises(TrainingAborted, match=r"stopping at step 30\. No checkpoint was written yet\. Lower lr"):
        check_skips({"skipped": 3, "consecutive": 0, "longest": 3}, 10, 30, 3, lines.append, lambda: None)


def trainer_with_read_log(tmp_path, lines, **overrides):
    make_store(tmp_path / "store")
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", init_batch=False, **overrides)
    trainer = make_trainer(cfg, lines)
    reads = []
    real_read = StepStats.read

    def read(stats, *args, **kwargs):
        reads.append(trainer.step)
        return real_read(stats, *args, **kwargs)

    return trainer, reads, read


def test_fit_reads_the_device_only_at_its_sync_points(tmp_path, monkeypatch):
    lines: list[str] = []
    trainer, reads, read = trainer_with_read_log(tmp_path, lines, max_steps=20, log_interval=5, eval_interval=10,
                                                 ckpt_interval=10, max_skips=8)
    monkeypatch.setattr(StepStats, "read", read)
    nan_forward(trainer.raw, {2, 3})
    trainer.fit()
    trainer.close()
    # The first step, the log steps (5, 10, 15, 20; 10 and 20 also eval + save) and max_skips' 8 and 16.
    assert reads == [1, 5, 8, 10, 15, 16, 20]
    assert "step 5: non-finite loss or gradient norm on some rank; 2 of the last 4 step(s) skipped (0 in a row" in (
        "\n".join(lines))
    records = [r for r in read_metrics(tmp_path / "run/metrics.jsonl") if "loss" in r]
    assert [(r["step"], r["skipped"]) for r in records] == [(5, 2), (10, 2), (15, 2), (20, 2)]
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in records)  # skipped NaNs stay out


def test_a_run_of_bad_steps_aborts_within_max_skips_steps(tmp_path):
    lines: list[str] = []
    trainer, _, _ = trainer_with_read_log(tmp_path, lines, max_steps=40, log_interval=100, eval_interval=0,
                                          ckpt_interval=0, max_skips=3)
    nan_forward(trainer.raw, set(range(2, 41)))
    with pytest.raises(TrainingAborted, match="5 consecutive steps had a non-finite loss .* stopping at step 6"):
        trainer.fit()
    trainer.close()
    assert trainer.step == 6


def test_a_run_of_max_skips_between_two_reads_aborts(tmp_path):
    """Steps 5-7 skipped, max_skips=3: reads at 3, 6 and 9 see runs of 2 and 0 in a row; the longest
    run since the last read is what counts, whatever log_interval is."""
    lines: list[str] = []
    trainer, reads, read = trainer_with_read_log(tmp_path, lines, max_steps=12, log_interval=100, eval_interval=0,
                                                 ckpt_interval=0, max_skips=3)
    nan_forward(trainer.raw, {5, 6, 7})
    with pytest.raises(TrainingAborted, match="3 consecutive steps had a non-finite loss .* stopping at step 9"):
        trainer.fit()
    trainer.close()
