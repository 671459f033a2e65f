"""The optimizer (AdamW, or Muon with AdamW: train/muon.py) and the learning-rate schedule: linear
warmup, then cosine to min_lr, warmup-stable-decay, or constant. The LR is a pure function of the
step, so a resumed run sets the very LRs the uninterrupted one did."""

from __future__ import annotations

import math

import torch

from model import GPT
from train.config import TrainConfig
from train.muon import MuonAdamW, muon_split


def build_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.AdamW | MuonAdamW:
    """AdamW over the model's decay/no-decay groups, fused on every device: one launch per step
    instead of several per parameter, and it honours `found_inf`, which the trainer sets to skip a
    bad step on the device without a host sync (weights, moments and step count stay untouched).
    With optimizer=muon, Muon takes the blocks' matrices and this AdamW the rest."""
    if cfg.optimizer == "adamw":
        return _adamw(model.optim_groups(cfg.weight_decay), cfg)
    matrices, groups = muon_split(model, cfg.weight_decay)
    # match_rms_adamw scales each matrix's orthogonalised update to the RMS of a typical AdamW update
    # (0.2 * sqrt(max dim)), so the AdamW lr, schedule and weight decay apply unchanged.
    muon = torch.optim.Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw")
    return MuonAdamW(muon, _adamw(groups, cfg))


def _adamw(groups: list[dict], cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer | MuonAdamW, state: dict) -> None:
    """`optimizer.load_state_dict(state)`, keeping the optimizer's settings but the LR: a state dict's
    param groups carry the values it was saved with, which silently overrode a resumed run's config
    (its printed config said weight_decay=0.9; the steps used 0.1). The LR is set every step anyway."""
    configured = [{k: v for k, v in group.items() if k not in ("params", "lr")} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, values in zip(optimizer.param_groups, configured, strict=True):
        group.update(values)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """LR for optimizer step `step` (0-based): linear warmup over warmup_steps (step 0 gets lr/warmup,
    never 0, so the first step is not wasted), then per lr_schedule: a cosine from lr down to min_lr at
    total_steps; lr, then a straight line down to min_lr at total_steps over its last decay_frac
    (starting no earlier than the warmup's end); or lr throughout."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if step >= total_steps:
        return cfg.min_lr
    if cfg.lr_schedule == "wsd":
        decay_start = max(total_steps - round(cfg.decay_frac * total_steps), cfg.warmup_steps)
        if step < decay_start:
            return cfg.lr
        return cfg.min_lr + (total_steps - step) / (total_steps - decay_start) * (cfg.lr - cfg.min_lr)
    progress = (step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def set_lr(optimizer: torch.optim.Optimizer | MuonAdamW, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
