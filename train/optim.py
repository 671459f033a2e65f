"""AdamW and its learning-rate schedule (linear warmup, cosine decay to min_lr)."""

from __future__ import annotations

import math

import torch

from model import GPT
from train.config import TrainConfig


def build_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the model's decay/no-decay groups, fused on every device: one launch per step
    instead of several per parameter, and it honours `found_inf`, which the trainer sets to skip a
    bad step on the device without a host sync (weights, moments and step count stay untouched)."""
    return torch.optim.AdamW(model.optim_groups(cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)`, keeping the optimizer's weight decay and betas: a state dict's
    param groups carry the values it was saved with, which silently overrode a resumed run's config
    (its printed config said weight_decay=0.9; the steps used 0.1). The LR is set every step anyway."""
    configured = [{key: group[key] for key in ("weight_decay", "betas")} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, values in zip(optimizer.param_groups, configured, strict=True):
        group.update(values)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """LR for optimizer step `step` (0-based): linear warmup over warmup_steps (step 0 gets lr/warmup,
    never 0, so the first step is not wasted), then a cosine from lr down to min_lr at total_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= total_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
