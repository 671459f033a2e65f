"""model/generate.py: logit filters, sampling, the KV-cache decode loop, batching, the context rule,
stop ids / strings and streaming. Random-init models; a character-level tokenizer for `complete`."""

from __future__ import annotations

import math

import pytest
import torch
from generate_helpers import Chars, build, reference_greedy

from common.precision import autocast
from model.generate import complete, filter_logits, find_stop, generate, next_tokens, stable_prefix

# ---- filters and sampling on crafted logits ----


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, 3.0]])
    out = filter_logits(logits, top_k=2)
    kept = torch.isfinite(out)[0].nonzero().flatten().tolist()
    assert len(kept) == 2 and kept[0] == 1 and kept[1] in (2, 4)  # a tie is broken, not doubled
    assert out[0, kept].tolist() == [5.0, 3.0]
    assert torch.equal(filter_logits(logits, top_k=10), logits)


@pytest.mark.parametrize(("top_p", "kept"), [(0.45, 1), (0.6, 2), (0.79, 2), (0.9, 3), (0.99, 4), (1.0, 4)])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # sorted: 0.5, 0.3, 0.15, 0.05
    out = filter_logits(probs.log(), top_p=top_p)
    order = [1, 3, 2, 0]
    assert torch.isfinite(out[0, order]).tolist() == [True] * kept + [False] * (4 - kept)


def test_top_p_applies_to_the_top_k_distribution():
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    # top-2 renormalises to 4/7, 3/7; p=0.5 then keeps only the first (p=0.5 alone would keep two).
    assert torch.isfinite(filter_logits(probs.log(), top_k=2, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(probs.log(), top_p=0.5)).sum() == 2


def test_bad_filter_values():
    with pytest.raises(ValueError):
        filter_logits(torch.zeros(1, 3), top_k=0)
    with pytest.raises(ValueError):
        filter_logits(torch.zeros(1, 3), top_p=0.0)
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(torch.zeros(1, 3), top_p=1.5)
    with pytest.raises(ValueError):
        next_tokens(torch.zeros(1, 3), temperature=-0.1)
    # Greedy decoding never filters: generate() took these silently at temperature 0, where the CLI refuses them.
    for bad in (dict(top_p=1.5), dict(top_p=0.0), dict(top_k=0)):
        with pytest.raises(ValueError, match="top_p must be in|top_k must be"):
            generate(build(), [[1, 2]], 3, temperature=0, **bad)
    with pytest.raises(ValueError, match="temperature must be >= 0"):  # with a generator per row too
        generate(build(), [[1, 2]], 3, temperature=-1.0, generator=[torch.Generator()])


def test_temperature_zero_is_argmax_without_nan():
    logits = torch.tensor([[0.0, float("-inf"), 2.0], [1e30, -1e30, 0.0]])
    assert next_tokens(logits, temperature=0).tolist() == [2, 0]


def test_sampling_follows_temperature_top_k_and_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(40000, 4)
    g = torch.Generator().manual_seed(0)
    # (2.0, None, 0.8): temperature before top-p. At T=2 the probabilities are ~.455/.276/.167/.102,
    # so top-p 0.8 keeps 3 tokens; applied to the raw logits it would keep 2.
    cases = [(1.0, None, None, 4), (0.5, None, None, 4), (2.0, 3, None, 3), (1.0, None, 0.8, 2), (2.0, None, 0.8, 3)]
    for temperature, top_k, top_p, kept in cases:
        draws = next_tokens(logits, temperature, top_k, top_p, g)
        freq = torch.bincount(draws, minlength=4).float() / len(draws)
        expected = filter_logits(logits[:1] / temperature, top_k, top_p).softmax(-1)[0]
        assert torch.allclose(freq, expected, atol=0.01), (temperature, top_k, top_p, freq, expected)
        assert int((freq > 0).sum()) == kept, (temperature, top_k, top_p, freq)
    assert torch.isfinite(filter_logits(logits[:1], top_p=0.8)).sum() == 2  # 0.64 + 0.24 reaches 0.8


def test_seed_repeats_a_sample_exactly():
    model = build()
    prompts = [[1, 2, 3], [7, 8]]

    def run(seed):
        return generate(model, prompts, 30, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(seed))

    assert run(1) == run(1)
    assert run(1) != run(2)


# ---- the decode loop ----


@pytest.mark.parametrize("pos_encoding", ["rope", "learned", "sinusoidal"])
def test_kv_cache_matches_no_cache_and_the_reference(pos_encoding):
    """Token for token, for prompts of several lengths in one batch, past block_size (sliding twice)."""
    model = build(pos_encoding=pos_encoding)
    prompts = [[5, 9], [5, 20, 21, 22, 23, 24, 25], list(range(10, 40))]  # the last is longer than block_size
    cached = generate(model, prompts, 30, temperature=0)
    plain = generate(model, prompts, 30, temperature=0, use_kv_cache=False)
    assert cached == plain
    assert cached == [reference_greedy(model, p, 30) for p in prompts]
    assert len({tuple(c) for c in cached}) == 3


def test_batch_rows_equal_each_prompt_alone():
    model = build(seed=1)
    prompts = [[3], [4, 5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    assert generate(model, prompts, 12, temperature=0) == [generate(model, [p], 12, temperature=0)[0]
                                                         for p in prompts]


def test_with_a_generator_per_row_a_sample_is_the_same_batched_or_alone():
    """One generator for the batch drew every row's token from it in turn, and a row still in its prompt
    drew too: a seeded sample changed with the rows around it (a reviewer's find)."""
    model = build(seed=1)
    prompts = [[3], [4, 5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    # The rows' distributions are filtered as one batch: a row's must not depend on the others.
    for top_k, top_p in ((None, None), (20, None), (None, 0.9), (20, 0.8)):
        batched = generate(model, prompts, 30, temperature=1.5, top_k=top_k, top_p=top_p, generator=gens(7, 8, 9))
        assert batched == [generate(model, [p], 30, temperature=1.5, top_k=top_k, top_p=top_p, generator=gens(s))[0]
                           for p, s in zip(prompts, (7, 8, 9), strict=True)]
    batched = generate(model, prompts, 30, temperature=1.5, generator=gens(7, 8, 9))
    assert batched[0] != generate(model, [prompts[0]], 30, temperature=1.5, generator=gens(8))[0]
    with pytest.raises(ValueError, match="2 generators for 3 prompts"):
        generate(model, prompts, 5, generator=gens(1, 2))


def test_a_tiny_temperature_is_the_argmax_and_a_huge_limit_costs_nothing_up_front():
    """temperature=1e-39 made the logits inf and multinomial raise on the NaN softmax; max_new_tokens=10**12
    allocated [B, 10**12] token buffers before the first step (8 TB: an allocation error)."""
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.25]]) * 100
    assert next_tokens(logits, temperature=1e-39).tolist() == [1, 0]
    model = build(seed=3)
    out = generate(model, [[1, 2]], 10**12, temperature=0, callback=lambda row, ids: len(ids) == 40)
    assert out == generate(model, [[1, 2]], 40, temperature=0)  # across the buffer's growth and a slide


def test_a_temperature_or_top_p_below_float32_range_is_the_argmax_not_a_nan():
    """Both are positive (the CLI takes them) but 0 in float32: temperature 1e-46 made 0 / 0 a NaN, and
    top_p 1e-46 dropped every token; either way multinomial raised on the NaN softmax."""
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.25]])
    g = torch.Generator().manual_seed(0)
    for tiny in (1e-46, 1e-300):
        assert next_tokens(logits, temperature=tiny, generator=g).tolist() == [1, 0]
        assert next_tokens(logits, temperature=1.0, top_p=tiny, generator=g).tolist() == [1, 0]
        assert torch.isfinite(filter_logits(logits, top_p=tiny)).sum(-1).tolist() == [1, 1]


