"""What tests/model/test_generate*.py share: a small untied model, the context rule spelled out with
full forwards, a character tokenizer for `complete`, and a bias that makes a model favour some ids."""

from __future__ import annotations

import torch

from model import GPT, GPTConfig

V = 64


def build(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    # Untied: a tied random model's greedy choice is mostly its input token again, a weak test.
    base = dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, d_model=32, tie_embeddings=False)
    return GPT(GPTConfig(**{**base, **kw})).eval()


def reference_greedy(model: GPT, prompt: list[int], n: int, banned: list[int] | tuple[int, ...] = ()) -> list[int]:
    """The documented context rule, spelled out with full forwards: the prompt's last block_size
    tokens; when a token would not fit, keep the newest block_size // 2 and go on from there. The
    argmax is over the ids not `banned`."""
    block, keep = model.cfg.block_size, model.cfg.block_size // 2
    seq, start = list(prompt[-block:]), 0
    for _ in range(n):
        if len(seq) - start > block:
            start = len(seq) - keep
        with torch.no_grad():
            logits, _ = model(torch.tensor([seq[start:]]))
        seq.append(int(logits[0, -1].index_fill(0, torch.tensor(banned, dtype=torch.long), float("-inf")).argmax()))
    return seq[len(prompt[-block:]) :]


class Chars:
    """A character tokenizer over V ids: id i <-> chr(32 + i), so " " to "_" (upper case only)."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 32 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(32 + i) for i in ids)


def favouring(model: GPT, ids: list[int], by: float = 1e4) -> GPT:
    """The model with `by` added to the logits of `ids`: an untrained model that picks them, greedy or sampled."""
    bias = torch.zeros(V)
    bias[ids] = by
    model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
    return model
