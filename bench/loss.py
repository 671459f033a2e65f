"""The loss alone on CPU: projection + cross-entropy forward and backward, the plain way (logits, then
F.cross_entropy) against model/kernels/chunked_loss.py, with the three matmuls alone as the floor.

    .venv/bin/python bench/loss.py [--rows 16384] [--dim 256] [--vocab 16384] [--reps 3] [--chunk-mib 64]

The cases take turns within each rep, so load from other processes hits them alike; medians, with
the best rep in brackets. Several --chunk-mib values time the chunked loss at each buffer size
(chunked_loss.CHUNK_BYTES; 64 MiB is 1024 rows at vocab 16384). Not a test: prints a Markdown
table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train import interleaved  # noqa: E402
from common.cli import number  # noqa: E402
from model.kernels import chunked_loss  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # A zero or negative size failed deep in torch, and --reps 0 in statistics.median after the warm-up.
    size = number(int, 1)
    ap.add_argument("--rows", type=size, default=16384, help="tokens (B x T): tiny.yml at batch 64")
    ap.add_argument("--dim", type=size, default=256)
    ap.add_argument("--vocab", type=size, default=16384)
    ap.add_argument("--reps", type=size, default=3)
    ap.add_argument("--chunk-mib", type=size, nargs="+", default=[chunked_loss.CHUNK_BYTES >> 20])
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.randn(args.rows, args.dim, requires_grad=True)
    weight = (torch.randn(args.vocab, args.dim) * 0.02).requires_grad_()
    targets = torch.randint(6, args.vocab, (args.rows,))

    def fresh(fn):
        """fn with the gradients of the previous call cleared, as a training step would."""
        def run() -> None:
            x.grad = weight.grad = None
            fn()
        return run

    @fresh
    def plain() -> None:
        F.cross_entropy(x @ weight.t(), targets, reduction="sum").backward()

    def chunked(mib: int):
        def run() -> None:
            chunked_loss.CHUNK_BYTES = mib << 20
            chunked_loss.linear_cross_entropy(x, weight, targets, 0).backward()
        return fresh(run)

    def matmuls() -> None:
        with torch.no_grad():
            logits = x @ weight.t()
            logits @ weight, logits.t() @ x

    rows = lambda mib: max(1, (mib << 20) // (4 * args.vocab))  # noqa: E731
    cases = {"plain loss": plain,
             **{f"chunked loss, {rows(mib)} rows a chunk ({mib} MiB)": chunked(mib) for mib in args.chunk_mib},
             "its 3 matmuls alone": matmuls}
    times = interleaved({name: (fn, 1) for name, fn in cases.items()}, args.reps, warmup=1)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{args.rows} rows x {args.dim} -> vocab {args.vocab}, forward + backward, torch {torch.__version__}, "
          f"2 threads\n")
    print("| case | median (best) | vs plain |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {med[name]:.3g} s ({min(t):.3g} s) | {med['plain loss'] / med[name]:.2f}x |")


if __name__ == "__main__":
    main()
