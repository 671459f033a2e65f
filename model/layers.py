"""Building blocks of the GPT: norms, position encodings, attention, MLPs and the pre-norm block."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model import kernels
from model.config import GPTConfig
from model.kv_cache import KVCache


class RMSNorm(nn.Module):
    """RMS normalisation with a learned gain (same state_dict as nn.RMSNorm).

    On CUDA it calls the fused F.rms_norm kernel. On CPU the plain formula runs forward+backward
    about 5x faster than nn.RMSNorm's CPU path in torch 2.13, which made the CPU demo model trail
    a LayerNorm one (bench/train.py).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        # eps well above bf16 resolution so a near-zero row does not blow up under autocast.
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            # The fused kernel needs matching dtypes (a bf16 residual stream meets a float32 gain).
            return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(kind: str, dim: int, bias: bool) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, bias=bias)
    return RMSNorm(dim)


def sinusoidal_table(max_len: int, dim: int, scale: float) -> torch.Tensor:
    """[max_len, dim] fixed position table: sin on even channels, cos on odd ones, wavelengths
    growing geometrically from 2*pi to 10000*2*pi. `scale` sets its RMS (see GPT.__init__)."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(max_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)[:, : dim // 2]
    # sin/cos have RMS 1/sqrt(2); rescale so the table's RMS is `scale`.
    return (table * scale * math.sqrt(2)).float()


def rope_tables(max_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [max_len, head_dim/2], of the rotation angle pos * base^(-2i/head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x ([B, H, T, D]) by its positions' angles (cos, sin: [T, D/2]).

    Channel i is paired with channel i + D/2 (the "half split" layout); any fixed pairing works as
    long as queries and keys use the same one, and this one needs no strided gathers.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


class Attention(nn.Module):
    """Multi-head causal self-attention through F.scaled_dot_product_attention, which dispatches to
    the fused flash / memory-efficient kernels on GPU."""

    def __init__(self, cfg: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.dropout = cfg.dropout
        self.fused_rope = cfg.fused_rope and cfg.pos_encoding == "rope" and not cfg.qk_norm
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)
        # RMS rather than cfg.norm: QK-norm only has to bound the logits' scale, and a bias would
        # shift every key alike, which softmax ignores anyway.
        self.q_norm = RMSNorm(cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        kv_cache: KVCache | None,
        start_pos: int,
    ) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim)
        if self.fused_rope and kv_cache is None and kernels.usable(qkv):
            q, k, v = (t.transpose(1, 2) for t in kernels.rope_qkv(qkv, *rope))
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            if self.q_norm is not None:
                # In the projection's dtype, as the CUDA kernel returns it: the CPU formula's float32 gain
                # promoted bf16 keys to float32, which a KV cache made under autocast refuses.
                q, k = self.q_norm(q).type_as(q), self.k_norm(k).type_as(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)

        if kv_cache is None:
            mask, causal = None, True
        else:
            k, v = kv_cache.update(self.layer_idx, start_pos, k, v)
            if T == 1:
                # One new query may see every cached key: no mask at all.
                mask, causal = None, False
            elif start_pos == 0:
                mask, causal = None, True
            else:
                # SDPA's is_causal aligns the triangle top-left, which is wrong once queries start at
                # start_pos > 0; query i (position start_pos+i) sees keys 0..start_pos+i.
                mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(start_pos)
                causal = False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.resid_drop(self.out(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    """Position-wise feed-forward: up-projection, nonlinearity (gelu | relu2 | swiglu), down-projection."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.kind = cfg.mlp
        self.fused = cfg.fused_swiglu
        hidden = cfg.hidden_dim
        # swiglu's gate and value projections share one matmul: one launch, same weights.
        self.up = nn.Linear(cfg.d_model, (2 if self.kind == "swiglu" else 1) * hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.kind == "swiglu" and self.fused and kernels.usable(h):
            h = kernels.swiglu(h)
        elif self.kind == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            # tanh approximation, as in GPT-2: indistinguishable in training and cheaper to fuse.
            h = F.gelu(h, approximate="tanh")
        return self.drop(self.down(h))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.bias)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = make_norm(cfg.norm, cfg.d_model, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        kv_cache: KVCache | None,
        start_pos: int,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, kv_cache, start_pos)
        return x + self.mlp(self.mlp_norm(x))
