"""Mixed precision, one rule for training and for inference (bin/sample.py, bin/eval.py): what the
dtype `auto` means on a device, and the autocast context a forward pass runs in.

`auto` is bfloat16 on a CUDA device with native bf16 (Ampere and later), float16 on older cards,
and float32 on the CPU, where bf16 is emulated, and slow, without AVX512-BF16 or AMX. An explicit
bfloat16 or float16 runs on the CPU too (torch's CPU autocast takes both). Weights stay float32
whatever the dtype: autocast runs matmuls and attention in it and keeps softmax-like reductions
(the loss) in float32, so one checkpoint serves every dtype.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")


def bf16_supported(device: str | torch.device) -> bool:
    """Whether `device` is a CUDA device with native bf16. Not torch.cuda.is_bf16_supported()'s default,
    which also says yes where a card only emulates bf16 (a T4, a V100): slow, where float16 is native."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    with torch.cuda.device(device):  # the device asked about, not whichever is current
        return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_dtype(name: str, device_type: str, bf16: bool) -> str:
    """The dtype `name` (one of DTYPES) stands for on a device of `device_type` whose native bf16 is `bf16`."""
    if name != "auto":
        return name
    if device_type != "cuda":
        return "float32"
    return "bfloat16" if bf16 else "float16"


def autocast(device_type: str, dtype: str) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` (a resolved name) on `device_type`; float32 turns autocast off, so the
    forward runs in the weights' own float32 even inside a caller's autocast."""
    if dtype not in DTYPES[1:]:  # "auto" too: it must be resolved for a device first
        raise ValueError(f"dtype must be one of {', '.join(DTYPES[1:])}; got {dtype!r}")
    return torch.autocast(device_type, dtype=getattr(torch, dtype), enabled=dtype != "float32")