def test_long_prompt_keeps_its_last_block_size_tokens():
    model = build(seed=2)
    long = list(range(1, 50))
    assert generate(model, [long], 10, temperature=0) == generate(model, [long[-16:]], 10, temperature=0)


def test_cache_is_allocated_once_at_block_size(monkeypatch):
    model = build()
    sizes = []
    real = model.new_kv_cache
    monkeypatch.setattr(model, "new_kv_cache", lambda b, *a, **k: sizes.append(b) or real(b, *a, **k))
    generate(model, [[1, 2], [3, 4, 5]], 40, temperature=0)
    assert sizes == [2]
    assert real(2).max_len == model.cfg.block_size


def test_stop_ids_callback_and_limits():
    model = build()
    free = generate(model, [[1, 2, 3]], 10, temperature=0)[0]
    assert len(free) == 10
    # A stop id ends the row and is not returned.
    assert generate(model, [[1, 2, 3]], 10, temperature=0, stop_ids=[free[4]])[0] == free[: free.index(free[4])]
    # The callback sees each row's ids so far and may end it.
    seen = []
    out = generate(model, [[1, 2, 3], [4]], 10, temperature=0,
                   callback=lambda row, ids: seen.append((row, len(ids))) or (row == 0 and len(ids) == 3))
    assert len(out[0]) == 3 and len(out[1]) == 10
    assert (0, 4) not in seen and (1, 10) in seen
    assert generate(model, [[1]], 0) == [[]]
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []], 5)


