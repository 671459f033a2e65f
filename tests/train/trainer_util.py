"""Shared by the trainer tests and the DDP worker: a small learnable store, a tiny TrainConfig, a
Trainer on this process alone, and a file on a disk that fills up."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from common.config import from_dict
from pipeline.store import write_store
from train import distributed as D
from train.config import TrainConfig
from train.trainer import Trainer

VOCAB = 64
REPO = Path(__file__).resolve().parents[2]


def make_store(root: Path, docs: int = 40, doc_len: int = 200, seed: int = 0, tokenizer: bytes = b"{}"):
    """Documents from a noisy cycle (next = prev + 1 mod 58, shifted past the special ids, with 10%
    random tokens), so a tiny model's loss visibly falls within a few dozen steps."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    tok = root.parent / f"{root.name}-tokenizer.json"
    tok.write_bytes(tokenizer)

    def doc() -> np.ndarray:
        ids = (rng.integers(58) + np.arange(doc_len)) % 58 + 6
        noise = rng.random(doc_len) < 0.1
        ids[noise] = rng.integers(6, VOCAB, noise.sum())
        return ids

    return write_store(root, {"train": [doc() for _ in range(docs)], "val": [doc() for _ in range(8)]},
                       vocab_size=VOCAB, tokenizer_path=tok, train_text_bytes=docs * doc_len * 3,
                       val_text_bytes=8 * doc_len * 3)


def tiny_config(store: Path, out_dir: Path, **overrides) -> TrainConfig:
    values = {
        "model": {"n_layer": 2, "n_head": 2, "d_model": 64, "block_size": 32, "vocab_size": VOCAB},
        "data": str(store), "out_dir": str(out_dir), "max_steps": 20, "micro_batch": 8, "lr": 3e-3,
        "min_lr": 3e-4, "warmup_steps": 5, "eval_interval": 10, "eval_batches": 4, "ckpt_interval": 10,
        "log_interval": 1, "device": "cpu",
    }
    for key, value in overrides.items():
        if key == "model":
            values["model"] = {**values["model"], **value}
        else:
            values[key] = value
    return from_dict(TrainConfig, values)


def nan_forward(raw, bad_calls):
    """raw.forward, with the loss made NaN on the given (1-based) calls."""
    forward, calls = raw.forward, [0]

    def patched(x, y=None, **kw):
        calls[0] += 1
        logits, loss = forward(x, y, **kw)
        return logits, loss * float("nan") if calls[0] in bad_calls else loss

    raw.forward = patched


def make_trainer(cfg: TrainConfig, lines: list[str] | None = None) -> Trainer:
    """A Trainer outside torchrun, logging into `lines` when given."""
    return Trainer(cfg, D.init_distributed(cfg.device), log=(lines if lines is not None else []).append)


class FillsUp:
    """The checkpoint file as torch.save sees it, on a disk that fills after `room` more bytes."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def run(cfg: TrainConfig, lines: list[str] | None = None) -> dict:
    """Train to the end in a Trainer outside torchrun; its last records."""
    trainer = make_trainer(cfg, lines)
    try:
        return trainer.fit()
    finally:
        trainer.close()
