"""Starting a run (train/run.py, bin/train.py): config checks, --check, exit codes, and the out_dir:
its lock, what it must not already hold, and no empty folder left by a run that failed to start."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
import torch
from script_loader import load_script
from trainer_util import REPO, FillsUp, make_store, tiny_config

from common.config import ConfigError, from_dict, load_yaml, to_dict
from pipeline.paths import expand_paths
from pipeline.readers import BadFileError
from pipeline.store import StoreError, TokenStore
from train import distributed as D
from train import run
from train.checkpoint import lock_run_dir, save_checkpoint
from train.config import TrainConfig
from train.run import open_trainer, train
from train.trainer import TrainingAborted


@pytest.mark.parametrize("name", ["tiny", "gpt-45m", "gpt_d768_l12"])
def test_presets_are_valid_train_configs(name):
    cfg = from_dict(TrainConfig, load_yaml(REPO / "configs" / f"{name}.yml"), where=name)
    cfg.validate()


def test_check_reports_what_a_run_would_refuse_without_starting_one(tmp_path, capsys, monkeypatch):
    """`make train NGPU=N` runs `--check` first: under torchrun a typo was printed by every rank, among
    the launcher's own ~35-line traceback."""
    cli = load_script("train")
    store = make_store(tmp_path / "store")
    ok = [f"data={store.root}", f"out_dir={tmp_path / 'run'}", "max_steps=1", "model.n_layer=1"]
    assert cli.main(["--check", *ok]) == 0 and not (tmp_path / "run").exists()  # nothing written
    assert capsys.readouterr().out.startswith(f"config ok: 1 process(es) can train on {store.root} (")
    # The run's own warning about a model.vocab_size the store overrides: --check said only "config ok".
    assert cli.main(["--check", *ok, "model.vocab_size=100"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"warning: model.vocab_size=100 is replaced by the vocabulary of {store.root}, 64\nconfig ok")
    # A store too small for the windows passed the check, so `make train NGPU=2` ended in torchrun's traceback.
    for change, message in ((f"data={tmp_path / 'nowhere'}", "nowhere: no such folder"),
                            (f"out_dir={store.root}", "holds a token store"),
                            ("model.pad_id=5000", "pad_id=5000 is not a token id"),  # past the store's 64 ids
                            ("model.block_size=100000", "split 'train' of "),
                            ("eval_batches=1", "split 'val' of ")):
        small_val = ["model.block_size=4000"] if change == "eval_batches=1" else []  # the val split is smaller
        assert cli.main(["--check", *ok, *small_val, change]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert cli.main([*ok, *small_val, change]) == 1 and capsys.readouterr().err == err  # as the run says it
    # Epoch mode needs one global batch per epoch: WORLD_SIZE (set by `make train NGPU=N`) counts.
    epoch = [*ok, "sampler_mode=epoch", "model.block_size=512", "micro_batch=8"]  # ~8k tokens: 14 windows
    assert cli.main(["--check", *epoch]) == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["--check", *epoch]) == 1 and "fewer than batch_size * world_size = 16" in capsys.readouterr().err


def test_cli_exit_codes(tmp_path, capsys):
    cli = load_script("train")

    def exit_code(argv):
        try:
            return cli.main(argv)
        except SystemExit as exc:  # parse_cli exits 2 itself on a ConfigError
            return exc.code

    assert exit_code(["model.n_head=3"]) == 2  # the model's own check (512 % 3)
    assert exit_code(["max_steps=0"]) == 2
    assert exit_code([f"data={tmp_path / 'missing'}", f"out_dir={tmp_path / 'run'}", "max_steps=1"]) == 1
    err = capsys.readouterr().err
    assert "not divisible" in err and "missing: no such folder" in err
    assert "set max_steps or epochs (or both), e.g. max_steps=1000, or start from a preset that does: --config" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0 and "--max-steps" in capsys.readouterr().out
    json.dumps(to_dict(TrainConfig()))  # the config is plain data all the way down


def test_a_refused_resume_or_an_aborted_run_is_one_error_line_and_exit_1(tmp_path, capsys, monkeypatch):
    """Not a traceback: each says what to do next (the checkpoints to keep, another out_dir)."""
    cli = load_script("train")
    store = make_store(tmp_path / "store")
    save_checkpoint(tmp_path / "run", "00000001", {"step": 1})  # resume=none reads only its marker
    ok = [f"data={store.root}", f"out_dir={tmp_path / 'run'}", "max_steps=2", "model.n_layer=1", "init_batch=false"]
    for change, message in (("resume=none", "already holds checkpoints"),
                            (f"resume={tmp_path / 'nowhere'}", "nowhere: does not exist")):
        assert cli.main([*ok, change]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err

    def aborted(cfg):
        raise TrainingAborted("3 consecutive steps had a non-finite loss; stopping at step 7")

    monkeypatch.setattr(cli, "train", aborted)
    assert cli.main(ok) == 1
    assert capsys.readouterr().err == "error: 3 consecutive steps had a non-finite loss; stopping at step 7\n"


def test_an_out_dir_that_cannot_be_created_or_written_is_one_error_line_in_check_and_run(tmp_path, capsys):
    """--check passed both, and the run ended in a NotADirectoryError or PermissionError traceback."""
    cli = load_script("train")
    store = make_store(tmp_path / "store")
    (tmp_path / "file").write_text("x")
    unwritable = tmp_path / "read-only"
    unwritable.mkdir(mode=0o555)
    if os.access(unwritable, os.W_OK):  # root writes past permission bits, but not into /proc/sys
        unwritable = Path("/proc/sys")
    for out, message in ((tmp_path / "file" / "run", f"{tmp_path / 'file'} exists and is not a folder"),
                         (unwritable / "run", f"{unwritable} is not writable")):
        ok = [f"data={store.root}", f"out_dir={out}", "max_steps=1", "model.n_layer=1"]
        for argv in (["--check", *ok], ok):
            assert cli.main(argv) == 1
            assert capsys.readouterr().err == f"error: out_dir {out}: {message}; pick another out_dir\n"
    assert (tmp_path / "file").read_text() == "x" and not (unwritable / "run").exists()


def test_a_disk_full_while_saving_a_checkpoint_is_one_error_line(tmp_path, capsys, monkeypatch):
    """It ended in torch's `[enforce fail at inline_container.cc:672] unexpected pos` traceback."""
    cli = load_script("train")
    store = make_store(tmp_path / "store")
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, FillsUp(f, room=1000)))
    out = tmp_path / "run"
    assert cli.main([f"data={store.root}", f"out_dir={out}", "max_steps=1", "model.n_layer=1", "init_batch=false",
                     "eval_batches=0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write checkpoint {out / 'ckpt-00000001'}: No space left on device; ")
    assert err.count("\n") == 1 and not list(out.glob("ckpt-*"))


def test_device_cuda_without_a_gpu_is_one_error_line_in_check_and_run(tmp_path, capsys, monkeypatch):
    """--check passed it, and the run ended in a RuntimeError traceback."""
    cli = load_script("train")
    store = make_store(tmp_path / "store")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine, had it no GPU
    ok = [f"data={store.root}", f"out_dir={tmp_path / 'run'}", "max_steps=1", "model.n_layer=1", "device=cuda"]
    for argv in (["--check", *ok], ok):
        assert cli.main(argv) == 1
        assert capsys.readouterr().err == ("error: device=cuda: this torch sees no CUDA device; use device=auto or "
                                           "device=cpu\n")
    assert not (tmp_path / "run").exists()


def test_out_dir_defaults_to_runs_slash_the_config_s_name(tmp_path, monkeypatch):
    """Without it the run wrote its checkpoints into the current folder."""
    cli = load_script("train")
    store = make_store(tmp_path / "store")
    (tmp_path / "mine.yml").write_text(f"data: {store.root}\nmax_steps: 1\n")
    started: list[str] = []
    monkeypatch.setattr(cli, "train", lambda cfg: started.append(cfg.out_dir))
    assert cli.main(["--config", str(tmp_path / "mine.yml")]) == 0
    assert cli.main([f"data={store.root}", "max_steps=1"]) == 0
    assert cli.main(["--config", str(tmp_path / "mine.yml"), f"out_dir={tmp_path / 'x'}"]) == 0
    assert started == ["runs/mine", "runs/default", str(tmp_path / "x")]


def test_a_second_run_in_the_same_out_dir_is_refused_while_the_first_runs(tmp_path):
    """Two runs in one out_dir would prune each other's checkpoints and interleave metrics.jsonl."""
    make_store(tmp_path / "store")
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", max_steps=2)
    with open_trainer(cfg, log=lambda _: None):
        second = open_trainer(tiny_config(tmp_path / "store", tmp_path / "run", max_steps=2), log=lambda _: None)
        with pytest.raises(ConfigError, match="another training run is using this out_dir"):
            second.__enter__()
        assert train(tiny_config(tmp_path / "store", tmp_path / "other", max_steps=1), log=lambda _: None)
    # Released at the end of the run (and by the OS if the process dies): the next run may go on.
    assert train(tiny_config(tmp_path / "store", tmp_path / "run", max_steps=2), log=lambda _: None)["step"] == 2


class NoTrainer:
    """Stands in for the Trainer, which on a rank of a group this process is not in could not start."""

    def __init__(self, cfg, dist, log):
        pass

    def close(self):
        pass


def test_rank_0_alone_takes_the_out_dir_lock_and_its_refusal_stops_every_rank(tmp_path, monkeypatch):
    """Rank 1 taking the lock as well could win the race for it, and rank 0 then refused the job's own
    out_dir; rank 1 removing the out_dir it found missing would take rank 0's lock file with it; and
    rank 1 deciding for itself that the lock was fine went on alone into the Trainer."""
    make_store(tmp_path / "store")
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", max_steps=1)
    monkeypatch.setattr(run.D, "init_distributed", lambda device: D.DistInfo(1, 1, 2, torch.device("cpu")))
    monkeypatch.setattr(run, "Trainer", NoTrainer)
    torn_down: list[bool] = []
    monkeypatch.setattr(run.D, "teardown", lambda: torn_down.append(True))
    with open_trainer(cfg):
        rank_0 = lock_run_dir(tmp_path / "run")
        assert rank_0 is not None
    assert (tmp_path / "run" / ".lock").is_file()  # the out_dir is rank 0's to remove, under its lock
    rank_0.close()
    monkeypatch.setattr(run.D, "broadcast_object", lambda mine: False)  # rank 0's answer: the lock is taken
    with pytest.raises(ConfigError, match="another training run is using this out_dir"):
        open_trainer(cfg).__enter__()
    assert torn_down == [True, True]  # the process group is left on the way out, refused or not


def test_an_out_dir_holding_a_store_or_an_export_is_refused_before_anything_is_written(tmp_path):
    """out_dir=<a token store> replaced the store's tokenizer.json with the run's (the store then no
    longer opened; a --shard store's root holds the tokenizer its parts use); out_dir=<an export> made
    the folder load as the export, never the run's checkpoints."""
    store = make_store(tmp_path / "store")
    make_store(tmp_path / "sharded" / "part-1-of-2")
    (tmp_path / "export").mkdir()
    (tmp_path / "export/model.safetensors").write_bytes(b"weights")
    shutil.copytree(tmp_path / "export", tmp_path / "both")
    (tmp_path / "both/ckpt-00000010").mkdir()
    (tmp_path / "file").write_text("x")
    stores = "holds a token store (manifest.json, or the part-*-of-* folders of one); pick a folder"
    for out, message in ((tmp_path / "store", stores), (tmp_path / "sharded", stores),
                         (tmp_path / "export", "holds an exported model (model.safetensors); pick a folder"),
                         (tmp_path / "both", "holds an exported model (model.safetensors) beside the run's "
                                             "checkpoints, which sample and eval would load instead of them"),
                         (tmp_path / "file", "exists and is not a folder"),
                         # The folder of the stores (data_cache/): a run's files among them, taken for data.
                         (tmp_path, "holds token stores in its folders (*/manifest.json: a data cache")):
        before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
        with pytest.raises(ConfigError, match=f"out_dir {out}: {re.escape(message)}"):
            train(tiny_config(tmp_path / "store", out, max_steps=1), log=lambda _: None)
        assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before
    assert TokenStore(store.root)  # still opens: its tokenizer untouched


def test_a_run_that_fails_to_start_leaves_no_empty_out_dir(tmp_path):
    out = tmp_path / "runs" / "typo"
    with pytest.raises(StoreError):
        train(tiny_config(tmp_path / "no-such-store", out, max_steps=1), log=lambda _: None)
    assert not out.exists() and (tmp_path / "runs").exists()
    out.mkdir(parents=True)  # a folder the user made is theirs: it stays
    with pytest.raises(StoreError):
        train(tiny_config(tmp_path / "no-such-store", out, max_steps=1), log=lambda _: None)
    assert out.is_dir()


def test_a_run_with_nothing_to_do_leaves_no_empty_out_dir(tmp_path):
    """Continued from a finished run's checkpoint into a new out_dir: nothing to train, nothing kept."""
    make_store(tmp_path / "store")
    done = tiny_config(tmp_path / "store", tmp_path / "done", max_steps=1, eval_batches=0)
    assert train(done, log=lambda _: None)["step"] == 1
    again = tiny_config(tmp_path / "store", tmp_path / "again", max_steps=1, resume=str(tmp_path / "done"))
    assert train(again, log=lambda _: None) == {"step": 1}
    assert not (tmp_path / "again").exists()


def test_train_stops_the_prefetch_thread_it_started(tmp_path):
    """train() is also called in-process (notebooks, these tests): a thread left behind per run holds
    its batches and the store's memory maps."""
    make_store(tmp_path / "store")
    threads = set(threading.enumerate())
    train(tiny_config(tmp_path / "store", tmp_path / "run", max_steps=1, eval_batches=0), log=lambda _: None)
    assert set(threading.enumerate()) <= threads


def test_a_run_folder_s_metrics_jsonl_is_never_corpus_data(tmp_path):
    """`DATA=.` or a glob over a folder holding runs/ read each run's log as a corpus file: every record,
    having no text, counted as a bad record. Resumed too: the log then holds a resume record."""
    make_store(tmp_path / "store")
    run = tmp_path / "runs" / "r"
    train(tiny_config(tmp_path / "store", run, max_steps=1, eval_batches=0), log=lambda _: None)
    train(tiny_config(tmp_path / "store", run, max_steps=2, eval_batches=0), log=lambda _: None)
    assert '"event": "resume"' in (run / "metrics.jsonl").read_text()
    assert all(p.name != "metrics.jsonl" for p in expand_paths([tmp_path / "runs"]))  # (its tokenizer.json: "{}")
    with pytest.raises(BadFileError, match="matches no readable data file"):
        expand_paths([f"{tmp_path}/runs/*/*.jsonl"])


def test_seed_must_be_a_non_negative_numpy_seed():
    for seed in (-1, 2**62):
        with pytest.raises(ConfigError, match="seed must be in"):
            TrainConfig(seed=seed)


@pytest.mark.parametrize("field, value, message", [
    ("grad_clip", -1.0, "grad_clip must be a finite number >= 0"),  # flipped the gradient: the loss climbed
    ("weight_decay", -0.1, "weight_decay must be a finite number >= 0"),
    ("lr", float("inf"), "lr must be a finite number > 0"),  # every step was skipped as non-finite
    ("lr", float("nan"), "lr must be a finite number > 0"),
    ("lr", 0.0, "lr must be a finite number > 0"),
    ("min_lr", -1e-5, "min_lr must be a finite number >= 0"),
    ("beta1", 1.5, r"beta1 must be in \[0, 1\)"),  # torch's own ValueError came out as a traceback
    ("beta2", -0.1, r"beta2 must be in \[0, 1\)"),
])
def test_optimizer_numbers_torch_would_take_silently_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value})
    TrainConfig(grad_clip=0.0, weight_decay=0.0, min_lr=0.0, beta1=0.0)  # the edges are fine


@pytest.mark.parametrize(("device", "bf16", "dtype", "compile_"), [
    ("cpu", True, "float32", False),  # CPU autocast would cost speed for nothing: fp32, eager
    ("cuda", True, "bfloat16", True),
    ("cuda", False, "float16", True),  # pre-Ampere cards: fp16 with a GradScaler
])
def test_auto_settings_resolve_to_what_the_machine_gives(device, bf16, dtype, compile_):
    cfg = TrainConfig(max_steps=1)
    cfg.resolve_auto(device, bf16)
    assert (cfg.device, cfg.dtype, cfg.compile) == (device, dtype, compile_)


def test_explicit_settings_are_kept_on_any_machine():
    cfg = TrainConfig(max_steps=1, dtype="float16", compile=True)
    cfg.resolve_auto("cpu", False)
    assert (cfg.dtype, cfg.compile) == ("float16", True)
