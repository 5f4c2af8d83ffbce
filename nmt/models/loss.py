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
