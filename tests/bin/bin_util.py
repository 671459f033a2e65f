"""Helpers of the sample / eval / export tests (their fixtures are in conftest.py): the texts the tiny
store holds and a run directory with one checkpoint of a GPT fitted to them. A module of its own, as
importing `conftest` by name finds whichever folder's conftest was imported first."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from common.files import sha256_file
from model import GPT, GPTConfig
from pipeline.fast_encode import Encoder
from pipeline.store import TokenStore
from train.checkpoint import save_checkpoint

LINES = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "JULIET: O Romeo, Romeo, wherefore art thou Romeo?",
    "the dog is feeling happy, the cat is feeling sleepy, and the bird is feeling free.",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
]
TEXTS = [" ".join(LINES[i:] + LINES[:i]) for i in range(len(LINES))]



def fit(model: GPT, store_dir: Path, steps: int) -> None:
    """A few plain AdamW steps on random windows of the store's train split."""
    tokens = torch.from_numpy(np.concatenate(TokenStore(store_dir).shards("train")).astype(np.int64))
    block = model.cfg.block_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        starts = torch.randint(len(tokens) - block - 1, (16,))
        x = torch.stack([tokens[s : s + block + 1] for s in starts])
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()


def make_run(run_dir: Path, tokenizer_path: Path, store_dir: Path, seed: int = 0, steps: int = 0,
             **model_kw) -> Path:
    """A run directory with one checkpoint of a GPT (block_size 32) fitted for `steps` steps."""
    cfg = GPTConfig(**{"vocab_size": Encoder(tokenizer_path).vocab_size, "block_size": 32, "n_layer": 2,
                       "n_head": 2, "d_model": 64, **model_kw})
    torch.manual_seed(seed)
    model = GPT(cfg)
    fit(model, store_dir, steps)
    state = {"model": model.state_dict(), "model_config": asdict(cfg), "config": {"data": str(store_dir)},
             "step": 7, "tokenizer_sha256": sha256_file(tokenizer_path),
             "store_manifest_sha256": sha256_file(store_dir / "manifest.json")}
    save_checkpoint(run_dir, "00000007", state)
    shutil.copyfile(tokenizer_path, run_dir / "tokenizer.json")
    return run_dir
