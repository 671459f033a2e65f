#!/usr/bin/env python3
"""Loss, perplexity and bits per byte of a trained model on a token store split or on text files.

    python bin/eval.py [--checkpoint runs/tiny] [--data STORE] [--split val] [--max-tokens N]
    python bin/eval.py --checkpoint runs/tiny --text notes.txt more.jsonl

The tokens are cut into consecutive windows of block_size + 1 that overlap by one token, so every
token after the first is predicted exactly once, from up to block_size tokens of context within its
window (the windows' predictions do not overlap; the last window may be shorter). --max-tokens
stops after that many predictions.

Store: the default is the store the model was trained on (its val split). Text files go through
the pipeline's own reader (.jsonl/.json/.csv/.parquet/.md, compressed or not; a .txt file named
here is one document, while a folder is searched for the pipeline's formats only, as prepare does),
its cleaning (--clean-preset) and the model's tokenizer: every document becomes [BOS] + ids, as in
a store. Bits per byte = total nats / ln 2 / UTF-8 bytes of the cleaned text covered:
the bytes of the predicted tokens themselves (a byte-level tokenizer's ids spell the text exactly),
so under --max-tokens too it divides by the bytes actually scored.

--dtype: each forward runs under autocast in this dtype, with the trainer's rule and context
(common/precision.py), so on a GPU the numbers are the trainer's val loss numerics: auto is bfloat16
there, float32 on the CPU. The report names the dtype.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, installed or not

from common.cli import number, path_arg, quiet_ctrl_c, resolve_device  # noqa: E402
from common.config import ConfigError, from_dict  # noqa: E402
from common.precision import DTYPES, autocast, bf16_supported, resolve_dtype  # noqa: E402
from model.gpt import GPT  # noqa: E402
from pipeline.chunks import with_bos  # noqa: E402
from pipeline.clean import PRESETS, CleanConfig, CleanStats, clean_text, full_clean  # noqa: E402
from pipeline.fast_encode import Encoder  # noqa: E402
from pipeline.readers import BadFileError  # noqa: E402
from pipeline.store import StoreError, TokenStore  # noqa: E402
from train.export import LoadedModel, TokenizerMismatch, load  # noqa: E402

READ_TOKENS = 1 << 20  # a store split is read in pieces of this many tokens, so memory stays bounded


def windows(arrays: Iterable[np.ndarray], size: int, max_tokens: int | None = None) -> Iterator[np.ndarray]:
    """Consecutive windows of up to size + 1 tokens over the concatenated arrays, each starting at the
    previous one's last token; at most max_tokens predictions (window lengths minus one) in all."""
    budget = None if max_tokens is None else max_tokens + 1
    carry = np.zeros(0, dtype=np.int64)
    for arr in arrays:
        for lo in range(0, len(arr), READ_TOKENS):
            if budget == 0:
                break
            piece = np.asarray(arr[lo : lo + READ_TOKENS], dtype=np.int64)[:budget]
            budget = None if budget is None else budget - len(piece)
            buf = np.concatenate([carry, piece])
            full = (len(buf) - 1) // size
            for i in range(full):
                yield buf[i * size : (i + 1) * size + 1]
            carry = buf[full * size :]
    if len(carry) >= 2:
        yield carry


@torch.no_grad()
def score(model: GPT, wins: Iterable[np.ndarray], batch_size: int, text_bytes: np.ndarray,
          dtype: str = "float32") -> tuple[float, int, int]:
    """(total nats, predicted tokens, their bytes of text by `text_bytes[id]`) over the windows,
    batched by equal length; each forward under `dtype` autocast, as the trainer's evaluation runs."""
    device = model.wte.weight.device
    model.eval()
    nats, count, covered = 0.0, 0, 0
    batch: list[np.ndarray] = []

    def flush() -> None:
        nonlocal nats, count, covered
        stacked = np.stack(batch)
        covered += int(text_bytes[stacked[:, 1:]].sum())
        x = torch.from_numpy(stacked).to(device)
        with autocast(device.type, dtype):
            _, loss = model(x[:, :-1], x[:, 1:], return_logits=False)
        n = int((x[:, 1:] != model.cfg.pad_id).sum())  # the model's loss is the mean over these
        nats, count = nats + float(loss) * n, count + n
        batch.clear()

    for w in wins:
        if batch and (len(batch) == batch_size or len(w) != len(batch[0])):
            flush()
        batch.append(w)
    if batch:
        flush()
    return nats, count, covered


