"""Both forms of the fused projection + cross-entropy (model/kernels): the Triton kernel (in Triton's
interpreter on CPU, tests/conftest.py; skipped without Triton) and the chunked plain-torch op that
every other device runs, each in both of its code paths, against float64 references; and the
model's choice between them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from loss_cases import DEVICE, IGNORE, inputs

from model import GPT, GPTConfig, kernels
from model.kernels import chunked_loss


def reference_loss(x, weight, targets):
    logits = x.double() @ weight.double().t()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")


def grads_of(loss_fn, x, weight, targets, scale=1.0):
    x, weight = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss = loss_fn(x, weight, targets)
    (loss * scale).backward()
    return loss.detach(), x.grad, weight.grad


@pytest.fixture(params=["chunked", "chunked-row-by-row", "triton", "triton-streamed"])
def impl(request, monkeypatch):
    """One of the loss ops, on one of its code paths: (its module's linear_cross_entropy, the raw op)."""
    if request.param.startswith("chunked"):
        if request.param == "chunked-row-by-row":  # every row a chunk of its own
            monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 1)
        return chunked_loss.linear_cross_entropy, chunked_loss._linear_cross_entropy_chunked
    pytest.importorskip("triton")
    from model.kernels import cross_entropy

    if request.param == "triton-streamed":  # the blocked online softmax, with a partial last block
        monkeypatch.setattr(cross_entropy, "ONE_BLOCK_MAX", 16)
        monkeypatch.setattr(cross_entropy, "STREAM_BLOCK", 32)
    return cross_entropy.linear_cross_entropy, cross_entropy._linear_cross_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_gradients_match_a_float64_reference(impl, dtype):
    loss_fn = lambda a, b, t: impl[0](a, b, t, IGNORE)
    x, weight, targets = inputs(37, 24, 300, dtype)
    scale = 0.37  # an upstream gradient other than 1 (a mean, grad accumulation)
    got = grads_of(loss_fn, x, weight, targets, scale)
    want = grads_of(reference_loss, x.double(), weight.double(), targets, scale)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0].double(), want[0], **tol)
    for g, w in zip(got[1:], want[1:], strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), w, **tol)


def test_chunks_with_a_short_last_one_sum_to_the_one_chunk_result(monkeypatch):
    x, weight, targets = inputs(37, 24, 300, torch.float32)
    whole = grads_of(lambda a, b, t: chunked_loss.linear_cross_entropy(a, b, t, IGNORE), x, weight, targets)
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 8 * 4 * 300)  # 8 rows per chunk: 4 full, then 5 rows
    chunked = grads_of(lambda a, b, t: chunked_loss.linear_cross_entropy(a, b, t, IGNORE), x, weight, targets)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ignored_rows_add_nothing_and_an_all_ignored_batch_is_zero(impl):
    loss_fn = lambda a, b, t: impl[0](a, b, t, IGNORE)
    x, weight, targets = inputs(12, 16, 100, torch.float32)
    kept = targets != IGNORE
    everything = grads_of(loss_fn, x, weight, targets)
    only_counted = grads_of(lambda a, b, t: loss_fn(a[kept], b, t[kept]), x, weight, targets)
    for got, want in zip(everything, only_counted, strict=True):
        torch.testing.assert_close(got, want)

    loss, gx, gw = grads_of(loss_fn, x, weight, torch.full_like(targets, IGNORE))
    assert loss.item() == 0 and not gx.any() and not gw.any()


def test_out_of_range_ids_are_ignored_by_the_triton_op_and_refused_by_the_chunked_one():
    x, weight, targets = inputs(12, 16, 100, torch.float32)
    targets[3] = 100  # the first id outside
    with pytest.raises(ValueError, match=r"target id 100 is outside the vocabulary \[0, 100\)"):
        chunked_loss.linear_cross_entropy(x, weight, targets, IGNORE)
    with pytest.raises(ValueError, match="target id -5 is outside"):
        chunked_loss.linear_cross_entropy(x, weight, torch.where(targets == 100, -5, targets), IGNORE)

    pytest.importorskip("triton")
    from model.kernels import cross_entropy

    targets[7] = -5
    kept = (targets != IGNORE) & (targets >= 0) & (targets < 100)
    loss_fn = lambda a, b, t: cross_entropy.linear_cross_entropy(a, b, t, IGNORE)
    everything = grads_of(loss_fn, x, weight, targets)
    only_counted = grads_of(lambda a, b, t: loss_fn(a[kept], b, t[kept]), x, weight, targets)
    for got, want in zip(everything, only_counted, strict=True):
        torch.testing.assert_close(got, want)


