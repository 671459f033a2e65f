"""Rotary embedding of queries and keys, fused with the split of the QKV projection.

The attention's QKV matmul writes [q | k | v] per token ([N, 3, H, D]). The plain path rotates q and
k into new tensors (each output element loading both channels of its pair) and, in the backward,
rotates dq and dk back and then gathers dq, dk and dv into d[q | k | v] in a second kernel: ~3.3 ms
of a 59 ms step of gpt-45m at 12 x 512 on an H200. Here each program takes a few tokens, reads their
q, k and v once and writes rotated q, k and a copy of v; the backward reads dq, dk, dv once and
writes d[q | k | v] rotated back: one pass each way. Measured on an H200: 2.4 ms per step for both
(bench/RESULTS.md), at about the card's copy bandwidth.

Outputs are [B, T, H, D] (token-major); attention takes them as .transpose(1, 2) views, the layout
the fused attention kernels read natively.
"""

# No `from __future__ import annotations`: torch.library.custom_op reads the annotations as types,
# which torch before 2.5 cannot do from strings.
import torch
import triton
import triton.language as tl

from model.kernels.tuning import candidates


@triton.jit
def _rotate(src, dst, cos, sin, src_at, dst_at, mask, HALF: tl.constexpr, SIGN: tl.constexpr):
    """Each channel pair (x1, x2) of src -> (x1 cos - SIGN x2 sin, x2 cos + SIGN x1 sin) in dst:
    SIGN 1 rotates by the angle, -1 by minus the angle (the rotation's transpose, for the backward)."""
    x1 = tl.load(src + src_at, mask=mask).to(tl.float32)
    x2 = tl.load(src + src_at + HALF, mask=mask).to(tl.float32)
    tl.store(dst + dst_at, (x1 * cos - SIGN * x2 * sin).to(dst.dtype.element_ty), mask=mask)
    tl.store(dst + dst_at + HALF, (x2 * cos + SIGN * x1 * sin).to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _copy_head(src, dst, src_at, dst_at, mask, HALF: tl.constexpr):
    tl.store(dst + dst_at, tl.load(src + src_at, mask=mask), mask=mask)
    tl.store(dst + dst_at + HALF, tl.load(src + src_at + HALF, mask=mask), mask=mask)


@triton.jit
def _tile(n_tokens, seq_len, n_head, cos_ptr, sin_ptr, HALF: tl.constexpr, TOKENS: tl.constexpr,
          BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's [TOKENS, heads, HALF] tile: token ids, positions, offsets within one of q, k, v
    (first channel of each pair), mask, and the angles' cos and sin."""
    tokens = tl.program_id(0).to(tl.int64) * TOKENS + tl.arange(0, TOKENS)[:, None, None]
    heads = tl.arange(0, BLOCK_H)[None, :, None]
    dims = tl.arange(0, BLOCK_D)[None, None, :]
    pos = tokens % seq_len
    angle_mask = (tokens < n_tokens) & (dims < HALF)
    mask = angle_mask & (heads < n_head)
    cos = tl.load(cos_ptr + pos * HALF + dims, mask=angle_mask)
    sin = tl.load(sin_ptr + pos * HALF + dims, mask=angle_mask)
    return tokens, pos, heads, dims, heads * (2 * HALF) + dims, mask, cos, sin


# Tokens per program and warps: tried at the first call for each head count and size.
TILE_OPTIONS = [
    triton.Config({"TOKENS": tokens}, num_warps=warps)
    for tokens, warps in ((4, 4), (1, 1), (1, 2), (2, 2), (8, 4), (16, 8))
]


@triton.autotune(configs=candidates(TILE_OPTIONS), key=["n_head", "HALF"])
@triton.jit
def _rope_qkv_fwd(
    qkv_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, n_tokens, seq_len, n_head,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, TOKENS: tl.constexpr,
):
    tokens, _, _, _, at, mask, cos, sin = _tile(n_tokens, seq_len, n_head, cos_ptr, sin_ptr, HALF, TOKENS,
                                                BLOCK_H, BLOCK_D)
    width = n_head * 2 * HALF
    src = tokens * 3 * width + at
    out = tokens * width + at
    _rotate(qkv_ptr, q_ptr, cos, sin, src, out, mask, HALF, 1.0)
    _rotate(qkv_ptr + width, k_ptr, cos, sin, src, out, mask, HALF, 1.0)
    _copy_head(qkv_ptr + 2 * width, v_ptr, src, out, mask, HALF)


@triton.autotune(configs=candidates(TILE_OPTIONS), key=["n_head", "HALF"])
@triton.jit
def _rope_qkv_bwd(
    dq_ptr, dk_ptr, dv_ptr, cos_ptr, sin_ptr, dqkv_ptr, n_tokens, seq_len, n_head, stride_b, stride_t, stride_h,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, TOKENS: tl.constexpr,
):
    tokens, pos, heads, dims, at, mask, cos, sin = _tile(n_tokens, seq_len, n_head, cos_ptr, sin_ptr, HALF,
                                                         TOKENS, BLOCK_H, BLOCK_D)
    width = n_head * 2 * HALF
    # dq, dk and dv share one stride layout (the caller makes sure), whatever attention returned.
    grad = (tokens // seq_len) * stride_b + pos * stride_t + heads * stride_h + dims
    dst = tokens * 3 * width + at
    _rotate(dq_ptr, dqkv_ptr, cos, sin, grad, dst, mask, HALF, -1.0)
    _rotate(dk_ptr, dqkv_ptr + width, cos, sin, grad, dst, mask, HALF, -1.0)
    _copy_head(dv_ptr, dqkv_ptr + 2 * width, grad, dst, mask, HALF)


def _grid(n_tokens: int):
    return lambda meta: (triton.cdiv(n_tokens, meta["TOKENS"]),)


def _blocks(n_head: int, head_dim: int) -> dict:
    return {"HALF": head_dim // 2, "BLOCK_H": triton.next_power_of_2(n_head),
            "BLOCK_D": triton.next_power_of_2(head_dim // 2)}


@torch.library.custom_op("smallgpt::rope_qkv", mutates_args=())
def _rope_qkv(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qkv, cos, sin = qkv.contiguous(), cos.contiguous(), sin.contiguous()
    B, T, _, H, D = qkv.shape
    q, k, v = (qkv.new_empty(B, T, H, D) for _ in range(3))
    if q.numel():
        _rope_qkv_fwd[_grid(B * T)](qkv, cos, sin, q, k, v, B * T, T, H, **_blocks(H, D))
    return q, k, v


@_rope_qkv.register_fake
def _(qkv, cos, sin):
    B, T, _, H, D = qkv.shape
    return tuple(qkv.new_empty(B, T, H, D) for _ in range(3))


@torch.library.custom_op("smallgpt::rope_qkv_backward", mutates_args=())
def _rope_qkv_backward(
    dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    if not (dq.stride() == dk.stride() == dv.stride()) or dq.stride(-1) != 1:
        dq, dk, dv = dq.contiguous(), dk.contiguous(), dv.contiguous()
    B, T, H, D = dq.shape
    dqkv = dq.new_empty(B, T, 3, H, D)
    if dqkv.numel():
        _rope_qkv_bwd[_grid(B * T)](
            dq, dk, dv, cos.contiguous(), sin.contiguous(), dqkv, B * T, T, H,
            dq.stride(0), dq.stride(1), dq.stride(2), **_blocks(H, D),
        )
    return dqkv


@_rope_qkv_backward.register_fake
def _(dq, dk, dv, cos, sin):
    B, T, H, D = dq.shape
    return dq.new_empty(B, T, 3, H, D)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])


def _backward(ctx, dq, dk, dv):
    cos, sin = ctx.saved_tensors
    return _rope_qkv_backward(dq, dk, dv, cos, sin), None, None


_rope_qkv.register_autograd(_backward, setup_context=_setup_context)


def rope_qkv(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q and k rotated by their positions' angles, and v, each [B, T, H, D], from qkv [B, T, 3, H, D].

    cos, sin: [T, D/2] for positions 0..T-1 of every row (model/layers.py rope_tables); channel i is
    paired with i + D/2, as in model.layers.apply_rope, which this matches.
    """
    if qkv.dim() != 5 or qkv.shape[2] != 3 or not cos.shape == sin.shape == (qkv.shape[1], qkv.shape[4] // 2):
        raise ValueError(f"rope_qkv takes qkv [B, T, 3, H, D] and cos/sin [T, D/2]; got {tuple(qkv.shape)}, "
                         f"{tuple(cos.shape)}/{tuple(sin.shape)}")
    return _rope_qkv(qkv, cos, sin)
