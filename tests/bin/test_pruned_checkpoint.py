"""sample / eval / export given a run directory that a training run is still writing to: the checkpoint
they chose may be pruned (keep_last) before they open it, and they choose again."""

from __future__ import annotations

import io
import shutil

import pytest
import torch
from script_loader import load_script

from train import checkpoint
from train.checkpoint import MARKER, load_checkpoint, save_checkpoint

export_cli = load_script("export")

TOOLS = {"sample": ["--prompt", "ROMEO:", "--max-new-tokens", "3", "--device", "cpu"],
         "eval": ["--max-tokens", "64", "--device", "cpu"],
         "export": ["--out", "OUT"]}


def _train_while_opening(monkeypatch, run, times: int) -> list[str]:
    """Before each of the first `times` opens of a state.pt, a training run saves the next checkpoint
    with keep_last=1, pruning the one just chosen; returns the names of the checkpoints opened."""
    state, real_load, opened = load_checkpoint(run), torch.load, []

    def load(f, *args, **kwargs):
        opened.append(f.parent.name)
        if len(opened) <= times:
            state["step"] += 1
            save_checkpoint(run, f"{state['step']:08d}", state, keep_last=1)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    return opened


@pytest.mark.parametrize("tool", TOOLS)
def test_a_checkpoint_pruned_before_it_is_read_is_chosen_again(tool, run_dir, tmp_path, monkeypatch, capsys):
    """It failed as `not a readable checkpoint (... No such file or directory)` naming a folder gone by then."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    opened = _train_while_opening(monkeypatch, run, times=2)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    args = [a.replace("OUT", str(tmp_path / "out")) for a in TOOLS[tool]]
    assert load_script(tool).main(["--checkpoint", str(run), *args]) == 0, capsys.readouterr().err
    assert opened == ["ckpt-00000007", "ckpt-00000008", "ckpt-00000009"]


def test_a_run_that_keeps_pruning_the_chosen_checkpoint_is_a_clear_error(run_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    opened = _train_while_opening(monkeypatch, run, times=100)
    assert export_cli.main(["--checkpoint", str(run), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{run}: its newest complete checkpoint was removed before it could be read, 5 times" in err
    assert "keep_last" in err and len(opened) == 5


def test_a_checkpoint_named_by_the_user_is_not_replaced_by_another(run_dir, tmp_path, monkeypatch, capsys):
    """Only a checkpoint the tool chose from a run directory is chosen again: a named one that is gone is an error."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    opened = _train_while_opening(monkeypatch, run, times=1)
    assert export_cli.main(["--checkpoint", str(run / "ckpt-00000007"), "--out", str(tmp_path / "out")]) == 1
    assert "ckpt-00000007" in capsys.readouterr().err and opened == ["ckpt-00000007"]


def test_a_checkpoint_whose_marker_goes_first_is_chosen_again(run_dir, tmp_path, monkeypatch, capsys):
    """_prune removes the COMPLETE marker before the folder: caught there, the chosen checkpoint was
    reported as `incomplete checkpoint ...; it was cut off while saving`."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    state, real_latest = load_checkpoint(run), checkpoint.latest_checkpoint

    def latest(where):
        chosen = real_latest(where)
        if chosen.name == "ckpt-00000007":
            save_checkpoint(run, "00000008", {**state, "step": 8})
            (chosen / MARKER).unlink()
        return chosen

    monkeypatch.setattr(checkpoint, "latest_checkpoint", latest)
    assert export_cli.main(["--checkpoint", str(run), "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert "exported " + str(run / "ckpt-00000008") + " (step 8" in capsys.readouterr().out