def test_another_ignore_index_and_an_empty_batch(impl):
    x, weight, targets = inputs(12, 16, 100, torch.float32)
    targets = torch.where(targets == IGNORE, -100, targets)
    got = grads_of(lambda a, b, t: impl[0](a, b, t, -100), x, weight, targets)
    want = grads_of(lambda a, b, t: F.cross_entropy(a.double() @ b.double().t(), t, reduction="sum"),
                    x.double(), weight.double(), targets)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)

    loss, gx, gw = grads_of(lambda a, b, t: impl[0](a, b, t, IGNORE), x[:0], weight, targets[:0])
    assert loss.item() == 0 and gx.shape == (0, 16) and gw.shape == weight.shape and not gw.any()


def test_a_second_derivative_is_refused_not_zero(impl):
    """The gradients are made in the forward pass, so a graph of them cannot be had: asking for one
    fails instead of giving second derivatives of 0."""
    x, weight, targets = inputs(9, 8, 40, torch.float32)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(impl[0](x, weight, targets, IGNORE), x, create_graph=True)


def test_bf16_matches_the_plain_loss_on_bf16_logits_closely():
    """What the model's plain path computes under bf16: logits rounded to bf16, softmax in float32.
    The loss agrees to float32 rounding (a bf16 softmax would be ~1e-3 off); the gradients to bf16
    rounding, and without an overall bias against float64 (a scale rounded to bf16 has one: 0.37
    becomes 0.3691)."""
    x, weight, targets = inputs(37, 24, 300, torch.bfloat16)
    plain = lambda a, b, t: F.cross_entropy((a @ b.t()).float(), t, ignore_index=IGNORE, reduction="sum")
    got = grads_of(lambda a, b, t: chunked_loss.linear_cross_entropy(a, b, t, IGNORE), x, weight, targets, 0.37)
    want = grads_of(plain, x, weight, targets, 0.37)
    exact = grads_of(reference_loss, x.double(), weight.double(), targets, 0.37)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-4)
    for g, w, e in zip(got[1:], want[1:], exact[1:], strict=True):
        torch.testing.assert_close(g, w, rtol=1.6e-2, atol=1e-3)
        g, e = g.double(), e.double()
        assert abs((g * e).sum() / (e * e).sum() - 1) < 5e-4


def test_without_grad_the_loss_is_the_same_and_no_gradient_buffer_is_made(impl):
    loss_fn, op = impl
    x, weight, targets = inputs(10, 8, 50, torch.float32)
    with_grad = loss_fn(x, weight, targets, IGNORE)
    with torch.no_grad():
        loss_sum, *grads = op(x, weight, targets, IGNORE, False)
        assert loss_fn(x, weight, targets, IGNORE).requires_grad is False
    torch.testing.assert_close(loss_sum, with_grad.detach())
    assert all(g.numel() == 0 for g in grads)


@pytest.mark.parametrize("frozen", ["weight", "x"])
def test_a_frozen_input_gets_no_gradient_and_the_other_the_right_one(impl, frozen):
    x, weight, targets = inputs(9, 8, 40, torch.float32)
    if frozen == "weight":
        weight = weight.detach()
    else:
        x = x.detach()
    impl[0](x, weight, targets, IGNORE).backward()
    ref_x, ref_weight = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    reference_loss(ref_x, ref_weight, targets).backward()
    frozen_t, trained, ref = (weight, x, ref_x) if frozen == "weight" else (x, weight, ref_weight)
    assert frozen_t.grad is None
    torch.testing.assert_close(trained.grad.double(), ref.grad, rtol=1e-4, atol=1e-4)


def test_logits_beyond_float32_exp_range_give_the_right_loss(impl):
    """Logits in the hundreds: exp() of them overflows float32 (above ~88), so the softmax must
    subtract the row's max first; without it the loss and gradients come out inf/NaN."""
    x, weight, targets = inputs(9, 8, 40, torch.float32)
    weight = (weight.detach() * 100).requires_grad_()
    got = grads_of(lambda a, b, t: impl[0](a, b, t, IGNORE), x, weight, targets)
    want = grads_of(reference_loss, x.double(), weight.double(), targets)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-3)


def test_strided_targets(impl):
    """A 1-D targets view with stride 2 (flatten keeps it as is): the Triton kernel indexes targets
    as contiguous, so the op must make them so."""
    x, weight, targets = inputs(12, 16, 100, torch.float32)
    strided = torch.stack((targets, targets.flip(0)), dim=1)[:, 0]
    assert not strided.is_contiguous()
    torch.testing.assert_close(impl[0](x, weight, strided, IGNORE), impl[0](x, weight, targets, IGNORE))


