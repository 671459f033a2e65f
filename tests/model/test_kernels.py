"""The Triton kernels (model/kernels) against float64 references: SwiGLU, rope with ragged head
shapes and strided gradients, every tiling, the custom ops' registrations, and the model with the
kernels on versus off (the loss op's own tests are in test_fused_loss.py). On CPU they run in Triton's
interpreter (tests/conftest.py); on a GPU, compiled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from loss_cases import DEVICE, IGNORE, inputs  # noqa: E402

from model import GPT, GPTConfig, kernels  # noqa: E402
from model.kernels import cross_entropy, rope, swiglu_kernel  # noqa: E402
from model.layers import apply_rope, rope_tables  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def swiglu_reference(h, grad_out):
    """silu(gate) * value in float64, and its gradient for grad_out."""
    ref_h = h.detach().double().requires_grad_()
    gate, value = ref_h.chunk(2, dim=-1)
    out = F.silu(gate) * value
    out.backward(grad_out.double())
    return out, ref_h.grad


def angles(T, head_dim):
    return tuple(t.to(DEVICE) for t in rope_tables(T, head_dim, 10000.0))


@pytest.mark.parametrize("shape", [(37, 200), (2, 3, 128), (1, 2)], ids=["ragged", "3d", "tiny"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_forward_and_backward_match_a_float64_reference(shape, dtype):
    gen = torch.Generator().manual_seed(1)
    h = (torch.randn(*shape[:-1], 2 * shape[-1], generator=gen) * 2).to(DEVICE, dtype).requires_grad_()
    grad_out = torch.randn(*shape, generator=gen).to(DEVICE, dtype)
    out = kernels.swiglu(h)
    out.backward(grad_out)

    ref, ref_grad = swiglu_reference(h, grad_out)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 2e-2}
    assert out.shape == shape and out.dtype == dtype and h.grad.dtype == dtype
    torch.testing.assert_close(out.double(), ref, **tol)
    torch.testing.assert_close(h.grad.double(), ref_grad, **tol)


def test_swiglu_rejects_an_odd_width():
    with pytest.raises(ValueError, match="even last dimension"):
        kernels.swiglu(torch.zeros(2, 5, device=DEVICE))


@pytest.mark.parametrize("heads,head_dim", [(2, 16), (3, 12)], ids=["pow2", "ragged"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_qkv_matches_apply_rope_forward_and_backward(heads, head_dim, dtype):
    B, T = 2, 7
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn(B, T, 3, heads, head_dim, generator=gen).to(DEVICE, dtype).requires_grad_()
    cos, sin = angles(T, head_dim)
    grads = [torch.randn(B, heads, T, head_dim, generator=gen).to(DEVICE, dtype) for _ in range(3)]

    # As attention uses it: [B, H, T, D] views; their gradients then arrive in that layout, strided.
    got = [t.transpose(1, 2) for t in kernels.rope_qkv(qkv, cos, sin)]
    torch.autograd.backward(got, grads)

    ref_qkv = qkv.detach().double().requires_grad_()
    q, k, v = ref_qkv.permute(2, 0, 3, 1, 4)
    want = [apply_rope(q, cos.double(), sin.double()), apply_rope(k, cos.double(), sin.double()), v]
    torch.autograd.backward(want, [g.double() for g in grads])
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 2e-2}
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, **tol)
    torch.testing.assert_close(qkv.grad.double(), ref_qkv.grad, **tol)


def test_rope_qkv_rejects_a_table_of_the_wrong_length():
    qkv = torch.zeros(1, 4, 3, 2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="cos/sin"):
        kernels.rope_qkv(qkv, *angles(5, 8))


@pytest.mark.parametrize("config", swiglu_kernel.TILE_OPTIONS, ids=str)
def test_every_swiglu_tiling_computes_the_same(config):
    """The GPU picks a tiling by timing; each must give the reference result (ragged edges too)."""
    rows, hidden = 37, 200
    h, grad_out = torch.randn(rows, 2 * hidden, device=DEVICE), torch.randn(rows, hidden, device=DEVICE)
    # Poisoned: an element no program writes stays NaN and fails the comparison.
    out, grad_h = torch.full((rows, hidden), float("nan"), device=DEVICE), torch.full_like(h, float("nan"))
    grid = swiglu_kernel._grid(rows, hidden)
    swiglu_kernel._swiglu_fwd.fn[grid](h, out, rows, hidden, **config.all_kwargs())
    swiglu_kernel._swiglu_bwd.fn[grid](h, grad_out, grad_h, rows, hidden, **config.all_kwargs())
    ref, ref_grad = swiglu_reference(h, grad_out)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_h.double(), ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", rope.TILE_OPTIONS, ids=str)
def test_every_rope_tiling_computes_the_same(config):
    B, T, heads, head_dim = 2, 7, 3, 12
    qkv = torch.randn(B, T, 3, heads, head_dim, device=DEVICE)
    cos, sin = angles(T, head_dim)
    q, k, v = (torch.full((B, T, heads, head_dim), float("nan"), device=DEVICE) for _ in range(3))
    blocks = rope._blocks(heads, head_dim) | config.all_kwargs()
    rope._rope_qkv_fwd.fn[rope._grid(B * T)](qkv, cos, sin, q, k, v, B * T, T, heads, **blocks)
    dq, dk, dv = (torch.randn(B, heads, T, head_dim, device=DEVICE).transpose(1, 2) for _ in range(3))
    dqkv = torch.full_like(qkv, float("nan"))
    rope._rope_qkv_bwd.fn[rope._grid(B * T)](dq, dk, dv, cos, sin, dqkv, B * T, T, heads, *dq.stride()[:3], **blocks)
    want_q, want_k, want_v = kernels.rope_qkv(qkv, cos, sin)  # the tested default tiling
    for got, want in ((q, want_q), (k, want_k), (v, want_v)):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(dqkv, rope._rope_qkv_backward(dq, dk, dv, cos, sin))


def test_custom_op_registrations_pass_torch_opcheck():
    """Schema, fake (shape-only) implementation and autograd formula agree with the real op: what
    torch.compile relies on to keep each kernel as one call in a compiled graph."""
    x, weight, targets = inputs(6, 8, 30, torch.float32)
    torch.library.opcheck(cross_entropy._linear_cross_entropy, (x, weight, targets, IGNORE, True))
    no_grad_args = (x.detach(), weight.detach(), targets, IGNORE, False)
    torch.library.opcheck(cross_entropy._linear_cross_entropy, no_grad_args)
    # bf16: the fake must say the loss is float32 all the same (inductor lays out buffers by it).
    torch.library.opcheck(cross_entropy._linear_cross_entropy, (*inputs(6, 8, 30, torch.bfloat16), IGNORE, True))
    h = torch.randn(6, 10, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.smallgpt.swiglu.default, (h,))
    qkv = torch.randn(2, 5, 3, 2, 4, device=DEVICE, requires_grad=True)
    cos, sin = angles(5, 4)
    torch.library.opcheck(torch.ops.smallgpt.rope_qkv.default, (qkv, cos, sin))
    # The backward ops on their own, with inputs in layouts the forward never sees (fake and real
    # must agree on the output's strides too).
    torch.library.opcheck(torch.ops.smallgpt.swiglu_backward.default,
                          (torch.randn(10, 6, device=DEVICE).t(), torch.randn(6, 5, device=DEVICE)))
    grads = [torch.randn(2, 2, 5, 4, device=DEVICE).transpose(1, 2) for _ in range(3)]
    torch.library.opcheck(torch.ops.smallgpt.rope_qkv_backward.default, (*grads, cos, sin))


def test_the_kernels_trace_into_a_compiled_graph_with_the_same_result():
    x, weight, targets = inputs(11, 8, 30, torch.float32)
    h = torch.randn(11, 20, device=DEVICE, requires_grad=True)

    def step(x, weight, h):
        return cross_entropy.linear_cross_entropy(x, weight, targets, IGNORE) + kernels.swiglu(h).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    eager_grads = torch.autograd.grad(step(x, weight, h), (x, weight, h))
    compiled_grads = torch.autograd.grad(compiled(x, weight, h), (x, weight, h))
    for a, b in zip(eager_grads, compiled_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("variant", [{}, {"qk_norm": True}, {"pos_encoding": "learned", "mlp": "gelu"}],
                         ids=["rope-swiglu", "qk-norm", "learned-gelu"])
def test_the_model_with_kernels_matches_the_model_without(monkeypatch, variant):
    """The full GPT, kernels on (forced on CPU through the interpreter) versus off: same loss and same
    gradients for every parameter; asking for logits keeps the plain loss. rope + swiglu runs all
    three kernels; QK-norm keeps the plain RoPE (the norm comes between split and rotation)."""
    cfg = GPTConfig(**{"vocab_size": 96, "block_size": 16, "n_layer": 2, "n_head": 2, "d_model": 32,
                       "mlp": "swiglu"} | variant)
    torch.manual_seed(0)
    model = GPT(cfg).to(DEVICE)
    idx = torch.randint(0, cfg.vocab_size, (3, 17), device=DEVICE)
    idx[0, 5:9] = cfg.pad_id

    def loss_and_grads(use_kernels: bool):
        monkeypatch.setattr(kernels, "usable", lambda t: use_kernels)
        model.zero_grad()
        with torch.profiler.profile() as prof:
            # Off: the plain loss too (asking for logits), not the chunked one that CPU would pick.
            logits, loss = model(idx[:, :-1], idx[:, 1:], return_logits=not use_kernels)
            loss.backward()
        ran = {e.key.removeprefix("smallgpt::") for e in prof.key_averages() if e.key.startswith("smallgpt::")}
        return logits, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, ran

    fused_logits, fused_loss, fused_grads, fused_ran = loss_and_grads(True)
    plain_logits, plain_loss, plain_grads, plain_ran = loss_and_grads(False)
    # Which kernels really ran: on vs off would agree trivially if a kernel were silently skipped.
    expected = {"linear_cross_entropy"}
    if cfg.pos_encoding == "rope" and not cfg.qk_norm:
        expected |= {"rope_qkv", "rope_qkv_backward"}
    if cfg.mlp == "swiglu":
        expected |= {"swiglu", "swiglu_backward"}
    assert fused_ran == expected and plain_ran == set(), (fused_ran, plain_ran)
    assert fused_logits is None and plain_logits is not None
    torch.testing.assert_close(fused_loss, plain_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, msg=lambda m, n=name: f"{n}: {m}")

    monkeypatch.setattr(kernels, "usable", lambda t: True)
    logits, loss = model(idx[:, :-1], idx[:, 1:])
    assert logits is not None and logits.shape == (3, 16, cfg.vocab_size)
    torch.testing.assert_close(loss.detach(), plain_loss)


def compiled_bf16_with_and_without_kernels(cfg: dict, idx: torch.Tensor, backend: str) -> None:
    """What training runs: torch.compile (one graph), bf16 autocast and residual stream, the kernel
    switches on versus off from the same init. The custom ops must run (profiler) only with the
    switches on, and both must agree on the loss and every gradient to bf16 accuracy."""
    results = {}
    for fused in (True, False):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**cfg, fused_loss=fused, fused_swiglu=fused, fused_rope=fused)).to(idx.device)
        torch._dynamo.reset()
        step = torch.compile(model, backend=backend, fullgraph=True)

        def loss_and_backward(model=model, step=step):
            model.zero_grad(set_to_none=True)
            with torch.autocast(idx.device.type, dtype=torch.bfloat16):
                _, loss = step(idx[:, :-1], idx[:, 1:], return_logits=False)
            loss.backward()
            if idx.is_cuda:
                torch.cuda.synchronize()
            return loss

        loss_and_backward()  # compiles: outside the profiler, which would record every op of the compiler
        with torch.profiler.profile() as prof:
            loss = loss_and_backward()
        ran = {e.key for e in prof.key_averages()}
        results[fused] = loss.item(), {n: p.grad.float() for n, p in model.named_parameters()}, ran
    for op in ("linear_cross_entropy", "swiglu", "swiglu_backward", "rope_qkv", "rope_qkv_backward"):
        assert f"smallgpt::{op}" in results[True][2] and f"smallgpt::{op}" not in results[False][2], op
    assert abs(results[True][0] - results[False][0]) < 1e-2
    for name, plain in results[False][1].items():
        rel = ((results[True][1][name] - plain).norm() / plain.norm()).item()
        assert rel < 3e-2, f"{name}: relative gradient difference {rel:.3g}"


def test_compiled_bf16_autocast_model_with_kernels_matches_the_plain_model(monkeypatch):
    """On CPU: aot_eager, the kernels in the interpreter (usable forced; the switches choose)."""
    monkeypatch.setattr(kernels, "usable", lambda t: True)
    idx = torch.randint(0, 512, (2, 33), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    compiled_bf16_with_and_without_kernels(
        dict(vocab_size=512, block_size=32, n_layer=2, n_head=4, d_model=64, mlp="swiglu"), idx, "aot_eager")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_bf16_model_with_kernels_matches_without_on_gpu():
    """On a GPU: inductor, the compiled kernels, gpt-45m's layer shape and vocab."""
    idx = torch.randint(0, 16384, (8, 257), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    compiled_bf16_with_and_without_kernels(
        dict(vocab_size=16384, block_size=256, n_layer=2, n_head=6, d_model=768, mlp="swiglu"), idx, "inductor")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU smoke test; on a GPU run bench/kernels.py itself")
def test_kernel_benchmark_smoke():
    """bench/kernels.py --smoke: every case of the GPU benchmark runs (CPU, interpreter, toy sizes)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench/kernels.py"), "--smoke"], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for label in ("projection + loss", "loss kernel, one block", "loss kernel, streamed 64", "swiglu", "rope + qkv"):
        assert label in proc.stdout, proc.stdout


def test_swiglu_reads_strided_inputs_and_gradients():
    """h a slice of a wider buffer, and the upstream gradient transposed (the output used as .t()):
    the kernels index as if contiguous, so the op must make them so."""
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(37, 2 * 200 + 8, generator=gen).to(DEVICE)[:, :400].requires_grad_()
    grad_out_t = torch.randn(200, 37, generator=gen).to(DEVICE)
    out = kernels.swiglu(h)
    out.t().backward(grad_out_t)
    ref, ref_grad = swiglu_reference(h, grad_out_t.t())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h.grad.double(), ref_grad, rtol=1e-5, atol=1e-5)


def test_rope_qkv_reads_strided_inputs_and_gradients_of_different_layouts():
    """A padded qkv, column-major angle tables, and dq, dk, dv each in its own layout (the backward
    kernel reads all three with dq's strides) give what contiguous ones give."""
    B, T, heads, head_dim = 2, 7, 3, 12
    gen = torch.Generator().manual_seed(4)
    qkv = torch.randn(B, T, 3, heads, head_dim + 4, generator=gen).to(DEVICE)[..., :head_dim]
    cos, sin = angles(T, head_dim)
    col_major = [t.t().contiguous().t() for t in (cos, sin)]
    for got, want in zip(kernels.rope_qkv(qkv, *col_major), kernels.rope_qkv(qkv.contiguous(), cos, sin), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    dq = torch.randn(B, heads, T, head_dim, generator=gen).to(DEVICE).transpose(1, 2)
    dk = torch.randn(B, T, heads, head_dim, generator=gen).to(DEVICE)
    dv = torch.randn(T, B, heads, head_dim, generator=gen).to(DEVICE).transpose(0, 1)
    got = rope._rope_qkv_backward(dq, dk, dv, cos, sin)
    want = rope._rope_qkv_backward(dq.contiguous(), dk, dv.contiguous(), cos, sin)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
