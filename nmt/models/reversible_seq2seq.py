"""Seq2Seq with a reversible encoder and decoder: adds the exact-reversal self-check.

`train.verify_reversal_every: N` makes the trainer call `verify_reversal(batch)` every N steps:
the encoder and then the decoder run forward over the batch on one shared buffer (no graph, no
dropout), are reversed decoder first, and every restored state is compared with the true one
(nmt/reversal_drift.py). None when exact, else a one-line description of the first drift.
"""
from __future__ import annotations

from typing import Optional

import torch

from nmt.models.embeddings import PAD_ID
from nmt.models.encoders import length_mask
from nmt.models.seq2seq import Seq2Seq
from nmt.reversal_drift import reverse_and_compare, run_forward
from nmt.reversible import InformationBuffer, from_fixed


class ReversibleSeq2Seq(Seq2Seq):
    """A Seq2Seq whose encoder is a ReversibleEncoder (and decoder, if reversible, continues
    its buffer)."""

    @torch.no_grad()
    def verify_reversal(self, batch) -> Optional[str]:
        encoder, decoder = self.encoder, self.decoder
        src_mask = length_mask(batch.src_lengths, batch.src.shape[1])
        buffer = InformationBuffer((batch.src.shape[0], encoder.buffer_width),
                                   device=batch.src.device, keep_words=True)
        source = run_forward(encoder.rnn, batch.src, src_mask, embedding=encoder.embedding,
                             buffer=buffer)
        target = None
        if hasattr(decoder, "rnn") and hasattr(decoder.rnn, "reverse_step"):
            final = encoder.rnn.join([tuple(from_fixed(part) for part in layer)
                                      for layer in source.states[-1]])
            hidden, cell = (final if encoder.has_cell else (final, None))
            hidden, cell = decoder.bridge(hidden, cell)
            initial = (hidden, cell) if decoder.has_cell else hidden
            target = run_forward(decoder.rnn, batch.tgt_in, batch.tgt_out != PAD_ID,
                                 initial_state=initial, embedding=decoder.embedding, buffer=buffer)
        if target is not None:
            drift = reverse_and_compare(target, buffer_back_to_initial=False)
            if drift is not None:
                return drift.describe("decoder")
        drift = reverse_and_compare(source)
        return None if drift is None else drift.describe("encoder")
