"""The encoder-decoder model behind the training and decoding contract (docs/ARCHITECTURE.md).

Seq2Seq only composes an encoder and a decoder; anything with the same small interface drops in
(reversible encoders/decoders included):
    encoder(src, src_lengths) -> EncoderOutput-like object with .reorder(index)
    decoder.attach(encoder_output) -> encoder_output with what every step reuses (attention keys)
    decoder.init_state(encoder_output) -> state with .reorder(index)
    decoder.step(prev_tokens, state, encoder_output) -> (log_probs, state)
    decoder.training_loss(tgt_in, tgt_out, encoder_output, label_smoothing=) -> (loss, nll),
        or a DecoderLoss (loss, nll, memory, pending) that also returns counted memory
Encoders and decoders that take a `mode` (the reversible ones, MemoryMode) get it from
`training_loss(batch, mode=...)`; results are returned, never kept on the modules.
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch
from torch import nn

from nmt.models.memory import ModelMemory
from nmt.reversible import ReversibleRNN
from nmt.reversible.readout import PendingTotal


class LossOutput:
    """loss: scalar to backpropagate (label-smoothed, summed over target tokens);
    nll: summed token NLL without smoothing (a detached scalar tensor); num_tokens: non-padding
    target tokens; memory: counted memory (ModelMemory, a mapping of the flat figures; empty for
    models that count none).

    A reversible decoder computes its loss while backward reverses it (`pending`): in training,
    call `loss.backward()` first, then read `loss_value()` and `nll`; before, they raise
    PendingValueError (the `loss` tensor itself is a NaN placeholder until then)."""

    def __init__(self, loss: torch.Tensor, nll, num_tokens: int,
                 memory: Optional[Mapping] = None, pending: Optional[PendingTotal] = None):
        self.loss, self._nll, self.num_tokens = loss, nll, num_tokens
        self.memory = ModelMemory() if memory is None else memory
        self.pending = pending

    @property
    def nll(self):
        if self.pending is not None:
            self.pending.check("the NLL")
        return self._nll

    def loss_value(self) -> float:
        """The loss as a float (after backward for a reversible model)."""
        if self.pending is not None:
            self.pending.check("the loss")
        return float(self.loss.detach())


class Seq2Seq(nn.Module):
    """Attentional encoder-decoder translation model."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor):
        """src (batch, src_len) long, src_lengths (batch,) -> EncoderOutput (keys included)."""
        return self.decoder.attach(self.encoder(src, src_lengths))

    def init_decoder_state(self, encoder_output):
        return self.decoder.init_state(encoder_output)

    def decode_step(self, prev_tokens: torch.Tensor, state, encoder_output) -> Tuple[torch.Tensor, object]:
        """prev_tokens (batch,) -> (log_probs (batch, vocab), next state)."""
        return self.decoder.step(prev_tokens, state, encoder_output)

    def reorder_encoder_output(self, encoder_output, index: torch.Tensor):
        return encoder_output.reorder(index)

    def reorder_state(self, state, index: torch.Tensor):
        return state.reorder(index)

    def training_loss(self, batch, *, label_smoothing: float = 0.0, mode=None) -> LossOutput:
        """Teacher-forced loss of a Batch (src, src_lengths, tgt_in, tgt_out, num_tgt_tokens).
        mode: a MemoryMode for the reversible parts (None: their default)."""
        encoder_output = self.decoder.attach(
            self.encoder(batch.src, batch.src_lengths, **_mode_option(self.encoder, mode)))
        decoded = self.decoder.training_loss(batch.tgt_in, batch.tgt_out, encoder_output,
                                             label_smoothing=label_smoothing,
                                             **_mode_option(self.decoder, mode))
        memory = decoded.memory if len(decoded) > 2 else None
        if memory is None and torch.is_grad_enabled() and getattr(encoder_output, "memory", None):
            # a reversible encoder before a plain decoder: the encoder's counts alone
            memory = ModelMemory.of(encoder=encoder_output.memory,
                                    kept_bytes={"encoder": dict(encoder_output.kept_bytes)})
        return LossOutput(loss=decoded[0], nll=decoded[1].detach(),
                          num_tokens=int(batch.num_tgt_tokens), memory=memory,
                          pending=decoded.pending if len(decoded) > 3 else None)

    def forward(self, batch, *, label_smoothing: float = 0.0, mode=None) -> LossOutput:
        """Same as training_loss (so wrappers such as DistributedDataParallel see a forward)."""
        return self.training_loss(batch, label_smoothing=label_smoothing, mode=mode)


def _mode_option(part: nn.Module, mode) -> dict:
    """{"mode": mode} for a part that runs a ReversibleRNN (plain parts have one mode)."""
    return {"mode": mode} if mode is not None and isinstance(getattr(part, "rnn", None),
                                                              ReversibleRNN) else {}
