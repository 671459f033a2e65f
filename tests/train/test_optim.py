"""train/optim.py: the LR schedules' values at their key steps, and AdamW's groups and hyperparameters."""

from __future__ import annotations

import math

import pytest

from common.config import ConfigError
from model import GPT, GPTConfig
from train.config import TrainConfig
from train.optim import build_optimizer, lr_at, set_lr


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"lr": 1.0, "min_lr": 0.1, "warmup_steps": 4, "max_steps": 104, **kw})


def test_warmup_is_linear_from_lr_over_warmup_to_lr():
    c = cfg()
    # Step 0 trains at lr/warmup (not 0, a wasted step); step warmup_steps is the first at the peak.
    assert [lr_at(s, c, 104) for s in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert max(lr_at(s, c, 104) for s in range(200)) == 1.0


def test_cosine_runs_from_lr_to_min_lr_at_total_steps():
    c = cfg()
    # Halfway between the end of warmup (4) and total_steps (104) the cosine is at its mean.
    assert lr_at(54, c, 104) == pytest.approx(0.55)
    assert lr_at(29, c, 104) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_at(103, c, 104) == pytest.approx(0.1, abs=1e-3) and lr_at(103, c, 104) > 0.1
    assert lr_at(104, c, 104) == lr_at(500, c, 104) == 0.1
    # Without warmup step 0 is already the peak.
    assert lr_at(0, cfg(warmup_steps=0), 104) == 1.0


def test_cosine_is_the_default_schedule():
    assert TrainConfig().lr_schedule == "cosine" and TrainConfig().optimizer == "adamw"


def test_wsd_holds_lr_then_decays_linearly_to_min_lr_over_the_last_decay_frac():
    c = cfg(lr_schedule="wsd", decay_frac=0.25)  # 104 steps: the decay takes the last 26, from step 78
    assert [lr_at(s, c, 104) for s in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])  # the same warmup
    assert lr_at(40, c, 104) == lr_at(78, c, 104) == 1.0
    assert lr_at(91, c, 104) == pytest.approx(0.55)  # halfway through the decay: the mean of lr and min_lr
    assert lr_at(103, c, 104) == pytest.approx(0.1 + 0.9 / 26)
    assert lr_at(104, c, 104) == lr_at(500, c, 104) == 0.1
    # total_steps is the schedule's length, whatever set it (max_steps, or where the last epoch ends).
    assert lr_at(78, c, 200) == 1.0 and lr_at(175, c, 200) == pytest.approx(0.1 + 0.9 * 25 / 50)


def test_wsd_decay_never_starts_inside_the_warmup():
    c = cfg(lr_schedule="wsd", decay_frac=1.0, warmup_steps=10)
    assert lr_at(9, c, 20) == 1.0 and lr_at(10, c, 20) == 1.0  # the warmup's end is the decay's start
    assert lr_at(15, c, 20) == pytest.approx(0.55)


def test_constant_holds_lr_after_the_warmup():
    c = cfg(lr_schedule="constant")
    assert [lr_at(s, c, 104) for s in (0, 3, 4, 103, 104, 500)] == pytest.approx([0.25, 1.0, 1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("field, value, message", [
    ("lr_schedule", "linear", "lr_schedule must be one of cosine, wsd, constant; got 'linear'"),
    ("optimizer", "sgd", "optimizer must be one of adamw, muon; got 'sgd'"),
    ("decay_frac", 0.0, r"decay_frac must be in \(0, 1\], got 0.0"),
    ("decay_frac", 1.5, r"decay_frac must be in \(0, 1\], got 1.5"),
    ("decay_frac", float("nan"), r"decay_frac must be in \(0, 1\], got nan"),
])
def test_unknown_schedules_optimizers_and_decay_fracs_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value})


def test_optimizer_takes_the_configs_betas_decay_groups_and_lr_for_every_group():
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, d_model=16))
    opt = build_optimizer(model, cfg(beta1=0.8, beta2=0.9, weight_decay=0.3, lr=2e-3))
    assert [(g["weight_decay"], g["betas"], g["lr"]) for g in opt.param_groups] == [
        (0.3, (0.8, 0.9), 2e-3), (0.0, (0.8, 0.9), 2e-3)]
    set_lr(opt, 5e-4)
    assert [g["lr"] for g in opt.param_groups] == [5e-4, 5e-4]  # the no-decay group too
