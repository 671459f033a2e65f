"""Text generation: greedy or sampled continuation of token prompts, with a KV cache.

    new_ids = generate(model, [[5, 812, 94]], max_new_tokens=50, temperature=0.8, top_p=0.95)
    texts = complete(model, tokenizer, ["ROMEO:"], max_new_tokens=50, stop=["\\n\\n"])

`generate` works on ids; `complete` wraps it with a tokenizer (anything with `encode(str) ->
list[int]` and `decode(list[int]) -> str`), stop strings and streaming. bin/sample.py is a thin
command line over `complete`, so a notebook gets the CLI's behaviour (the CLI adds only the prompts'
normalisation to NFC and LF line ends, one generator per sample, seeded seed + i, and its --dtype,
`auto` resolved for the device, as dtype=).

Context rule (the model sees at most block_size positions): a prompt longer than block_size keeps
its last block_size tokens. When the context is full and one more token must be fed, the oldest
tokens are dropped and generation continues from the newest block_size // 2 (re-encoded from
position 0: one prefill every block_size / 2 tokens rather than a full recompute every token).
With and without the KV cache the model sees exactly the same windows, so in float32 greedy output
is the same token for token (the logits differ in float32's last bits, under 1e-5 in
tests/model/test_generate.py: only a tie that close could pick another token). Under bf16 or fp16
autocast (dtype=...) the cached forwards (one row at a time) and the full-window ones are other
matmul shapes, which round differently: the logits agree to within that rounding (the same test) and
a near tie may pick another token.

Banned ids (`banned_ids=`): their logits are set to -inf before every choice, greedy or sampled, so
they are never generated (a prompt may still hold them). It is the same mask in the cached and
uncached paths and on every row alike, so the guarantees above and below hold with it. bin/sample.py
bans [PAD] [UNK] [CLS] [MASK]: never training targets, but an early checkpoint's argmax or a high
temperature could pick them, and they decode as their names.

Batches: rows advance in lock-step, all at the same position, so one KV cache with one `start_pos`
serves them all (the model has no per-row positions). The shared prefill covers the shortest
prompt; a longer prompt's remaining tokens are then fed one per step in place of sampled ones
(teacher forcing), so every row sees exactly its own tokens at its own positions, never padding.
"""

from __future__ import annotations

import contextlib
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from common.precision import autocast
from model.gpt import GPT

# A row's callback gets (row, its new ids so far) after each token and returns True to end that row.
TokenCallback = Callable[[int, list[int]], bool]


def check_sampling(temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None) -> None:
    """Refuse a negative temperature, a top_k below 1 or a top_p outside (0, 1], as the CLI does."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """logits [B, V] with every token outside the top_k, and outside the top_p nucleus, set to -inf.

    top_k keeps exactly k tokens (a tie at the k-th place is broken arbitrarily). top_p keeps the
    smallest set of most likely tokens whose probability reaches top_p (always at least the most
    likely one); it is applied after top_k, to the renormalised top-k distribution.
    """
    check_sampling(top_k=top_k, top_p=top_p)
    if top_k is not None and top_k < logits.size(-1):
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Mass strictly before each token: a token stays while the set before it has not reached top_p.
        before = probs.cumsum(dim=-1) - probs
        drop_sorted = before >= top_p
        # The most likely token always stays: a top_p below float32's smallest number (1e-46) compares
        # as 0, and 0 >= 0 dropped every token (a NaN softmax that multinomial refused).
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """softmax(logits / temperature) of each row of logits [B, V], restricted by top_k / top_p, in
    float32; temperature > 0. Every step works row by row, so a row's result does not depend on the
    other rows in the batch."""
    logits = logits.float()
    # Not below float32's smallest normal number: a smaller temperature (1e-46) is 0 in float32, and
    # 0 / 0 a NaN. The result is the same: every token short of the largest logit still gets probability 0.
    temperature = max(temperature, torch.finfo(torch.float32).tiny)
    # Shifted so the largest is 0 before dividing: a tiny temperature (1e-39) made it inf, and the
    # softmax of inf - inf a NaN that multinomial refused. Now the rest go to -inf: the argmax.
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    return filter_logits(shifted / temperature, top_k, top_p).softmax(dim=-1)


def check_banned(banned_ids: Sequence[int], vocab_size: int) -> list[int]:
    """The distinct banned ids, sorted; an id outside the vocabulary, or a ban on every id (nothing
    left to generate), is a ValueError."""
    banned = sorted({operator.index(i) for i in banned_ids})
    outside = [i for i in banned if not 0 <= i < vocab_size]
    if outside:
        raise ValueError(f"banned_ids: {outside[0]} is not a token id (the vocabulary is 0..{vocab_size - 1})")
    if len(banned) == vocab_size:
        raise ValueError(f"banned_ids bans all {vocab_size} token ids: nothing is left to generate")
    return banned


def next_tokens(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of logits [B, V]: the argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted by top_k / top_p."""
    check_sampling(temperature)
    if temperature == 0:
        return logits.float().argmax(dim=-1)
    probs = sampling_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _draw(logits: torch.Tensor, rows: list[int], temperature: float, top_k: int | None, top_p: float | None,
          generators: Sequence[torch.Generator]) -> torch.Tensor:
    """next_tokens for `rows` only, each from its own generator (the argmax elsewhere): so a row's
    draws are its own, the same whatever else is in the batch or whether it is in one at all. The
    distributions are made for all those rows at once (row by row inside each op); only the draws
    go one row at a time, as a generator serves one draw (filtering row by row cost ~30% of a batch
    of 32's generation on a CPU, and far more in kernel launches on a GPU). generate() has checked the
    options."""
    out = logits.float().argmax(dim=-1)
    if rows and temperature > 0:
        probs = sampling_probs(logits[rows], temperature, top_k, top_p)
        for i, r in enumerate(rows):
            out[r] = torch.multinomial(probs[i : i + 1], 1, generator=generators[r])[0, 0]
    return out


