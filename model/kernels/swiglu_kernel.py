"""SwiGLU, silu(gate) * value, with a one-pass backward.

The MLP's up-projection writes [gate | value] side by side ([N, 2H]). torch.compile's backward
builds d[gate | value] as one kernel over the 2H outputs in which every element loads gate, value
and the upstream gradient: each input is read twice (4.8 ms of a 59 ms step of gpt-45m at 12 x 512
on an H200, ~half of the card's bandwidth). Here each program reads gate, value and the upstream
gradient once and writes both halves of the gradient: 3 reads and 2 writes per hidden unit, the
minimum. Measured on an H200: backward 2.7 ms per step, forward 1.7 (bench/RESULTS.md), both at
about the card's copy bandwidth.
"""

# No `from __future__ import annotations`: torch.library.custom_op reads the annotations as types,
# which torch before 2.5 cannot do from strings.
import torch
import triton
import triton.language as tl

from model.kernels.tuning import candidates

# (rows, columns) per program and warps: tried at the first call for each hidden width.
TILE_OPTIONS = [
    triton.Config({"BLOCK_R": rows, "BLOCK_C": cols}, num_warps=warps)
    for rows, cols, warps in ((16, 128, 4), (32, 128, 8), (8, 256, 4), (16, 256, 8), (4, 512, 4), (64, 64, 4))
]


@triton.jit
def _tile(n_rows, hidden, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's [BLOCK_R, BLOCK_C] tile: offsets of its gates in [gate | value] (values sit
    `hidden` further on), offsets in the [N, H] output, and the mask of its ragged edges."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < n_rows)[:, None] & (cols < hidden)[None, :]
    rows = rows.to(tl.int64)[:, None]
    return rows * (2 * hidden) + cols[None, :], rows * hidden + cols[None, :], mask


@triton.autotune(configs=candidates(TILE_OPTIONS), key=["hidden"])
@triton.jit
def _swiglu_fwd(h_ptr, out_ptr, n_rows, hidden, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    in_at, out_at, mask = _tile(n_rows, hidden, BLOCK_R, BLOCK_C)
    gate = tl.load(h_ptr + in_at, mask=mask).to(tl.float32)
    value = tl.load(h_ptr + in_at + hidden, mask=mask).to(tl.float32)
    out = gate * tl.sigmoid(gate) * value
    tl.store(out_ptr + out_at, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=candidates(TILE_OPTIONS), key=["hidden"])
@triton.jit
def _swiglu_bwd(h_ptr, grad_out_ptr, grad_h_ptr, n_rows, hidden, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    in_at, out_at, mask = _tile(n_rows, hidden, BLOCK_R, BLOCK_C)
    gate = tl.load(h_ptr + in_at, mask=mask).to(tl.float32)
    value = tl.load(h_ptr + in_at + hidden, mask=mask).to(tl.float32)
    grad_out = tl.load(grad_out_ptr + out_at, mask=mask).to(tl.float32)
    sig = tl.sigmoid(gate)
    # d silu(g)/dg = sig * (1 + g * (1 - sig))
    grad_gate = grad_out * value * sig * (1.0 + gate * (1.0 - sig))
    grad_value = grad_out * gate * sig
    dtype = grad_h_ptr.dtype.element_ty
    tl.store(grad_h_ptr + in_at, grad_gate.to(dtype), mask=mask)
    tl.store(grad_h_ptr + in_at + hidden, grad_value.to(dtype), mask=mask)


def _grid(n_rows: int, hidden: int):
    return lambda meta: (triton.cdiv(n_rows, meta["BLOCK_R"]), triton.cdiv(hidden, meta["BLOCK_C"]))


@torch.library.custom_op("smallgpt::swiglu", mutates_args=())
def _swiglu(h: torch.Tensor) -> torch.Tensor:
    h = h.contiguous()
    n_rows, hidden = h.shape[0], h.shape[1] // 2
    out = h.new_empty(n_rows, hidden)
    if n_rows:
        _swiglu_fwd[_grid(n_rows, hidden)](h, out, n_rows, hidden)
    return out


@_swiglu.register_fake
def _(h):
    return h.new_empty(h.shape[0], h.shape[1] // 2)


@torch.library.custom_op("smallgpt::swiglu_backward", mutates_args=())
def _swiglu_backward(h: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    h, grad_out = h.contiguous(), grad_out.contiguous()
    n_rows, hidden = grad_out.shape
    grad_h = torch.empty_like(h)
    if n_rows:
        _swiglu_bwd[_grid(n_rows, hidden)](h, grad_out, grad_h, n_rows, hidden)
    return grad_h


@_swiglu_backward.register_fake
def _(h, grad_out):
    return h.new_empty(h.shape)  # contiguous, as the real op returns whatever h's layout


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad_out):
    (h,) = ctx.saved_tensors
    return _swiglu_backward(h, grad_out)


_swiglu.register_autograd(_backward, setup_context=_setup_context)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * value for h = [..., 2H] holding [gate | value]; returns [..., H] in h's dtype."""
    if h.shape[-1] % 2:
        raise ValueError(f"swiglu needs an even last dimension ([gate | value]), got {h.shape[-1]}")
    return _swiglu(h.reshape(-1, h.shape[-1])).view(*h.shape[:-1], h.shape[-1] // 2)
