"""The SDPA kernel choice: `auto` and CPU leave torch alone; a named kernel on CUDA is the only one
enabled besides the math fallback, and the settings come back on exit; on a GPU, every named kernel
really runs and computes the same attention and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.attention_backend import ATTENTION_BACKENDS, attention_backends, use_attention_backend

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
ENABLED = {
    "flash": torch.backends.cuda.flash_sdp_enabled,
    "efficient": torch.backends.cuda.mem_efficient_sdp_enabled,
    "cudnn": torch.backends.cuda.cudnn_sdp_enabled,
    "math": torch.backends.cuda.math_sdp_enabled,
}


def enabled() -> set[str]:
    return {name for name, flag in ENABLED.items() if flag()}


@pytest.mark.parametrize("device", [CPU, CUDA])
def test_auto_leaves_torch_alone(device):
    assert attention_backends("auto", device) is None
    with use_attention_backend("auto", device):
        assert enabled() == set(ENABLED)


@pytest.mark.parametrize("name", ["flash", "cudnn", "efficient", "math"])
def test_a_named_kernel_is_the_only_one_besides_math_on_cuda(name):
    before = torch._C._get_sdp_priority_order()
    with use_attention_backend(name, CUDA):
        assert enabled() == {name, "math"}
    assert enabled() == set(ENABLED) and torch._C._get_sdp_priority_order() == before
    with use_attention_backend(name, CPU):
        assert enabled() == set(ENABLED)  # CPU attention is left alone


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="attention backend must be one of"):
        attention_backends("fa9", CUDA)
    assert ATTENTION_BACKENDS[0] == "auto"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("heads, head_dim", [(6, 128), (8, 64)], ids=["gpt-45m", "deep512"])
@pytest.mark.parametrize("name", ["flash", "cudnn", "efficient"])
def test_every_named_kernel_runs_and_matches_a_float64_reference(name, heads, head_dim):
    """gpt-45m's attention shape (and its earlier one, heads of 64) in bf16, forward and backward,
    against float64 math on the same inputs; fresh random inputs per backend. bf16 operands land
    between 1e-3 and 1e-2 relative error."""
    device = torch.device("cuda")
    gen = torch.Generator(device).manual_seed(ATTENTION_BACKENDS.index(name))
    q, k, v = (torch.randn(4, heads, 1024, head_dim, device=device, generator=gen, dtype=torch.bfloat16)
               .requires_grad_() for _ in "qkv")
    grad = torch.randn(4, heads, 1024, head_dim, device=device, generator=gen, dtype=torch.bfloat16)
    with use_attention_backend(name, device), torch.profiler.profile() as prof:
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
    assert f"_scaled_dot_product_{name}_attention" in kernels, f"{name} was chosen but these ran: {kernels[:800]}"
    assert all(err < 1e-2 for err in errors.values()), f"{name}: relative errors {errors}"
