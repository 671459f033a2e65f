"""Checkpoint files: marker written last, crash leftovers ignored and removed, pruning, weights_only
loading, RNG states that survive it; what a resume refuses, and the batch it keeps at another world size."""

from __future__ import annotations

import json
import os
import pickle
import random
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from trainer_util import FillsUp

from common.config import parse_cli
from train import checkpoint
from train.checkpoint import (
    CheckpointError,
    ResumeRefused,
    check_compatible,
    checkpoint_tag,
    grad_accum_for_world,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from train.config import TrainConfig

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


def test_a_full_disk_names_the_checkpoint_and_what_to_do_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    """torch.save said only `[enforce fail at inline_container.cc:672] unexpected pos ...` (ENOSPC was
    further up the chained traceback), and its partial state.pt.tmp kept the space the next try needed."""
    save_checkpoint(tmp_path, "00000010", state(10))
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, FillsUp(f, room=300)))
    with pytest.raises(OSError) as failed:
        save_checkpoint(tmp_path, "00000020", state(20), keep_last=1)
    assert str(failed.value) == (
        f"cannot write checkpoint {tmp_path / 'ckpt-00000020'}: No space left on device; free space there or lower "
        "keep_last (old checkpoints are removed only after a new one is complete, so keep_last=K needs room for "
        "K+1), then rerun the same command to continue from the newest complete checkpoint")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000010"]
    monkeypatch.undo()
    # Not the disk: the error stays what it was, and no partial copy stays either.
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint(tmp_path, "00000030", {"step": 30, "fn": lambda: None})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000010"]


def test_a_file_where_the_checkpoint_goes_is_a_one_line_error_and_stays(tmp_path):
    """It was a raw NotADirectoryError from rmtree, before the checkpoint's own error handling."""
    (tmp_path / "ckpt-00000020").write_text("mine")
    with pytest.raises(OSError, match=r"cannot write checkpoint .*ckpt-00000020: Not a directory; fix that"):
        save_checkpoint(tmp_path, "00000020", state(20))
    assert (tmp_path / "ckpt-00000020").read_text() == "mine"


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


def test_a_pruned_checkpoint_is_never_left_complete_without_its_state(tmp_path, monkeypatch):
    """rmtree may delete state.pt before COMPLETE: a kill between them left a "complete" checkpoint
    that resume=auto could not load. Here the removal stops after state.pt, as a kill would."""
    save_checkpoint(tmp_path, "00000010", state(10), keep_last=1)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", lambda path, **kw: (Path(path) / "state.pt").unlink())
    save_checkpoint(tmp_path, "00000020", state(20), keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000020"]


def test_a_checkpoint_path_that_does_not_exist_says_so(tmp_path):
    """A pruned ckpt-* folder was reported as "incomplete ... cut off while saving"."""
    for missing in (tmp_path / "ckpt-00000010", tmp_path / "run", tmp_path / "ckpt-00000010" / "state.pt"):
        with pytest.raises(FileNotFoundError, match=f"{missing}: does not exist"):
            load_checkpoint(missing)


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
    with pytest.raises(CheckpointError, match="refused: it holds objects other than tensors"):
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


def saved_by(world_size: int, micro_batch: int, grad_accum: int) -> dict:
    return {"world_size": world_size, "config": {"micro_batch": micro_batch, "grad_accum": grad_accum}}


def test_grad_accum_for_world_keeps_the_global_batch():
    # 1 rank x 4 x 4 = 16 sequences a step, continued on 2 ranks and on 4.
    assert grad_accum_for_world(saved_by(1, 4, 4), 2, 4, 4) == (
        2, "2 rank(s) instead of 1: grad_accum 2 keeps the global batch of 16 sequences")
    assert grad_accum_for_world(saved_by(1, 4, 4), 4, 2, 4)[0] == 2
    assert grad_accum_for_world(saved_by(2, 4, 2), 2, 4, 2) == (2, "")  # nothing changed: nothing to say
    assert grad_accum_for_world(saved_by(1, 4, 4), 1, 4, 1) == (  # a rerun's command after a change
        4, "grad_accum 4 instead of 1: allow_world_size_change=true keeps the checkpoint's global batch of 16 "
        "sequences")
    accum, note = grad_accum_for_world(saved_by(1, 4, 4), 3, 4, 4)  # 12 does not divide 16
    assert accum == 4 and note.startswith("warning: the checkpoint's global batch of 16 sequences")


def resume_case(world_size: int = 1, **model_changes):
    """A checkpoint state, the store it was trained on and the config it was trained with."""
    cfg = TrainConfig(max_steps=1)
    store = SimpleNamespace(root="store", tokenizer_sha256="t" * 64, manifest_sha256="m" * 64)
    saved = {"tokenizer_sha256": store.tokenizer_sha256, "store_manifest_sha256": store.manifest_sha256,
             "world_size": world_size, "model_config": asdict(replace(cfg.model, **model_changes)),
             "sampler": [{"seed": cfg.seed, "mode": cfg.sampler_mode, "align_bos": cfg.align_bos}] * world_size}
    return saved, store, cfg


def test_a_resume_on_more_processes_is_refused_too():
    """Refused both ways: grown from 1 to 2 processes, the run too would draw another data order and
    other RNG streams from then on, which only allow_world_size_change agrees to."""
    saved, store, cfg = resume_case(world_size=1)
    with pytest.raises(ResumeRefused, match=r"written by 1 process\(es\), this run has 2"):
        check_compatible(saved, store, cfg, 2)
    cfg.allow_world_size_change = True
    check_compatible(saved, store, cfg, 2)


def test_dropout_may_change_on_resume():
    """Dropout is a training choice, not part of the weights (one may lower it for the last steps)."""
    saved, store, cfg = resume_case(dropout=0.1)  # configured: 0.0
    check_compatible(saved, store, cfg, 1)
    saved["model_config"]["n_layer"] += 1
    with pytest.raises(ResumeRefused, match="model.n_layer"):
        check_compatible(saved, store, cfg, 1)


def test_a_changed_model_is_refused_with_the_overrides_that_resume_it():
    """gpt-45m changed shape (12 x 512 to 5 x 768): a run begun under the old preset is told the
    key=value overrides that resume it, in the form the command line takes."""
    saved, store, cfg = resume_case(n_layer=12, d_model=512, n_head=8, bias=True)
    cfg.model = replace(cfg.model, n_layer=5, d_model=768, n_head=6, bias=False)
    with pytest.raises(ResumeRefused) as refused:
        check_compatible(saved, store, cfg, 1)
    assert "model.bias: True -> False, model.d_model: 512 -> 768, model.n_head: 8 -> 6" in str(refused.value)
    assert "resume with model.bias=true model.d_model=512 model.n_head=8 model.n_layer=12, or" in str(refused.value)
    # Those overrides, read by the training command line over the new preset, give the checkpoint's model.
    advice = str(refused.value).split("resume with ")[1].split(", or")[0].split()
    assert asdict(parse_cli(TrainConfig, ["model.n_layer=5", "model.d_model=768", "model.n_head=6", *advice]).model) \
        == saved["model_config"]
    # A field the checkpoint lacks (added since) or the config no longer has: no override to offer.
    saved, store, cfg = resume_case()
    del saved["model_config"]["qk_norm"]
    saved["model_config"]["retired_option"] = 1
    with pytest.raises(ResumeRefused) as refused:
        check_compatible(saved, store, cfg, 1)
    assert "model.qk_norm: None -> False, model.retired_option: 1 -> None); start a new run" in str(refused.value)