def report(nats: float, count: int, text_bytes: int) -> dict:
    """Loss (nats/token), perplexity and bits per byte (None where the tokens held no text)."""
    if count == 0:
        raise ValueError("nothing to evaluate: fewer than two tokens")
    loss = nats / count
    return {"tokens": count, "loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "bits_per_byte": nats / math.log(2) / text_bytes if text_bytes else None}


def eval_store(loaded: LoadedModel, root: str, split: str, max_tokens: int | None, batch_size: int,
               dtype: str = "float32") -> dict:
    store = TokenStore(root)
    if store.tokenizer_sha256 != loaded.tokenizer_sha256:
        raise TokenizerMismatch(f"{root} was tokenized with sha256 {store.tokenizer_sha256[:12]}..., the model "
                                f"with {loaded.tokenizer_sha256[:12]}...: its ids mean other things to the model")
    info = store.manifest["splits"][split]
    if info["tokens"] < 2:  # say which split is empty and what to do, not "fewer than two tokens"
        built = " (built with --val-fraction 0)" if store.manifest.get("split", {}).get("val_fraction") == 0 else ""
        hint = f"{built}; evaluate on --split train, or on files with --text" if split == "val" else ""
        raise ValueError(f"{root}: its {split} split holds {info['tokens']} token(s), nothing to evaluate{hint}")
    text_bytes = Encoder(loaded.tokenizer_path, engine="hf").text_bytes()  # nothing to encode: HF loads fastest
    nats, count, covered = score(loaded.model, windows(store.shards(split), loaded.model.cfg.block_size, max_tokens),
                                 batch_size, text_bytes, dtype)
    return {"source": f"{root} {split}", **report(nats, count, covered)}


def store_manifest(root: str | None) -> dict | None:
    """The manifest of the store at `root`, or None where there is no readable store."""
    try:
        return TokenStore(root).manifest if root else None
    except StoreError:
        return None


def clean_config(preset: str, manifest: dict | None, looked: str) -> CleanConfig:
    """`store`: the cleaning the store applied (from its manifest; minimal if it records none). A store
    that is not found is an error, not a quiet fallback to another preset: the same command would then
    score differently depending on the directory it runs in."""
    if preset != "store":
        return CleanConfig.for_source(preset)
    if manifest is None:
        raise ValueError(f"--clean-preset store: the training store's cleaning is unknown: no store found at "
                         f"{looked}; pass --data STORE (the store the model was trained on) or --clean-preset "
                         f"({', '.join(PRESETS)})")
    try:
        return from_dict(CleanConfig, manifest["clean"], where="store manifest")
    except (KeyError, TypeError, ConfigError):
        print("note: the training store records no cleaning; using the minimal preset", file=sys.stderr)
        return CleanConfig.for_source("minimal")


def eval_texts(loaded: LoadedModel, paths: list[str], clean: CleanConfig, max_tokens: int | None,
               batch_size: int, text_field: str = "text", csv_column: str = "text", dtype: str = "float32") -> dict:
    stats = CleanStats()
    docs: list[str] = []
    for path in paths:
        if path.endswith(".txt"):  # not a pipeline input format: the whole file is one document
            cleaned, _ = clean_text(Path(path).read_text(encoding="utf-8", errors="replace"), clean, stats)
            docs += [cleaned] if cleaned is not None else []
        else:
            docs += full_clean([path], clean, stats, text_field=text_field, csv_column=csv_column)
    if stats.documents_in == 0:  # nothing read, so cleaning is not the culprit
        raise ValueError(f"no documents read from {' '.join(paths)} (is the text under another field than "
                         f"{text_field!r} / CSV column {csv_column!r}? see --text-field, --csv-column)")
    if not docs:
        # The minimal preset drops only empty documents: suggesting it again would go in circles.
        hint = ("the minimal preset drops only empty ones, so the files hold no text"
                if clean == CleanConfig.for_source("minimal")
                else "try --clean-preset minimal")
        raise ValueError(f"cleaning dropped every document ({dict(stats.dropped)}); {hint}")
    encoder = Encoder(loaded.tokenizer_path)
    ids, lengths = encoder.encode_to_array(docs)
    ids, _ = with_bos(ids, lengths, encoder.bos_id)
    nats, count, covered = score(loaded.model, windows([ids], loaded.model.cfg.block_size, max_tokens), batch_size,
                                 encoder.text_bytes(), dtype)
    result = report(nats, count, covered)
    dropped = stats.documents_in - stats.documents_kept
    return {"source": " ".join(paths), "documents": len(docs), "dropped_by_cleaning": dropped, **result}


def build_parser() -> argparse.ArgumentParser:
    head, tail = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="bin/eval.py", description=head, epilog=tail,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=path_arg, default="runs/tiny",
                   help="run directory, checkpoint directory or export folder (default runs/tiny)")
    p.add_argument("--tokenizer", type=path_arg,
                   help="tokenizer.json instead of the run's (verified against the model)")
    p.add_argument("--data", type=path_arg, help="token store directory (default: the one the model was trained on)")
    p.add_argument("--split", choices=("train", "val"), help="store split (default val; not with --text)")
    p.add_argument("--text", type=path_arg, nargs="+", help="evaluate on these files instead of a store")
    p.add_argument("--clean-preset", default="store", choices=("store", *PRESETS),
                   help="cleaning for --text: store (what the training store used; default) or a preset")
    p.add_argument("--text-field", help="JSON field of the text for --text (default: the store's, else text)")
    p.add_argument("--csv-column", help="CSV column of the text for --text (default: the store's, else text)")
    p.add_argument("--max-tokens", type=number(int, 1), help="stop after this many predicted tokens (default: all)")
    p.add_argument("--batch-size", type=number(int, 1), default=8, help="windows per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ... (default auto)")
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="autocast dtype of the forward passes, as in the trainer's evaluation: auto (bfloat16 on a "
                        "GPU with native bf16, else float16; float32 on the CPU) | float32 | bfloat16 | float16; "
                        "the loss itself is summed in float32 (default auto)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


