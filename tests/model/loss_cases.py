"""Inputs of the loss ops (model/kernels), shared by test_fused_loss.py and test_kernels.py."""

from __future__ import annotations

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IGNORE = 0


def inputs(n, c, vocab, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen).to(DEVICE, dtype)
    weight = (torch.randn(vocab, c, generator=gen) * 0.5).to(DEVICE, dtype)
    targets = torch.randint(0, vocab, (n,), generator=gen).to(DEVICE)
    targets[::5] = IGNORE  # every 5th row does not count
    return x.requires_grad_(), weight.requires_grad_(), targets
