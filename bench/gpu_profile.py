#!/usr/bin/env python3
"""Where a training step's GPU time goes: profile a few compiled gpt-45m steps with torch.profiler and
print the kernels' time by kind (matmul, attention, compiled elementwise/reduction, optimizer, ...),
the top kernels, and how busy the GPU was over the steps' wall time.

For a lent GPU machine (torch, numpy and pyyaml only): it trains on the synthetic store that
bench/gpu_check.py builds (or data_cache/shakespeare), in this process, with the Trainer set up as
bin/train.py sets it up (train.run.open_trainer). Arguments after the options are TrainConfig overrides
(`attention=flash model.bf16_residual=true`). `--smoke` runs the path on CPU with a tiny model.
Writes profile.txt (and with --trace a gzipped Chrome trace) under $OUT when that is set.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_check import STEADY_FROM, cuda_missing, pick_store  # noqa: E402
from common.cli import number  # noqa: E402
from common.config import parse_cli  # noqa: E402

# First matching pattern names a kernel's kind (lower-cased substrings of the kernel name).
KINDS = (
    ("ours (model/kernels)", ("_loss_and_grad_rows", "_swiglu_", "_rope_qkv_")),
    ("attention", ("flash", "fmha", "sdpa", "attention")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "wgmma", "matmul", "aten::mm", "aten::addmm", "aten::bmm")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("compiled (triton)", ("triton",)),
    ("copy/fill", ("memcpy", "memset", "copy", "fill", "cat")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KINDS if any(k in low for k in keys)), "other")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU: tests this script")
    # As many as gpu_check.py leaves out of its steady-state rates, so the two describe the same steps.
    # --steps 0 divided by zero on the GPU after the warm-up's compile: refused here instead.
    parser.add_argument("--warmup", type=number(int, 0), default=STEADY_FROM,
                        help="steps before profiling, compile included (default %(default)s)")
    parser.add_argument("--steps", type=number(int, 1), default=5, help="profiled steps")
    parser.add_argument("--micro-batch", type=number(int, 1), default=64)
    parser.add_argument("--tokens", type=number(int, 1), default=50_000_000, help="synthetic store size in tokens")
    parser.add_argument("--vocab", type=number(int, 7), default=16384)
    parser.add_argument("--top", type=number(int, 1), default=20, help="kernels listed")
    parser.add_argument("--trace", action="store_true", help="also write trace.json.gz (Chrome/Perfetto)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/smallgpt-gpu-profile"))
    args, overrides = parser.parse_known_args(argv)
    if args.smoke:
        args.warmup, args.steps, args.micro_batch, args.tokens, args.vocab = 2, 2, 4, 200_000, 512
    elif cuda_missing("bench/gpu_profile.py"):
        return 2
    out = Path(os.environ.get("OUT") or REPO / "runs" / "gpu-profile")
    out.mkdir(parents=True, exist_ok=True)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from train.config import TrainConfig
    from train.run import open_trainer

    store = pick_store(args, args.work_dir)
    run_dir = args.work_dir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    preset = REPO / ("configs/tiny.yml" if args.smoke else "configs/gpt-45m.yml")
    base = ["--config", str(preset), f"data={store}", f"out_dir={run_dir}", "resume=none",
            f"max_steps={args.warmup + args.steps}", f"micro_batch={args.micro_batch}", "grad_accum=1",
            "eval_batches=0", "ckpt_interval=0", "log_interval=1000000"]
    base += (["device=cpu", "dtype=float32", "model.n_layer=2", "model.n_head=2", "model.d_model=64",
              "model.block_size=64"] if args.smoke else ["device=cuda", "dtype=bfloat16", "compile=true"])
    cfg = parse_cli(TrainConfig, [*base, *overrides], prog="bench/gpu_profile.py")
    cuda = cfg.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with open_trainer(cfg, log=lambda _msg: None) as trainer:
        for _ in range(args.warmup):
            trainer.train_step()
        sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step()
            sync()
            wall = (time.perf_counter() - t0) / args.steps

    device_type = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    per_kernel: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        if cuda and evt.device_type == device_type:
            per_kernel[evt.key] += evt.self_device_time_total / 1e3 / args.steps  # ms per step
        elif not cuda and evt.key.startswith("aten::"):
            per_kernel[evt.key] += evt.self_cpu_time_total / 1e3 / args.steps
    by_kind: dict[str, float] = defaultdict(float)
    for name, ms in per_kernel.items():
        by_kind[kind_of(name)] += ms
    busy = sum(per_kernel.values())
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    tokens = cfg.micro_batch * cfg.grad_accum * cfg.model.block_size
    lines = [f"== profile on {device} (torch {torch.__version__}): {args.steps} steps of {tokens:,} tokens "
             f"after {args.warmup} warmup steps, "
             f"attention={cfg.attention}, overrides: {' '.join(overrides) or '-'}",
             f"step wall {wall * 1e3:.1f} ms | {'kernels' if cuda else 'aten ops'} {busy:.1f} ms "
             f"({100 * busy / (wall * 1e3):.0f}% busy) | {tokens / wall:,.0f} tok/s", ""]
    lines += [f"{kind:<20} {ms:8.2f} ms {100 * ms / busy:5.1f}%" for kind, ms in
              sorted(by_kind.items(), key=lambda kv: -kv[1])]
    lines += ["", f"top {args.top}:"]
    lines += [f"{ms:8.3f} ms {100 * ms / busy:5.1f}%  {kind_of(name):<18} {name[:110]}" for name, ms in
              sorted(per_kernel.items(), key=lambda kv: -kv[1])[: args.top]]
    report = "\n".join(lines)
    print(report)
    (out / "profile.txt").write_text(report + "\n")
    if args.trace:
        trace = args.work_dir / "trace.json"
        prof.export_chrome_trace(str(trace))
        with open(trace, "rb") as src, gzip.open(out / "trace.json.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
