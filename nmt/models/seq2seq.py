"""The encoder-decoder model behind the training and decoding contract (docs/ARCHITECTURE.md).

Seq2Seq only composes an encoder and a decoder; anything with the same small interface drops in
(reversible encoders/decoders included):
    encoder(src, src_lengths) -> EncoderOutput-like object with .reorder(index)
    decoder.attach(encoder_output) -> encoder_output with what every step reuses (attention keys)
    decoder.init_state(encoder_output) -> state with .reorder(index)
    decoder.step(prev_tokens, state, encoder_output) -> (log_probs, state)
    decoder.training_loss(tgt_in, tgt_out, encoder_output, label_smoothing=) -> (loss, nll)
    optional `memory_report()` on either -> dict of memory figures for the last batch
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch
from torch import nn


@dataclass
class LossOutput:
    """loss: scalar to backpropagate (label-smoothed, summed over target tokens);
    nll: summed token NLL without smoothing (a detached scalar tensor); num_tokens: non-padding
    target tokens; memory: counted memory figures ({} for models that count none).
    A reversible decoder evaluates its loss while backward reverses it: in training, read `loss`
    and `nll` after `loss.backward()` (they are NaN before)."""

    loss: torch.Tensor
    nll: torch.Tensor
    num_tokens: int
    memory: Dict[str, float] = field(default_factory=dict)


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

    def training_loss(self, batch, *, label_smoothing: float = 0.0) -> LossOutput:
        """Teacher-forced loss of a Batch (src, src_lengths, tgt_in, tgt_out, num_tgt_tokens)."""
        encoder_output = self.encode(batch.src, batch.src_lengths)
        loss, nll = self.decoder.training_loss(batch.tgt_in, batch.tgt_out, encoder_output,
                                               label_smoothing=label_smoothing)
        memory = {}
        for part in (self.encoder, self.decoder):
            report = getattr(part, "memory_report", None)
            if report is not None:
                memory.update(report())
        return LossOutput(loss=loss, nll=nll.detach(), num_tokens=int(batch.num_tgt_tokens),
                          memory=memory)

    def forward(self, batch, *, label_smoothing: float = 0.0) -> LossOutput:
        """Same as training_loss (so wrappers such as DistributedDataParallel see a forward)."""
        return self.training_loss(batch, label_smoothing=label_smoothing)
