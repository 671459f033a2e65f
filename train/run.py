"""A training run as bin/train.py starts it: the out_dir checked and locked, the process group (under
torchrun) and the attention kernel choice set up around the Trainer's whole life, all torn down after.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common.config import ConfigError
from model.attention_backend import use_attention_backend
from pipeline.store import TokenStore
from train import distributed as D
from train.checkpoint import lock_run_dir
from train.config import TrainConfig
from train.data import check_windows
from train.export import HOLDS, held_by
from train.trainer import Trainer


def check_out_dir(out_dir: Path) -> None:
    """Refuse an out_dir the run could not create or write in, or a token store or an export folder
    (train.export.held_by says why); checked on every rank before anything is written, so a refusal
    needs no collective."""
    found = _nearest_existing(out_dir)
    if not found.is_dir():
        where = "exists" if found == out_dir else f"{found} exists"
        raise ConfigError(f"out_dir {out_dir}: {where} and is not a folder; pick another out_dir")
    # access() alone: creating a probe file would write into a folder --check must leave as it was.
    # Root passes any permission bits, but a read-only mount still fails here.
    if not os.access(found, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if os.statvfs(found).f_flag & os.ST_RDONLY else "is not writable"
        raise ConfigError(f"out_dir {out_dir}: {found} {why}; pick another out_dir")
    held = held_by(out_dir)
    if held == "export" and any(out_dir.glob("ckpt-*")):  # exported into its own run folder before this check
        raise ConfigError(f"out_dir {out_dir}: holds {HOLDS[held]} beside the run's checkpoints, which sample and "
                          "eval would load instead of them; move model.safetensors and config.json out to go on")
    if held in ("store", "stores", "export"):
        raise ConfigError(f"out_dir {out_dir}: holds {HOLDS[held]}; pick a folder of the run's own")


def _nearest_existing(path: Path) -> Path:
    """`path`, or the closest path above it that exists (a broken link counts: it is in the way of
    creating out_dir just the same)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_config(cfg: TrainConfig, world_size: int = 1, log: Callable[[str], None] = print) -> str:
    """What a run of `world_size` ranks would refuse before its first step, found without starting one
    (no process group, no model): `make train NGPU=N` asks this first, so a typo is one line instead of
    N copies of it among torchrun's own traceback. Raises ConfigError or StoreError, as the run would;
    returns a line saying what was checked. Warnings the run would give at setup go to `log`."""
    check_out_dir(Path(cfg.out_dir))
    D.pick_device(cfg.device)
    store = TokenStore(cfg.data)
    cfg.model_for_store(store.vocab_size, log)
    check_windows(store, cfg, world_size)
    return (f"config ok: {world_size} process(es) can train on {cfg.data} ({store.num_tokens('train'):,} train tokens, "
            f"vocab {store.vocab_size}) into {cfg.out_dir}")


@contextlib.contextmanager
def open_trainer(cfg: TrainConfig, log: Callable[[str], None] = print) -> Iterator[Trainer]:
    """A Trainer inside the run's process group, out_dir lock and attention kernel choice (its
    init_batch probe is where compilation happens). An out_dir this run created and left empty (it
    failed to start, or had nothing to do) is removed, so a typo leaves no empty run folder behind."""
    out_dir = Path(cfg.out_dir)
    check_out_dir(out_dir)
    created = not out_dir.exists()
    dist = D.init_distributed(cfg.device)
    try:
        # Rank 0 holds the run dir's lock for the whole run; every rank learns whether it got it.
        lock = lock_run_dir(out_dir) if dist.is_main else None
        if not D.broadcast_object(lock is not None or not dist.is_main):
            raise ConfigError(f"{out_dir}: another training run is using this out_dir; pick another out_dir")
        with lock or contextlib.nullcontext(), use_attention_backend(cfg.attention, dist.device):
            try:
                trainer = Trainer(cfg, dist, log)
                try:
                    yield trainer
                finally:
                    trainer.close()
            finally:
                if created and lock is not None:
                    _remove_if_only_the_lock(out_dir)
            # Only after a clean run (rank 0 may still be writing the last checkpoint): after an error on
            # one rank, a barrier would never meet the other ranks' next gradient all-reduce, and the job
            # would hang until the process group's timeout instead of torchrun stopping it.
            D.barrier()
    finally:
        D.teardown()


def _remove_if_only_the_lock(out_dir: Path) -> None:
    """Called under the lock, so no other run can have started in the folder; never replaces the
    error being raised with one of its own."""
    with contextlib.suppress(OSError):
        if [p.name for p in out_dir.iterdir()] == [".lock"]:
            (out_dir / ".lock").unlink()
            out_dir.rmdir()


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train to the end; returns the last train and eval records merged."""
    with open_trainer(cfg, log) as trainer:
        return trainer.fit()
