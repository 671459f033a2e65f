"""init_batch's search: the largest micro-batch that fits, keeping the global batch exact."""

from __future__ import annotations

from collections.abc import Callable

import torch


def fit_micro_batch(candidate: int, probe: Callable[[int], None], cleanup: Callable[[], None] = lambda: None) -> int:
    """The largest divisor of `candidate`, tried from `candidate` down by at least halving each time,
    at which `probe` raises no CUDA OOM. Divisors only, so candidate / result is a whole number of
    extra accumulation steps and the global batch stays exactly the same."""
    mb = candidate
    while True:
        try:
            probe(mb)
            return mb
        except torch.cuda.OutOfMemoryError:
            pass
        # Out of the except block: its traceback (and the activations it pins) is gone by now.
        cleanup()
        smaller = [d for d in range(mb // 2, 0, -1) if candidate % d == 0]
        if not smaller:
            raise RuntimeError(f"out of GPU memory even at micro_batch={mb}; use a smaller model or block_size")
        mb = smaller[0]
