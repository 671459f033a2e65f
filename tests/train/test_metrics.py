"""train/metrics.py: the peak-FLOPs table that MFU divides by, the progress line, eval records and metrics.jsonl."""

from __future__ import annotations

import json
import math

import pytest

from train.metrics import (
    MetricsLog,
    eval_record,
    format_count,
    format_duration,
    peak_flops_of,
    progress_line,
    read_metrics,
)


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989),
    ("NVIDIA H100 PCIe", 756),
    ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989),
    ("NVIDIA H200 NVL", 835),  # was rated as an SXM H200 (989)
    ("NVIDIA GH200 480GB", 989),
    ("NVIDIA H800 PCIe", 756),
    ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A10", 125),
    ("NVIDIA A10G", 70),
    ("NVIDIA L4", 121),
    ("NVIDIA L40S", 362),
])
def test_a_variant_gets_its_own_peak_not_its_familys(name, tflops):
    assert peak_flops_of(name) == tflops * 1e12


def test_an_unknown_card_has_no_peak():
    assert peak_flops_of("NVIDIA GeForce GTX 1080") is None


def test_durations_and_counts_read_as_the_progress_line_shows_them():
    assert [format_duration(s) for s in (-3, 65, 3725)] == ["0m00s", "1m05s", "1h02m"]
    assert [format_count(n) for n in (999, 1000, 1.5e6, 2e9)] == ["999", "1.0k", "1.5M", "2.0G"]


def test_progress_line_shows_mfu_in_percent_and_only_real_skips():
    rec = {"step": 7, "loss": None, "lr": 3e-4, "grad_norm": 1.5, "tokens_per_s": 12345.0, "mfu": 0.421,
           "skipped": 0}
    # A step whose every micro-batch was skipped has no loss; no skips so far is not worth a field.
    assert progress_line(rec, 10, 125) == "step 7/10 | loss n/a | lr 3.00e-04 | gnorm 1.50 | 12.3k tok/s | " \
                                          "mfu 42.1% | eta 2m05s"
    assert progress_line({**rec, "skipped": 2}, 10, None).endswith("| mfu 42.1% | skipped 2")


def test_a_diverged_eval_loss_still_makes_a_record():
    """exp() overflows past ~709 nats; a store without byte counts has no bits per byte."""
    rec = eval_record(5, 100, 800.0, 0.0)
    assert rec["val_ppl"] == math.exp(700.0) and rec["val_bpb"] is None
    assert eval_record(5, 100, 2.0, 4.0)["val_bpb"] == pytest.approx(2.0 / math.log(2) / 4.0)


def test_resumed_log_keeps_the_checkpoints_step_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3)]
    path.write_text("\n".join([lines[0], "7", lines[1], lines[2], '{"step": 4, "lo']))
    # A line that is not a record (hand-edited) is skipped like a torn one, not a reason to stop reading.
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    log = MetricsLog(path, keep_through=2)
    log.write({"step": 3, "loss": 0.5})
    log.close()
    assert read_metrics(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 1.0}, {"step": 3, "loss": 0.5}]


def test_the_resumed_log_replaces_the_file_whole_and_never_truncates_it_in_place(tmp_path):
    """Cut back by truncating and rewriting, a kill -9 in between lost the run's whole logged history.
    Replaced by rename, the old file stays intact until the new one is complete."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)))
    with open(path) as before:  # the old file, as a reader (or a crash) in between sees it
        log = MetricsLog(path, keep_through=1)
        assert [json.loads(line)["step"] for line in before] == [1, 2, 3]
    log.close()
    assert read_metrics(path) == [{"step": 1, "loss": 1.0}] and [p.name for p in tmp_path.iterdir()] == [path.name]
