"""Token embeddings and the fixed special-token ids shared by models and search."""
from __future__ import annotations

import torch
from torch import nn

# Fixed for source and target alike (docs/ARCHITECTURE.md): models and search rely on them
# without a vocabulary object.
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # noqa: F401


class Embeddings(nn.Module):
    """Token ids -> dense vectors, with dropout. Row PAD_ID is zero and never trained."""

    def __init__(self, vocab_size: int, dim: int, *, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        self.dim = dim

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def reset_padding(self) -> None:
        """Zero the padding row again (call after a custom parameter init)."""
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, len) long -> (batch, len, dim)."""
        return self.dropout(self.embedding(tokens))
