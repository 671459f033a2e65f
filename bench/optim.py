"""Optimizer and LR-schedule comparison on CPU: the `tiny` preset trained on the Shakespeare store
(built by the pipeline into a temp folder first, ~10 s) under each optimizer + schedule pair.

    .venv/bin/python bench/optim.py [--steps 300] [--runs adamw+cosine muon+cosine adamw+wsd muon+wsd]
                                    [--evals 3] [--eval-batches 32] [--config configs/tiny.yml]

Every run starts from the same seed (the same initial weights and the same batches, step by step),
takes the preset's lr, min_lr, warmup and weight decay with max_steps=--steps, and is evaluated on
the same val windows every --steps/--evals steps. The first run named is the baseline. Seconds per
step are the median over the log windows after the first (which holds the first step's warm-up);
the runs go one after another, so load from other processes can tilt them. Prints a Markdown table
with the val losses and seconds per step, and each as a ratio to the baseline's.

Not a test: one seed, one short run each; a loss gap of a few hundredths is within seed noise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# Run as `python bench/optim.py`, this file's folder comes first on the path and its `train.py`
# would shadow the `train` package: put the repository root there instead.
sys.path[0] = str(ROOT)

from common.cli import number  # noqa: E402
from common.config import ConfigError, from_dict, load_yaml  # noqa: E402
from pipeline.config import PrepareConfig  # noqa: E402
from pipeline.prepare import prepare  # noqa: E402
from train.config import LR_SCHEDULES, OPTIMIZERS, TrainConfig  # noqa: E402
from train.metrics import read_metrics  # noqa: E402
from train.run import train  # noqa: E402

RUNS = tuple(f"{opt}+{schedule}" for schedule in ("cosine", "wsd") for opt in OPTIMIZERS)


def run_pair(text: str) -> str:
    """An argparse `type=` for OPTIMIZER+SCHEDULE, e.g. muon+wsd."""
    opt, _, schedule = text.partition("+")
    if opt not in OPTIMIZERS or schedule not in LR_SCHEDULES:
        raise argparse.ArgumentTypeError(f"expected OPTIMIZER+SCHEDULE with OPTIMIZER one of {', '.join(OPTIMIZERS)} "
                                         f"and SCHEDULE one of {', '.join(LR_SCHEDULES)}, got {text!r}")
    return text


def build_store(root: Path) -> Path:
    """The Shakespeare store as `make prepare` builds it (tokenizer included), under root; its summary
    goes to stderr, leaving stdout to the table."""
    with contextlib.redirect_stdout(sys.stderr):
        return prepare(PrepareConfig(out=str(root), quiet=True))


def run_config(preset: dict, store: Path, out_dir: Path, pair: str, steps: int, evals: int,
               eval_batches: int) -> TrainConfig:
    opt, schedule = pair.split("+")
    return from_dict(TrainConfig, {
        **preset, "data": str(store), "out_dir": str(out_dir), "optimizer": opt, "lr_schedule": schedule,
        "max_steps": steps, "eval_interval": max(steps // evals, 1), "eval_batches": eval_batches,
        "ckpt_interval": 0, "keep_last": 1, "init_batch": False, "device": "cpu", "resume": "none",
    })


def measure(cfg: TrainConfig) -> dict:
    """Train cfg to its end; val losses by step and the median seconds per step."""
    train(cfg, log=lambda _line: None)
    records = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    step_s = [r["step_s"] for r in records if "step_s" in r][1:]
    return {"val": {r["step"]: r["val_loss"] for r in records if "val_loss" in r},
            "step_s": statistics.median(step_s) if step_s else float("nan")}


def table(results: dict[str, dict]) -> str:
    baseline = next(iter(results.values()))
    steps = sorted(baseline["val"])
    head = ["run", *(f"val loss @{s}" for s in steps), "x baseline (end)", "s/step", "x baseline"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    end = steps[-1]
    for pair, r in results.items():
        rows.append("| " + " | ".join([
            pair, *(f"{r['val'][s]:.4f}" for s in steps), f"{r['val'][end] / baseline['val'][end]:.3f}",
            f"{r['step_s']:.3f}", f"{r['step_s'] / baseline['step_s']:.2f}"]) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=number(int, 1), default=300, help="optimizer steps per run")
    ap.add_argument("--runs", nargs="+", type=run_pair, default=list(RUNS),
                    help="OPTIMIZER+SCHEDULE pairs, the first being the baseline")
    ap.add_argument("--evals", type=number(int, 1), default=3, help="evaluations per run, the last at the end")
    ap.add_argument("--eval-batches", type=number(int, 1), default=32,
                    help="val micro-batches per evaluation (the preset's micro_batch windows each)")
    ap.add_argument("--config", default=str(ROOT / "configs/tiny.yml"))
    args = ap.parse_args(argv)
    if len(set(args.runs)) != len(args.runs):
        ap.error("--runs: a pair is named twice")
    try:  # read before the store is built: a bad file is one line, at once
        preset = load_yaml(args.config)
        from_dict(TrainConfig, preset, where=args.config)
    except ConfigError as err:
        ap.error(f"--config {args.config}: {err}")

    with tempfile.TemporaryDirectory(prefix="bench-optim-") as tmp:
        store = build_store(Path(tmp) / "stores")
        results = {}
        for pair in args.runs:
            cfg = run_config(preset, store, Path(tmp) / pair, pair, args.steps, args.evals, args.eval_batches)
            results[pair] = measure(cfg)
            val = ", ".join(f"@{step} {loss:.4f}" for step, loss in sorted(results[pair]["val"].items()))
            print(f"{pair}: val loss {val}; {results[pair]['step_s']:.3f} s/step", file=sys.stderr, flush=True)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, {datetime.date.today()}: {Path(args.config).name}, {args.steps} steps, "
          f"val on {args.eval_batches} x {preset.get('micro_batch', TrainConfig.micro_batch)} windows\n")
    print(table(results))


if __name__ == "__main__":
    main()
