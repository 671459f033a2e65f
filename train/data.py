"""The trainer's data: the training sampler and the fixed validation batches.

A split too small for the configured windows is a ConfigError that says what to change, not the
sampler's bare ValueError, so bin/train.py prints it as a one-line error. The validation split is
only opened when evaluation is on: a store without a usable val split trains with eval_batches=0.
"""

from __future__ import annotations

import torch

from common.config import ConfigError
from pipeline.store import TokenStore
from train.config import TrainConfig
from train.sampler import TooFewEpochWindows, WindowSampler


def train_sampler(store: TokenStore, cfg: TrainConfig, rank: int, world_size: int) -> WindowSampler:
    try:
        return WindowSampler(store, "train", cfg.model.block_size, cfg.micro_batch, cfg.seed, rank, world_size,
                             cfg.sampler_mode, cfg.align_bos)
    except TooFewEpochWindows as err:
        fewer = " or the number of processes" if world_size > 1 else ""
        raise ConfigError(f"{err}; lower model.block_size or micro_batch{fewer}, or train on a store with more data") \
            from None
    except ValueError as err:
        raise ConfigError(f"{err}; lower model.block_size, or train on a store with more data") from None


def _val_sampler(store: TokenStore, cfg: TrainConfig, rank: int, world_size: int) -> WindowSampler:
    try:
        return WindowSampler(store, "val", cfg.model.block_size, cfg.micro_batch, cfg.seed, rank, world_size)
    except ValueError as err:
        raise ConfigError(f"{err}; set eval_batches=0 to train without evaluation, or lower model.block_size") \
            from None


def check_windows(store: TokenStore, cfg: TrainConfig, world_size: int, rank: int = 0) -> WindowSampler:
    """The samplers' refusals (a split too small for one window; in epoch mode, for one global batch
    of micro_batch as configured) as ConfigErrors, before anything runs at that size: init_batch's
    probe at a block_size the store cannot fill took all the memory before the sampler could say so.
    Returns rank `rank`'s train sampler, for the trainer to keep rather than build again."""
    sampler = train_sampler(store, cfg, rank, world_size)
    if cfg.eval_batches:
        _val_sampler(store, cfg, 0, world_size)
    return sampler


def eval_batches(store: TokenStore, cfg: TrainConfig, rank: int, world_size: int, device: torch.device,
                 windows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of the fixed validation set of `windows` windows, in batches of micro_batch, on
    `device`; none if eval is off. The trainer sizes the set eval_batches x micro_batch as configured,
    before init_batch fits it to a GPU, and a resume keeps its checkpoint's size (train/resume.py), so
    the set is the same wherever and however the run goes on."""
    if not cfg.eval_batches:
        return []
    val = _val_sampler(store, cfg, rank, world_size)
    return [(x.to(device), y.to(device)) for x, y in val.fixed_batches(windows, cfg.seed)]