def test_generate_restores_training_mode():
    model = build(dropout=0.1).train()
    assert generate(model, [[1, 2]], 3, temperature=0) == generate(model, [[1, 2]], 3, temperature=0)
    assert model.training


# ---- mixed precision (dtype=...) ----


def test_bf16_logits_stay_close_to_float32_with_and_without_the_cache():
    """Under bf16 autocast the keys and values come out in bf16 and the cache stores them as they are
    (half the memory, nothing rounded on the way in). The cached forwards (a prefill, then one row at
    a time) and the full-window forward are other matmul shapes, which round differently in bf16: their
    logits are not bit-equal, so greedy tokens may part at a near tie. What holds, on this model whose
    logits reach ~0.4: bf16 within 0.01 of float32 (0.002-0.003 measured), cached within 0.005 of
    uncached (0.001-0.002 measured)."""
    for pos_encoding in ("rope", "learned", "sinusoidal"):
        model = build(pos_encoding=pos_encoding)
        idx = torch.tensor([list(range(10, 26)), list(range(30, 46))])
        with torch.no_grad():
            ref = model(idx, all_logits=True)[0]
            with autocast("cpu", "bfloat16"):
                full = model(idx, all_logits=True)[0]
                cache = model.new_kv_cache(2)
                steps = [model(idx[:, :4], kv_cache=cache, start_pos=0, all_logits=True)[0]]
                steps += [model(idx[:, t : t + 1], kv_cache=cache, start_pos=t)[0] for t in range(4, 16)]
            cache32 = model.new_kv_cache(2)
            steps32 = [model(idx[:, :4], kv_cache=cache32, start_pos=0, all_logits=True)[0]]
            steps32 += [model(idx[:, t : t + 1], kv_cache=cache32, start_pos=t)[0] for t in range(4, 16)]
        cached = torch.cat(steps, dim=1)
        # In float32 the two forwards differ in the last bits only: greedy tokens part only at a tie that close.
        assert (torch.cat(steps32, dim=1) - ref).abs().max() < 1e-5, pos_encoding
        assert full.dtype == cached.dtype == cache.k.dtype == cache.v.dtype == torch.bfloat16
        assert not torch.equal(full.float(), ref)  # autocast did run in bf16
        assert (full.float() - ref).abs().max() < 0.01, pos_encoding
        assert (cached.float() - full.float()).abs().max() < 0.005, pos_encoding


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_generate_runs_its_forwards_under_the_given_autocast(dtype, monkeypatch):
    """dtype= autocasts the model's forwards: uncached, greedy generation is token for token the
    reference's full forwards under torch.autocast (the same computations), and the cache it makes
    holds that dtype. float16 runs on the CPU too (torch's CPU autocast takes it)."""
    model = build(pos_encoding="sinusoidal")  # its bf16 greedy tokens part from float32's (not a test model's must)
    prompts = [[5, 9], list(range(10, 40))]
    with torch.autocast("cpu", dtype=getattr(torch, dtype)):
        expected = [reference_greedy(model, p, 30) for p in prompts]
    assert generate(model, prompts, 30, temperature=0, use_kv_cache=False, dtype=dtype) == expected
    caches = []
    real = model.new_kv_cache
    monkeypatch.setattr(model, "new_kv_cache", lambda *a, **k: caches.append(real(*a, **k)) or caches[-1])
    assert len(generate(model, prompts, 30, temperature=0, dtype=dtype)[1]) == 30
    assert caches[0].k.dtype == getattr(torch, dtype)
    if dtype == "bfloat16":
        assert expected != generate(model, prompts, 30, temperature=0)  # float32 picks other tokens here
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16; got 'auto'"):
        generate(model, prompts, 3, dtype="auto")


def test_generate_casts_the_weights_once_per_call_not_once_per_token(monkeypatch):
    """Autocast keeps its bf16 copies of the weights until the outermost context exits. An autocast
    context per step cast every weight again for every token: bf16 `tiny` on this 2-core CPU decoded at
    ~170 tokens/s that way, below float32's ~185, and at ~320 with one context per call."""
    exits = []
    real = torch.clear_autocast_cache
    monkeypatch.setattr(torch, "clear_autocast_cache", lambda: exits.append(1) or real())
    assert len(generate(build(), [[1, 2, 3]], 20, temperature=0, dtype="bfloat16")[0]) == 20
    assert len(exits) == 1


def test_a_seed_repeats_a_bf16_sample_exactly():
    model = build()
    prompts = [[1, 2, 3], [7, 8]]

    def run(seed):
        return generate(model, prompts, 30, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(seed),
                        dtype="bfloat16")

    assert run(1) == run(1)
    assert run(1) != run(2)


