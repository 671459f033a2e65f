#!/usr/bin/env python3
"""Our Triton kernels (model/kernels) against what torch.compile makes of the same formulas, at
gpt-45m's training shape: 64 x 1024 tokens, d_model 768, vocab 16384, SwiGLU hidden 2048, 6 heads of
128, bf16 (bench/RESULTS.md's tables before 2026-11-28 are of the preset's earlier 12 x 512 shape:
d_model 512, hidden 1408, 8 heads of 64). Each case times forward + backward (GPU kernel time per
call, see `timer`) and prints ours, the compiled baseline, their ratio, and the bandwidth ours
reaches on the bytes the step must move at least. The loss kernel is also timed alone in each block strategy.

For a lent GPU machine (torch with Triton; nothing else needed). `--smoke` runs every case on CPU
at toy sizes through Triton's interpreter, uncompiled, so the script cannot fail on the GPU on a typo.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_check import cuda_missing  # noqa: E402
from common.cli import number  # noqa: E402


def timer(device):
    """fn -> milliseconds per call: on CUDA the summed time of the kernels it launches (torch.profiler),
    averaged over reps calls after warmup calls; on CPU the median wall time.

    Kernel time, not wall time between events: at one layer's size the host's launch overhead
    (custom-op dispatch, autograd, autotuner bookkeeping) can exceed the GPU work, and in a training
    step the host runs ahead of the GPU, so only the kernels' own time reaches the step time.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    def measure(fn, reps: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        if device.type != "cuda":
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(1000 * (time.perf_counter() - t0))
            return statistics.median(times)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        cuda = torch.autograd.DeviceType.CUDA
        return sum(e.self_device_time_total for e in prof.key_averages() if e.device_type == cuda) / 1e3 / reps

    return measure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy sizes on CPU in Triton's interpreter")
    # --reps 0 divided by zero on the GPU, after every compile: refused here instead.
    parser.add_argument("--reps", type=number(int, 1), default=20)
    parser.add_argument("--warmup", type=number(int, 0), default=5)
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before model.kernels defines its kernels
        args.reps, args.warmup = 1, 1
    elif cuda_missing("bench/kernels.py"):
        return 2

    import torch
    import torch.nn.functional as F

    from model import kernels
    from model.kernels import cross_entropy
    from model.layers import apply_rope, rope_tables

    device = torch.device("cpu" if args.smoke else "cuda")
    B, T, C, V, H, heads = (2, 16, 32, 300, 40, 4) if args.smoke else (64, 1024, 768, 16384, 2048, 6)
    N, D, dtype = B * T, C // heads, torch.bfloat16
    compile_ = (lambda fn: fn) if args.smoke else torch.compile
    measure = timer(device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (interpreter)"
    print(f"== kernels on {name}, torch {torch.__version__}: {B} x {T} tokens, d_model {C}, vocab {V}, "
          f"hidden {H}, {heads} heads, bf16; kernel time per call over {args.reps} calls")
    gen = torch.Generator(device).manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype)

    def fwd_bwd(fn, inputs, grads=None):
        """Forward + backward of fn(*inputs), gradients reset each call."""
        def run():
            for t in inputs:
                t.grad = None
            out = fn(*inputs)
            outs = out if isinstance(out, tuple) else (out,)
            torch.autograd.backward(outs, grads)
        return run

    rows = []

    def case(label, ours, baseline, min_bytes):
        ms_ours = measure(ours, args.reps, args.warmup)
        ms_base = measure(baseline, args.reps, args.warmup) if baseline else None
        rows.append((label, ms_ours, ms_base, min_bytes / ms_ours / 1e6))

    # The bandwidth ceiling these memory-bound kernels aim at: a device-to-device copy of 2 GB-ish.
    copy_src = rand(N, V)
    copy_dst = torch.empty_like(copy_src)
    case("copy (the bandwidth ceiling)", lambda: copy_dst.copy_(copy_src), None, 2 * copy_src.numel() * 2)

    # Loss: projection + cross-entropy, forward + backward (both sides do the same three matmuls).
    x, w = rand(N, C).requires_grad_(), rand(V, C, scale=0.05).requires_grad_()
    targets = torch.randint(1, V, (N,), generator=gen, device=device)

    def plain_loss(x, w):
        return F.cross_entropy((x @ w.t()).float(), targets, reduction="sum")

    case("projection + loss", fwd_bwd(lambda a, b: kernels.linear_cross_entropy(a, b, targets, 0), (x, w)),
         fwd_bwd(compile_(plain_loss), (x, w)), 2 * N * V * 2)

    # The loss kernel alone on ready logits, per block strategy, against compiled cross-entropy. It
    # overwrites the logits with their gradient, so calls after the first run on gradient values:
    # the same bytes and the same work, so the same time.
    logits = rand(N, V, scale=3.0)
    plain_ce = compile_(lambda z: F.cross_entropy(z.float(), targets, reduction="sum"))
    leaf = logits.clone().requires_grad_()
    defaults = cross_entropy.ONE_BLOCK_MAX, cross_entropy.STREAM_BLOCK
    for one_block_max, block, warps in ((V, 0, None), (V, 0, 8), (V, 0, 32), (0, 4096, 8), (0, 8192, 16)):
        block = min(block, 64) if args.smoke else block
        cross_entropy.ONE_BLOCK_MAX, cross_entropy.STREAM_BLOCK = one_block_max, block or defaults[1]
        label = ("one block" if one_block_max else f"streamed {block}") + (f", {warps} warps" if warps else "")
        case(f"loss kernel, {label}", lambda w=warps: cross_entropy._launch(logits, targets, 0, True, w),
             fwd_bwd(plain_ce, (leaf,)) if warps is None else None, 2 * N * V * 2)
    cross_entropy.ONE_BLOCK_MAX, cross_entropy.STREAM_BLOCK = defaults

    # SwiGLU on the up-projection's [gate | value].
    h, grad_h = rand(N, 2 * H).requires_grad_(), rand(N, H)

    def plain_swiglu(h):
        gate, value = h.chunk(2, dim=-1)
        return F.silu(gate) * value

    case("swiglu", fwd_bwd(kernels.swiglu, (h,), grad_h), fwd_bwd(compile_(plain_swiglu), (h,), grad_h),
         8 * N * H * 2)

    # RoPE + the split of [q | k | v] into attention's [B, H, T, D] views; gradients in that layout.
    qkv = rand(B, T, 3, heads, D).requires_grad_()
    cos, sin = (t.to(device) for t in rope_tables(T, D, 10000.0))
    grads = tuple(rand(B, heads, T, D) for _ in range(3))

    def ours_rope(qkv):
        return tuple(t.transpose(1, 2) for t in kernels.rope_qkv(qkv, cos, sin))

    def plain_rope(qkv):
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    case("rope + qkv split", fwd_bwd(ours_rope, (qkv,), grads), fwd_bwd(compile_(plain_rope), (qkv,), grads),
         4 * 3 * N * C * 2)

    print(f"{'case':<36} {'ours ms':>8} {'compiled ms':>12} {'speed-up':>9} {'ours GB/s':>10}")
    for label, ours, base, gbps in rows:
        base_ms, ratio = (f"{base:.3f}", f"{base / ours:.2f}x") if base else ("-", "-")
        print(f"{label:<36} {ours:>8.3f} {base_ms:>12} {ratio:>9} {gbps:>10.0f}")
    print("GB/s: the least bytes each must move (read + write) over ours' time; the card's peak bounds it.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
