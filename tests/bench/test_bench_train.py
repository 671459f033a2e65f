"""bench/train.py: the models its rows compare."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_like_for_like_row_is_our_gpt2_style_model_with_the_plain_loss(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the repository first on the path
    spec = importlib.util.spec_from_file_location("train_bench", REPO / "bench/train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shape = {"n_layer": 1, "n_head": 2, "d_model": 32, "vocab_size": 64, "block_size": 16}
    chunked, plain = bench.build_model("gpt2-style", shape), bench.build_model("gpt2-style-plain", shape)
    reference = bench.build_model("reference", shape)
    # Same architecture as each other and the reference; only the loss differs.
    assert chunked.cfg.fused_loss and not plain.cfg.fused_loss
    assert {**vars(chunked.cfg), "fused_loss": False} == vars(plain.cfg)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(chunked) == count(plain) == count(reference)
