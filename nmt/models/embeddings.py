"""Token embeddings and the fixed special-token ids shared by models and search."""
from __future__ import annotations

import torch
from torch import nn

# Fixed for source and target alike (docs/ARCHITECTURE.md): models and search rely on them
# without a vocabulary object.
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # noqa: F401


class Embeddings(nn.Module):
    """Token ids -> dense vectors, with dropout. Row PAD_ID starts at zero (also after a custom
    init: `reset_padding`) and gets no gradient from lookups.

    zero_padding=False leaves row PAD_ID to the custom init: a reversible decoder with tied
    embeddings keeps its random PAD row, which as the output layer's PAD row enters every
    softmax, so that its training numbers stay those of earlier versions.
    The reversible models look tokens up through `.embedding` (their dropout masks are fixed per
    sentence, see nmt/models/reversible_encoder.py), not through `forward`."""

    def __init__(self, vocab_size: int, dim: int, *, dropout: float = 0.0,
                 zero_padding: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        self.dim = dim
        self.zero_padding = zero_padding

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def reset_padding(self) -> None:
        """Zero the padding row again (call after a custom parameter init)."""
        if not self.zero_padding:
            return
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, len) long -> (batch, len, dim)."""
        return self.dropout(self.embedding(tokens))


def tie_output(output: nn.Linear, embeddings: Embeddings) -> None:
    """Share the embedding matrix with an output layer (hidden -> vocab): the one home of the
    tied-embeddings rule (hidden == embedding dim; config.py checks it first for the user)."""
    if output.in_features != embeddings.dim:
        raise ValueError(f"tied embeddings need hidden ({output.in_features}) == embedding dim "
                         f"({embeddings.dim})")
    output.weight = embeddings.weight


def rename_embedding_keys(module: nn.Module) -> None:
    """Load state dicts saved when `module` held a plain nn.Embedding as `.embedding`
    (keys `<prefix>embedding.weight`, now `<prefix>embeddings.embedding.weight`)."""
    def rename(state_dict, prefix, *_):
        old = prefix + "embedding.weight"
        if old in state_dict:
            state_dict[prefix + "embeddings.embedding.weight"] = state_dict.pop(old)
    module._register_load_state_dict_pre_hook(rename)
