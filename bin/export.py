#!/usr/bin/env python3
"""Export a trained model to a folder that loads without unpickling anything.

    python bin/export.py [--checkpoint runs/tiny] --out exports/tiny

The folder holds model.safetensors (weights; metadata: tokenizer sha256, step, source checkpoint, store),
config.json (the GPTConfig fields) and tokenizer.json. Load it back with
`train.export.load("exports/tiny")`, or sample from it with `bin/sample.py --checkpoint exports/tiny`.
The checkpoint itself is read with torch.load(weights_only=True) only: it is untrusted input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, installed or not

from common.cli import path_arg, quiet_ctrl_c  # noqa: E402
from train.export import TokenizerMismatch, export, load  # noqa: E402


@quiet_ctrl_c
def main(argv: list[str] | None = None) -> int:
    head, tail = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="bin/export.py", description=head, epilog=tail,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=path_arg, default="runs/tiny",
                   help="run directory (its newest complete checkpoint), checkpoint directory or export folder "
                        "(default runs/tiny)")
    p.add_argument("--tokenizer", type=path_arg,
                   help="tokenizer.json instead of the run's (verified against the checkpoint)")
    p.add_argument("--out", required=True, type=path_arg,
                   help="folder to write (created; an earlier export in it is replaced; "
                        "a token store, a folder of stores or a run's folder is refused)")
    args = p.parse_args(argv)
    try:
        loaded = load(args.checkpoint, "cpu", args.tokenizer)
    except (TokenizerMismatch, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        out = export(loaded, args.out)
    except (OSError, ValueError) as err:  # --out an existing file, unwritable, disk full, ...
        print(f"error: cannot export: {err}", file=sys.stderr)
        return 1
    print(f"exported {loaded.source} (step {loaded.step}, {loaded.model.num_params() / 1e6:.1f}M params) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
