"""model/layers.py against the formulas they implement: position tables, the rotation, RMSNorm,
the MLP kinds and the pre-norm block's residuals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model import GPTConfig
from model.layers import MLP, Block, RMSNorm, apply_rope, rope_tables, sinusoidal_table


def cfg(**kw) -> GPTConfig:
    return GPTConfig(**{"vocab_size": 97, "block_size": 16, "n_layer": 2, "n_head": 2, "d_model": 16, **kw})


def test_sinusoidal_table_is_sin_on_even_cos_on_odd_channels_with_base_10000():
    table = sinusoidal_table(12, 8, scale=0.5)
    p, i = 7, 3  # channels 6 and 7: wavelength 2*pi * 10000^(6/8)
    angle = p * 10000.0 ** (-2 * i / 8)
    assert table[p, 2 * i].item() == pytest.approx(0.5 * math.sqrt(2) * math.sin(angle), rel=1e-5)
    assert table[p, 2 * i + 1].item() == pytest.approx(0.5 * math.sqrt(2) * math.cos(angle), rel=1e-5)


def test_rope_tables_follow_the_configured_base():
    cos, sin = rope_tables(10, 4, base=100.0)
    angles = torch.arange(10.0)[:, None] * torch.tensor([1.0, 0.1])  # 100^(-0/4), 100^(-2/4)
    torch.testing.assert_close(cos, angles.cos())
    torch.testing.assert_close(sin, angles.sin())


def test_rope_is_a_rotation_whose_scores_depend_on_relative_position_only():
    cos, sin = rope_tables(16, 8, base=10000.0)
    q, k = torch.randn(2, 1, 1, 1, 8, generator=torch.Generator().manual_seed(0)).unbind(0)

    def score(m: int, n: int) -> float:
        rq = apply_rope(q, cos[m : m + 1], sin[m : m + 1])
        rk = apply_rope(k, cos[n : n + 1], sin[n : n + 1])
        return (rq * rk).sum().item()

    assert apply_rope(q, cos[5:6], sin[5:6]).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)
    assert score(5, 2) == pytest.approx(score(12, 9), rel=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), rel=1e-4)


def test_rmsnorm_scales_rows_to_unit_rms():
    norm = RMSNorm(8)
    x = 0.1 * torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(norm(x), F.rms_norm(x, (8,), eps=1e-6))
    assert norm(x).pow(2).mean(-1).sqrt().tolist() == pytest.approx([1.0] * 3, rel=1e-3)


def test_relu2_squares_the_relu():
    mlp = MLP(cfg(mlp="relu2"))
    x = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mlp(x), mlp.down(F.relu(mlp.up(x)).square()))


def test_a_block_whose_branches_write_nothing_passes_the_stream_through():
    """Both sub-layers add to the residual stream: zero their output projections and the block is the
    identity, whatever the norms and the MLP compute."""
    block = Block(cfg(), layer_idx=0)
    with torch.no_grad():
        block.attn.out.weight.zero_()
        block.mlp.down.weight.zero_()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(block(x, None, None, 0), x)
