"""Which fused kernel F.scaled_dot_product_attention may use on CUDA.

`auto` leaves the choice to torch. With cuDNN 9 on Hopper (H100, H200) torch itself tries cuDNN's
attention first, then FlashAttention-2, memory-efficient and math; elsewhere FlashAttention-2 first.
A named kernel is a restriction, not a preference: only it and the math fallback (for calls it
cannot serve) stay enabled. A priority order alone does not hold: torch installs its own order
lazily at the first attention call on the device, overwriting one set before it (seen on an H200
with torch 2.11: `flash` first still ran cuDNN; bench/RESULTS.md).

The choice is read when a call is dispatched, which under torch.compile is when the graph is traced:
so it must be in force around compilation (the first forward), not only around later calls. CPU
attention is left alone (it has only its own flash kernel and math).
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


def attention_backends(name: str, device: torch.device) -> list[SDPBackend] | None:
    """The SDPA backends to allow on this device, or None to leave torch's choice alone."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}; got {name!r}")
    if name == "auto" or device.type != "cuda":
        return None
    return list(dict.fromkeys([_BY_NAME[name], SDPBackend.MATH]))


def use_attention_backend(name: str, device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which SDPA on `device` runs only `name`'s kernel (math where it cannot serve a
    call); `auto` and CPU devices change nothing. Restores the previous settings on exit."""
    backends = attention_backends(name, device)
    return contextlib.nullcontext() if backends is None else sdpa_kernel(backends)
