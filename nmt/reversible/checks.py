"""Is a run exactly reversible? The one reversal checker of the core, and the O(1) check that
ends every reversible backward.

- `check_restored`: after a reversal, the restored initial state must equal the one the run
  started from (a reversible backward compares it with the initial state's fingerprint) and the buffer must be back at its mark (heads, stack height): O(batch x H) work
  and memory, whatever T. Backward calls it every time (backprop.py); `ReversalError` otherwise.
- `check_reversal` (= `record_run` + `compare_reversal`): runs a ReversibleRNN forward through
  the same iterators, chunking and dropout masks as training (`ReversibleRNN.run_steps`),
  records every state (`exact=True`, also the largest difference) or a 64-bit fingerprint of it
  per step and layer, reverses it (`ReversibleRNN.reverse_chunks`) and names the first step,
  going backwards, whose restored state differs. Behind `nmt bench reversal` and
  `train.verify_reversal_every` (nmt/reversal_drift.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import Tensor

from nmt.reversible.fixed_point import HIDDEN_RADIX, from_fixed
from nmt.reversible.kept import KeptStates, fingerprint
from nmt.reversible.plan import MemoryMode
from nmt.reversible.validation import check_run


class ReversalError(RuntimeError):
    """A reversal did not give back the exact state (or buffer) the forward run started from.
    `restored`: (t, state before step t) of the steps a failed chunk undid first, if any."""

    restored: list = []


def check_restored(state, initial_state, buffer, mark, *, tag: str = "") -> None:
    """Raise ReversalError unless the reversal of a run ended exactly where it started.
    initial_state: the exact initial state per layer, or the `KeptStates` of a reversible run
    (its fingerprint, and whether its narrowed final state fitted)."""
    run = tag or "a reversible run"
    if isinstance(initial_state, KeptStates):
        kept = initial_state
        if kept.overflow is not None and bool(kept.overflow):
            raise ReversalError(f"reversing {run} was not exact: its final state did not fit the "
                                f"width it was kept at ({kept.final_state[0][0].dtype})")
        restored = fingerprint(state)  # (layers x parts, batch)
        differs = (restored != kept.fingerprint).any(1).view(len(state), -1).any(1)
        if bool(differs.any()):
            layer = int(differs.nonzero()[0])
            raise ReversalError(
                f"reversing {run} was not exact: layer {layer}'s state restored before step 0 "
                f"differs from the initial state (its fingerprint differs)")
    else:
        differs = torch.stack([
            torch.stack([(a != b).any() for a, b in zip(restored, initial)]).any()
            for restored, initial in zip(state, initial_state)])  # (layers,)
        if bool(differs.any()):  # one wait for the device for all layers
            layer = int(differs.nonzero()[0])
            raise ReversalError(
                f"reversing {run} was not exact: layer {layer}'s state restored before step 0 "
                f"differs from the initial state (largest difference "
                f"{_largest_difference(state[layer], initial_state[layer]):.3g})")
    problem = buffer.departure_from(mark)
    if problem is not None:
        raise ReversalError(f"reversing {run} was not exact: after undoing step 0 the "
                            f"information buffer {problem}")


@dataclass(frozen=True)
class ReversalCheck:
    """exact: every restored state and the buffer came back bit for bit.
    first_mismatch: the step whose restored state (the state before it) differed, the first
        found going backwards; layer: its first differing layer; largest_difference: max
        |restored - true| in state units (exact records only, else NaN); buffer_initial: the
        buffer ended back at its mark; reason: what was observed."""

    exact: bool
    first_mismatch: Optional[int] = None
    buffer_initial: bool = True
    layer: Optional[int] = None
    largest_difference: float = float("nan")
    reason: str = ""

    def describe(self, part: str = "rnn") -> str:
        where = f"{part} layer {self.layer}" if self.layer is not None else part
        at = f" at time step {self.first_mismatch}" if self.first_mismatch is not None else ""
        return f"{where}{at}: {self.reason} (largest difference {self.largest_difference:.3g})"


@dataclass
class ReversalRecord:
    """A forward run kept for `compare_reversal`: before[t] is the state before step t (exact
    states, or fingerprints (layers x parts, batch)); the rest is what reversal needs."""

    plan: object
    initial_state: list
    final_state: list
    stored: Optional[Tensor]
    mark: object
    exact: bool
    weights: Optional[Tensor] = None
    before: List[object] = field(default_factory=list)


def record_run(rnn, inputs: Tensor, mask: Optional[Tensor] = None, *, initial_state=None,
               embedding=None, input_dropout: Optional[Tensor] = None,
               layer_dropout: Optional[Tensor] = None, buffer=None, tag: str = "",
               exact: bool = False, seed: int = 0) -> ReversalRecord:
    """Run `rnn` (a ReversibleRNN) forward without a graph over (batch, T, input) floats or
    (batch, T) ids with `embedding`, as training runs it, recording what reversal must restore.
    buffer: one shared with runs recorded before (which must then be compared after this one)."""
    mask = check_run(rnn, inputs, mask, mode=MemoryMode.REVERSIBLE, initial_state=initial_state,
                     buffer=buffer, embedding=embedding, input_dropout=input_dropout,
                     layer_dropout=layer_dropout, readout=None, readout_extras=())
    batch, device = inputs.shape[0], inputs.device
    if buffer is None:
        buffer = rnn.new_buffer(batch, device=device, keep_words=True)
    plan = rnn.plan(inputs, mask, buffer=buffer, embedding=embedding,
                    input_dropout=input_dropout, layer_dropout=layer_dropout, tag=tag)
    weights = None
    if not exact:
        generator = torch.Generator().manual_seed(seed)
        weights = (torch.randint(-2**62, 2**62, (rnn.half_size,), generator=generator) | 1).to(device)
    with torch.no_grad():
        state = rnn.exact_state(initial_state, batch, device)
        record = ReversalRecord(plan=plan, initial_state=state, final_state=state, stored=None,
                                mark=buffer.mark(), exact=exact, weights=weights)
        values = [tuple(from_fixed(part) for part in layer) for layer in state]
        stored = []
        for step in rnn.run_steps(plan, state, values):
            record.before.append(_keep(record, state))
            state, values = step.state, step.values
            stored.append(step.stored)
    if rnn.storage is not None:
        record.stored = torch.stack(stored, dim=1).to(rnn.storage.dtype)
    record.final_state = state
    return record


def compare_reversal(rnn, record: ReversalRecord, *,
                     buffer_back_to_initial: bool = True) -> ReversalCheck:
    """Reverse a recorded run; the first step (going backwards) whose restored state differs.
    buffer_back_to_initial: also require the buffer back at its mark (unless a run recorded
    before this one shares it and is still to be reversed)."""
    try:
        with torch.no_grad():
            for chunk in rnn.reverse_chunks(record.plan, record.final_state,
                                            initial_state=record.initial_state,
                                            stored=record.stored):
                for i in reversed(range(chunk.stop - chunk.start)):
                    check = _difference(record, chunk.states[i], chunk.start + i, rnn.state_parts)
                    if check is not None:
                        return check
    except ReversalError as error:  # e.g. a word count that does not fit
        for t, state in getattr(error, "restored", []):  # the steps undone before it failed
            check = _difference(record, state, t, rnn.state_parts)
            if check is not None:
                return check
        return ReversalCheck(exact=False, buffer_initial=False, reason=f"reversal failed: {error}")
    problem = record.plan.buffer.departure_from(record.mark) if buffer_back_to_initial else None
    if problem is not None:
        return ReversalCheck(exact=False, buffer_initial=False, largest_difference=0.0,
                             reason=f"states restored, but the information buffer {problem}")
    return ReversalCheck(exact=True)


def check_reversal(rnn, inputs: Tensor, mask: Optional[Tensor] = None, *,
                   corrupt: Optional[Callable] = None, **options) -> ReversalCheck:
    """`record_run` then `compare_reversal` (options: those of record_run). corrupt(buffer) is
    called in between (fault injection for tests)."""
    record = record_run(rnn, inputs, mask, **options)
    if corrupt is not None:
        corrupt(record.plan.buffer)
    return compare_reversal(rnn, record)


def _keep(record: ReversalRecord, state) -> object:
    if record.exact:
        return state
    return torch.stack([(part * record.weights[: part.shape[1]]).sum(1)
                        for layer in state for part in layer])


def _difference(record: ReversalRecord, restored, t: int, parts: int) -> Optional[ReversalCheck]:
    true = record.before[t]
    if record.exact:
        for layer, (mine, theirs) in enumerate(zip(restored, true)):
            if not all(torch.equal(a, b) for a, b in zip(mine, theirs)):
                return ReversalCheck(exact=False, first_mismatch=t, buffer_initial=False,
                                     layer=layer,
                                     largest_difference=_largest_difference(mine, theirs),
                                     reason="restored state differs from the true one")
        return None
    differs = (_keep(record, restored) != true).any(1).nonzero()
    if differs.numel() == 0:
        return None
    return ReversalCheck(exact=False, first_mismatch=t, buffer_initial=False,
                         layer=int(differs[0]) // parts,
                         reason="restored state differs from the true one (fingerprint)")


def _largest_difference(mine, theirs) -> float:
    largest = max(float((a.double() - b.double()).abs().max()) for a, b in zip(mine, theirs))
    return largest / 2.0 ** HIDDEN_RADIX
