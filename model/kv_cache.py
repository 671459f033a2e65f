"""KVCache: keys and values of already-seen positions, so decoding one token costs one position.

Buffers are allocated once at full length ([n_layer, B, n_head, max_len, head_dim] for keys and for
values) and written in place; attention then reads the filled prefix. The caller owns the position:
each `GPT.forward(idx, kv_cache=cache, start_pos=p)` writes positions p..p+T-1, and feeding the
same positions again simply overwrites them (e.g. to restart from a shared prompt).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    def update(self, layer: int, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ([B, n_head, T, head_dim]) at positions start_pos.. and return keys and values of
        positions 0..start_pos+T-1 (views into the buffers, no copy). Keys of another dtype are refused:
        storing float32 keys in a bf16 cache would round them silently, so cached and uncached forwards
        would differ by more than their matmul shapes."""
        if k.dtype != self.k.dtype or v.dtype != self.v.dtype:
            raise ValueError(f"KV cache holds {self.k.dtype}, got keys/values in {k.dtype}/{v.dtype}: make the cache "
                             "under the same autocast as the forward passes (or pass the forwards' dtype)")
        end = start_pos + k.size(2)
        self.k[layer, :, :, start_pos:end] = k
        self.v[layer, :, :, start_pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
