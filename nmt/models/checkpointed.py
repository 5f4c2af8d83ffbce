"""The plain GRU/LSTM Seq2Seq trained with torch.utils.checkpoint over time segments.

This is what a user who wants less activation memory reaches for instead of a reversible
network, so the benches measure it beside both: the encoder recurrence and the decoder (its
recurrence, attention, output layer and loss) run in segments of about sqrt(T) steps; only the
segment inputs (the hidden state between segments, embeddings, what attention reads) are kept,
and each segment is recomputed during backward. The model shares every parameter with the plain
one it wraps, so losses and gradients agree with it up to float rounding.

Search and validation (no gradient) use the plain paths unchanged.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.checkpoint import checkpoint

from nmt.models.decoders import DecoderState, RNNDecoder
from nmt.models.embeddings import PAD_ID
from nmt.models.encoders import EncoderOutput, RNNEncoder
from nmt.models.loss import label_smoothed_nll_from_logits
from nmt.models.seq2seq import LossOutput, Seq2Seq


def segment_length(steps: int, segment_steps: Optional[int] = None) -> int:
    """Steps per checkpointed segment: `segment_steps`, or round(sqrt(steps)) (at least 1)."""
    if segment_steps is not None:
        return max(1, segment_steps)
    return max(1, round(math.sqrt(steps)))


class CheckpointedSeq2Seq(Seq2Seq):
    """A plain (GRU/LSTM, unidirectional encoder) Seq2Seq whose training loss is checkpointed.

    Build it around an existing model with `CheckpointedSeq2Seq.sharing(model)`: the modules are
    the same objects, so the state dict, the optimizer and checkpoints are interchangeable.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, *,
                 segment_steps: Optional[int] = None):
        if not isinstance(encoder, RNNEncoder) or not isinstance(decoder, RNNDecoder):
            raise ValueError("checkpointing over time segments needs the plain GRU/LSTM encoder "
                             f"and decoder, got {type(encoder).__name__}/{type(decoder).__name__}")
        if encoder.directions != 1:
            raise ValueError("checkpointing over time segments needs a unidirectional encoder "
                             "(a backward direction cannot start before the sequence ends)")
        super().__init__(encoder, decoder)
        self.segment_steps = segment_steps

    @classmethod
    def sharing(cls, model: Seq2Seq, *, segment_steps: Optional[int] = None
                ) -> "CheckpointedSeq2Seq":
        return cls(model.encoder, model.decoder, segment_steps=segment_steps)

    def training_loss(self, batch, *, label_smoothing: float = 0.0) -> LossOutput:
        if not torch.is_grad_enabled():
            return super().training_loss(batch, label_smoothing=label_smoothing)
        encoder_output = self.decoder.attach(self._encode(batch.src, batch.src_lengths))
        loss, nll = self._decoder_loss(batch.tgt_in, batch.tgt_out, encoder_output,
                                       label_smoothing=label_smoothing)
        return LossOutput(loss=loss, nll=nll.detach(), num_tokens=int(batch.num_tgt_tokens))

    # -- encoder ----------------------------------------------------------------------------------

    def _encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        """RNNEncoder.forward with the recurrence run in checkpointed segments."""
        segment = segment_length(src.size(1), self.segment_steps)
        return self.encoder(src, src_lengths, recurrence=lambda rnn, embedded, lengths:
                            run_in_segments(rnn, embedded, lengths, segment=segment))

    # -- decoder ----------------------------------------------------------------------------------

    def _decoder_loss(self, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                      encoder_output: EncoderOutput, *, label_smoothing: float
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """RNNDecoder.training_loss, one checkpointed segment of target steps at a time."""
        decoder = self.decoder
        state = decoder.init_state(encoder_output)
        embedded = decoder.embeddings(tgt_in)
        steps = tgt_in.size(1)
        segment = segment_length(steps, self.segment_steps)
        loss_total, nll_total = None, None
        hidden, cell, attentional = state.hidden, state.cell, state.attentional
        for start in range(0, steps, segment):
            stop = min(steps, start + segment)
            # tensors are passed explicitly (not inside EncoderOutput) so checkpoint keeps them
            loss, nll, hidden, cell, attentional = checkpoint(
                self._decoder_segment, embedded[:, start:stop], tgt_out[:, start:stop],
                encoder_output.context, encoder_output.keys, encoder_output.mask,
                hidden, cell, attentional, label_smoothing, use_reentrant=False)
            loss_total = loss if loss_total is None else loss_total + loss
            nll_total = nll if nll_total is None else nll_total + nll
        return loss_total, nll_total

    def _decoder_segment(self, embedded, tgt_out, context, keys, mask, hidden, cell,
                         attentional, label_smoothing):
        """embedded (batch, seg, emb), tgt_out (batch, seg) -> loss, nll, next state tensors."""
        decoder = self.decoder
        encoder_output = EncoderOutput(context=context, mask=mask, lengths=None,
                                       final_hidden=None, keys=keys)
        state = DecoderState(hidden=hidden, cell=cell, attentional=attentional)
        if decoder.input_feeding:
            vectors = []
            for t in range(embedded.size(1)):
                vector, state = decoder._step(embedded[:, t], state, encoder_output)
                vectors.append(vector)
            vectors = torch.stack(vectors, dim=1)
        else:
            top, hidden, cell = decoder._run_rnn(embedded, state)
            vectors = decoder._attentional(top, encoder_output)[0]
            state = DecoderState(hidden=hidden, cell=cell)
        real = tgt_out != PAD_ID
        loss, nll = label_smoothed_nll_from_logits(decoder.output(vectors[real]), tgt_out[real],
                                                   smoothing=label_smoothing, consume=True)
        return loss, nll, state.hidden, state.cell, state.attentional


def run_in_segments(rnn: nn.RNNBase, inputs: torch.Tensor, lengths: torch.Tensor, *,
                    segment: int):
    """A unidirectional batch-first nn.GRU/nn.LSTM over padded inputs, checkpointed per segment.

    inputs (batch, T, input), lengths (batch,) -> outputs (batch, T, hidden) zero past each
    length, final state (layers, batch, hidden) (a (h, c) pair for an LSTM) at each sequence's
    last real step: what the packed call `rnn(pack_padded_sequence(...))` returns.
    Each segment packs only the sequences that reach into it.
    """
    batch, steps = inputs.shape[:2]
    lengths = lengths.cpu()
    shape = (rnn.num_layers, batch, rnn.hidden_size)
    is_lstm = isinstance(rnn, nn.LSTM)
    state = tuple(inputs.new_zeros(shape) for _ in range(2 if is_lstm else 1))
    pieces = []
    for start in range(0, steps, segment):
        stop = min(steps, start + segment)
        segment_lengths = (lengths - start).clamp(0, stop - start)
        active = torch.nonzero(segment_lengths > 0).squeeze(1)
        if active.numel() == 0:  # every sequence ended: the rest is padding
            pieces.append(inputs.new_zeros(batch, steps - start, rnn.hidden_size))
            break
        outputs, *state = checkpoint(
            _packed_segment, rnn, inputs[:, start:stop], segment_lengths, active.to(inputs.device),
            *state, use_reentrant=False)
        pieces.append(outputs)
    outputs = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]
    return outputs, (tuple(state) if is_lstm else state[0])


def _packed_segment(rnn, inputs, segment_lengths, active, *state):
    """One segment: the rows in `active` run their real steps; other rows keep their state."""
    batch, steps = inputs.shape[:2]
    everyone = active.numel() == batch
    rows = inputs if everyone else inputs.index_select(0, active)
    row_state = state if everyone else tuple(part.index_select(1, active) for part in state)
    packed = pack_padded_sequence(rows, segment_lengths[active.cpu()], batch_first=True,
                                  enforce_sorted=False)
    packed_outputs, final = rnn(packed, row_state if len(row_state) == 2 else row_state[0])
    outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=steps)
    final = final if isinstance(final, tuple) else (final,)
    if everyone:
        return (outputs, *final)
    full_outputs = outputs.new_zeros(batch, steps, outputs.size(-1)).index_copy(0, active, outputs)
    return (full_outputs, *(part.index_copy(1, active, new) for part, new in zip(state, final)))
