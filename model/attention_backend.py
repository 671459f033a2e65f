"""Which fused kernel F.scaled_dot_product_attention should prefer.

torch tries its SDPA kernels in a fixed order that puts FlashAttention-2 first. On Hopper GPUs (H100,
H200) cuDNN's attention kernels use the chip's own matrix instructions and run the training shapes
much faster (bench/RESULTS.md), so `auto` prefers them there. Every choice is a preference, never a
restriction: every kernel stays enabled, and a call the preferred kernel cannot serve (a mask, a
head size it lacks) falls back to the next one exactly as before.

The preference is read when a call is dispatched, which under torch.compile is when the graph is
traced: so it must be in force around compilation (the first forward), not only around later calls.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")
_BY_NAME = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def resolve_attention_backend(name: str, device: torch.device) -> str | None:
    """The backend to put first for this device, or None to keep torch's own order."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}; got {name!r}")
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9:
        return "cudnn"
    return None


def prefer_attention_backend(name: str, device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which SDPA tries `name`'s kernel first (see resolve_attention_backend), then the
    others in torch's default order; all stay enabled. Restores the previous order on exit."""
    first = resolve_attention_backend(name, device)
    if first is None:
        return contextlib.nullcontext()
    rest = [b for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.MATH) if b is not _BY_NAME[first]]
    return sdpa_kernel([_BY_NAME[first], *rest], set_priority=True)
