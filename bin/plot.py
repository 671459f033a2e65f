#!/usr/bin/env python3
"""Plot train and validation loss against tokens seen, from a run directory's metrics.jsonl.

    python bin/plot.py [RUN_DIR] [--out FILE.png]

RUN_DIR defaults to the most recently updated run under runs/; the PNG to RUN_DIR/loss.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # no display needed (servers, CI)
import matplotlib.pyplot as plt  # noqa: E402

from train.metrics import read_metrics  # noqa: E402


def newest_run(root: Path = Path("runs")) -> Path | None:
    logs = sorted(root.glob("*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    return logs[-1].parent if logs else None


def plot(run_dir: Path, out: Path) -> Path:
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [(r["tokens"], r["loss"]) for r in records if r.get("loss") is not None and "tokens" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train and not val:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: no loss records to plot")
    fig, ax = plt.subplots(figsize=(8, 5))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss", markersize=4)
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/plot.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path,
                        help="run directory holding metrics.jsonl (default: the newest under runs/)")
    parser.add_argument("--out", type=Path, help="PNG to write (default RUN_DIR/loss.png)")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or newest_run()
    if run_dir is None:
        print("error: no run directory given and none under runs/ (train first: make train)", file=sys.stderr)
        return 2
    if not (run_dir / "metrics.jsonl").is_file():
        print(f"error: {run_dir}: no such run directory (no metrics.jsonl in it)", file=sys.stderr)
        return 1
    try:
        out = plot(run_dir, args.out or run_dir / "loss.png")
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
