"""optimizer=muon (train/muon.py): which parameters Muon takes, a skipped step left untouched, the fp16
GradScaler, init_batch's probe, checkpoints (both optimizers' states, exact continuation, a changed
optimizer refused) and a torch without Muon. The kill -9 resume: test_trainer_resume.py; DDP: test_ddp.py."""

from __future__ import annotations

import pytest
import torch
from trainer_util import make_store, make_trainer, nan_forward, tiny_config

from common.config import ConfigError
from model import GPT, GPTConfig
from train.checkpoint import ResumeRefused, load_checkpoint
from train.config import TrainConfig
from train.muon import MuonAdamW
from train.optim import build_optimizer

MUON = dict(optimizer="muon", eval_batches=0, eval_interval=0)


def params(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.raw.parameters()]


def moments(trainer) -> list[torch.Tensor]:
    return [t.clone() for state in trainer.optimizer.state.values() for t in state.values()]


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, d_model=16, bias=True,
                          pos_encoding="learned", tie_embeddings=False))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=2e-3, weight_decay=0.3, beta1=0.8))
    assert isinstance(opt, MuonAdamW)
    names = {id(p): name for name, p in model.named_parameters()}
    muon, decayed, plain = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert muon == [f"blocks.{i}.{m}.weight" for i in (0, 1) for m in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")]
    assert decayed == ["wte.weight", "wpe.weight", "lm_head.weight"]
    assert plain and all(name.endswith(".bias") or "norm" in name for name in plain)
    assert sorted(muon + decayed + plain) == sorted(names.values())  # every parameter, once
    # Muon's step sized as AdamW's, so the one lr and weight_decay hold for both; AdamW as with optimizer=adamw.
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(2e-3, 0.3), (2e-3, 0.3), (2e-3, 0.0)]
    assert opt.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    assert opt.adamw.param_groups[0]["betas"] == (0.8, 0.95) and opt.adamw.param_groups[0]["fused"]


def test_a_torch_without_muon_is_a_config_error(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    TrainConfig(optimizer="adamw", max_steps=1).validate()
    cfg = TrainConfig(optimizer="muon", max_steps=1)  # a config naming muon still loads
    with pytest.raises(ConfigError, match=r"optimizer=muon needs torch.optim.Muon \(torch >= 2.9\); this torch is"):
        cfg.validate()


def test_a_skipped_step_leaves_weights_and_both_optimizers_untouched(tmp_path):
    """Muon has no found_inf: stepped with the skip flag set, it put NaN into every matrix it owns."""
    make_store(tmp_path / "store")
    trainer = make_trainer(tiny_config(tmp_path / "store", tmp_path / "run", init_batch=False, max_steps=6, **MUON))
    nan_forward(trainer.raw, {2})
    trainer.train_step()
    before, before_state = params(trainer), moments(trainer)
    assert trainer.train_step()[2].item() == 1
    assert all(torch.equal(a, b) for a, b in zip(before, params(trainer), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before_state, moments(trainer), strict=True))
    assert trainer.train_step()[2].item() == 0
    after = params(trainer)
    assert all(torch.isfinite(p).all() for p in after) and not torch.equal(after[1], before[1])
    trainer.close()


def test_fp16_grad_scaler_unscales_and_skips_both_optimizers(tmp_path):
    make_store(tmp_path / "store")
    trainer = make_trainer(tiny_config(tmp_path / "store", tmp_path / "run", dtype="float16", init_batch=False,
                                       max_steps=3, warmup_steps=1, **MUON))
    trainer.train_step()
    before = params(trainer)
    hook = trainer.raw.blocks[0].mlp.down.weight.register_hook(lambda g: g * float("inf"))
    trainer.train_step()
    hook.remove()
    assert all(torch.equal(a, b) for a, b in zip(before, params(trainer), strict=True))
    trainer.train_step()
    assert all(torch.isfinite(p).all() for p in trainer.raw.parameters())
    trainer.close()


def test_init_batch_probe_steps_muon_then_starts_afresh(tmp_path):
    make_store(tmp_path / "store")
    probed = make_trainer(tiny_config(tmp_path / "store", tmp_path / "probed", max_steps=2, **MUON))
    plain = make_trainer(tiny_config(tmp_path / "store", tmp_path / "plain", init_batch=False, max_steps=2, **MUON))
    assert isinstance(probed.optimizer, MuonAdamW) and not probed.optimizer.state
    assert all(torch.equal(a, b) for a, b in zip(params(probed), params(plain), strict=True))
    probed.close()
    plain.close()


def test_a_checkpoint_holds_both_states_and_continues_exactly(tmp_path):
    """Trained 4 steps, checkpointed at 2 and resumed from there: the same weights and moments at step 4."""
    make_store(tmp_path / "store")
    kw = dict(max_steps=4, ckpt_interval=2, keep_last=0, init_batch=False, **MUON)
    straight = make_trainer(tiny_config(tmp_path / "store", tmp_path / "run", **kw))
    straight.fit()
    straight.close()
    state = load_checkpoint(tmp_path / "run/ckpt-00000002")
    assert set(state["optimizer"]) == {"muon", "adamw"}
    assert all("momentum_buffer" in s for s in state["optimizer"]["muon"]["state"].values())
    assert all("exp_avg_sq" in s for s in state["optimizer"]["adamw"]["state"].values())
    branch = dict(resume=str(tmp_path / "run/ckpt-00000002"))
    resumed = make_trainer(tiny_config(tmp_path / "store", tmp_path / "resumed", **kw, **branch))
    assert resumed.step == 2
    resumed.fit()
    resumed.close()
    assert all(torch.equal(a, b) for a, b in zip(params(straight), params(resumed), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(moments(straight), moments(resumed), strict=True))
    # Muon's settings, like AdamW's, come from the resumed run's config, not the checkpoint's groups.
    other = make_trainer(tiny_config(tmp_path / "store", tmp_path / "other", **kw, **branch, weight_decay=0.2))
    assert [g["weight_decay"] for g in other.optimizer.param_groups] == [0.2, 0.2, 0.0]
    other.close()


@pytest.mark.parametrize("saved, now", [("adamw", "muon"), ("muon", "adamw")])
def test_a_resume_with_another_optimizer_is_refused(tmp_path, saved, now):
    make_store(tmp_path / "store")
    kw = dict(max_steps=2, init_batch=False, eval_batches=0)
    trainer = make_trainer(tiny_config(tmp_path / "store", tmp_path / "run", optimizer=saved, **kw))
    trainer.fit()
    trainer.close()
    with pytest.raises(ResumeRefused, match=f"trained with optimizer={saved}, this run has optimizer={now}: its "
                                            f"optimizer state does not carry over; resume with optimizer={saved}"):
        make_trainer(tiny_config(tmp_path / "store", tmp_path / "run", optimizer=now, **kw | dict(max_steps=4)))
