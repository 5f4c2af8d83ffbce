"""Is a stack exactly reversible on given data? (The public self-check behind `nmt bench reversal`.)"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from nmt.reversible.fixed_point import from_fixed


@dataclass(frozen=True)
class ReversalCheck:
    exact: bool  # every intermediate state came back bit for bit
    first_mismatch: Optional[int]  # the latest step whose restored state differed, if any
    buffer_initial: bool  # the buffer ended with heads at L and no words


def check_reversal(rnn, inputs: Tensor, mask: Optional[Tensor] = None, *, seed: int = 0) -> ReversalCheck:
    """Run `rnn` (a ReversibleRNN) forward over (batch, T, input) floats from the zero state, then
    reverse it step by step, comparing every intermediate state.

    States are compared through a random 64-bit linear hash per row (int64 arithmetic wraps; a
    changed state goes unnoticed with probability about 2**-60) so memory stays O(batch x T).
    """
    batch, steps = inputs.shape[:2]
    mask = torch.ones(batch, steps, dtype=torch.bool, device=inputs.device) if mask is None else mask
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randint(-2**62, 2**62, (rnn.half_size,), generator=generator) | 1

    def fingerprint(state):
        return torch.stack([(part * weights[: part.shape[1]].to(part.device)).sum(1)
                            for layer in state for part in layer])

    buffer = rnn.new_buffer(batch, device=inputs.device)
    state = [cell.initial_state(batch, device=inputs.device) for cell in rnn.cells]
    units = rnn.stored_slice
    prints, stored = [], [state[-1][0][:, :units]]
    with torch.no_grad():
        for t in range(steps):
            prints.append(fingerprint(state))
            values = [tuple(from_fixed(part) for part in layer) for layer in state]
            state, _, _ = rnn.step(inputs[:, t], state, values, buffer, mask[:, t])
            stored.append(state[-1][0][:, :units])
        mismatch = None
        for t in reversed(range(steps)):
            state = rnn.reverse_step(inputs[:, t], state, buffer, mask[:, t],
                                     restored=stored[t] if units else None)
            if mismatch is None and not torch.equal(fingerprint(state), prints[t]):
                mismatch = t
    return ReversalCheck(exact=mismatch is None, first_mismatch=mismatch,
                         buffer_initial=buffer.is_initial())
