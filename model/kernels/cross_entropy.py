"""Output projection + cross-entropy in one op, its gradient computed during the forward pass.

The plain path (lm_head, then F.cross_entropy on float32 logits) reads the [N, vocab] logits in a
log-softmax reduction, again in the backward, and writes their gradient: at vocab 16384 and 64k
tokens that is ~6 passes over 2 GB of bf16, 3.3 ms of a 59 ms step of gpt-45m at 12 x 512 on an
H200. Here one Triton program per row reads its logits once, writes the row's loss, and overwrites
the logits in place with the loss's gradient (softmax - one-hot): two passes. The backward is then
only the two matmuls, scaled by the upstream gradient of the summed loss. Measured on an H200: 1.5
ms per step (bench/RESULTS.md), 74% of the card's copy bandwidth.

Invariant: the op returns the *sum* of the counted rows' losses and the unscaled per-row gradient,
so any upstream scaling (the mean over counted tokens, grad accumulation, a loss scaler) is one
scalar that multiplies the small matmul operands, never the [N, vocab] buffer.
"""

# No `from __future__ import annotations`: torch.library.custom_op reads the annotations as types,
# which torch before 2.5 cannot do from strings.
import torch
import triton
import triton.language as tl

from model.kernels.chunked_loss import check_backward, loss_inputs, scaled

# Rows up to this many logits are held in registers whole (one read); wider rows are streamed in
# blocks of STREAM_BLOCK, and their second pass re-reads the row (mostly from L2).
ONE_BLOCK_MAX = 16384
STREAM_BLOCK = 4096


@triton.jit
def _loss_and_grad_rows(
    logits_ptr,
    targets_ptr,
    losses_ptr,
    row_stride,
    vocab,
    ignore_index,
    WRITE_GRAD: tl.constexpr,
    ONE_BLOCK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    target = tl.load(targets_ptr + row)
    # The token store holds ids below vocab only. An id out of range (a caller's bug) counts as
    # ignored, loss and gradient alike, where F.cross_entropy would raise: checking for it here would
    # cost a host sync per step.
    counted = (target != ignore_index) & (target >= 0) & (target < vocab)
    cols = tl.arange(0, BLOCK)
    # The target's logit is picked out of the loaded values, never re-read from the row that the
    # gradient overwrites.
    if ONE_BLOCK:
        mask = cols < vocab
        z = tl.load(base + cols, mask=mask, other=float("-inf")).to(tl.float32)
        target_logit = tl.sum(tl.where(cols == target, z, 0.0), 0)
        z_max = tl.max(z, 0)
        e = tl.exp(z - z_max)
        total = tl.sum(e, 0)
        lse = z_max + tl.log(total)
        if WRITE_GRAD:
            grad = e / total - tl.where(cols == target, 1.0, 0.0)
            grad = tl.where(counted, grad, 0.0)
            tl.store(base + cols, grad.to(logits_ptr.dtype.element_ty), mask=mask)
    else:
        # Online softmax per lane: m holds each lane's running max, s its sum of exp(z - m).
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK], tl.float32)
        picked = tl.zeros([BLOCK], tl.float32)
        for start in range(0, vocab, BLOCK):
            mask = start + cols < vocab
            z = tl.load(base + start + cols, mask=mask, other=float("-inf")).to(tl.float32)
            picked += tl.where(start + cols == target, z, 0.0)
            m_new = tl.maximum(m, z)
            # A lane that has seen only masked columns keeps m = -inf; shift by 0 there, not NaN.
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m - shift) + tl.exp(z - shift)
            m = m_new
        target_logit = tl.sum(picked, 0)
        z_max = tl.max(m, 0)
        lse = z_max + tl.log(tl.sum(s * tl.exp(m - z_max), 0))
        if WRITE_GRAD:
            for start in range(0, vocab, BLOCK):
                mask = start + cols < vocab
                z = tl.load(base + start + cols, mask=mask, other=0.0).to(tl.float32)
                grad = tl.exp(z - lse) - tl.where(start + cols == target, 1.0, 0.0)
                grad = tl.where(counted, grad, 0.0)
                tl.store(base + start + cols, grad.to(logits_ptr.dtype.element_ty), mask=mask)
    tl.store(losses_ptr + row, tl.where(counted, lse - target_logit, 0.0))


def _launch(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, write_grad: bool, num_warps: int | None = None
) -> torch.Tensor:
    """Per-row float32 losses; with write_grad, logits (contiguous [N, V]) become the gradient.

    Not tuned by timing like the other kernels: the warp count changes the order of the row's
    reductions, so a timing-based choice would make the loss differ from run to run in its last bits.
    """
    n_rows, vocab = logits.shape
    losses = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    one_block = vocab <= ONE_BLOCK_MAX
    block = triton.next_power_of_2(vocab) if one_block else STREAM_BLOCK
    if n_rows:
        _loss_and_grad_rows[(n_rows,)](
            logits,
            targets,
            losses,
            logits.stride(0),
            vocab,
            ignore_index,
            WRITE_GRAD=write_grad,
            ONE_BLOCK=one_block,
            BLOCK=block,
            num_warps=num_warps or (16 if block >= 8192 else 8 if block >= 2048 else 4),
        )
    return losses


@torch.library.custom_op("smallgpt::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    # Autocast would recast the matmul; the caller has already chosen the dtype (the fake agrees).
    with torch.autocast(x.device.type, enabled=False):
        logits = x @ weight.t()
    losses = _launch(logits, targets, ignore_index, with_grad)
    return losses.sum(), logits if with_grad else logits.new_empty(0)


@_linear_cross_entropy.register_fake
def _(x, weight, targets, ignore_index, with_grad):
    grad_shape = (x.shape[0], weight.shape[0]) if with_grad else (0,)
    return x.new_empty((), dtype=torch.float32), x.new_empty(grad_shape)


def _setup_context(ctx, inputs, output):
    x, weight, _targets, _ignore_index, ctx.with_grad = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss_sum, _grad_of_grad):
    check_backward(ctx)
    x, weight, grad_logits = ctx.saved_tensors
    # The scale goes on the [V, C] and [N, C] operands, never on the [N, V] gradient (see the top).
    scale = grad_loss_sum.float()
    need_x, need_weight = ctx.needs_input_grad[:2]
    grad_x = grad_logits @ scaled(weight, scale) if need_x else None
    grad_weight = grad_logits.t() @ scaled(x, scale) if need_weight else None
    return grad_x, grad_weight, None, None, None


_linear_cross_entropy.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Sum over counted tokens of cross_entropy(x @ weight.T, targets), in float32.

    x: [..., C] features; weight: [V, C]; targets: [...] ids, those equal to ignore_index not counted
    (loss 0, gradient 0), nor ids outside [0, V) (see the kernel). Under autocast the matmul runs in
    the autocast dtype, as nn.Linear would. The [N, V] logits are never returned: callers that want
    them use the plain path.
    """
    xf, wf, tf, with_grad = loss_inputs(x, weight, targets)
    return _linear_cross_entropy(xf, wf, tf, ignore_index, with_grad)[0]
