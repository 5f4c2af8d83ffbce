"""Luong "general" attention: score(h_t, v_s) = h_t . (W_a v_s), softmax over real source tokens.

The projected keys W_a v_s depend only on the source, so they are computed once per sentence
(`project_keys`) and carried in the EncoderOutput, never kept on this module between calls.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from nmt.reversible.readout import sink_bmm


class LuongAttention(nn.Module):
    """General (bilinear) attention of decoder states over source context vectors."""

    def __init__(self, query_size: int, context_size: int):
        super().__init__()
        self.key_projection = nn.Linear(context_size, query_size, bias=False)

    def project_keys(self, context: torch.Tensor) -> torch.Tensor:
        """(batch, src_len, context_size) -> keys (batch, src_len, query_size)."""
        return self.key_projection(context)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *,
                mask: torch.Tensor, bias: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Attend with several queries per sentence at once.

        queries (batch, tgt_len, query_size), keys (batch, src_len, query_size),
        values (batch, src_len, context_size), mask (batch, src_len) True on real tokens
        -> contexts (batch, tgt_len, context_size), weights (batch, tgt_len, src_len).
        Padded positions get weight exactly 0 and each row of weights sums to 1. bias: the
        mask's `score_bias`, when the caller attends to the same source many times.
        """
        # in reversible backward, keys' and values' gradients add into one running total each
        # (nmt.reversible.readout.sink_bmm); plain torch.bmm otherwise
        scores = sink_bmm(queries, keys, transpose_other=True)
        if bias is not None:
            scores = scores + bias.unsqueeze(1)
        else:
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return sink_bmm(weights, values), weights

    def step(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *,
             mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One query per sentence: (batch, query_size) -> (batch, context_size), (batch, src_len)."""
        context, weights = self(query.unsqueeze(1), keys, values, mask=mask)
        return context.squeeze(1), weights.squeeze(1)


def score_bias(mask: torch.Tensor) -> torch.Tensor:
    """(batch, src_len) bool, True on real tokens -> 0 there, -inf on padding: added to the
    scores it masks them as masked_fill does (the same weights), in one op whose backward
    passes the gradient through, and the mask is inverted once per batch, not per call."""
    return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))
