"""The SDPA kernel preference: what `auto` resolves to, that it orders without disabling, that it is
undone on exit; on a GPU, that every preferred kernel computes the same attention and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from model.attention_backend import ATTENTION_BACKENDS, prefer_attention_backend, resolve_attention_backend

CPU = torch.device("cpu")
ENABLED = (
    torch.backends.cuda.flash_sdp_enabled,
    torch.backends.cuda.mem_efficient_sdp_enabled,
    torch.backends.cuda.cudnn_sdp_enabled,
    torch.backends.cuda.math_sdp_enabled,
)


def test_auto_keeps_torchs_order_off_hopper():
    assert resolve_attention_backend("auto", CPU) is None
    before = torch._C._get_sdp_priority_order()
    with prefer_attention_backend("auto", CPU):
        assert torch._C._get_sdp_priority_order() == before


@pytest.mark.parametrize("name", ["flash", "cudnn", "efficient", "math"])
def test_a_named_backend_goes_first_and_nothing_is_disabled(name):
    before = torch._C._get_sdp_priority_order()
    with prefer_attention_backend(name, CPU):
        order = torch._C._get_sdp_priority_order()
        expected = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                    "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]
        assert order[0] == int(expected)
        assert all(enabled() for enabled in ENABLED)
    assert torch._C._get_sdp_priority_order() == before
    assert all(enabled() for enabled in ENABLED)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="attention backend must be one of"):
        resolve_attention_backend("fa9", CPU)
    assert ATTENTION_BACKENDS[0] == "auto"


def test_cpu_attention_is_unchanged_by_a_preference():
    q, k, v = (torch.randn(2, 4, 32, 16) for _ in "qkv")
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with prefer_attention_backend("cudnn", CPU):
        assert torch.equal(F.scaled_dot_product_attention(q, k, v, is_causal=True), ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["flash", "cudnn", "efficient"])
def test_every_preferred_kernel_matches_a_float64_reference(name):
    """gpt-45m's attention shape in bf16, forward and backward, against float64 math on the same inputs;
    fresh random inputs per backend. bf16 operands land between 1e-3 and 1e-2 relative error."""
    device = torch.device("cuda")
    gen = torch.Generator(device).manual_seed(ATTENTION_BACKENDS.index(name))
    q, k, v = (torch.randn(4, 8, 1024, 64, device=device, generator=gen, dtype=torch.bfloat16).requires_grad_()
               for _ in "qkv")
    grad = torch.randn(4, 8, 1024, 64, device=device, generator=gen, dtype=torch.bfloat16)
    with prefer_attention_backend(name, device), torch.profiler.profile() as prof:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(grad)
        torch.cuda.synchronize()
    ref_inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_inputs, is_causal=True)
    ref.backward(grad.double())
    errors = {label: ((got.double() - want).norm() / want.norm()).item() for label, got, want in
              (("out", out, ref), *((f"d{n}", t.grad, r.grad) for n, t, r in zip("qkv", (q, k, v), ref_inputs,
                                                                                  strict=True)))}
    kernels = " ".join(e.key.lower() for e in prof.key_averages())
    assert f"_scaled_dot_product_{name}_attention" in kernels, f"{name} was preferred but these ran: {kernels[:800]}"
    assert all(err < 1e-2 for err in errors.values()), f"{name}: relative errors {errors}"
