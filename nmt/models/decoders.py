"""GRU/LSTM decoder with Luong general attention, and its explicit per-step state.

Per step t (Luong et al. 2015, "general" score):
    h_t = RNN(x_t, h_{t-1})                    x_t = emb(y_{t-1})  [; a_{t-1} with input feeding]
    c_t = attention(h_t^top, encoder context)
    a_t = dropout(tanh(W_c [c_t; h_t^top]))    the attentional vector
    log p(y_t | ...) = log_softmax(W_o a_t)
Without input feeding this is exactly the reversible decoder's structure (docs/design.md),
and the whole target sequence can be run through the RNN at once during training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from nmt.models.attention import LuongAttention
from nmt.models.embeddings import PAD_ID, Embeddings, tie_output
from nmt.models.encoders import RNN_CLASSES, EncoderOutput
from nmt.models.loss import label_smoothed_nll_from_logits


@dataclass
class DecoderState:
    """Decoder state between steps; search only ever reorders it.

    hidden (layers, batch, hidden); cell: same for an LSTM, else None;
    attentional (batch, hidden): a_{t-1}, fed back with input feeding, else None;
    attention (batch, src_len): the last step's attention weights (None before the first step).
    """

    hidden: torch.Tensor
    cell: Optional[torch.Tensor] = None
    attentional: Optional[torch.Tensor] = None
    attention: Optional[torch.Tensor] = None

    def reorder(self, index: torch.Tensor) -> "DecoderState":
        """Select (or repeat) rows: row i of the result is row index[i] of this state."""
        def rows(tensor, dim):
            return None if tensor is None else tensor.index_select(dim, index)

        return DecoderState(hidden=rows(self.hidden, 1), cell=rows(self.cell, 1),
                            attentional=rows(self.attentional, 0),
                            attention=rows(self.attention, 0))


class Bridge(nn.Module):
    """Encoder final states (layers, batch, size) -> decoder initial states.

    Identity when the shapes already agree (unidirectional encoder, same hidden size and layer
    count), else Linear + tanh over all layers' final states together. An LSTM decoder after a
    GRU encoder starts with a zero cell.
    """

    def __init__(self, *, encoder_layers: int, encoder_size: int, encoder_has_cell: bool,
                 decoder_layers: int, decoder_size: int, decoder_has_cell: bool,
                 identity: bool):
        super().__init__()
        self.decoder_layers, self.decoder_size = decoder_layers, decoder_size
        self.identity = identity
        self.map_cell = decoder_has_cell and encoder_has_cell
        self.zero_cell = decoder_has_cell and not encoder_has_cell
        if not identity:
            self.hidden_map = nn.Linear(encoder_layers * encoder_size,
                                        decoder_layers * decoder_size)
            self.cell_map = (nn.Linear(encoder_layers * encoder_size,
                                       decoder_layers * decoder_size) if self.map_cell else None)

    def _map(self, linear: nn.Linear, state: torch.Tensor) -> torch.Tensor:
        batch = state.size(1)
        flat = state.transpose(0, 1).reshape(batch, -1)
        mapped = torch.tanh(linear(flat)).view(batch, self.decoder_layers, self.decoder_size)
        return mapped.transpose(0, 1).contiguous()

    def forward(self, final_hidden: torch.Tensor, final_cell: Optional[torch.Tensor]
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.identity:
            hidden, cell = final_hidden, final_cell if self.map_cell else None
        else:
            hidden = self._map(self.hidden_map, final_hidden)
            cell = self._map(self.cell_map, final_cell) if self.map_cell else None
        if self.zero_cell:
            cell = torch.zeros_like(hidden)
        return hidden.contiguous(), None if cell is None else cell.contiguous()


class RNNDecoder(nn.Module):
    """Attentional GRU/LSTM decoder (see the module docstring for the equations).

    `dropout` acts between RNN layers; `output_dropout` on the attentional vector a_t.
    With `tie_embeddings` the output layer shares the target embedding matrix
    (needs hidden == embedding dim).
    """

    def __init__(self, cell: str, embeddings: Embeddings, *, hidden: int, layers: int = 1,
                 input_feeding: bool = False, dropout: float = 0.0, output_dropout: float = 0.0,
                 context_size: int, bridge: Bridge, tie_embeddings: bool = False):
        super().__init__()
        self.cell = cell
        self.embeddings = embeddings
        self.hidden = hidden
        self.input_feeding = input_feeding
        input_size = embeddings.dim + (hidden if input_feeding else 0)
        self.rnn = RNN_CLASSES[cell](input_size, hidden, num_layers=layers, batch_first=True,
                                     dropout=dropout if layers > 1 else 0.0)
        self.bridge = bridge
        self.attention = LuongAttention(hidden, context_size)
        self.combine = nn.Linear(context_size + hidden, hidden, bias=False)
        self.output_dropout = nn.Dropout(output_dropout)
        vocab_size = embeddings.embedding.num_embeddings
        self.output = nn.Linear(hidden, vocab_size)
        if tie_embeddings:
            tie_output(self.output, embeddings)

    def attach(self, encoder_output: EncoderOutput) -> EncoderOutput:
        """Add the attention keys, computed once per sentence, to the encoder output."""
        return encoder_output.with_keys(self.attention.project_keys(encoder_output.context))

    def init_state(self, encoder_output: EncoderOutput) -> DecoderState:
        hidden, cell = self.bridge(encoder_output.final_hidden, encoder_output.final_cell)
        attentional = None
        if self.input_feeding:
            attentional = hidden.new_zeros(hidden.size(1), self.hidden)
        return DecoderState(hidden=hidden, cell=cell, attentional=attentional)

    def _run_rnn(self, inputs: torch.Tensor, state: DecoderState):
        """inputs (batch, len, input) -> top-layer outputs (batch, len, hidden), hidden, cell."""
        if self.cell == "lstm":
            outputs, (hidden, cell) = self.rnn(inputs, (state.hidden, state.cell))
        else:
            (outputs, hidden), cell = self.rnn(inputs, state.hidden), None
        return outputs, hidden, cell

    def _attentional(self, top: torch.Tensor, encoder_output: EncoderOutput):
        """top (batch, len, hidden) -> a (batch, len, hidden), weights (batch, len, src_len)."""
        context, weights = self.attention(top, encoder_output.keys, encoder_output.context,
                                          mask=encoder_output.mask)
        attentional = torch.tanh(self.combine(torch.cat([context, top], dim=-1)))
        return self.output_dropout(attentional), weights

    def _step(self, embedded: torch.Tensor, state: DecoderState, encoder_output: EncoderOutput
              ) -> Tuple[torch.Tensor, DecoderState]:
        """embedded (batch, emb) -> a_t (batch, hidden), next state."""
        inputs = embedded
        if self.input_feeding:
            inputs = torch.cat([embedded, state.attentional], dim=-1)
        top, hidden, cell = self._run_rnn(inputs.unsqueeze(1), state)
        attentional, weights = self._attentional(top, encoder_output)
        attentional, weights = attentional.squeeze(1), weights.squeeze(1)
        return attentional, DecoderState(
            hidden=hidden, cell=cell, attention=weights,
            attentional=attentional if self.input_feeding else None)

    def step(self, prev_tokens: torch.Tensor, state: DecoderState,
             encoder_output: EncoderOutput) -> Tuple[torch.Tensor, DecoderState]:
        """prev_tokens (batch,) -> log_probs (batch, vocab) float32, next state."""
        attentional, state = self._step(self.embeddings(prev_tokens), state, encoder_output)
        return torch.log_softmax(self.output(attentional).float(), dim=-1), state

    def attentional_vectors(self, tgt_in: torch.Tensor, encoder_output: EncoderOutput
                            ) -> torch.Tensor:
        """Teacher forcing: tgt_in (batch, tgt_len) -> a (batch, tgt_len, hidden)."""
        state = self.init_state(encoder_output)
        embedded = self.embeddings(tgt_in)
        if not self.input_feeding:  # the whole sequence at once: same maths, one RNN call
            top, _, _ = self._run_rnn(embedded, state)
            return self._attentional(top, encoder_output)[0]
        vectors = []
        for t in range(tgt_in.size(1)):
            attentional, state = self._step(embedded[:, t], state, encoder_output)
            vectors.append(attentional)
        return torch.stack(vectors, dim=1)

    def training_loss(self, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                      encoder_output: EncoderOutput, *, label_smoothing: float = 0.0
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (label-smoothed loss, nll), both summed over the non-padding tokens of tgt_out."""
        vectors = self.attentional_vectors(tgt_in, encoder_output)
        real = tgt_out != PAD_ID
        logits = self.output(vectors[real])  # only real positions: padding costs no softmax
        return label_smoothed_nll_from_logits(logits, tgt_out[real], smoothing=label_smoothing,
                                              consume=True)
