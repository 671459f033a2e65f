"""Fixtures for the sample / eval / export tests: a tiny tokenizer, store and checkpoint, built once.

The checkpoint is a 2-layer GPT fitted for a few seconds to the store's text (so greedy output is
readable text, not byte soup), saved through the trainer's own save_checkpoint in the run
directory layout `make train` leaves (ckpt-*/ + tokenizer.json).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bin_util import TEXTS, make_run

from pipeline.fast_encode import Encoder
from pipeline.store import write_store
from pipeline.tokenizer import save_tokenizer, train_tokenizer


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


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, tokenizer_path, store_dir) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "tiny", tokenizer_path, store_dir, steps=40)
