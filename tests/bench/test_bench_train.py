"""bench/train.py: the models its rows compare."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_like_for_like_row_is_our_gpt2_style_model_with_the_plain_loss(bench_script):
    bench = bench_script("train")
    shape = {"n_layer": 1, "n_head": 2, "d_model": 32, "vocab_size": 64, "block_size": 16}
    chunked, plain = bench.build_model("gpt2-style", shape), bench.build_model("gpt2-style-plain", shape)
    reference = bench.build_model("reference", shape)
    # Same architecture as each other and the reference; only the loss differs.
    assert chunked.cfg.fused_loss and not plain.cfg.fused_loss
    assert {**vars(chunked.cfg), "fused_loss": False} == vars(plain.cfg)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(chunked) == count(plain) == count(reference)


def test_turns_rotate_so_no_model_always_follows_the_same_one(bench_script):
    bench = bench_script("train")
    calls = []
    fns = {name: (lambda name=name: calls.append(name), 1) for name in "abc"}
    times = bench.interleaved(fns, reps=3, warmup=1)
    assert calls == list("abc" "bca" "cab" "abc")
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_models_times_only_the_chosen_ones_beside_the_reference(tmp_path):
    """`--models gpt2-style-plain`: the like-for-like pair alone, end to end at a toy size."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/train.py"), "--tokens", "300000", "--batch", "2", "--block", "16",
         "--vocab", "256", "--reps", "1", "--models", "gpt2-style-plain"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "params" in line]
    assert [row.split(":")[0] for row in rows] == ["| ours GPT-2-style, plain loss", "| reference GPT-2"], rows
    assert "sampler (vectorised)" in proc.stdout and "sampler share" not in proc.stdout
