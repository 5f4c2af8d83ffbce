"""What the decoder attends to: the encoder's top states, the source embeddings, or parts of them.

`model.attention.context` names the choice (the reversible paper's storage options,
docs/design.md): hidden (all top-layer states), emb (source embeddings), slice (first `size` units of
the top layer), proj (a learned `size`-dim projection of the top layer), and emb+slice / emb+proj
(concatenated). Precision 16 rounds the values through float16, as a reversible encoder storing
them at half precision would, so the baseline sees exactly what such storage keeps.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from nmt.config import ATTENTION_CONTEXTS as CONTEXT_KINDS
from nmt.errors import ConfigError


class AttentionContext(nn.Module):
    """Builds attention values (batch, src_len, size) from embeddings and top-layer states."""

    def __init__(self, kind: str, size: Optional[int], *, precision: int = 32,
                 embedding_dim: int, hidden_size: int):
        super().__init__()
        if kind not in CONTEXT_KINDS:
            raise ConfigError(f"model.attention.context: {kind!r} is not one of "
                              f"{', '.join(CONTEXT_KINDS)}")
        if precision not in (16, 32):
            raise ConfigError(f"model.attention.precision: {precision!r} is not one of 32, 16")
        self.kind = kind
        self.precision = precision
        self.use_embeddings = kind.startswith("emb")
        self.part = kind.split("+")[-1] if kind != "emb" else None  # hidden | slice | proj | None
        self.projection = None
        part_size = 0
        if self.part == "hidden":
            part_size = hidden_size
        elif self.part in ("slice", "proj"):
            if size is None or size < 1:
                raise ConfigError(f"model.attention.size: context {kind!r} needs a positive "
                                  f"size, got {size!r}")
            if self.part == "slice" and size > hidden_size:
                raise ConfigError(f"model.attention.size: slice of {size} units is larger than "
                                  f"the encoder's {hidden_size} top-layer units")
            part_size = size
            if self.part == "proj":
                self.projection = nn.Linear(hidden_size, size, bias=False)
        self.slice_size = size if self.part == "slice" else None
        self.size = part_size + (embedding_dim if self.use_embeddings else 0)

    def forward(self, embedded: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """embedded (batch, src_len, emb), outputs (batch, src_len, hidden) -> (batch, src_len, size)."""
        pieces = [embedded] if self.use_embeddings else []
        if self.part == "hidden":
            pieces.append(outputs)
        elif self.part == "slice":
            pieces.append(outputs[..., :self.slice_size])
        elif self.part == "proj":
            pieces.append(self.projection(outputs))
        values = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
        if self.precision == 16:
            values = values.to(torch.float16).to(values.dtype)
        return values
