"""The model-level reversal check behind `train.verify_reversal_every`.

Reversible backprop trusts that reversing every step restores the state bit for bit; a bug, a
non-deterministic kernel or a flipped bit in the information buffer would turn the gradients
into noise. Every reversible backward already ends with an O(1) check (the initial state and the
buffer come back; nmt.reversible.checks.check_restored). Every N training steps, this check goes
further: `reversal_check_for(model)(batch)` runs the model's reversible parts over the batch as
training runs them (the same iterators and chunks, dropout masks drawn as training draws them,
one shared buffer), keeps every exact state, reverses the decoder then the encoder and names the
first step whose restored state differs (`nmt.reversible.check_reversal`, exact records).

A model may bring its own `verify_reversal(batch) -> None or description` instead. The check
draws its masks from a fork of the random generators, so training's random stream is unchanged.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from nmt.reversible import InformationBuffer, ReversibleRNN, from_fixed
from nmt.reversible.checks import compare_reversal, record_run


def verify_seq2seq(model: nn.Module, batch, *,
                   corrupt: Optional[Callable[[InformationBuffer], None]] = None) -> Optional[str]:
    """The drift check of a Seq2Seq with a reversible encoder (and decoder) on a training batch:
    None, or a description naming the part (encoder/decoder), time step, layer and largest
    difference. `corrupt(buffer)` is called between the forward runs and the reversal (fault
    injection for tests)."""
    encoder, decoder = model.encoder, model.decoder
    if not isinstance(getattr(encoder, "rnn", None), ReversibleRNN):
        return None
    reversible_decoder = isinstance(getattr(decoder, "rnn", None), ReversibleRNN)
    device = batch.src.device
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        buffer = InformationBuffer((batch.src.shape[0], encoder.buffer_width), device=device,
                                   keep_words=True)
        records = [("encoder", encoder.rnn, record_run(
            encoder.rnn, batch.src, batch.src != 0, buffer=buffer, exact=True,
            **encoder.run_options(batch.src)))]
        if reversible_decoder:
            final = encoder.rnn.join([tuple(from_fixed(part) for part in layer)
                                      for layer in records[0][2].final_state])
            hidden, cell = final if encoder.has_cell else (final, None)
            records.append(("decoder", decoder.rnn, record_run(
                decoder.rnn, batch.tgt_in, batch.tgt_out != 0, buffer=buffer, exact=True,
                initial_state=decoder.initial_state_from(hidden, cell),
                **decoder.run_options(batch.tgt_in))))
        if corrupt is not None:
            corrupt(buffer)
        for position, (name, rnn, record) in reversed(list(enumerate(records))):
            check = compare_reversal(rnn, record, buffer_back_to_initial=position == 0)
            if not check.exact:
                return check.describe(name)
    return None


def reversal_check_for(model: nn.Module) -> Optional[Callable]:
    """`check(batch) -> None or description` for train.verify_reversal_every, or None when the
    model has nothing reversible to check."""
    own = getattr(model, "verify_reversal", None)
    if own is not None:
        return own
    if isinstance(getattr(getattr(model, "encoder", None), "rnn", None), ReversibleRNN):
        return lambda batch: verify_seq2seq(model, batch)
    return None
