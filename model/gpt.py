"""GPT: a decoder-only, pre-norm transformer language model configured by GPTConfig."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model import kernels
from model.config import GPTConfig
from model.kv_cache import KVCache
from model.layers import Block, make_norm, rope_tables, sinusoidal_table


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.pos_encoding == "learned" else None
        # Fixed tables are non-persistent buffers: rebuilt from the config, never in a checkpoint.
        # The sinusoid gets the token embeddings' RMS (init_std): at unit amplitude it would drown
        # the token identity ~35:1 at init, and a fixed table cannot shrink to make room.
        pos_table = None
        if cfg.pos_encoding == "sinusoidal":
            pos_table = sinusoidal_table(cfg.block_size, cfg.d_model, cfg.init_std)
        self.register_buffer("pos_table", pos_table, persistent=False)
        cos = sin = None
        if cfg.pos_encoding == "rope":
            cos, sin = rope_tables(cfg.block_size, cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = make_norm(cfg.norm, cfg.d_model, cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit norms; the two projections that write into
        the residual stream get init_std/sqrt(2*n_layer) so its variance does not grow with depth."""
        std = self.cfg.init_std
        for module in self.modules():
            if module is self.lm_head and self.cfg.tie_embeddings:
                continue  # the same tensor as wte.weight, already drawn
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.normal_(block.attn.out.weight, std=std / math.sqrt(2 * self.cfg.n_layer))
            nn.init.normal_(block.mlp.down.weight, std=std / math.sqrt(2 * self.cfg.n_layer))

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
        all_logits: bool = False,
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits, and the loss when targets are given.

        idx, targets: [B, T] token ids; targets equal to pad_id do not count. The loss is the float32
        cross-entropy averaged over counted tokens, and 0 (with zero gradients) when none count.
        attention_mask: [B, T] bool, True at real tokens. Batches are right-padded, so under causal
        attention no real token ever sees a pad: the mask leaves attention alone (keeping the fused
        is_causal kernels) and only drops pad positions from the loss. Left padding is unsupported.
        kv_cache, start_pos: idx holds absolute positions start_pos..start_pos+T-1; their keys and
        values are stored in kv_cache and attention also covers the cached positions before them.
        Logits are [B, T, vocab] with targets or all_logits, else [B, 1, vocab] for the last position.
        return_logits=False (with targets) lets the loss skip them: it then runs the fused projection +
        cross-entropy (cfg.fused_loss; model/kernels) and the logits come back as None.
        """
        B, T = idx.shape
        end = start_pos + T
        if end > self.cfg.block_size:
            raise ValueError(f"positions up to {end} exceed block_size={self.cfg.block_size}")
        if kv_cache is not None and (end > kv_cache.max_len or kv_cache.batch_size != B):
            raise ValueError(
                f"KV cache holds batch {kv_cache.batch_size} x {kv_cache.max_len} positions; got batch {B} "
                f"at positions up to {end}"
            )
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe.weight[start_pos:end]
        elif self.pos_table is not None:
            x = x + self.pos_table[start_pos:end]
        if self.cfg.bf16_residual and torch.is_autocast_enabled(x.device.type) and \
                torch.get_autocast_dtype(x.device.type) == torch.bfloat16:
            x = x.to(torch.bfloat16)  # the blocks' bf16 outputs then add without promotion to float32
        rope = (self.rope_cos[start_pos:end], self.rope_sin[start_pos:end]) if self.rope_cos is not None else None
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, kv_cache, start_pos)
        x = self.norm_f(x)

        if targets is None:
            return self.lm_head(x if all_logits else x[:, -1:]), None
        if attention_mask is not None:
            targets = targets.masked_fill(~attention_mask, self.cfg.pad_id)
        # clamp: an all-pad batch gives 0/1 = 0 instead of F.cross_entropy's 0/0 = NaN.
        counted = (targets != self.cfg.pad_id).sum().clamp(min=1)
        if not return_logits and self.cfg.fused_loss:
            return None, kernels.linear_cross_entropy(x, self.lm_head.weight, targets, self.cfg.pad_id) / counted
        logits = self.lm_head(x)
        loss_sum = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=self.cfg.pad_id, reduction="sum"
        )
        return logits, loss_sum / counted

    def new_kv_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """An empty cache for this model (max_len defaults to block_size, device to the weights'). dtype
        defaults to what the keys and values come out in: the autocast dtype where autocast is on for
        the weights' device (make the cache inside the same autocast as the forwards), else the weights'."""
        weight = self.wte.weight
        if dtype is None:
            on = torch.is_autocast_enabled(weight.device.type)
            dtype = torch.get_autocast_dtype(weight.device.type) if on else weight.dtype
        return KVCache(
            self.cfg.n_layer,
            batch_size,
            self.cfg.n_head,
            max_len or self.cfg.block_size,
            self.cfg.head_dim,
            dtype=dtype,
            device=device or weight.device,
        )

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count, a tied embedding counted once. non_embedding leaves out the lookup-only
        tables (learned positions, and the token embedding when untied) but keeps the output
        projection, tied or not: every weight it counts does a multiply-add per token."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token at context seq_len (default block_size):
        6*N + 12*n_layer*d_model*seq_len.

        6*N: each of the N = num_params(non_embedding=True) weights does one multiply-add (2 FLOPs)
        forward and two backward. 12*L*d*T: per layer, the scores q.k and the weighted sum of values
        each take 2*d*T FLOPs forward, times 3 with backward. Like PaLM's MFU formula, attention is
        counted over the full T although the causal kernels skip half, so MFU compares with published
        numbers; norms, softmax and other elementwise work are ignored.
        """
        seq_len = seq_len or self.cfg.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * self.cfg.n_layer * self.cfg.d_model * seq_len

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: weight_decay on every matrix (dim >= 2), none on norms, biases and
        other vectors.

        Embeddings are matrices and are decayed: with tied weights the token embedding is also the
        output projection, the layer whose growth most inflates logits, and one rule for every
        matrix keeps tied and untied models comparable. Vectors only scale or shift activations;
        pulling them to 0 fights the norms' unit init and buys no regularisation.
        """
        params = list(self.parameters())
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
