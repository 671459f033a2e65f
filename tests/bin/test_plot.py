"""bin/plot.py on metrics.jsonl files the test writes: which run it picks, where the PNG goes, and the
errors it reports instead of a traceback or an empty plot (a trained run's plot: tests/train/test_trainer.py)."""

from __future__ import annotations

import json
import os

import pytest
from script_loader import load_script

plot = load_script("plot")
PNG = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir, records, mtime=None):
    run_dir.mkdir(parents=True)
    log = run_dir / "metrics.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    if mtime is not None:
        os.utime(log, (mtime, mtime))


LOSSES = [{"step": 1, "loss": 4.0, "tokens": 256}, {"step": 2, "loss": 3.5, "tokens": 512},
          {"step": 2, "val_loss": 3.6, "tokens": 512}]


def test_without_a_run_dir_the_most_recently_updated_run_is_plotted_beside_its_log(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "runs" / "b", LOSSES, mtime=1_000_000)
    write_run(tmp_path / "runs" / "a", LOSSES, mtime=2_000_000)  # updated last, though first by name
    write_run(tmp_path / "runs" / "c", LOSSES, mtime=1_500_000)
    assert plot.main([]) == 0
    assert (tmp_path / "runs/a/loss.png").read_bytes()[:8] == PNG
    assert capsys.readouterr().out == "wrote runs/a/loss.png\n"
    assert not (tmp_path / "runs/b/loss.png").exists() and not (tmp_path / "runs/c/loss.png").exists()


def test_no_run_dir_and_no_runs_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert plot.main([]) == 2
    assert "none under runs/ (train first: make train)" in capsys.readouterr().err


@pytest.mark.parametrize("records", [[], [{"step": 0, "event": "start"}], [{"step": 1, "loss": None, "tokens": 9}]])
def test_a_log_without_losses_is_an_error_not_an_empty_plot(tmp_path, capsys, records):
    """A run stopped before its first logged step: an empty PNG looked like a broken plot."""
    write_run(tmp_path / "run", records)
    assert plot.main([str(tmp_path / "run")]) == 1
    assert f"{tmp_path / 'run' / 'metrics.jsonl'}: no loss records to plot" in capsys.readouterr().err
    assert not (tmp_path / "run" / "loss.png").exists()


def test_a_mistyped_run_dir_says_so(tmp_path, capsys):
    assert plot.main([str(tmp_path / "nope")]) == 1
    assert f"{tmp_path / 'nope'}: no such run directory" in capsys.readouterr().err
