"""GPT model: option families, loss masking, causality, KV cache, counts, init, presets, compile."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from common.config import from_dict, load_yaml
from model import GPT, GPTConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAD = 0


def small(**kw) -> GPTConfig:
    base = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, d_model=32)
    return GPTConfig(**{**base, **kw})


def build(cfg: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


def tokens(B: int, T: int, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    """Random non-pad ids."""
    return torch.randint(1, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


FAMILIES = {
    "sinusoidal": dict(pos_encoding="sinusoidal"),
    "learned": dict(pos_encoding="learned"),
    "rope": dict(pos_encoding="rope"),
    "layernorm": dict(norm="layernorm"),
    "rmsnorm": dict(norm="rmsnorm"),
    "gelu": dict(mlp="gelu"),
    "relu2": dict(mlp="relu2"),
    "swiglu": dict(mlp="swiglu"),
    "qk_norm": dict(qk_norm=True),
    "untied": dict(tie_embeddings=False),
    "bias_layernorm": dict(bias=True, norm="layernorm"),
    "dropout": dict(dropout=0.1),
    "everything_else": dict(
        pos_encoding="learned", norm="layernorm", mlp="swiglu", qk_norm=True, tie_embeddings=False, bias=True
    ),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_backward_every_option(family):
    model = build(small(**FAMILIES[family]))
    idx = tokens(3, 16)
    logits, loss = model(idx[:, :-1], idx[:, 1:])
    assert logits.shape == (3, 15, 97)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_logits_shapes_without_targets():
    model = build(small()).eval()
    idx = tokens(2, 10)
    last, loss = model(idx)
    full, _ = model(idx, all_logits=True)
    assert loss is None and last.shape == (2, 1, 97) and full.shape == (2, 10, 97)
    torch.testing.assert_close(last[:, 0], full[:, -1])
    with pytest.raises(ValueError, match="block_size"):
        model(tokens(1, 33))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(pos_encoding="alibi"), "pos_encoding"),
        (dict(norm="batchnorm"), "norm"),
        (dict(mlp="geglu"), "mlp"),
        (dict(d_model=30, n_head=4), "divisible"),
        (dict(d_model=36, n_head=4), "even"),  # head_dim 9 under rope
        (dict(pad_id=97), "pad_id"),
        (dict(dropout=1.0), "dropout"),
        (dict(n_layer=0), "n_layer"),
        (dict(mlp_hidden=0), "mlp_hidden"),
        (dict(dropout=-0.1), "dropout"),
        (dict(pad_id=-1), "pad_id"),  # would index the embedding from its end
        (dict(init_std=0.0), "init_std"),
        (dict(rope_base=0.0), "rope_base"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        small(**kw)


def test_mlp_hidden_defaults():
    assert GPTConfig(d_model=512, mlp="gelu").hidden_dim == 2048
    assert GPTConfig(d_model=512, mlp="swiglu").hidden_dim == 1408  # ceil(1365.3 / 64) * 64
    assert GPTConfig(d_model=768, mlp="swiglu").hidden_dim == 2048
    assert GPTConfig(d_model=512, mlp="swiglu", mlp_hidden=1000).hidden_dim == 1000
    # the field stays None, so a later mlp override still gets its own default
    assert dataclasses.replace(GPTConfig(mlp="gelu"), mlp="swiglu").hidden_dim == 1408


def test_loss_ignores_pad_targets():
    model = build(small())
    idx = tokens(2, 17)
    idx[0, 10:] = PAD  # row 0 right-padded: targets from position 9 on are [PAD]
    inp, tgt = idx[:, :-1], idx[:, 1:]
    logits, loss = model(inp, tgt)
    counted = tgt != PAD
    expected = F.cross_entropy(logits[counted].float(), tgt[counted])
    torch.testing.assert_close(loss, expected)
    # Positions whose targets are pads may hold anything (causally they only affect their own,
    # equally ignored, logits): the loss does not move.
    scrambled = inp.clone()
    scrambled[0, 9:] = tokens(1, 7, seed=5)
    assert not torch.equal(model(scrambled, tgt)[0][0, 9:], logits[0, 9:])
    torch.testing.assert_close(model(scrambled, tgt)[1], loss)


def test_right_padding_needs_no_attention_mask():
    """Real tokens of a right-padded row see exactly what they would see unpadded; attention_mask
    only removes the pad positions from the loss."""
    model = build(small())
    real = tokens(1, 9)
    padded = torch.cat([real, torch.full((1, 7), PAD)], dim=1)
    mask = padded != PAD
    short, _ = model(real, all_logits=True)
    long, _ = model(padded, all_logits=True)
    torch.testing.assert_close(long[:, :9], short)
    # Targets past the mask that are not [PAD] still do not count once the mask says so.
    tgt = tokens(1, 16, seed=3)
    _, masked_loss = model(padded, tgt, attention_mask=mask)
    _, short_loss = model(real, tgt[:, :9])
    torch.testing.assert_close(masked_loss, short_loss)


def test_all_pad_batch_gives_zero_loss_not_nan():
    model = build(small())
    idx = torch.full((2, 8), PAD)
    _, loss = model(idx, idx)
    assert loss.item() == 0.0
    loss.backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_bf16_residual_keeps_the_stream_in_bf16_under_autocast_only(pos):
    """The blocks hand each other bf16 under bf16 autocast (float32 without the option), the loss
    stays close to the float32 stream's, and outside autocast the option changes nothing at all."""
    idx = tokens(2, 16)
    models = {flag: build(small(pos_encoding=pos, bf16_residual=flag)) for flag in (False, True)}
    seen = {}

    def record(flag):
        def hook(module, args, out):
            seen[flag] = out.dtype  # returns None: a hook's return value would replace the output
        return hook

    for flag, model in models.items():
        handle = model.blocks[0].register_forward_hook(record(flag))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, seen[f"loss{flag}"] = model(idx, idx)
        seen[f"loss{flag}"].backward()
        handle.remove()  # the plain forwards below must not overwrite the autocast dtype
        assert all(p.grad.dtype == torch.float32 and p.grad.isfinite().all() for p in model.parameters())
    assert (seen[False], seen[True]) == (torch.float32, torch.bfloat16)
    assert abs(seen["lossTrue"].item() - seen["lossFalse"].item()) < 0.02
    assert torch.equal(models[True](idx, idx)[1], models[False](idx, idx)[1])


