#!/usr/bin/env python3
"""Generate text with a trained model: `python bin/sample.py --prompt "ROMEO:" [options]`.

The prompt comes from --prompt (repeatable: several prompts run as one batch), --prompt-file
(repeatable; "-" is standard input), or else standard input when it is not a terminal; with none
of these the model starts from [BOS] alone. Every prompt is preceded by [BOS], as every training
document is. Text goes to stdout (the prompt, then its continuation; samples are separated by a
line of dashes), the speed to stderr. A sample never contains [PAD], [UNK], [CLS] or [MASK] (never
training targets): they are banned from every choice.

Context rule: the model sees at most block_size tokens. A longer prompt keeps its last block_size
tokens; once the context is full, generation drops the oldest tokens and continues from the newest
block_size/2 (with or without the KV cache, so greedy output in float32 is the same either way, short of
a tie within float32's rounding; in bfloat16 or float16 the two round differently, and a near tie may
pick another token).

--dtype: the forward passes run under autocast in this dtype, by the trainer's rule
(common/precision.py); weights stay float32 and sampling works on float32 logits. auto is bfloat16
on a GPU and float32 on the CPU, where bf16 is emulated, and slow, without AVX512-BF16 or AMX
(bench/RESULTS.md has the numbers of a CPU with AVX512-BF16). The speed line names the dtype.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, installed or not

from common.cli import UINT64_MAX, number, path_arg, quiet_ctrl_c, resolve_device  # noqa: E402
from common.precision import DTYPES, bf16_supported, resolve_dtype  # noqa: E402
from model.generate import CompletionStats, complete  # noqa: E402
from pipeline.clean import CleanConfig, normalize  # noqa: E402
from pipeline.fast_encode import Encoder  # noqa: E402
from pipeline.tokenizer import BOS_ID, SPECIALS  # noqa: E402
from train.export import TokenizerMismatch, load  # noqa: E402

DEFAULT_CHECKPOINT = "runs/tiny"  # where `make train` (configs/tiny.yml) writes
SEP_ID = SPECIALS.index("[SEP]")
# Never in a store (a document is [BOS] + its text's ids, and text never encodes to a special), so never a
# training target; an early checkpoint's argmax or a high temperature could still pick them.
BANNED_IDS = tuple(SPECIALS.index(name) for name in ("[PAD]", "[UNK]", "[CLS]", "[MASK]"))
SEPARATOR = "-" * 40


def _unescape(text: str) -> str:
    """`\\n`, `\\t` and `\\\\` in a --stop string, since a shell makes typing a newline awkward."""
    return text.replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t").replace("\0", "\\")


def build_parser() -> argparse.ArgumentParser:
    head, tail = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="bin/sample.py", description=head, epilog=tail,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=path_arg, default=DEFAULT_CHECKPOINT,
                   help="a run directory (its newest complete checkpoint), a checkpoint directory, or a folder "
                        f"from bin/export.py (default: {DEFAULT_CHECKPOINT})")
    p.add_argument("--tokenizer", type=path_arg,
                   help="tokenizer.json to use instead of the run's; it must be the one the model was trained with "
                        "(same sha256), or sampling is refused")
    p.add_argument("--prompt", action="append", help="prompt text; repeat for a batch of prompts")
    p.add_argument("--prompt-file", type=path_arg, action="append",
                   help="a file whose whole text is one prompt ('-': stdin)")
    p.add_argument("--max-new-tokens", type=number(int, 0), default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=number(float, 0), default=0.8,
                   help="softmax temperature; 0 picks the most likely token every time (greedy) (default 0.8)")
    p.add_argument("--top-k", type=number(int, 1), help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=number(float, 0, above=True, high=1),
                   help="sample only among the most likely tokens whose probabilities sum to p (nucleus)")
    p.add_argument("--seed", type=number(int, 0, high=UINT64_MAX),
                   help="seed of the sampler, 0 to 2**64-1: the same seed and options repeat the output exactly; "
                        "sample i (prompts x --num-samples, in order) draws from seed + i, so in float32 it is the "
                        "same alone, in a batch or with --stream (in bfloat16 or float16 a batch's other matmul shapes "
                        "round differently, and a near tie may draw another token) (default: a fresh seed, printed "
                        "to stderr)")
    p.add_argument("--num-samples", type=number(int, 1), default=1, help="samples per prompt (default 1)")
    p.add_argument("--stop", action="append", default=[],
                   help="stop a sample where this text appears (it is not printed); repeatable; \\n and \\t "
                        "are understood. Generation always ends at [BOS] or [SEP] (a new document).")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="autocast dtype of the model's forward passes: auto (bfloat16 on a GPU with native bf16, "
                        "else float16; float32 on the CPU) | float32 | bfloat16 | float16. Sampling works on "
                        "float32 logits whatever the dtype (default auto)")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="re-encode the whole context for every token (slow; the reference the cache must match)")
    p.add_argument("--stream", action="store_true",
                   help="print text as it is generated; several samples are then generated one after another")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model first (pays off on GPU for long outputs; costs ~30 s up front)")
    return p


def _read(name: str) -> str:
    """The whole text of a prompt file ('-': stdin); not UTF-8 is a ValueError naming it."""
    try:
        if name != "-":
            return Path(name).read_text(encoding="utf-8")
        # Decoded here, not by the locale: under LANG=C a text stdin would let stray bytes through as surrogates.
        buffer = getattr(sys.stdin, "buffer", None)
        return buffer.read().decode("utf-8") if buffer is not None else sys.stdin.read()
    except UnicodeDecodeError as err:
        where = "standard input" if name == "-" else name
        raise ValueError(f"{where}: not UTF-8 text (byte {err.start}: {err.reason})") from None


# The store's character normalisation (NFC, LF line ends, no control characters: a CRLF prompt fed a CR
# token the model never saw), without its whitespace step: a trailing space or a run of them is meant.
_AS_TRAINED = CleanConfig(normalize_whitespace=False)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    for name in args.prompt_file or []:
        prompts.append(_read(name))
    if not prompts and not sys.stdin.isatty():
        prompts.append(_read("-"))
    return [normalize(p, _AS_TRAINED) for p in prompts] or [""]


@quiet_ctrl_c
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prompts = read_prompts(args)
    except (OSError, ValueError) as err:
        print(f"error: cannot read prompt: {err}", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        loaded = load(args.checkpoint, device, args.tokenizer)
    except (TokenizerMismatch, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    model = loaded.model
    dtype = resolve_dtype(args.dtype, torch.device(device).type, bf16_supported(device))
    print(f"model {loaded.source} (step {loaded.step}, {model.num_params() / 1e6:.1f}M params) on {device}",
          file=sys.stderr)
    if args.compile:
        model = torch.compile(model, dynamic=True)
    seed = args.seed if args.seed is not None else torch.Generator().seed()
    print(f"seed {seed}", file=sys.stderr)
    rows = [p for p in prompts for _ in range(args.num_samples)]
    # One stream per sample, seeded seed + its index: a sample is the same alone, in a batch or streamed
    # (in float32; a half dtype's rounding depends on the batch's matmul shapes).
    generators = [torch.Generator(device).manual_seed((seed + i) % (UINT64_MAX + 1)) for i in range(len(rows))]
    options = dict(bos_id=BOS_ID, stop=[_unescape(s) for s in args.stop], temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, stop_ids=(BOS_ID, SEP_ID), banned_ids=BANNED_IDS,
                   use_kv_cache=not args.no_kv_cache, dtype=dtype)
    tokenizer, stats = Encoder(loaded.tokenizer_path), CompletionStats()
    block = loaded.model.cfg.block_size
    for i, prompt in enumerate(prompts):  # as documented, but easy to miss: a long file prompt is mostly unseen
        if (n := 1 + len(tokenizer.encode(prompt))) > block:
            print(f"note: prompt {i + 1} is {n:,} tokens with its [BOS]; the model sees the last {block:,} "
                  "(its block_size)", file=sys.stderr)
    if args.stream:
        for i, prompt in enumerate(rows):
            print(("\n" + SEPARATOR + "\n" if i else "") + prompt, end="", flush=True)
            complete(model, tokenizer, [prompt], args.max_new_tokens, stats=stats, generator=generators[i : i + 1],
                     stream=lambda _row, piece: print(piece, end="", flush=True), **options)
        print()
    else:
        done = complete(model, tokenizer, rows, args.max_new_tokens, stats=stats, generator=generators, **options)
        print(f"\n{SEPARATOR}\n".join(prompt + c.text for prompt, c in zip(rows, done, strict=True)))
    print(f"{stats.new_tokens} tokens in {stats.seconds:.2f} s: {stats.tokens_per_s:.1f} tokens/s "
          f"({'KV cache' if not args.no_kv_cache else 'no KV cache'}, batch {1 if args.stream else len(rows)}, "
          f"{dtype})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
