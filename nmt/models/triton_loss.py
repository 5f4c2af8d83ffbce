"""Triton kernels of the decoder's readout on the fused path (`model.reversible.kernels`).

- `smoothed_nll`: the label-smoothed loss of nmt/models/loss.py in one kernel launch per block
  of rows of logits: per row its loss and NLL terms (0 on PAD targets) and the gradient of its
  loss, real * (softmax - q), written over the logits (consume) or into a new tensor. A torch
  sum over the (rows, 2) terms gives (loss, nll) in a fixed order (no atomics: the same bits run
  to run); the backward scales the stored gradient by the incoming one. Launches: 2 forward,
  1 backward, against ~26 ops composed in torch.
- `step_masks`: the output dropout masks of a block of decoder steps in one launch, from
  counter-based randomness (Philox, `tl.rand`) keyed by the absolute step, batch row and unit, so
  a step's mask does not depend on which steps are drawn with it (as StepDropout's per-step
  generators guarantee on the torch path; the bits differ from those).

Each row block walks the vocabulary in column tiles with an online max / sum-exp (the
interpreter runs big tiles fastest; a GPU takes smaller row blocks). Empty without Triton.
"""
from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # callers check `available()` first
    triton = None
    tl = None

from nmt.models.embeddings import PAD_ID

_INTERPRETER_TILE, _GPU_TILE = (16, 1024), (8, 1024)  # (rows, columns) of a loss tile
_INTERPRETER_BLOCK, _GPU_BLOCK = 16384, 1024  # mask elements per program


def available() -> bool:
    """True when Triton is importable."""
    return triton is not None


