#!/usr/bin/env python3
"""`make demo`: the whole path on the bundled Shakespeare plays, on CPU, in a few minutes.

    tokenizer -> prepare -> train (configs/tiny.yml) -> sample -> eval

Each step runs the same script its make target runs (bin/tokenizer.py, bin/prepare.py,
bin/train.py, bin/sample.py, bin/eval.py), so the demo is the documented path and nothing else.
A step whose output already exists is skipped (tokenizer.json, the store's manifest, a checkpoint
at the config's max_steps), so a rerun goes straight to sampling; `make clean` starts over.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere, installed or not

from common.cli import UINT64_MAX, number  # noqa: E402
from common.config import parse_cli  # noqa: E402
from pipeline.store_layout import MANIFEST  # noqa: E402
from train.checkpoint import latest_checkpoint  # noqa: E402
from train.config import TrainConfig  # noqa: E402


def step(number: int, name: str, script: str | None, args: list[str], skip_because: str | None = None) -> None:
    """Announce a step, then run `bin/<script>.py args` or say why it is skipped."""
    if skip_because:
        print(f"==> [{number}/5] {name}: skipped, {skip_because}", flush=True)
        return
    cmd = [sys.executable, str(ROOT / "bin" / f"{script}.py"), *args]
    print(f"==> [{number}/5] {name}: {shlex.join(['python', f'bin/{script}.py', *args])}", flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    print(f"    {name} took {time.perf_counter() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    head, tail = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="bin/demo.py", description=head, epilog=tail,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.yml", help="training preset (default configs/tiny.yml)")
    p.add_argument("--prompt", default="ROMEO:\n", help="what the sample continues (default 'ROMEO:' + newline)")
    # Typed here, with the limits bin/sample.py and bin/eval.py set, so that a typo stops the demo at once
    # rather than after minutes of training.
    p.add_argument("--max-new-tokens", type=number(int, 0), default=200,
                   help="length of the sample in tokens (default 200)")
    p.add_argument("--seed", type=number(int, 0, high=UINT64_MAX), default=1337, help="sampling seed (default 1337)")
    p.add_argument("--eval-tokens", type=number(int, 1), default=16384,
                   help="val tokens the final loss is measured on (default 16384)")
    args = p.parse_args(argv)

    started = time.perf_counter()
    os.chdir(ROOT)  # every path below, and in the configs, is relative to the repository
    cfg = parse_cli(TrainConfig, ["--config", args.config])
    cfg.resolve_out_dir(args.config)
    store = Path(cfg.data)
    if store.parent.name != "data_cache":
        print(f"error: the demo builds data_cache/<name>; {args.config} trains on {store}", file=sys.stderr)
        return 2
    latest = latest_checkpoint(cfg.out_dir)
    trained = latest is not None and int(latest.name.split("-")[1].split("_")[0]) >= cfg.max_steps > 0
    try:
        step(1, "tokenizer", "tokenizer", ["--name", store.name],
             f"{store / 'tokenizer.json'} exists" if (store / "tokenizer.json").is_file() else None)
        step(2, "prepare", "prepare", ["--name", store.name],
             f"{store / MANIFEST} exists" if (store / MANIFEST).is_file() else None)
        step(3, "train", "train", ["--config", args.config],
             f"{latest} is at max_steps={cfg.max_steps}" if trained else None)
        step(4, "sample", "sample", ["--checkpoint", cfg.out_dir, "--prompt", args.prompt, "--max-new-tokens",
                                     str(args.max_new_tokens), "--seed", str(args.seed), "--top-k", "50",
                                     "--num-samples", "2"])
        step(5, "eval", "eval", ["--checkpoint", cfg.out_dir, "--max-tokens", str(args.eval_tokens)])
    except subprocess.CalledProcessError as err:
        print(f"error: {' '.join(map(str, err.cmd[1:]))} failed with exit code {err.returncode}", file=sys.stderr)
        return 1
    print(f"==> demo done in {time.perf_counter() - started:.0f} s; sample more with "
          "make sample ARGS='--prompt \"JULIET:\"'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