def test_no_kernel_without_triton_even_on_cuda(monkeypatch):
    """A CUDA build of torch without Triton (Windows wheels) must take the chunked loss and plain
    formulas: the kernel modules are None there."""
    monkeypatch.setattr(kernels, "HAVE_TRITON", False)
    assert not kernels.usable(SimpleNamespace(is_cuda=True))
    monkeypatch.setattr(kernels, "HAVE_TRITON", True)
    assert kernels.usable(SimpleNamespace(is_cuda=True))


def test_autocast_runs_the_projection_in_the_autocast_dtype(impl):
    loss_fn = impl[0]
    x, weight, targets = inputs(9, 8, 40, torch.float32)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        under = loss_fn(x, weight, targets, IGNORE)
    plain = loss_fn(x.bfloat16(), weight.bfloat16(), targets, IGNORE)
    torch.testing.assert_close(under, plain)
    assert not torch.equal(under, loss_fn(x, weight, targets, IGNORE))


@pytest.mark.parametrize("case", ["float32", "bfloat16", "column-major weight", "no rows", "ignore -100"])
def test_the_chunked_op_passes_torch_opcheck(monkeypatch, case):
    """Schema, fake implementation and autograd formula agree with the real op (dtypes, shapes and
    strides of every output), over several chunks."""
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 2 * 4 * 30)
    x, weight, targets = inputs(0 if case == "no rows" else 7, 8, 30,
                                torch.bfloat16 if case == "bfloat16" else torch.float32)
    ignore = IGNORE
    if case == "column-major weight":
        weight = weight.detach().t().contiguous().t().requires_grad_()
    elif case == "ignore -100":
        ignore = -100
        targets = torch.where(targets == IGNORE, -100, targets)
    op = chunked_loss._linear_cross_entropy_chunked
    torch.library.opcheck(op, (x, weight, targets, ignore, True))
    torch.library.opcheck(op, (x.detach(), weight.detach(), targets, ignore, False))


def test_the_chunked_op_traces_into_a_compiled_graph_with_the_same_result(monkeypatch):
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 4 * 4 * 30)  # 4 rows per chunk
    x, weight, targets = inputs(11, 8, 30, torch.float32)

    def step(x, weight):
        return chunked_loss.linear_cross_entropy(x, weight, targets, IGNORE)

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    eager = torch.autograd.grad(step(x, weight), (x, weight))
    for a, b in zip(eager, torch.autograd.grad(compiled(x, weight), (x, weight)), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_the_model_takes_the_chunked_loss_where_the_kernel_cannot_run(tie, monkeypatch):
    """GPT.forward without logits on CPU: the chunked op runs (by name, in the profiler; 10 rows per
    chunk), and loss and every parameter's gradient match the plain loss, which asking for logits
    keeps."""
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 10 * 4 * 96)
    cfg = GPTConfig(vocab_size=96, block_size=16, n_layer=2, n_head=2, d_model=32, tie_embeddings=tie)
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 17))
    idx[0, 5:9] = cfg.pad_id

    def loss_and_grads(return_logits: bool):
        model.zero_grad()
        with torch.profiler.profile() as prof:
            logits, loss = model(idx[:, :-1], idx[:, 1:], return_logits=return_logits)
            loss.backward()
        ran = {e.key for e in prof.key_averages()}
        return logits, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, ran

    fused_logits, fused_loss, fused_grads, fused_ran = loss_and_grads(False)
    plain_logits, plain_loss, plain_grads, plain_ran = loss_and_grads(True)
    assert not kernels.usable(idx)
    assert "smallgpt::linear_cross_entropy_chunked" in fused_ran
    assert "smallgpt::linear_cross_entropy_chunked" not in plain_ran
    assert fused_logits is None and plain_logits.shape == (3, 16, cfg.vocab_size)
    torch.testing.assert_close(fused_loss, plain_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, msg=lambda m, n=name: f"{n}: {m}")


def test_loss_benchmark_smoke():
    """bench/loss.py runs every case at a toy size (not a timing: the numbers are for RESULTS)."""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(repo / "bench/loss.py"), "--rows", "64", "--dim", "8", "--vocab",
                           "100", "--reps", "1", "--chunk-mib", "1"], cwd=repo, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for case in ("| plain loss |", "| chunked loss, 2621 rows a chunk (1 MiB) |", "| its 3 matmuls alone |"):
        assert case in proc.stdout, proc.stdout