if triton is not None:
    @triton.jit
    def _smoothed_nll_kernel(x_ptr, x_stride, g_ptr, g_stride, t_ptr, t_cols, t_stride0,
                             t_stride1, out_ptr, rows, vocab, confidence, smoothing, share,
                             PAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
        """Rows of logits x -> out[r] = (loss term, nll term); g = real * (softmax - q). Row r's
        target: targets[r // t_cols, r % t_cols] of a strided 2-D tensor."""
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        live_r = r < rows
        rr = tl.minimum(r, rows - 1)  # rows past the end read the last one: no NaN lanes
        t = tl.load(t_ptr + (rr // t_cols) * t_stride0 + (rr % t_cols) * t_stride1)
        real = live_r & (t != PAD)
        m = tl.full((BLOCK_R,), float("-inf"), tl.float32)
        s = tl.zeros((BLOCK_R,), tl.float32)
        total = tl.zeros((BLOCK_R,), tl.float32)  # sum of the logits but PAD's
        target = tl.zeros((BLOCK_R,), tl.float32)
        for first in range(0, vocab, BLOCK_V):
            c = first + tl.arange(0, BLOCK_V)
            live = (rr[:, None] >= 0) & (c[None, :] < vocab)
            x = tl.load(x_ptr + rr[:, None] * x_stride + c[None, :], mask=live,
                        other=float("-inf"))
            m_new = tl.maximum(m, tl.max(x, 1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), 1)
            m = m_new
            total += tl.sum(tl.where(live & (c[None, :] != PAD), x, 0.0), 1)
            target += tl.sum(tl.where(c[None, :] == t[:, None], x, 0.0), 1)
        lse = m + tl.log(s)
        nll = lse - target
        # -mean over non-PAD classes of log p = lse - total / (V - 1); smoothing 0: loss = nll
        loss = confidence * nll + (smoothing * lse - share * total)
        tl.store(out_ptr + 2 * r, tl.where(real, loss, 0.0), mask=live_r)
        tl.store(out_ptr + 2 * r + 1, tl.where(real, nll, 0.0), mask=live_r)
        for first in range(0, vocab, BLOCK_V):
            c = first + tl.arange(0, BLOCK_V)
            live = (rr[:, None] >= 0) & (c[None, :] < vocab)
            x = tl.load(x_ptr + rr[:, None] * x_stride + c[None, :], mask=live, other=0.0)
            q = (tl.where(c[None, :] == t[:, None], confidence, 0.0)
                 + tl.where(c[None, :] != PAD, share, 0.0))
            g = tl.where(real[:, None], tl.exp(x - lse[:, None]) - q, 0.0)
            tl.store(g_ptr + r[:, None] * g_stride + c[None, :], g,
                     mask=live_r[:, None] & (c[None, :] < vocab))

    @triton.jit
    def _step_masks_kernel(out_ptr, seed, start, batch, steps, size, keep, scale,
                           BLOCK: tl.constexpr):
        """out (batch, steps, size): scale where rand < keep, else 0; step i's element (b, u)
        draws at counter ((start + i) * batch + b) * size + u."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        live = offs < batch * steps * size
        b = offs // (steps * size)
        rest = offs - b * (steps * size)
        i = rest // size
        u = rest - i * size
        counter = ((start + i) * batch + b) * size + u
        draw = tl.rand(seed, counter)
        tl.store(out_ptr + offs, tl.where(draw < keep, scale, 0.0), mask=live)


def _launch(*args, **kwargs) -> None:
    from nmt.reversible.triton_kernels import _launch as launch  # counts launches

    launch(*args, **kwargs)


def _interpreting() -> bool:
    from nmt.reversible.triton_kernels import interpreting

    return interpreting()


def smoothed_nll_terms(logits: Tensor, targets: Tensor, smoothing: float, grad: Tensor
                       ) -> Tensor:
    """One launch: (rows, 2) per-row (loss, nll) terms of float32 `logits` (rows, vocab) (unit
    column stride) and `targets` (rows,), or (n, m) with n * m = rows in row-major order (a
    strided slice: no copy); writes real * (softmax - q) into `grad` (rows, vocab), which may be
    `logits` itself."""
    rows, vocab = logits.shape
    if logits.stride(1) != 1 or grad.stride(1) != 1:
        raise ValueError("smoothed_nll_terms: logits and grad need unit column stride")
    targets = targets.unsqueeze(1) if targets.dim() == 1 else targets
    if targets.dim() != 2 or targets.numel() != rows:
        raise ValueError(f"smoothed_nll_terms: {tuple(targets.shape)} targets for {rows} rows")
    terms = torch.empty((rows, 2), dtype=torch.float32, device=logits.device)
    if rows == 0:
        return terms
    block_r, block_v = _INTERPRETER_TILE if _interpreting() else _GPU_TILE
    block_v = min(block_v, triton.next_power_of_2(vocab))
    _launch(_smoothed_nll_kernel, (triton.cdiv(rows, block_r),), logits, logits.stride(0),
            grad, grad.stride(0), targets, targets.shape[1], *targets.stride(), terms, rows,
            vocab, 1.0 - smoothing, smoothing, smoothing / max(1, vocab - 1), PAD=PAD_ID,
            BLOCK_R=block_r, BLOCK_V=block_v, warps=8)
    return terms


def smoothed_nll(logits: Tensor, targets: Tensor, smoothing: float, *, consume: bool = False):
    """(loss sum, nll sum detached) of float32 logits (tokens, vocab) as
    `label_smoothed_nll_from_logits`, whose contract (consume) it follows."""
    return _FusedSmoothedNLL.apply(logits, targets, smoothing, consume)


class _FusedSmoothedNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, smoothing, consume):
        if logits.stride(1) != 1:
            logits, consume = logits.contiguous(), True  # a copy of our own
        grad = logits if consume else torch.empty(logits.shape, dtype=logits.dtype,
                                                  device=logits.device)
        loss, nll = smoothed_nll_terms(logits, targets, smoothing, grad).sum(0)
        ctx.save_for_backward(grad)  # after the kernel wrote it: a reuse fails the version check
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        if grad_loss is None:
            return None, None, None, None
        grad, = ctx.saved_tensors
        return grad.mul_(grad_loss), None, None, None


def step_masks(seed: int, start: int, steps: int, batch: int, size: int, keep: float,
               device) -> Tensor:
    """(batch, steps, size) dropout masks of steps start .. start + steps - 1, entries 1 / keep
    (with probability keep) or 0, in one launch; step t's mask depends on seed and t only."""
    masks = torch.empty((batch, steps, size), dtype=torch.float32, device=device)
    total = masks.numel()
    if total == 0:
        return masks
    block = min(_INTERPRETER_BLOCK if _interpreting() else _GPU_BLOCK,
                triton.next_power_of_2(total))
    _launch(_step_masks_kernel, (triton.cdiv(total, block),), masks, seed, start, batch,
            steps, size, keep, 1.0 / keep, BLOCK=block, warps=4)
    return masks
