"""GRU/LSTM source encoders and the EncoderOutput they hand to the decoder and to search."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.models.context import AttentionContext
from nmt.models.embeddings import Embeddings

RNN_CLASSES = {"gru": nn.GRU, "lstm": nn.LSTM}


@dataclass
class EncoderOutput:
    """Everything decoding needs from the source, computed once per sentence.

    context (batch, src_len, context_size): the values attention reads.
    mask (batch, src_len) bool: True on real tokens.
    lengths (batch,) long: source lengths.
    final_hidden (layers, batch, final_size): last state of each layer, directions concatenated.
    final_cell: same for an LSTM's cell, else None.
    outputs (batch, src_len, output_size): top-layer states (None if an encoder keeps none).
    keys (batch, src_len, query_size): attention keys, filled in by the decoder (`attach`).
    """

    context: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    final_hidden: torch.Tensor
    final_cell: Optional[torch.Tensor] = None
    outputs: Optional[torch.Tensor] = None
    keys: Optional[torch.Tensor] = None

    def reorder(self, index: torch.Tensor) -> "EncoderOutput":
        """Select (or repeat) sentences: row i of the result is row index[i] of this one."""
        def rows(tensor, dim=0):
            return None if tensor is None else tensor.index_select(dim, index)

        return EncoderOutput(
            context=rows(self.context), mask=rows(self.mask), lengths=rows(self.lengths),
            final_hidden=rows(self.final_hidden, 1), final_cell=rows(self.final_cell, 1),
            outputs=rows(self.outputs), keys=rows(self.keys))

    def with_keys(self, keys: torch.Tensor) -> "EncoderOutput":
        return dataclasses.replace(self, keys=keys)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(batch,) -> (batch, max_len) bool, True on positions < length."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


class RNNEncoder(nn.Module):
    """Embeds the source and runs a (bi)directional GRU/LSTM stack over it.

    Sequences are packed, so padding never changes any real position's states or the final
    states. `hidden` is per direction: a bidirectional encoder's outputs have 2 * hidden units.
    Dropout: `embeddings` carries its own; `dropout` acts between layers and on the top outputs.
    """

    def __init__(self, cell: str, embeddings: Embeddings, *, hidden: int, layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0,
                 context: AttentionContext):
        super().__init__()
        self.cell = cell
        self.embeddings = embeddings
        self.layers = layers
        self.directions = 2 if bidirectional else 1
        self.rnn = RNN_CLASSES[cell](
            embeddings.dim, hidden, num_layers=layers, batch_first=True,
            bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.output_dropout = nn.Dropout(dropout)
        self.context = context
        self.output_size = hidden * self.directions
        self.final_size = hidden * self.directions  # per layer, directions concatenated

    @property
    def context_size(self) -> int:
        return self.context.size

    def _layer_states(self, state: torch.Tensor) -> torch.Tensor:
        """(layers * directions, batch, hidden) -> (layers, batch, directions * hidden)."""
        _, batch, hidden = state.shape
        state = state.view(self.layers, self.directions, batch, hidden)
        return state.permute(0, 2, 1, 3).reshape(self.layers, batch, self.directions * hidden)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, *,
                recurrence: Optional[Callable] = None) -> EncoderOutput:
        """src (batch, src_len) long, src_lengths (batch,) long, each >= 1 -> EncoderOutput.

        recurrence: (rnn, embedded, src_lengths) -> (outputs, final) replacing the packed run,
            e.g. the checkpointed segments of nmt.models.checkpointed.
        """
        if bool((src_lengths < 1).any()):
            raise ValueError("every source sentence needs at least one token (e.g. EOS)")
        embedded = self.embeddings(src)
        outputs, final = (recurrence or self._packed_recurrence)(self.rnn, embedded, src_lengths)
        outputs = self.output_dropout(outputs)
        hidden, cell = final if self.cell == "lstm" else (final, None)
        return EncoderOutput(
            context=self.context(embedded, outputs),
            mask=length_mask(src_lengths, src.size(1)),
            lengths=src_lengths,
            final_hidden=self._layer_states(hidden),
            final_cell=None if cell is None else self._layer_states(cell),
            outputs=outputs)

    @staticmethod
    def _packed_recurrence(rnn: nn.Module, embedded: torch.Tensor, src_lengths: torch.Tensor):
        """Runs `rnn` on packed sequences, so padding never changes a sentence's states."""
        packed = pack_padded_sequence(embedded, src_lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        packed_outputs, final = rnn(packed)
        outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True,
                                         total_length=embedded.size(1))
        return outputs, final
