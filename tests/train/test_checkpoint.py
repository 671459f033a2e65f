"""Checkpoint files: marker written last, crash leftovers ignored and removed, pruning, weights_only
loading, RNG states that survive it."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from train.checkpoint import (
    checkpoint_tag,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

CPU = torch.device("cpu")


def state(step: int) -> dict:
    return {"step": step, "tokens_seen": 10 * step, "model": {"w": torch.full((3,), float(step))}, "scaler": None}


def test_save_then_load_by_run_dir_or_ckpt_dir(tmp_path):
    path = save_checkpoint(tmp_path, checkpoint_tag(7), state(7))
    assert path.name == "ckpt-00000007" and sorted(p.name for p in path.iterdir()) == ["COMPLETE", "state.pt"]
    assert json.loads((path / "COMPLETE").read_text())["step"] == 7
    for where in (tmp_path, path, path / "state.pt"):
        loaded = load_checkpoint(where)
        assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], torch.full((3,), 7.0))
    assert checkpoint_tag(1000, 2) == "00001000_e2"


def test_incomplete_checkpoint_is_ignored_then_cleaned_up(tmp_path):
    save_checkpoint(tmp_path, "00000020", state(20))
    torn = tmp_path / "ckpt-00000030"  # killed while saving: temp file, no marker
    torn.mkdir()
    (torn / "state.pt.tmp").write_bytes(b"half a checkpoint")
    assert latest_checkpoint(tmp_path).name == "ckpt-00000020"
    with pytest.raises(FileNotFoundError, match="incomplete checkpoint"):
        load_checkpoint(torn)
    save_checkpoint(tmp_path, "00000040", state(40))
    assert not torn.exists()
    assert load_checkpoint(tmp_path)["step"] == 40


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def _renaming_state_fails(src, dst, replace=os.replace):
    if Path(dst).name == "state.pt":
        _disk_full()
    return replace(src, dst)


@pytest.mark.parametrize("module, name, fake", [(torch, "save", _disk_full), (os, "replace", _renaming_state_fails)],
                         ids=["writing-state", "renaming-state"])
def test_a_failed_save_leaves_no_marker_and_the_previous_checkpoint_latest(tmp_path, monkeypatch, module, name,
                                                                            fake):
    """COMPLETE goes last: written before state.pt was renamed into place, a save that failed there left
    a marked checkpoint without its state, and resume would pick it."""
    save_checkpoint(tmp_path, "00000010", state(10))
    monkeypatch.setattr(module, name, fake)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, "00000020", state(20))
    monkeypatch.undo()
    assert not (tmp_path / "ckpt-00000020" / "COMPLETE").exists()
    assert latest_checkpoint(tmp_path).name == "ckpt-00000010"
    assert load_checkpoint(tmp_path)["step"] == 10


def test_keep_last_counts_epoch_checkpoints(tmp_path):
    for tag, step in (("00000010", 10), ("00000020_e1", 20), ("00000030", 30), ("00000040_e2", 40)):
        save_checkpoint(tmp_path, tag, state(step), keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000030", "ckpt-00000040_e2"]
    save_checkpoint(tmp_path, "00000050", state(50), keep_last=0)  # 0 keeps everything
    assert len(list_checkpoints(tmp_path)) == 3


def test_a_save_that_prunes_also_removes_crash_leftovers(tmp_path):
    """With keep_last set, every save prunes a checkpoint: leftovers must go in that same save, or a
    torn copy of a whole state would stay on disk for the rest of the run."""
    save_checkpoint(tmp_path, "00000010", state(10), keep_last=1)
    (tmp_path / "ckpt-00000015").mkdir()  # killed while saving
    save_checkpoint(tmp_path, "00000020", state(20), keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000020"]


@pytest.mark.parametrize("marker", ["", '{"step": "twenty"}', "[20]", "{}"])
def test_an_unreadable_marker_counts_as_incomplete(tmp_path, marker):
    """resume=auto lists every checkpoint: one bad marker must not stop the run with a traceback."""
    save_checkpoint(tmp_path, "00000010", state(10))
    (tmp_path / "ckpt-00000020").mkdir()
    (tmp_path / "ckpt-00000020" / "COMPLETE").write_text(marker)
    assert latest_checkpoint(tmp_path).name == "ckpt-00000010"


class Payload:
    """Anything but plain data: full unpickling would construct (and could run) it."""


def test_loading_is_weights_only(tmp_path):
    path = save_checkpoint(tmp_path, "00000001", state(1))
    torch.save({"step": 1, "evil": Payload()}, path / "state.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path)


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path, "00000001", {**state(1), "rng": [rng_state(CPU)]})

    def draw():
        return random.random(), np.random.rand(), np.random.randn(), torch.rand(2).tolist()

    expected = draw()
    set_rng_state(load_checkpoint(tmp_path)["rng"][0], CPU)
    assert draw() == expected

