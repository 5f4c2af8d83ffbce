"""Label-smoothed negative log-likelihood, summed over non-padding target tokens.

Smoothing target: q = (1 - eps) * onehot(y) + eps * uniform over the vocabulary without PAD_ID
(padding is never a target, so it gets no mass). Then
    loss = -sum_v q_v log p_v = (1 - eps) * nll + eps * mean_{v != PAD} (-log p_v).
Sums, not means: the trainer divides by the number of target tokens of the whole batch.
"""
from __future__ import annotations

from typing import Tuple

import torch

from nmt.models.embeddings import PAD_ID


def label_smoothed_nll(log_probs: torch.Tensor, targets: torch.Tensor, *,
                       smoothing: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """log_probs (tokens, vocab), targets (tokens,) -> (loss sum, nll sum), both scalars.

    Positions whose target is PAD_ID contribute nothing.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    real = (targets != PAD_ID).to(log_probs.dtype)  # weights, not indexing: no (tokens, vocab) copy
    target_log_probs = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    nll = -(target_log_probs * real).sum()
    if smoothing == 0.0:
        return nll, nll.detach()
    vocab = log_probs.size(1)
    non_pad_mean = (log_probs.sum(dim=1) - log_probs[:, PAD_ID]) / (vocab - 1)
    uniform = -(non_pad_mean * real).sum()
    return (1.0 - smoothing) * nll + smoothing * uniform, nll.detach()


def label_smoothed_nll_from_logits(logits: torch.Tensor, targets: torch.Tensor, *,
                                   smoothing: float = 0.0,
                                   consume: bool = False,
                                   fused: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Same as `label_smoothed_nll(log_softmax(logits.float()), targets)`, with a fused backward.

    logits (tokens, vocab), targets (tokens,) (or any shape of `tokens` elements, in row-major
    order) -> (loss sum, nll sum detached). The output layer
    dominates a training step, and composing log_softmax, gather, sum and select in autograd
    builds and adds several (tokens, vocab) gradients (two zero fills, a scatter, a copy). The
    gradient is simply real * (softmax - q), written into one tensor.

    consume=True: `logits` is a fresh product nobody else reads (the output layer's, which
    autograd does not save): float32 logits are overwritten by their log-probs, a block of rows
    at a time, so one (tokens, vocab) tensor lives instead of two (logits and log-probs), and the
    backward writes the gradient over it too. The values are those of one log_softmax (it is
    row-wise). Ignored for a leaf or non-float32 logits.

    fused=True: float32 logits go through one Triton kernel (nmt/models/triton_loss.py: 2
    launches forward, 1 backward; consume then writes the gradient over the logits in forward).
    The caller checks Triton can run on the logits' device; other dtypes, or no Triton, take
    the path above.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    consume = consume and logits.dtype == torch.float32 and not logits.is_leaf
    if fused and logits.dtype == torch.float32:
        from nmt.models import triton_loss

        if triton_loss.available():
            return triton_loss.smoothed_nll(logits, targets, smoothing, consume=consume)
    return _SmoothedNLL.apply(logits, targets.reshape(-1), smoothing, consume)


SOFTMAX_BLOCK_BYTES = 4 << 20  # rows per in-place log_softmax block: at most this many bytes


def _log_softmax_over(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits, -1) written over `logits` (float32), a block of rows at a time."""
    rows = max(1, SOFTMAX_BLOCK_BYTES // max(1, logits.size(1) * logits.element_size()))
    for first in range(0, logits.size(0), rows):
        block = logits[first: first + rows]
        block.copy_(torch.log_softmax(block, dim=-1))
    return logits


class _SmoothedNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, smoothing, consume=False):
        log_probs = (_log_softmax_over(logits) if consume
                     else torch.log_softmax(logits.float(), dim=-1))
        loss, nll = label_smoothed_nll(log_probs, targets, smoothing=smoothing)
        ctx.save_for_backward(log_probs, targets)
        ctx.smoothing, ctx.logits_dtype = smoothing, logits.dtype
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        log_probs, targets = ctx.saved_tensors
        smoothing = ctx.smoothing
        # softmax, written over the saved log-probs: no fresh (tokens, vocab) allocation (whose
        # page faults cost as much as the exp); a second backward through a retained graph then
        # fails autograd's saved-tensor version check instead of reading overwritten values
        grad = log_probs.exp_()  # q below sums to 1 on every real row
        if smoothing:
            share = smoothing / (log_probs.size(1) - 1)
            grad.sub_(share)
            grad[:, PAD_ID] += share
        grad.scatter_add_(1, targets.unsqueeze(1),
                          grad.new_full((targets.numel(), 1), smoothing - 1.0))
        weight = (targets != PAD_ID).to(grad.dtype) * grad_loss
        grad.mul_(weight.unsqueeze(1))
        return grad.to(ctx.logits_dtype), None, None, None
