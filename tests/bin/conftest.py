"""Fixtures for the sample / eval / export tests: a tiny tokenizer, store and checkpoint, built once.

The checkpoint is a 2-layer GPT fitted for a few seconds to the store's text (so greedy output is
readable text, not byte soup), saved through the trainer's own save_checkpoint in the run
directory layout `make train` leaves (ckpt-*/ + tokenizer.json).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from model import GPT, GPTConfig
from pipeline.fast_encode import Encoder
from pipeline.store import TokenStore, sha256_file, write_store
from pipeline.tokenizer import save_tokenizer, train_tokenizer
from train.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[2]
LINES = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "JULIET: O Romeo, Romeo, wherefore art thou Romeo?",
    "the dog is feeling happy, the cat is feeling sleepy, and the bird is feeling free.",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
]
TEXTS = [" ".join(LINES[i:] + LINES[:i]) for i in range(len(LINES))]


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return save_tokenizer(train_tokenizer(TEXTS * 4, vocab_size=400), path)


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory, tokenizer_path) -> Path:
    """A store of TEXTS (train) and two documents (val), with byte counts for bits per byte."""
    enc = Encoder(tokenizer_path)
    root = tmp_path_factory.mktemp("store") / "tiny"
    val = TEXTS[:2]
    write_store(root, {"train": [enc.encode(t) for t in TEXTS], "val": [enc.encode(t) for t in val]},
                vocab_size=enc.vocab_size, tokenizer_path=tokenizer_path,
                train_text_bytes=sum(len(t.encode()) for t in TEXTS), val_text_bytes=sum(len(t.encode()) for t in val))
    return root


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


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, tokenizer_path, store_dir) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "tiny", tokenizer_path, store_dir, steps=40)
