"""Compile every Triton kernel the model launches for real GPUs, on a machine without one.

Triton's interpreter (what the CPU tests run) executes kernels as numpy code: it never type-checks
them the way the compiler does, so a kernel can pass every CPU test and still fail to build on the
first GPU it meets (and a lent GPU session is short). This script runs the model's forward and
backward on CPU with the kernels switched on, but with each kernel's launch replaced by a recorder;
each recorded launch (argument types, constexprs, warps; every autotune setting for the tuned ones) is
then compiled ahead of time to a cubin for each target architecture, with the ptxas that ships in
Triton's wheel. Nothing runs on a device; a failure names the kernel, target and settings.

Each architecture gets the dtype the trainer would pick there (bf16 from sm_80 on, else fp16). The
first one listed (sm_90: H100, H200) gets every autotune setting, the others the first setting of each
tuned kernel, the one the interpreter tests run, which keeps the default run under a minute.

    python tests/model/sm_compile.py [--arch 90 80 75] [--preset configs/gpt-45m.yml ...]

Run in a process of its own: whether a kernel is interpreted is fixed when Triton first defines it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ["TRITON_INTERPRET"] = "0"
# Triton 3.9 warns unless told; enabled is its default and that of the device image's 3.6.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
from script_loader import load_script  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

from common.config import parse_cli  # noqa: E402
from model import kernels  # noqa: E402
from model.gpt import GPT  # noqa: E402
from model.kernels import cross_entropy, rope, swiglu_kernel  # noqa: E402
from train.config import TrainConfig  # noqa: E402

KERNELS = {
    "loss_and_grad_rows": cross_entropy._loss_and_grad_rows,
    "rope_qkv_fwd": rope._rope_qkv_fwd,
    "rope_qkv_bwd": rope._rope_qkv_bwd,
    "swiglu_fwd": swiglu_kernel._swiglu_fwd,
    "swiglu_bwd": swiglu_kernel._swiglu_bwd,
}
TRITON_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int64: "i64",
                 torch.int32: "i32"}
# The shapes `make gpu-check` times beside the presets' own (its other runs switch kernels off or
# compile), and a vocabulary wider than the loss kernel holds in registers, which takes its streamed path.
GPU_CHECK = load_script("gpu_check", "bench")
EXTRA_SHAPES = [*(("configs/gpt-45m.yml", GPU_CHECK.RUNS[name]) for name in GPU_CHECK.OTHER_SHAPES),
                ("configs/tiny.yml", ["model.vocab_size=50304"])]


def _arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + TRITON_DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


class Recorder:
    """Stands in for one kernel's launch: keeps (signature, constexprs, options) of each distinct call."""

    def __init__(self, name: str, kernel):
        self.name, self.kernel, self.launches = name, kernel, {}

    def __call__(self, *args, grid, warmup, **kwargs):
        fn = _jit_function(self.kernel)
        settings = ([dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in self.kernel.configs]
                    if isinstance(self.kernel, Autotuner) else [{}])
        bound = dict(zip(fn.arg_names, args, strict=False)) | kwargs  # the rest come as kwargs
        for number, setting in enumerate(settings):
            values = bound | setting
            options = {k: values.pop(k) for k in ("num_warps", "num_stages") if k in values}
            signature = {p.name: "constexpr" if p.is_constexpr else _arg_type(values[p.name]) for p in fn.params}
            constexprs = {p.name: values[p.name] for p in fn.params if p.is_constexpr}
            key = repr((signature, constexprs, options))
            self.launches[key] = (signature, constexprs, options, number == 0)


def _jit_function(kernel):
    return kernel.fn if isinstance(kernel, Autotuner) else kernel


def record(presets: list[tuple[str, list[str]]], dtype: torch.dtype) -> dict[str, Recorder]:
    """Forward + backward of each preset's model (one layer, 2 x 64 tokens, the preset's widths) under
    autocast to dtype, every kernel switched on, launches recorded instead of run."""
    recorders = {name: Recorder(name, k) for name, k in KERNELS.items()}
    for name, recorder in recorders.items():
        KERNELS[name].run = recorder
    kernels.usable = lambda t: True
    for path, overrides in presets:
        cfg = parse_cli(TrainConfig, ["--config", str(REPO / path), *overrides]).model
        cfg.block_size, cfg.n_layer = 64, 1  # every layer launches the same kernels
        model = GPT(cfg)
        idx = torch.randint(0, cfg.vocab_size, (2, 65))
        with torch.autocast("cpu", dtype=dtype):
            _, loss = model(idx[:, :-1], idx[:, 1:], return_logits=False)
        loss.backward()
    return recorders


def compile_all(recorders: dict[str, Recorder], arch: int, every_setting: bool) -> tuple[int, list[str]]:
    """Build each recorded launch for sm_{arch}; returns (builds tried, failures)."""
    target, tried, failures = GPUTarget("cuda", arch, 32), 0, []
    for name, recorder in recorders.items():
        if not recorder.launches:
            failures.append(f"{name}: never launched (the model no longer uses it, or the recorder missed it)")
        for signature, constexprs, options, first in recorder.launches.values():
            if not (first or every_setting):
                continue
            tried += 1
            try:
                triton.compile(ASTSource(_jit_function(KERNELS[name]), signature, constexprs), target=target,
                               options=options)
            except Exception as err:  # noqa: BLE001 - any compiler error is a finding to report
                first_lines = str(err).strip().splitlines()[:20]
                failures.append(f"{name} sm_{arch} {constexprs} {options} {signature}:\n  " + "\n  ".join(first_lines))
    return tried, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80, 75],
                    help="compute capabilities: 90 H100/H200, 80 A100, 75 T4 (fp16)")
    ap.add_argument("--preset", nargs="*", default=["configs/tiny.yml", "configs/gpt-45m.yml",
                                                     "configs/gpt_d768_l12.yml"])
    args = ap.parse_args()
    torch.manual_seed(0)
    start, count, failures, recorded = time.perf_counter(), 0, [], {}
    for i, arch in enumerate(args.arch):
        dtype = torch.bfloat16 if arch >= 80 else torch.float16
        if dtype not in recorded:
            recorded[dtype] = record([(p, []) for p in args.preset] + EXTRA_SHAPES, dtype)
        tried, failed = compile_all(recorded[dtype], arch, every_setting=i == 0)
        count, failures = count + tried, failures + failed
    for failure in failures:
        print("FAILED", failure)
    print(f"{count - len(failures)} of {count} kernel builds compiled for sm_{', sm_'.join(map(str, args.arch))} "
          f"in {time.perf_counter() - start:.1f} s (triton {triton.__version__})")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
