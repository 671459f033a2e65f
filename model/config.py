"""GPTConfig: every architectural choice of the model, one typed field each.

The fields are what a YAML `model:` section or a `model.key=value` override may set. Derived sizes
(`head_dim`, `hidden_dim`) are properties, not fields: resolving them in `__post_init__` would freeze
e.g. the gelu hidden size into the config, and a later `model.mlp=swiglu` override would keep it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

POS_ENCODINGS = ("sinusoidal", "learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2", "swiglu")


@dataclass
class GPTConfig:
    vocab_size: int = 16384
    """Token ids the model embeds and predicts. 16384 is the pipeline's default BPE vocabulary; the
    trainer overwrites this from the token store's manifest, so a preset need not set it."""
    block_size: int = 1024
    """Longest sequence (context length) the model accepts; sizes the position tables."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 8
    """Attention heads per block; d_model must divide evenly among them."""
    d_model: int = 512
    """Width of the residual stream (embedding size)."""
    mlp_hidden: int | None = None
    """MLP hidden width. None picks 4*d_model for gelu/relu2, and for swiglu 8/3*d_model rounded up to
    a multiple of 64, so that its three matrices hold about as many weights as the other MLPs' two."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches (0 for pretraining)."""
    bias: bool = False
    """Biases in linear layers and LayerNorm. Off is slightly faster and trains as well."""
    pos_encoding: str = "rope"
    """How tokens learn their position: sinusoidal (fixed table added to the embeddings, the seed's) |
    learned (trainable table) | rope (rotary, applied to queries and keys)."""
    norm: str = "rmsnorm"
    """Normalisation before each sub-layer and before the head: layernorm | rmsnorm."""
    mlp: str = "gelu"
    """Feed-forward kind: gelu | relu2 (squared ReLU) | swiglu (gated SiLU)."""
    qk_norm: bool = False
    """RMS-normalise queries and keys per head before attention, which bounds attention logits and
    tolerates higher learning rates."""
    tie_embeddings: bool = True
    """Share the token embedding with the output projection (the seed's default; saves vocab*d_model)."""
    bf16_residual: bool = True
    """Under bfloat16 autocast, carry the residual stream in bfloat16 rather than float32, as Megatron
    does by default: every norm and residual add then moves half the bytes (gpt-45m at 12 x 512
    trained 6% faster on an H200; `tiny` reached the same val loss either way; bench/RESULTS.md). Weights, optimizer
    state and the loss stay float32; without bf16 autocast (CPU training, sampling) it changes nothing."""
    fused_loss: bool = True
    """Compute the loss with the output projection and cross-entropy fused, its gradient made in the
    forward pass, without [N, vocab] float32 logits: on CUDA with Triton one kernel
    (model/kernels/cross_entropy.py), elsewhere chunks of rows through one reused buffer
    (model/kernels/chunked_loss.py; on CPU ~40% less time than the plain loss, bench/loss.py). The
    same loss either way. Only when the caller does not ask for logits; otherwise the plain path."""
    fused_swiglu: bool = True
    """On CUDA with Triton, run SwiGLU through its one-pass kernel (model/kernels/swiglu_kernel.py) instead of
    the compiled formula. The same arithmetic as the compiled formula (float32 inside, one rounding to
    the output dtype); only the memory traffic of the backward differs."""
    fused_rope: bool = True
    """On CUDA with Triton, when training (no KV cache) with rope and no qk_norm, split [q | k | v]
    and rotate q and k in one kernel each way (model/kernels/rope.py) instead of the compiled formula."""
    pad_id: int = 0
    """Token id of [PAD]: targets equal to it never count in the loss."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init; residual output projections get it / sqrt(2*n_layer)."""
    rope_base: float = 10000.0
    """Base of the rotary frequencies (only with pos_encoding=rope)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        for name, value, allowed in (
            ("pos_encoding", self.pos_encoding, POS_ENCODINGS),
            ("norm", self.norm, NORMS),
            ("mlp", self.mlp, MLPS),
        ):
            if value not in allowed:
                raise ValueError(f"GPTConfig.{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig: d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ValueError(
                f"GPTConfig: rope rotates pairs of channels, so the head dim (d_model/n_head="
                f"{self.head_dim}) must be even"
            )
        if self.mlp_hidden is not None and self.mlp_hidden <= 0:
            raise ValueError(f"GPTConfig.mlp_hidden must be positive or None, got {self.mlp_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"GPTConfig.pad_id={self.pad_id} is not a token id (vocab_size={self.vocab_size})")
        if self.init_std <= 0 or self.rope_base <= 0:
            raise ValueError("GPTConfig.init_std and rope_base must be positive")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def hidden_dim(self) -> int:
        """The MLP hidden width actually built (mlp_hidden, or the default for this mlp kind)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model
