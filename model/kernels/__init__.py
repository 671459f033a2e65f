"""Hand-written Triton kernels for the memory-bound steps that torch.compile leaves slow.

On an H200 a gpt-45m step (12 x 512 then) spent ~30% of its GPU time in elementwise kernels
(bench/RESULTS.md); three of them move far more bytes than they must: the cross-entropy over
16k-wide logits, the SwiGLU backward, and the rotary embedding with the split of [q | k | v]. These
kernels do each in one pass. The model uses them on CUDA when Triton is importable (CUDA builds of
torch ship it) and its config allows; everywhere else it runs the plain formulas, but for the loss
(below). Tests run the kernels on CPU in Triton's interpreter (`TRITON_INTERPRET=1`, set by
tests/conftest.py before anything imports Triton).

Each kernel is a `torch.library` custom op with a fake (shape-only) implementation and an autograd
formula, so torch.compile keeps it as one opaque call inside the compiled graph.

The loss has a second, plain-torch form (chunked_loss.py) for everywhere else: on CPU the unfused
loss is slow too, for other reasons (several fresh [N, vocab] buffers, faulted in page by page).
"""

from __future__ import annotations

import torch

try:
    import triton  # noqa: F401
except ImportError:
    HAVE_TRITON = False
else:
    HAVE_TRITON = True

from model.kernels import chunked_loss

if HAVE_TRITON:
    from model.kernels import cross_entropy
    from model.kernels.rope import rope_qkv
    from model.kernels.swiglu_kernel import swiglu
else:
    cross_entropy = rope_qkv = swiglu = None


def usable(x: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on x's device: CUDA with Triton installed."""
    return HAVE_TRITON and x.is_cuda


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Sum over counted tokens of cross_entropy(x @ weight.T, targets), in float32, its gradient made
    in the forward pass: the Triton kernel where usable(x), else the same loss in chunks of rows
    (chunked_loss.py). Neither returns the logits."""
    impl = cross_entropy if usable(x) else chunked_loss
    return impl.linear_cross_entropy(x, weight, targets, ignore_index)


__all__ = ["HAVE_TRITON", "linear_cross_entropy", "rope_qkv", "swiglu", "usable"]