@torch.no_grad()
def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    stop_ids: Sequence[int] = (),
    banned_ids: Sequence[int] = (),
    use_kv_cache: bool = True,
    callback: TokenCallback | None = None,
    dtype: str | None = None,
) -> list[list[int]]:
    """The new ids of each prompt (a stop id ends its row and is not included).

    A row ends after max_new_tokens, at a stop id, or when `callback` returns True. `model` may be a
    torch.compile'd GPT. See the module docstring for the context rule and how rows of different
    lengths are batched. `generator`: one for the batch, or one per prompt, which makes each row's
    sample independent of the others (a row draws only for the tokens it generates). `banned_ids`:
    ids never generated (see the module docstring); one outside the vocabulary, or all of them, is a
    ValueError. `dtype`: the autocast dtype of the model's forward passes (float32 | bfloat16 |
    float16; common/precision.py), or None to run them as the caller has it (inside the caller's
    torch.autocast, if any). Sampling works on the logits cast to float32 either way.
    """
    check_sampling(temperature, top_k, top_p)  # up front: greedy decoding never filters, and took any value
    banned = check_banned(banned_ids, model.cfg.vocab_size)
    block = model.cfg.block_size
    keep = max(block // 2, 1)
    prompts = [list(p)[-block:] for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token (start it with [BOS])")
    if max_new_tokens <= 0:
        return [[] for _ in prompts]
    device = model.wte.weight.device
    lens = [len(p) for p in prompts]
    per_row = generator is not None and not isinstance(generator, torch.Generator)
    if per_row and len(generator) != len(prompts):
        raise ValueError(f"{len(generator)} generators for {len(prompts)} prompts")
    # Grown as generation goes: sized for max_new_tokens up front, a huge limit that a stop ends at
    # once took gigabytes (or failed to allocate) before the first token.
    B, full = len(prompts), max(lens) + max_new_tokens
    width = min(full, max(lens) + block)
    tokens = torch.full((B, width), model.cfg.pad_id, dtype=torch.long, device=device)
    forced = torch.zeros(B, width, dtype=torch.bool, device=device)
    for r, p in enumerate(prompts):
        tokens[r, : len(p)] = torch.tensor(p, dtype=torch.long)
        forced[r, : len(p)] = True
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    bans = torch.tensor(banned, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()

    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * B
    pos, start, cached = min(lens), 0, 0  # tokens[:, :pos] are decided; the window is tokens[:, start:pos]
    # One autocast context for the whole call, not one per step: autocast keeps its casts of the weights
    # until the outermost context exits, so they are cast once per call instead of once per token (bf16
    # `tiny` on a 2-core CPU: ~170 tokens/s cast per step, ~320 cast once; bench/RESULTS.md). Sampling
    # inside it stays float32: it casts the logits, runs none of the ops autocast lowers (matmuls,
    # attention), and those autocast keeps in float32 (softmax, cumsum) get float32 already.
    precision = autocast(device.type, dtype) if dtype is not None else contextlib.nullcontext()
    try:
        with precision:
            cache = model.new_kv_cache(B) if use_kv_cache else None  # in the dtype the keys come out in
            while True:
                if pos == tokens.size(1):
                    more = min(full, 2 * pos) - pos
                    tokens = torch.cat([tokens, tokens.new_full((B, more), model.cfg.pad_id)], dim=1)
                    forced = torch.cat([forced, forced.new_zeros(B, more)], dim=1)
                if pos - start > block:  # the context is full: slide (see the module docstring)
                    start = cached = pos - keep
                if cache is not None:
                    logits, _ = model(tokens[:, cached:pos], kv_cache=cache, start_pos=cached - start)
                    cached = pos
                else:
                    logits, _ = model(tokens[:, start:pos])
                last = logits[:, -1]
                if banned:  # before the argmax and before any filter: top_k / top_p then choose among the rest
                    last = last.index_fill(-1, bans, float("-inf"))
                if per_row:
                    drawing = [r for r in range(B) if pos >= lens[r] and not done[r]]
                    sampled = _draw(last, drawing, temperature, top_k, top_p, generator)
                else:
                    sampled = next_tokens(last, temperature, top_k, top_p, generator)
                tokens[:, pos] = torch.where(forced[:, pos], tokens[:, pos], sampled)
                ids, is_stop = torch.stack([sampled, torch.isin(sampled, stops)]).tolist()  # one host sync per step
                pos += 1
                for r in range(B):
                    if done[r] or pos <= lens[r]:  # finished, or that was still its prompt's token
                        continue
                    if is_stop[r]:
                        done[r] = True
                        continue
                    out[r].append(ids[r])
                    stopped = callback is not None and callback(r, out[r])
                    done[r] = stopped or len(out[r]) >= max_new_tokens
                if all(done):
                    return out
    finally:
        model.train(was_training)


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def find_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index of the earliest stop string in text, or None."""
    hits = [i for s in stop if s and (i := text.find(s)) >= 0]
    return min(hits) if hits else None


def stable_prefix(text: str, stop: Sequence[str]) -> str:
    """The part of text that can be shown while generating: not a trailing partial UTF-8 character
    (decoded as U+FFFD) nor a tail that could still grow into a stop string."""
    text = text.rstrip("\ufffd")
    held = max((n for s in stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
    return text[: len(text) - held]


@dataclass
class Completion:
    text: str
    """The generated text, cut before the first stop string."""
    ids: list[int]
    """The generated ids (up to and including the token that completed a stop string)."""
    prompt_ids: list[int] = field(default_factory=list)
    """The prompt as the model saw it (after [BOS] and left truncation)."""


@dataclass
class CompletionStats:
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def complete(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    bos_id: int | None = None,
    stop: Sequence[str] = (),
    stream: Callable[[int, str], None] | None = None,
    stats: CompletionStats | None = None,
    **sampling,
) -> list[Completion]:
    """Continue each text prompt; `sampling` takes generate()'s keyword options.

    bos_id, when given, is put before every prompt, as every training document starts with it.
    Generation of a row ends at a stop string (the text is cut before it). `stream(row, piece)`
    receives the row's text as it is generated, in pieces that never contain a stop string.
    """
    lead = [bos_id] if bos_id is not None else []
    block = model.cfg.block_size
    prompt_ids = [(lead + tokenizer.encode(p))[-block:] for p in prompts]
    shown = [0] * len(prompts)

    def on_token(row: int, ids: list[int]) -> bool:
        text = tokenizer.decode(ids)
        cut = find_stop(text, stop)
        if stream is not None:
            visible = text[:cut] if cut is not None else stable_prefix(text, stop)
            if len(visible) > shown[row]:
                stream(row, visible[shown[row] :])
                shown[row] = len(visible)
        return cut is not None

    started = time.perf_counter()
    new_ids = generate(model, prompt_ids, max_new_tokens, callback=on_token if stop or stream else None, **sampling)
    if stats is not None:
        stats.new_tokens += sum(map(len, new_ids))
        stats.seconds += time.perf_counter() - started
    results = []
    for row, ids in enumerate(new_ids):
        text = tokenizer.decode(ids)
        cut = find_stop(text, stop)
        text = text if cut is None else text[:cut]
        if stream is not None and len(text) > shown[row]:  # what was held back, once the row ended
            stream(row, text[shown[row] :])
        results.append(Completion(text, ids, prompt_ids[row]))
    return results
