"""The Trainer in one process on CPU: logging, checkpoints, gradient accumulation, skips, epochs and the
plot (starting a run, the CLI: test_run.py; init_batch: test_init_batch.py; resume refusals and
branches: test_trainer_branches.py)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
import yaml
from script_loader import load_script
from trainer_util import VOCAB, make_store, make_trainer, nan_forward, run, tiny_config

from common.config import ConfigError, from_dict, to_dict
from model import GPT, GPTConfig
from pipeline.store import TokenStore, write_store
from train.checkpoint import list_checkpoints, load_checkpoint
from train.config import TrainConfig
from train.data import check_windows
from train.metrics import read_metrics
from train.optim import lr_at
from train.sampler import WindowSampler
from train.trainer import Trainer, TrainingAborted

STATE_KEYS = {"model", "model_config", "config", "step", "tokens_seen", "optimizer", "scaler", "sampler", "rng",
              "world_size", "tokenizer_sha256", "store_manifest_sha256", "stats", "eval_windows"}


def test_metrics_every_step_and_eval(trained):
    _, cfg, run_dir, lines, summary = trained
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 31))
    for r in train:
        assert {"step", "loss", "lr", "tokens_per_s", "tokens", "grad_norm", "mfu"} <= set(r)
        assert r["mfu"] is None and r["tokens_per_s"] > 0  # no MFU on CPU
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    for r in evals:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2) / 3.0 * (201 / 200), rel=1e-6)
    assert train[-1]["loss"] < train[0]["loss"] - 0.5, "the loss should visibly fall"
    # The start record: bench/gpu_check.py reads the batch shape and parameter count from it.
    (start,) = [r for r in records if r.get("event") == "start"]
    assert start["step"] == 0 and start["world_size"] == 1 and start["init_s"] > 0
    assert (start["micro_batch"], start["grad_accum"]) == (8, 1)
    assert start["params"] == GPT(cfg.model).num_params(non_embedding=False)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert summary["step"] == 30 and summary["val_loss"] == evals[-1]["val_loss"]
    assert any(line.startswith("config:") for line in lines)
    assert any(line.startswith("parameters: ") for line in lines)
    assert any("step 30/30 | loss" in line and "tok/s" in line and "eta" in line for line in lines)


def test_run_dir_and_checkpoint_contents(trained):
    store, cfg, run_dir, _, _ = trained
    assert (run_dir / "tokenizer.json").read_bytes() == store.tokenizer_path.read_bytes()
    assert from_dict(TrainConfig, yaml.safe_load((run_dir / "config.yml").read_text())) == cfg
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-00000010", "ckpt-00000020", "ckpt-00000030"]
    state = load_checkpoint(run_dir)
    assert set(state) == STATE_KEYS
    assert state["step"] == 30 and state["tokens_seen"] == 30 * 8 * 32 and state["world_size"] == 1
    assert state["config"] == to_dict(cfg) and state["model_config"] == to_dict(cfg.model)
    assert state["tokenizer_sha256"] == store.tokenizer_sha256
    assert state["store_manifest_sha256"] == store.manifest_sha256
    assert len(state["sampler"]) == len(state["rng"]) == 1 and state["scaler"] is None
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in state["model"])
    GPT(GPTConfig(**state["model_config"])).load_state_dict(state["model"])  # strict: exactly the raw keys


def test_rerun_after_the_end_does_nothing(trained, tmp_path, monkeypatch):
    """Nor says more than that: no config dump, and the run's files untouched (a rerun with a smaller
    max_steps must not rewrite config.yml as if it had trained with it)."""
    _, cfg, run_dir, _, _ = trained
    before = {name: (run_dir / name).read_bytes() for name in ("config.yml", "metrics.jsonl")}
    for max_steps in (cfg.max_steps, 20):
        lines: list[str] = []
        assert run(from_dict(TrainConfig, to_dict(cfg) | {"max_steps": max_steps}), lines) == {"step": 30}
        assert f"nothing to do: {run_dir / 'ckpt-00000030'} is at step 30, which reaches max_steps={max_steps}" \
            in lines
        assert not any(line.startswith(("config:", "parameters:")) for line in lines), lines
        assert {name: (run_dir / name).read_bytes() for name in before} == before
    # init_batch's probe (on a GPU the first compile) is not run just to say so.
    probes = []
    monkeypatch.setattr(Trainer, "_probe", lambda self, micro_batch: probes.append(micro_batch))
    assert run(from_dict(TrainConfig, to_dict(cfg) | {"init_batch": True}), []) == {"step": 30}
    assert probes == []
    shutil.copytree(run_dir, tmp_path / "copy")  # the shared run stays as it is
    more = {"init_batch": True, "max_steps": 31, "out_dir": str(tmp_path / "copy")}
    assert run(from_dict(TrainConfig, to_dict(cfg) | more), [])["step"] == 31
    assert probes == [cfg.micro_batch]  # a run with a step left probes as before
    # Continued into another out_dir, it named that folder as "the run ... at step 30", which held nothing.
    lines = []
    assert run(from_dict(TrainConfig, to_dict(cfg) | {"out_dir": str(tmp_path / "r2"), "resume": str(run_dir)}),
               lines) == {"step": 30}
    assert f"nothing to do: {run_dir / 'ckpt-00000030'} is at step 30, which reaches max_steps=30" in lines
    assert not (tmp_path / "r2").exists()  # it had held an empty metrics.jsonl


def test_plot_writes_png(trained, tmp_path):
    png = tmp_path / "loss.png"
    assert load_script("plot").main([str(trained[2]), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class FixedBatches:
    """Stands in for the Prefetcher: hands out the given batches in order."""

    def __init__(self, batches):
        self.batches, self.epoch = list(batches), 0

    def next(self):
        return self.batches.pop(0)


def test_grad_accum_equals_one_big_batch(tmp_path):
    make_store(tmp_path / "store")
    x = torch.randint(6, 64, (8, 32), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, dims=1)
    results = []
    for mb, ga in ((8, 1), (4, 2), (2, 4)):
        cfg = tiny_config(tmp_path / "store", tmp_path / f"run{mb}", micro_batch=mb, grad_accum=ga, init_batch=False)
        trainer = make_trainer(cfg)
        trainer.prefetcher = FixedBatches((x[i : i + mb], y[i : i + mb]) for i in range(0, 8, mb))
        loss, gnorm, skipped = trainer.train_step().tolist()
        assert not skipped
        results.append((loss, gnorm, torch.cat([p.detach().flatten() for p in trainer.raw.parameters()])))
    for loss, gnorm, params in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-6)
        assert gnorm == pytest.approx(results[0][1], rel=1e-5)
        torch.testing.assert_close(params, results[0][2], rtol=0, atol=1e-6)


def test_fp16_on_cpu_has_a_working_grad_scaler(tmp_path):
    """GradScaler("cuda") disables itself without CUDA: fp16 on a CPU then ran unscaled, and a step with
    a finite loss but an overflowing gradient was applied, turning every weight into NaN."""
    make_store(tmp_path / "store")
    lines: list[str] = []
    trainer = make_trainer(tiny_config(tmp_path / "store", tmp_path / "run", dtype="float16", init_batch=False,
                                       max_steps=3, warmup_steps=1, eval_batches=0), lines)
    assert trainer.scaler is not None and trainer.scaler.is_enabled()
    trainer.train_step()
    before, scale = [p.detach().clone() for p in trainer.raw.parameters()], trainer.scaler.get_scale()
    hook = trainer.raw.blocks[0].mlp.down.weight.register_hook(lambda g: g * float("inf"))
    trainer.train_step()
    hook.remove()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.raw.parameters(), strict=True))
    assert trainer.scaler.get_scale() < scale  # the overflow was seen: the scale backs off
    trainer.train_step()
    assert all(torch.isfinite(p).all() for p in trainer.raw.parameters())
    assert not any(line.startswith("warning: warmup_steps") for line in lines)
    trainer.close()


def test_a_finite_loss_with_a_non_finite_gradient_is_skipped(tmp_path):
    """float32 (no GradScaler): the step is judged by the gradient norm too, not by the loss alone."""
    make_store(tmp_path / "store")
    trainer = make_trainer(tiny_config(tmp_path / "store", tmp_path / "run", init_batch=False, max_steps=3,
                                       warmup_steps=1, eval_batches=0))
    trainer.train_step()
    before = [p.detach().clone() for p in trainer.raw.parameters()]
    hook = trainer.raw.blocks[0].mlp.down.weight.register_hook(lambda g: g * float("inf"))
    loss, gnorm, skipped = trainer.train_step().tolist()
    hook.remove()
    assert math.isfinite(loss) and not math.isfinite(gnorm) and skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.raw.parameters(), strict=True))
    assert trainer.train_step()[2].item() == 0
    assert all(torch.isfinite(p).all() for p in trainer.raw.parameters())
    trainer.close()


def test_a_warmup_longer_than_the_run_is_warned_about(tmp_path):
    make_store(tmp_path / "store")
    lines: list[str] = []
    make_trainer(tiny_config(tmp_path / "store", tmp_path / "run", init_batch=False, max_steps=4, warmup_steps=10),
                 lines).close()
    assert any(line.startswith("warning: warmup_steps 10 >= the run's 4 steps") for line in lines)


def test_a_model_vocab_size_other_than_the_stores_is_replaced_with_a_warning(tmp_path):
    make_store(tmp_path / "store")
    lines: list[str] = []
    trainer = make_trainer(tiny_config(tmp_path / "store", tmp_path / "run", init_batch=False, max_steps=1,
                                       model={"vocab_size": 100}), lines)
    trainer.close()
    assert trainer.cfg.model.vocab_size == VOCAB
    assert f"warning: model.vocab_size=100 is replaced by the vocabulary of {tmp_path / 'store'}, {VOCAB}" in lines


def test_nonfinite_steps_skipped_on_every_rank_then_abort(tmp_path):
    make_store(tmp_path / "store")
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", init_batch=False, max_steps=6, max_skips=3)
    trainer = make_trainer(cfg)
    nan_forward(trainer.raw, {3, 4})
    params = lambda: [p.detach().clone() for p in trainer.raw.parameters()]  # noqa: E731
    moments = lambda: [t.clone() for state in trainer.optimizer.state.values() for t in state.values()]  # noqa: E731
    assert [trainer.train_step()[2].item() for _ in range(2)] == [0, 0]
    before, before_state = params(), moments()
    assert [trainer.train_step()[2].item() for _ in range(2)] == [1, 1]
    # Skipped on the device: weights, AdamW moments and its step count all untouched.
    assert all(torch.equal(a, b) for a, b in zip(before, params(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before_state, moments(), strict=True))
    assert trainer.train_step()[2].item() == 0 and trainer.step == 5
    assert all(state["step"].item() == 3 for state in trainer.optimizer.state.values())
    trainer.close()

    lines: list[str] = []
    cfg = tiny_config(tmp_path / "store", tmp_path / "run2", init_batch=False, max_steps=10, max_skips=3)
    trainer = make_trainer(cfg, lines)
    nan_forward(trainer.raw, {2, 3, 5, 6, 7, 8})
    with pytest.raises(TrainingAborted, match="3 consecutive steps had a non-finite loss"):
        trainer.fit()
    trainer.close()
    records = [r for r in read_metrics(tmp_path / "run2/metrics.jsonl") if "loss" in r]
    assert [(r["step"], r["skipped"], r["loss"] is None) for r in records] == [
        (1, 0, False), (2, 1, True), (3, 2, True), (4, 2, False), (5, 3, True), (6, 4, True)]
    assert sum("1 of the last 1 step(s) skipped" in line for line in lines) == 5


@pytest.mark.parametrize("grad_accum", [2, 3])
def test_epochs_with_grad_accum_end_when_the_last_epoch_does(tmp_path, grad_accum):
    store = make_store(tmp_path / "store", docs=5, doc_len=100)  # ~15 windows of 32: 3 micro-batches of 4
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", max_steps=0, epochs=2, sampler_mode="epoch",
                      micro_batch=4, grad_accum=grad_accum, ckpt_interval=0, keep_last=0, eval_interval=0,
                      init_batch=False)
    counter, micro_batches = WindowSampler(TokenStore(store.root), "train", 32, 4, cfg.seed, mode="epoch"), 0
    while counter.epoch < 2:
        counter.next_batch()
        micro_batches += 1
    trainer = make_trainer(cfg)
    summary = trainer.fit()
    trainer.close()
    # The step holding the second epoch's last micro-batch ends training, and the LR schedule with it.
    assert summary["epoch"] == 2 and summary["step"] == trainer.total_steps == -(-micro_batches // grad_accum)
    assert summary["lr"] == lr_at(summary["step"] - 1, cfg, summary["step"])
    assert list_checkpoints(tmp_path / "run")[-1].name == f"ckpt-{summary['step']:08d}_e2"


def test_splits_too_small_are_config_errors_and_val_is_only_read_for_eval(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_store(tmp_path / "store", {"train": [rng.integers(6, 64, 200) for _ in range(20)], "val": []},
                vocab_size=64)
    small = dict(init_batch=False, max_steps=2)
    assert run(tiny_config(tmp_path / "store", tmp_path / "run", eval_batches=0, **small))["step"] == 2
    with pytest.raises(ConfigError, match=r"split 'val' .* too small.*set eval_batches=0"):
        make_trainer(tiny_config(tmp_path / "store", tmp_path / "run2", **small))
    with pytest.raises(ConfigError, match=r"split 'train': epoch mode has only .* lower model.block_size or micro_b"):
        make_trainer(tiny_config(tmp_path / "store", tmp_path / "run3", sampler_mode="epoch", micro_batch=200,
                                 eval_batches=0, **small))
    # Advice that fits the fault: no batch size makes a window fit; fewer processes give more per rank.
    epoch = dict(sampler_mode="epoch", eval_batches=0, **small)
    with pytest.raises(ConfigError, match=r"too small.*block_size \+ 1 = 4097.*; lower model.block_size, or") as err:
        check_windows(TokenStore(tmp_path / "store"), tiny_config(tmp_path / "store", tmp_path / "run5",
                                                                  model={"block_size": 4096}, **epoch), 1)
    assert "micro_batch" not in str(err.value)
    with pytest.raises(ConfigError, match="epoch mode has only .*micro_batch or the number of processes, or"):
        check_windows(TokenStore(tmp_path / "store"), tiny_config(tmp_path / "store", tmp_path / "run5",
                                                                  micro_batch=100, **epoch), 2)
    cli = load_script("train")
    args = [f"data={tmp_path / 'store'}", f"out_dir={tmp_path / 'run4'}", "max_steps=1", "init_batch=false",
            "device=cpu", "model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.block_size=32"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: split 'val'") and "Traceback" not in err


def test_epochs_end_training_with_epoch_checkpoints(tmp_path, monkeypatch):
    make_store(tmp_path / "store", docs=4, doc_len=100)  # ~12 windows of 32 per epoch: 3 batches of 4
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", max_steps=0, epochs=2, sampler_mode="epoch",
                      micro_batch=4, ckpt_interval=0, keep_last=0, eval_interval=0)
    summary = run(from_dict(TrainConfig, to_dict(cfg)))
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert len(names) == 2 and names[0].endswith("_e1") and names[1].endswith("_e2")
    assert summary["epoch"] == 2 and names[1] == f"ckpt-{summary['step']:08d}_e2"
    # Rerun: the last checkpoint's name says the epochs are done, so init_batch's probe is skipped too.
    probes = []
    monkeypatch.setattr(Trainer, "_probe", lambda self, micro_batch: probes.append(micro_batch))
    lines: list[str] = []
    assert run(from_dict(TrainConfig, to_dict(cfg)), lines) == {"step": summary["step"]}
    assert probes == [] and any(line.endswith("which reaches epochs=2") for line in lines)