@quiet_ctrl_c
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.text and args.split:  # it would be ignored: the files are scored whole
        parser.error("--split chooses a store's split; --text files are scored whole, so give one or the other")
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dtype = resolve_dtype(args.dtype, torch.device(device).type, bf16_supported(device))
    try:
        loaded = load(args.checkpoint, device, args.tokenizer)
        data = args.data or loaded.data
        if args.text:
            # The store says how its documents were read and cleaned; --text files are read the same way.
            manifest = store_manifest(data)
            looked = args.data or ", ".join(loaded.data_looked) or "(the checkpoint names no store)"
            clean = clean_config(args.clean_preset, manifest, looked)
            result = eval_texts(loaded, args.text, clean, args.max_tokens, args.batch_size,
                                text_field=args.text_field or (manifest or {}).get("text_field") or "text",
                                csv_column=args.csv_column or (manifest or {}).get("csv_column") or "text",
                                dtype=dtype)
        else:
            if not data:
                raise ValueError(f"{args.checkpoint} does not say which store it was trained on; pass --data")
            result = eval_store(loaded, data, args.split or "val", args.max_tokens, args.batch_size, dtype)
    except (TokenizerMismatch, StoreError, BadFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a --text file missing, a folder, unreadable: `error: notes.txt: No such file ...`
        print(f"error: {err.filename}: {err.strerror}" if err.filename else f"error: {err}", file=sys.stderr)
        return 1
    result = {"model": str(loaded.source), "step": loaded.step, "dtype": dtype, **result}
    if args.json:
        print(json.dumps(result))
    else:
        bpb = "n/a" if result["bits_per_byte"] is None else f"{result['bits_per_byte']:.4f}"
        print(f"{result['model']} (step {result['step']}) on {result['source']}: {result['tokens']:,} tokens, "
              f"{dtype}\n"
              f"loss {result['loss']:.4f} | perplexity {result['perplexity']:.2f} | bits/byte {bpb}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
