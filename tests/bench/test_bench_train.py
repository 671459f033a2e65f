"""bench/train.py: the models its rows compare."""

from __future__ import annotations


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
