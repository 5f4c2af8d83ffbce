"""Reversal drift detection: does reversing a run give back the exact initial state?

Reversible backprop trusts that reversing every step restores the state bit for bit; a bug, a
non-deterministic kernel or a flipped bit in the information buffer would silently turn the
gradients into noise. `verify_reversal` runs a ReversibleRNN forward over a batch (no graph,
keeping the buffer's words), reverses every step and compares each restored state with the true
one. `train.verify_reversal_every: N` runs `reversal_check_for(model)(batch)` every N steps:
the model's own `verify_reversal(batch)` if it has one, else `verify_seq2seq` for a Seq2Seq whose
encoder and/or decoder hold a ReversibleRNN as `.rnn` (with `.embedding`): both recurrences run
on one shared buffer as in training, then the decoder and the encoder are reversed.

The check is split in two (`run_forward`, `reverse_and_compare`) so tests can corrupt the buffer
in between. It keeps every exact state of the run (as much as plain backprop would store), which
is fine for a check that runs every N steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import Tensor, nn

from nmt.reversible import InformationBuffer, ReversibleRNN, from_fixed
from nmt.reversible.fixed_point import HIDDEN_RADIX


@dataclass(frozen=True)
class ReversalDrift:
    """Where a reversal first went wrong.

    time_step: the sequence position whose restored state (the state before it) differs, the
        first found going backwards, or None when the states matched but the buffer was left
        dirty; layer: the first differing layer; largest_difference: max |restored - true| of
        that state, in state units (float values); reason: what was observed.
    """

    time_step: Optional[int]
    layer: Optional[int]
    largest_difference: float
    reason: str

    def describe(self, part: str = "rnn") -> str:
        where = f"{part} layer {self.layer}" if self.layer is not None else part
        at = f" at time step {self.time_step}" if self.time_step is not None else ""
        return (f"{where}{at}: {self.reason} (largest difference {self.largest_difference:.3g})")


@dataclass
class ForwardRecord:
    """A forward run kept for reversal: the exact state before every step and the buffer."""

    rnn: ReversibleRNN
    inputs: Tensor
    mask: Tensor  # (batch, T) bool
    buffer: InformationBuffer
    embedding: Optional[nn.Module]
    input_dropout: Optional[Tensor]
    layer_dropout: Optional[Tensor]
    states: List[list] = field(default_factory=list)  # states[t]: before step t; states[T]: final
    stored: List[Optional[Tensor]] = field(default_factory=list)  # exact top slice after step t

    def input_at(self, t: int) -> Tensor:
        x = self.embedding(self.inputs[:, t]) if self.embedding is not None else self.inputs[:, t]
        return x * self.input_dropout if self.input_dropout is not None else x


def run_forward(rnn: ReversibleRNN, inputs: Tensor, mask: Optional[Tensor] = None, *,
                initial_state=None, embedding: Optional[nn.Module] = None,
                input_dropout: Optional[Tensor] = None, layer_dropout: Optional[Tensor] = None,
                buffer: Optional[InformationBuffer] = None) -> ForwardRecord:
    """Runs `rnn` over (batch, T, input) floats or (batch, T) ids (with `embedding`), keeping
    the exact state before every step and a buffer with its words (`buffer`: one shared with
    runs before this one, which must then be reversed after it)."""
    batch, steps = inputs.shape[:2]
    device = inputs.device
    if mask is None:
        mask = torch.ones(batch, steps, dtype=torch.bool, device=device)
    if buffer is None:
        buffer = rnn.new_buffer(batch, device=device, keep_words=True)
    record = ForwardRecord(rnn=rnn, inputs=inputs, mask=mask, buffer=buffer,
                           embedding=embedding, input_dropout=input_dropout,
                           layer_dropout=layer_dropout)
    units = rnn.stored_slice
    state = rnn.exact_state(initial_state, batch, device)
    with torch.no_grad():
        record.stored.append(state[-1][0][:, :units] if units else None)
        for t in range(steps):
            record.states.append(state)
            values = [tuple(from_fixed(part) for part in layer) for layer in state]
            state, _, _ = rnn.step(record.input_at(t), state, values, record.buffer, mask[:, t],
                                   layer_dropout=layer_dropout)
            record.stored.append(state[-1][0][:, :units] if units else None)
    record.states.append(state)
    return record


def reverse_and_compare(record: ForwardRecord, *,
                        buffer_back_to_initial: bool = True) -> Optional[ReversalDrift]:
    """Reverses every step of `record`; None when every restored state is exact and (unless
    another run shares the buffer) the buffer ends empty with its heads at their initial value."""
    rnn, steps = record.rnn, record.mask.shape[1]
    state = record.states[-1]
    with torch.no_grad():
        for t in reversed(range(steps)):
            try:
                state = rnn.reverse_step(record.input_at(t), state, record.buffer,
                                         record.mask[:, t],
                                         restored=record.stored[t] if rnn.stored_slice else None,
                                         layer_dropout=record.layer_dropout)
            except (RuntimeError, ValueError) as error:  # e.g. a word count that does not fit
                reason = str(error).strip().splitlines()[0] if str(error).strip() else "error"
                return ReversalDrift(time_step=t, layer=None, largest_difference=float("nan"),
                                     reason=f"reversal failed: {reason}")
            drift = _first_difference(state, record.states[t], t)
            if drift is not None:
                return drift
    if buffer_back_to_initial and not record.buffer.is_initial():
        return ReversalDrift(time_step=None, layer=None, largest_difference=0.0,
                             reason="states restored, but the information buffer did not return "
                                    "to its initial value")
    return None


def verify_reversal(rnn: ReversibleRNN, inputs: Tensor, mask: Optional[Tensor] = None,
                    **options) -> Optional[ReversalDrift]:
    """`run_forward` then `reverse_and_compare`: None when the reversal is exact."""
    return reverse_and_compare(run_forward(rnn, inputs, mask, **options))


def verify_seq2seq(model: nn.Module, batch, *,
                   corrupt: Optional[Callable[[InformationBuffer], None]] = None) -> Optional[str]:
    """The drift check of a Seq2Seq with reversible parts on a training batch: None, or a
    description naming the part (encoder/decoder), time step, layer and largest difference.

    The encoder runs over batch.src, the decoder over batch.tgt_in from the initial state the
    model's bridge gives (dropout off: the reversal itself is what is checked), on one shared
    buffer; then the decoder and the encoder are reversed. `corrupt(buffer)` is called between
    the forward runs and the reversal (fault injection for tests)."""
    encoder, decoder = model.encoder, model.decoder
    parts = [(name, part) for name, part in (("encoder", encoder), ("decoder", decoder))
             if isinstance(getattr(part, "rnn", None), ReversibleRNN)]
    if not parts:
        return None
    batch_size, device = batch.src.shape[0], batch.src.device
    width = max(part.rnn.half_size for _, part in parts)
    buffer = InformationBuffer((batch_size, width), device=device, keep_words=True)
    records = []
    for name, part in parts:
        if name == "encoder":
            inputs, mask, initial = batch.src, batch.src != 0, None
        else:
            inputs, mask = batch.tgt_in, batch.tgt_out != 0
            initial = decoder._initial_state(model.encode(batch.src, batch.src_lengths))
        records.append((name, run_forward(part.rnn, inputs, mask, initial_state=initial,
                                          embedding=part.embedding, buffer=buffer)))
    if corrupt is not None:
        corrupt(buffer)
    for position, (name, record) in reversed(list(enumerate(records))):
        drift = reverse_and_compare(record, buffer_back_to_initial=position == 0)
        if drift is not None:
            return drift.describe(name)
    return None


def reversal_check_for(model: nn.Module) -> Optional[Callable]:
    """`check(batch) -> None or description` for train.verify_reversal_every, or None when the
    model has nothing reversible to check."""
    own = getattr(model, "verify_reversal", None)
    if own is not None:
        return own
    if any(isinstance(getattr(getattr(model, name, None), "rnn", None), ReversibleRNN)
           for name in ("encoder", "decoder")):
        return lambda batch: verify_seq2seq(model, batch)
    return None


def _first_difference(restored, true, t: int) -> Optional[ReversalDrift]:
    for layer, (mine, theirs) in enumerate(zip(restored, true)):
        if all(torch.equal(a, b) for a, b in zip(mine, theirs)):
            continue
        largest = max(float((a.double() - b.double()).abs().max()) for a, b in zip(mine, theirs))
        return ReversalDrift(time_step=t, layer=layer,
                             largest_difference=largest / 2.0 ** HIDDEN_RADIX,
                             reason="restored state differs from the true one")
    return None
