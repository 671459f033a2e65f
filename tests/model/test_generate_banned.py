"""model/generate.py's banned_ids: ids never generated, on every path (greedy or sampled, cached or not,
batched, one generator or one per row, half-precision autocast, complete()); bad bans refused."""

from __future__ import annotations

import pytest
import torch
from generate_helpers import Chars, V, build, favouring, reference_greedy

from model.generate import complete, generate


def test_banned_ids_are_never_generated_greedy_or_sampled():
    """Nothing stopped a model from generating [PAD], [MASK] and the like: an early checkpoint's argmax or a
    high temperature could pick them. Here the logits favour ids 0 and 3 by 1e4; banned, they never come,
    in every path (cached or not, batched, one generator or one per row, top_k / top_p), and greedy output is
    the argmax over the other ids."""
    banned = [0, 3]
    model = favouring(build(seed=4), banned)
    prompts = [[5, 9], [5, 20, 21, 22, 23, 24, 25], list(range(10, 40))]  # past block_size: slides too
    assert {t for row in generate(model, prompts, 20, temperature=0) for t in row} <= {0, 3}  # the bias works
    hot = generate(model, prompts, 20, temperature=1e3, generator=torch.Generator().manual_seed(0))
    assert {t for row in hot for t in row} <= {0, 3}

    greedy = generate(model, prompts, 30, temperature=0, banned_ids=banned)
    assert greedy == generate(model, prompts, 30, temperature=0, banned_ids=banned, use_kv_cache=False)
    assert greedy == [reference_greedy(model, prompt, 30, banned) for prompt in prompts]
    for options in (dict(temperature=1e3), dict(temperature=1e3, top_k=5), dict(temperature=1e3, top_p=0.5),
                    dict(temperature=1.0, top_k=1)):
        one = generate(model, prompts, 30, banned_ids=banned, generator=torch.Generator().manual_seed(1), **options)
        rows = generate(model, prompts, 30, banned_ids=banned, generator=[torch.Generator().manual_seed(s)
                                                                          for s in (7, 8, 9)], **options)
        assert not {t for row in one + rows for t in row} & set(banned), options
        # Still a row's own sample, the same alone as in the batch.
        assert rows[1] == generate(model, [prompts[1]], 30, banned_ids=banned,
                                   generator=[torch.Generator().manual_seed(8)], **options)[0]
    assert len({t for row in one for t in row}) > 1  # the hot samples did spread over the other ids
    assert generate(model, prompts, 30, temperature=1.0, top_k=1, banned_ids=banned) == greedy


def test_banned_ids_in_bf16_and_through_complete():
    model, tok = favouring(build(seed=4), [0, 33]), Chars()  # 33 is "A"
    for dtype in ("bfloat16", "float16"):
        out = generate(model, [[5, 9]], 20, temperature=0, banned_ids=[0, 33], dtype=dtype)[0]
        assert len(out) == 20 and not {0, 33} & set(out)
    text = complete(model, tok, ["AB"], 20, temperature=1e3, banned_ids=[0, 33],
                    generator=torch.Generator().manual_seed(0))[0].text
    assert len(text) == 20 and " " not in text and "A" not in text


def test_banning_every_id_or_an_id_outside_the_vocabulary_is_refused():
    model = build()
    with pytest.raises(ValueError, match=f"banned_ids bans all {V} token ids: nothing is left to generate"):
        generate(model, [[1, 2]], 3, temperature=0, banned_ids=list(range(V)) + [5])
    for bad in (V, -1):
        with pytest.raises(ValueError, match=rf"banned_ids: {bad} is not a token id \(the vocabulary is 0..{V - 1}\)"):
            generate(model, [[1, 2]], 3, banned_ids=[2, bad])
    with pytest.raises(TypeError):
        generate(model, [[1, 2]], 3, banned_ids=[2.0])
    # Every id but one: that one, every time.
    assert generate(model, [[1, 2]], 5, temperature=2.0, banned_ids=[i for i in range(V) if i != 7]) == [[7] * 5]
