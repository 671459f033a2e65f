"""Output projection + cross-entropy in chunks of rows, in plain torch ops: the fused loss wherever
the Triton kernel cannot run (CPU above all: the `tiny` demo, CPU eval).

The plain path makes [N, vocab] float32 logits, then log-softmax writes another [N, vocab], its
backward a zero-filled one and a third: on CPU each is a fresh allocation that the kernel faults in
page by page. Here each chunk of rows goes through one float32 buffer, allocated once and reused
(bf16/fp16 inputs add per-chunk casts around it): logits, their softmax and then the gradient
(softmax - one-hot) in place, and the chunk's share of both input gradients, so the whole gradient
is made in the forward pass, as in the Triton op. The
loss + projection then costs about what its three matmuls cost (bench/loss.py), and a `tiny`
training step on 2 CPU cores runs 1.3-1.6x the plain GPT-2 reference's speed instead of 0.96x
(bench/train.py; bench/RESULTS.md).

Invariant, as in model/kernels/cross_entropy.py: the op returns the *sum* of the counted rows'
losses and the gradients of that sum; the backward only scales them by the upstream gradient.
"""

# No `from __future__ import annotations`: torch.library.custom_op reads the annotations as types.
import torch

CHUNK_BYTES = 64 << 20
"""Float32 logits per chunk: 1024 rows at vocab 16384, large enough for full-speed matmuls (256-row
chunks ran 17% slower on 2 CPU cores, 2048-row ones alike: bench/loss.py), small beside the activations."""


def _logits_into(buf: torch.Tensor, xc: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    z = buf[: xc.shape[0]]
    if xc.dtype == buf.dtype:
        return torch.mm(xc, weight.t(), out=z)
    # A bf16/fp16 projection rounds to its own dtype first, as nn.Linear under autocast would.
    return z.copy_(xc @ weight.t())


@torch.library.custom_op("smallgpt::linear_cross_entropy_chunked", mutates_args=())
def _linear_cross_entropy_chunked(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, vocab = x.shape[0], weight.shape[0]
    counted = targets != ignore_index
    outside = counted & ((targets < 0) | (targets >= vocab))
    if outside.any():
        # A tokenizer/vocab mismatch; F.cross_entropy would raise too (the Triton op cannot check
        # without a host sync per step and counts such rows as ignored instead).
        raise ValueError(f"target id {int(targets[outside][0])} is outside the vocabulary [0, {vocab})")
    safe_targets = torch.where(counted, targets, 0)
    acc = torch.promote_types(x.dtype, torch.float32)
    rows = max(1, CHUNK_BYTES // (4 * vocab))
    buf = torch.empty(min(rows, n), vocab, dtype=acc, device=x.device)
    loss = torch.zeros((), dtype=acc, device=x.device)
    grad_x = x.new_empty(x.shape) if with_grad else x.new_empty(0)
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=x.device) if with_grad else x.new_empty(0)
    # Autocast would recast the matmuls; the caller has already chosen the dtype (the fake agrees).
    with torch.autocast(x.device.type, enabled=False):
        for start in range(0, n, rows):
            chunk = slice(start, start + rows)
            xc, keep, tc = x[chunk], counted[chunk], safe_targets[chunk]
            z = _logits_into(buf, xc, weight)
            picked = z.gather(1, tc[:, None]).squeeze(1)
            # Softmax in place, by hand (max, subtract, exp, sum, then one scaling below: 5 passes
            # over the chunk): torch.logsumexp would allocate a chunk-sized temporary on every call.
            z_max = z.amax(dim=1)
            z.sub_(z_max[:, None]).exp_()
            total = z.sum(dim=1)
            loss += torch.where(keep, z_max + total.log() - picked, 0).sum()
            if not with_grad:
                continue
            # softmax - one-hot on counted rows; ignored rows scale to 0.
            z.mul_(torch.where(keep, 1 / total, 0)[:, None])
            z[torch.arange(len(tc), device=z.device), tc] -= keep.to(z.dtype)
            grad = z.to(x.dtype)
            torch.mm(grad, weight, out=grad_x[chunk])
            if grad.dtype == acc:
                grad_weight.addmm_(grad.t(), xc)
            else:
                grad_weight += grad.t() @ xc
    return loss.float(), grad_x, grad_weight.to(weight.dtype)


@_linear_cross_entropy_chunked.register_fake
def _(x, weight, targets, ignore_index, with_grad):
    if not with_grad:
        return x.new_empty((), dtype=torch.float32), x.new_empty(0), x.new_empty(0)
    return x.new_empty((), dtype=torch.float32), x.new_empty(x.shape), weight.new_empty(weight.shape)


def check_backward(ctx) -> None:
    """What the backward of either loss op refuses (ctx.with_grad: the op's with_grad argument).

    The gradients come from the forward pass as plain results, so autograd cannot differentiate
    them again: a second derivative must fail here, not come out as zeros."""
    if not ctx.with_grad:
        raise RuntimeError("linear_cross_entropy ran with with_grad=False, so it has no gradient to give")
    if torch.is_grad_enabled():
        raise RuntimeError("linear_cross_entropy has no second derivative (backward ran with create_graph=True)")


def scaled(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """t times the float32 0-dim `scale`, computed in float32 and rounded once to t's dtype.

    A plain `t * scale` on a CUDA bf16 t rounds the scale to bf16 first (0.37 becomes 0.3691): a bias
    of up to 0.4% on every gradient, which CPU kernels hide by keeping a 0-dim factor in float32 (seen
    on an H100: bench/RESULTS.md). Under torch.compile the casts fuse into the one multiply."""
    return (t.float() * scale).to(t.dtype)


def _setup_context(ctx, inputs, output):
    ctx.with_grad = inputs[4]
    ctx.save_for_backward(output[1], output[2])
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad_loss_sum, _grad_of_grad_x, _grad_of_grad_weight):
    check_backward(ctx)
    grad_x, grad_weight = ctx.saved_tensors
    need_x, need_weight = ctx.needs_input_grad[:2]
    scale = grad_loss_sum.float()
    grad_x = scaled(grad_x, scale) if need_x else None
    grad_weight = scaled(grad_weight, scale) if need_weight else None
    return grad_x, grad_weight, None, None, None


_linear_cross_entropy_chunked.register_autograd(_backward, setup_context=_setup_context)


def loss_inputs(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """What both loss ops take: [N, C] features and [V, C] weight in the dtype the projection runs in
    (the autocast dtype under autocast, as nn.Linear would), [N] targets, and whether a gradient is
    wanted at all."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    with_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return x.flatten(0, -2).to(dtype), weight.to(dtype), targets.flatten().contiguous(), with_grad


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Sum over counted tokens of cross_entropy(x @ weight.T, targets), in float32, in chunks of rows.

    x: [..., C]; weight: [V, C]; targets: [...] ids, those equal to ignore_index not counted. An id
    outside [0, V) raises ValueError. The [N, V] logits are never materialised whole.
    """
    xf, wf, tf, with_grad = loss_inputs(x, weight, targets)
    return _linear_cross_entropy_chunked(xf, wf, tf, ignore_index, with_grad)[0]
