#!/usr/bin/env python3
"""Which shape should gpt-45m have? Train the preset and other shapes of about its size on a real-text
store, at equal tokens and at equal GPU time, and compare validation loss: the quality half of the
question that `make gpu-check` answers only for speed. Its first run (bench/RESULTS.md) moved the
preset from 12 x 512 to 5 x 768.

Runs, in order, each a compiled bf16 bin/train.py process on the GPU:
  base         gpt-45m as configured (5 x 768), --steps steps
  NAME         another shape from gpu_check.RUNS (deep512: 12 x 512, the preset before; wide128:
               7 x 640), --steps steps: the same tokens as base
  NAME-time    the same candidate for --steps x (base's step time / its own) steps: the same GPU time
               as base, from the steady step times just measured

Every run draws the same training windows at the same step and scores the same validation windows
(both follow from the seed, not from the model), with the preset's LR schedule over its own length
(warmup min(200, steps / 10)), and evaluates four times, the last at its last step. A candidate's
two runs share a compile cache (the graph is the same; only max_steps differs). One seed per call
(`--seed`): how far another seed moves the losses is not measured by it.

    python bench/doc_corpus.py /tmp/doc-corpus          # the real-text corpus (Debian's docs)
    make prepare ARGS="--data /tmp/doc-corpus/jsonl --name debian-docs --clean-preset minimal --val-fraction 0.03"
    python bench/shapes.py --store data_cache/debian-docs  # on the GPU; logs and shapes.json under $OUT

`--smoke` runs the same path on CPU with tiny shapes on a synthetic store (tests/bench/test_shapes.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_check import (  # noqa: E402
    OTHER_SHAPES,
    RUNS,
    SMOKE_SHAPE,
    STEADY_FROM,
    cuda_missing,
    fmt,
    run_args,
    run_timeout,
    run_training,
    summarise,
    synthetic_store,
)
from common.cli import number  # noqa: E402
from train.metrics import read_metrics  # noqa: E402

# --smoke: gpu_check's tiny base and a candidate of another shape, so the equal-time step count differs.
SMOKE_SHAPES = {"base": SMOKE_SHAPE,
                "candidate": ["model.n_layer=1", "model.n_head=2", "model.d_model=96", "model.block_size=64"]}


def train_args(args: argparse.Namespace, store: Path, out_dir: Path, steps: int) -> list[str]:
    return [*run_args(args.smoke, store, out_dir, steps, args.micro_batch, args.log_interval),
            f"warmup_steps={min(200, max(steps // 10, 1))}", f"eval_interval={-(-steps // 4)}",
            f"eval_batches={args.eval_batches}", f"seed={args.seed}", f"compile={str(not args.smoke).lower()}"]


def curve(run_dir: Path) -> list[tuple[int, float]]:
    """(tokens seen, val_loss) at each evaluation."""
    return [(r["tokens"], r["val_loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r]


def plan_runs(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(run name, shape name, overrides) of the equal-token runs; the equal-time ones are planned later."""
    if args.smoke:
        return [("base", "base", SMOKE_SHAPES["base"]),
                *((name, name, SMOKE_SHAPES["candidate"]) for name in args.candidates)]
    return [("base", "base", []), *((name, name, RUNS[name]) for name in args.candidates)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, a few steps: tests this script")
    parser.add_argument("--store", type=Path, help="the token store to train and score on (--smoke: synthetic)")
    parser.add_argument("--candidates", default=",".join(OTHER_SHAPES),
                        help=f"comma-separated, from {', '.join(OTHER_SHAPES)} (default: all)")
    parser.add_argument("--steps", type=number(int, 4), default=None, help="base's steps (default 900; smoke 40)")
    parser.add_argument("--micro-batch", type=number(int, 1), default=None, help="sequences per step (default 64)")
    parser.add_argument("--eval-batches", type=number(int, 1), default=32)
    parser.add_argument("--log-interval", type=number(int, 1), default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=number(float, 0, above=True), default=200.0,
                        help="seconds allowed per training run (base's 900 steps take ~100 s on an H200)")
    parser.add_argument("--budget", type=number(float, 0), default=540.0,
                        help="seconds for the whole call; a run that cannot start with 60 s left is skipped")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/smallgpt-shapes"))
    args = parser.parse_args(argv)
    args.candidates = [c for c in args.candidates.split(",") if c]
    if not set(args.candidates) <= set(OTHER_SHAPES):
        parser.error(f"--candidates takes {', '.join(OTHER_SHAPES)}; got {','.join(args.candidates)!r}")
    if not args.smoke and args.store is None:
        parser.error("--store is required (a real-text store: see this script's --help)")
    deadline = time.monotonic() + args.budget
    args.steps = args.steps or (40 if args.smoke else 900)
    args.micro_batch = args.micro_batch or (4 if args.smoke else 64)
    steady_from = args.steps // 2 if args.smoke else STEADY_FROM
    out = Path(os.environ.get("OUT") or REPO / "runs" / "shapes")

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__} | device {device}")
    if not args.smoke and cuda_missing("bench/shapes.py"):
        return 2
    store = args.store or synthetic_store(args.work_dir / "store", 400_000, 512).root
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}

    def run(name: str, shape: str, overrides: list[str], steps: int) -> dict | None:
        left = deadline - time.monotonic()
        timeout = run_timeout(left, args.timeout)
        if timeout is None:
            results[name] = {"skipped": f"{left:.0f} s of --budget left"}
            print(f"skipped {name}: {results[name]['skipped']}", flush=True)
            return None
        run_dir = args.work_dir / name
        shutil.rmtree(run_dir, ignore_errors=True)
        caches = args.work_dir / f"{shape}-caches"
        env = {"TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"), "TRITON_CACHE_DIR": str(caches / "triton")}
        code, wall = run_training([*train_args(args, store, run_dir, steps), *overrides], out / f"train_{name}.log",
                                  timeout, env)
        results[name] = summarise(run_dir, code, wall, steady_from) | {
            "shape": shape, "overrides": overrides, "planned_steps": steps, "curve": curve(run_dir)}
        (out / "shapes.json").write_text(json.dumps(results, indent=2) + "\n")
        return results[name]

    for caches in args.work_dir.glob("*-caches"):  # cold caches per call: compile times compare
        shutil.rmtree(caches, ignore_errors=True)
    base = None
    for name, shape, overrides in plan_runs(args):
        result = run(name, shape, overrides, args.steps)
        if name == "base":
            base = result
            continue
        if not (base and result and base["step_s"] and result["step_s"]):
            continue
        run(f"{name}-time", shape, overrides, round(args.steps * base["step_s"] / result["step_s"]))

    print(f"\n== shapes on {device} (torch {torch.__version__}), store {store}, base {args.steps} steps of "
          f"{args.micro_batch} windows")
    print(f"{'run':<14} {'exit':>4} {'params':>7} {'steps':>6} {'Mtok':>6} {'step ms':>8} {'MFU':>6} "
          f"{'GPU time s':>10} {'val loss':>9} {'vs base':>8}")
    base_val = (results.get("base") or {}).get("val_loss")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<14} skipped: {r['skipped']}")
            continue
        gpu_time = r["step_s"] and r["steps"] * r["step_s"]
        tokens = r["curve"][-1][0] / 1e6 if r["curve"] else None
        delta = r["val_loss"] - base_val if r["val_loss"] is not None and base_val is not None else None
        print(f"{name:<14} {r['exit_code']:>4} {fmt(r['params'] and r['params'] / 1e6, '.1f'):>6}M {r['steps']:>6} "
              f"{fmt(tokens, '.1f'):>6} {fmt(r['step_s'] and 1000 * r['step_s'], '.1f'):>8} "
              f"{fmt(r['mfu'] and 100 * r['mfu'], '.1f%'):>6} {fmt(gpu_time, '.1f'):>10} "
              f"{fmt(r['val_loss'], '.4f'):>9} {fmt(delta, '+.4f'):>8}")
    for name, r in results.items():
        if r.get("curve"):
            print(f"  {name} val loss by Mtokens: " + ", ".join(f"{t / 1e6:.1f}: {v:.4f}" for t, v in r["curve"]))
    print(f"summary: {out / 'shapes.json'}")
    return 0 if all(r.get("exit_code") == 0 for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