# ---- text level: complete() ----


def test_find_stop_and_stable_prefix():
    assert find_stop("abc STOP def END", ["END", "STOP"]) == 4
    assert find_stop("abc", ["x", ""]) is None
    assert stable_prefix("hello wo", ["world"]) == "hello "  # "wo" may still become "world"
    assert stable_prefix("hello w", ["world", "wx"]) == "hello "
    assert stable_prefix("caf\ufffd", []) == "caf"  # an unfinished UTF-8 character waits
    assert stable_prefix("hello", ["world"]) == "hello"


def test_complete_cuts_at_stop_strings_and_streams_the_same_text():
    model, tok = build(seed=3), Chars()
    full = complete(model, tok, ["AB"], 30, temperature=0)[0]
    assert full.ids == generate(model, [tok.encode("AB")], 30, temperature=0)[0]
    text = full.text
    stop = text[10:12]
    cut = text.index(stop)
    pieces: list[tuple[int, str]] = []
    got = complete(model, tok, ["AB"], 30, temperature=0, stop=[stop], stream=lambda r, p: pieces.append((r, p)))[0]
    assert got.text == text[:cut]
    assert "".join(p for _, p in pieces) == got.text and all(r == 0 for r, _ in pieces)
    assert len(got.ids) < 30  # generation stopped early, not just the text


def test_complete_bos_and_stats():
    from model.generate import CompletionStats

    model, tok = build(), Chars()
    stats = CompletionStats()
    out = complete(model, tok, ["XYZ", "Q"], 7, bos_id=5, temperature=0, stats=stats)
    assert out[0].prompt_ids == [5, *tok.encode("XYZ")]
    assert [c.ids for c in out] == generate(model, [[5, *tok.encode("XYZ")], [5, *tok.encode("Q")]], 7, temperature=0)
    assert stats.new_tokens == 14 and stats.seconds > 0 and math.isfinite(stats.tokens_per_s)


def test_top_p_drops_a_token_whose_preceding_mass_equals_p_exactly():
    """Four equal tokens (exact quarters): p=0.5 is reached by two, so the third, with exactly 0.5 before
    it, goes. A mutation testing `before > top_p` kept it and passed every test."""
    assert torch.isfinite(filter_logits(torch.zeros(1, 4), top_p=0.5)).sum() == 2
    assert torch.isfinite(filter_logits(torch.zeros(1, 4), top_p=0.75)).sum() == 3


def test_complete_streams_the_held_back_tail_and_reports_the_truncated_prompt():
    """Text held back because it could still grow into a stop string is streamed once the row ends; a
    long prompt's Completion.prompt_ids are the block_size ids the model saw; stats add up over calls
    (bin/sample.py --stream shares one across prompts). Mutations dropping the final flush, the
    prompt_ids truncation, or assigning instead of adding the stats passed every test."""
    from model.generate import CompletionStats

    model, tok = build(seed=3), Chars()
    text = complete(model, tok, ["AB"], 12, temperature=0)[0].text
    pieces: list[str] = []
    # "a" is outside the tokenizer's characters, so the stop never completes, but its first character
    # (the text's last) is held back until the row ends.
    got = complete(model, tok, ["AB"], 12, temperature=0, stop=[text[-1] + "a"], stream=lambda r, p: pieces.append(p))
    assert got[0].text == text and "".join(pieces) == text
    stats = CompletionStats()
    long = "AB" * 20
    out = complete(model, tok, [long], 5, bos_id=1, temperature=0, stats=stats)[0]
    assert out.prompt_ids == tok.encode(long)[-model.cfg.block_size :]
    complete(model, tok, ["AB"], 7, temperature=0, stats=stats)
    first = stats.seconds
    assert stats.new_tokens == 12 and first > 0
    complete(model, tok, ["AB"], 1, temperature=0, stats=stats)
    assert stats.new_tokens == 13 and stats.seconds > first


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pos_encoding", ["rope", "learned", "sinusoidal"])
def test_kv_cache_on_cuda_matches_no_cache_and_the_cpu(pos_encoding):
    """The decode loop on CUDA (the cache on the device, CUDA's attention kernels, the RoPE kernel in
    the full forwards of the uncached path) in float32 without TF32: the CPU's greedy tokens."""
    model = build(pos_encoding=pos_encoding)
    prompts = [[5, 9], [5, 20, 21, 22, 23, 24, 25], list(range(10, 40))]
    on_cpu = generate(model, prompts, 30, temperature=0)
    model.cuda()
    assert generate(model, prompts, 30, temperature=0) == on_cpu
    assert generate(model, prompts, 30, temperature=0, use_kv_cache=False) == on_cpu