@pytest.mark.parametrize("pos", ["sinusoidal", "learned", "rope"])
def test_causal(pos):
    model = build(small(pos_encoding=pos)).eval()
    idx = tokens(2, 20)
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] % 96) + 1
    a, _ = model(idx, all_logits=True)
    b, _ = model(changed, all_logits=True)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_tied_weights_are_one_tensor_and_state_dict_round_trips():
    model = build(small(tie_embeddings=True))
    assert model.lm_head.weight is model.wte.weight
    assert model.num_params(non_embedding=False) == sum(p.numel() for p in set(model.parameters()))
    twin = build(small(tie_embeddings=True), seed=123)
    twin.load_state_dict(model.state_dict())
    assert twin.lm_head.weight is twin.wte.weight
    idx = tokens(2, 12)
    torch.testing.assert_close(twin(idx, idx)[1], model(idx, idx)[1])

    untied = build(small(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.wte.weight


def test_fixed_position_tables_are_not_parameters_or_checkpointed():
    for pos in ("sinusoidal", "rope"):
        model = build(small(pos_encoding=pos))
        assert model.wpe is None
        assert all("pos" not in k and "rope" not in k for k in model.state_dict())
    sinus = build(small(pos_encoding="sinusoidal"))
    # same RMS as the token embeddings' init, so neither drowns the other
    assert sinus.pos_table.pow(2).mean().sqrt().item() == pytest.approx(0.02, rel=1e-3)
    assert build(small(pos_encoding="learned")).wpe.weight.requires_grad


def expected_params(cfg: GPTConfig) -> int:
    d, h, b = cfg.d_model, cfg.hidden_dim, cfg.bias
    attn = d * 3 * d + d * d + (4 * d if b else 0) + (2 * cfg.head_dim if cfg.qk_norm else 0)
    up = 2 * h if cfg.mlp == "swiglu" else h
    mlp = d * up + h * d + (up + d if b else 0)
    norm = 2 * d if cfg.norm == "layernorm" and b else d
    layer = attn + mlp + 2 * norm
    embed = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    wpe = cfg.block_size * d if cfg.pos_encoding == "learned" else 0
    return cfg.n_layer * layer + norm + embed + wpe


@pytest.mark.parametrize("family", ["rope", "everything_else", "swiglu", "qk_norm", "bias_layernorm", "layernorm"])
def test_param_count_formula(family):
    cfg = small(**FAMILIES[family])
    model = build(cfg)
    assert model.num_params(non_embedding=False) == expected_params(cfg)
    lookups = (cfg.block_size * cfg.d_model if cfg.pos_encoding == "learned" else 0) + (
        0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model
    )
    assert model.num_params() == expected_params(cfg) - lookups


@pytest.mark.parametrize("pos", ["sinusoidal", "learned", "rope"])
def test_kv_cache_matches_full_forward(pos):
    model = build(small(pos_encoding=pos, qk_norm=pos == "rope")).eval()
    idx = tokens(2, 20)
    with torch.no_grad():
        full, _ = model(idx, all_logits=True)
        # one token at a time
        cache = model.new_kv_cache(batch_size=2, max_len=24)
        steps = [model(idx[:, t : t + 1], kv_cache=cache, start_pos=t)[0] for t in range(20)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
        # a prompt prefill, then a multi-token chunk at start_pos > 0 (explicit mask), then singles
        cache = model.new_kv_cache(batch_size=2)
        chunks = [(0, 7), (7, 12), (12, 13), (13, 20)]
        out = [model(idx[:, a:b], kv_cache=cache, start_pos=a, all_logits=True)[0] for a, b in chunks]
        torch.testing.assert_close(torch.cat(out, dim=1), full, atol=1e-4, rtol=1e-4)
        with pytest.raises(ValueError, match="KV cache"):
            model(idx[:, :1], kv_cache=model.new_kv_cache(batch_size=2, max_len=4), start_pos=4)


def test_positions_past_block_size_and_a_cache_of_another_batch_are_value_errors():
    model = build(small()).eval()
    idx = tokens(3, 5)
    with torch.no_grad():
        with pytest.raises(ValueError, match="positions up to 35 exceed block_size=32"):
            model(idx, start_pos=30)
        # One row would broadcast silently into every row of a cache for three.
        with pytest.raises(ValueError, match="KV cache holds batch 3 x 32 positions; got batch 1"):
            model(idx[:1], kv_cache=model.new_kv_cache(batch_size=3))
        cache = model.new_kv_cache(batch_size=3, dtype=torch.float64)
        assert cache.batch_size == 3 and cache.k.dtype == cache.v.dtype == torch.float64
        model.double()(idx, kv_cache=cache)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_a_cache_takes_the_autocast_dtype_and_refuses_keys_of_another(qk_norm):
    """Made under autocast, the cache holds the dtype the keys come out in. Keys of another dtype were
    cast silently on the way in: float32 keys rounded into a bf16 cache (a cache made under autocast,
    used outside it), or bf16 keys in a float32 cache (twice the memory, cast back at every read).
    qk_norm: the CPU RMSNorm's float32 gain made the keys float32 under bf16 autocast, so its own cache
    refused them."""
    model = build(small(qk_norm=qk_norm)).eval()
    idx = tokens(2, 5)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_cache = model.new_kv_cache(batch_size=2)
            float_cache = model.new_kv_cache(batch_size=2, dtype=torch.float32)
            model(idx, kv_cache=bf16_cache)
            with pytest.raises(ValueError, match="KV cache holds torch.float32, got keys/values in torch.bfloat16"):
                model(idx, kv_cache=float_cache)
        assert bf16_cache.k.dtype == bf16_cache.v.dtype == torch.bfloat16
        assert model.new_kv_cache(batch_size=2).k.dtype == torch.float32  # outside autocast: the weights'
        with pytest.raises(ValueError, match="KV cache holds torch.bfloat16, got keys/values in torch.float32"):
            model(idx, kv_cache=bf16_cache)


def test_dropout_is_off_in_eval_mode():
    model = build(small(dropout=0.5)).eval()
    idx = tokens(2, 16)
    assert torch.equal(model(idx, all_logits=True)[0], model(idx, all_logits=True)[0])


def test_flops_per_token_matches_counted_matmuls():
    cfg = small(mlp="swiglu", tie_embeddings=False)
    model = build(cfg)
    B, T = 2, 16
    idx = tokens(B, T)
    with FlopCounterMode(display=False) as counter:
        model(idx, idx)[1].backward()
    attention = 12 * cfg.n_layer * cfg.d_model * T
    assert model.flops_per_token(T) - attention == 6 * model.num_params()
    # The CPU flop counter sees the matmuls (not SDPA): they are the 6*N part, up to the norm weights.
    assert counter.get_total_flops() / (B * T) == pytest.approx(6 * model.num_params(), rel=0.01)
    assert model.flops_per_token() == model.flops_per_token(cfg.block_size) > model.flops_per_token(T)


def test_optim_groups_split_matrices_from_vectors():
    model = build(small(bias=True, norm="layernorm", pos_encoding="learned"))
    decay, no_decay = model.optim_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # tied weight listed once
    assert any(p is model.wte.weight for p in decay["params"])
    torch.optim.AdamW([decay, no_decay], lr=1e-3)


def test_init_is_deterministic_and_scales_residual_projections():
    cfg = small(n_layer=8, d_model=128)
    a, b = build(cfg, seed=7), build(cfg, seed=7)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert not torch.equal(build(cfg, seed=8).wte.weight, a.wte.weight)
    block = a.blocks[0]
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.attn.out.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert block.mlp.down.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    biased = build(small(bias=True, norm="layernorm"))
    assert all(not m.bias.any() for m in biased.modules() if getattr(m, "bias", None) is not None)


def test_tiny_model_overfits_one_batch():
    model = build(small(vocab_size=64, n_layer=2, d_model=64, mlp="swiglu"))
    idx = tokens(4, 33, vocab=64)
    opt = torch.optim.AdamW(model.optim_groups(0.0), lr=3e-3)
    losses = []
    for _ in range(50):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.5 and losses[-1] < 0.2 * losses[0], losses[::10]


def test_compiles_without_graph_breaks():
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward without
    inductor's C++ codegen, which is what makes a real compile slow on CPU."""
    model = build(small(qk_norm=True))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    idx = tokens(2, 16)
    mask = torch.ones(2, 16, dtype=torch.bool)
    _, loss = compiled(idx, idx, mask)
    loss.backward()
    torch.testing.assert_close(loss, model(idx, idx, mask)[1])


@pytest.mark.slow
def test_inductor_compile_matches_eager():
    model = build(small())
    idx = tokens(2, 16)
    _, loss = torch.compile(model)(idx, idx)
    torch.testing.assert_close(loss, model(idx, idx)[1], atol=1e-5, rtol=1e-5)


def preset(name: str) -> GPTConfig:
    return from_dict(GPTConfig, load_yaml(CONFIGS / f"{name}.yml")["model"], where=name)


@pytest.mark.parametrize(
    "name, low, high", [("tiny", 5e6, 9e6), ("gpt-45m", 40e6, 50e6), ("gpt_d768_l12", 90e6, 105e6)]
)
def test_preset_param_counts(name, low, high):
    cfg = preset(name)
    assert cfg.vocab_size == 16384  # presets leave the vocab to the token store
    with torch.device("meta"):  # sizes only: no memory, no init work
        model = GPT(cfg)
    total, body = model.num_params(non_embedding=False), model.num_params()
    assert total == expected_params(cfg)
    print(
        f"{name}: {total / 1e6:.2f}M params ({body / 1e6:.2f}M non-embedding), "
        f"{model.flops_per_token() / 1e6:.0f} MFLOP/token at T={cfg.block_size}"
    )
    assert low <= total <= high
