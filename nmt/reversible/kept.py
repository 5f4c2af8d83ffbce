"""What a reversible run keeps of its exact states between forward and backward, and how wide.

- The final state, which backward reverses from: each half at the narrowest width that holds it
  exactly. A RevGRU half is bounded (h <- z h + (1 - z) tanh(.), so |h| <= max(|h_0|, 1) plus a
  few units of rounding per step): at radix 23 it fits int32 with room to spare (|h| < 256), so it
  is kept as int32 and widened back to int64 when backward starts. RevLSTM's h and c are
  unbounded (tests/reversible/test_unbounded_lstm.py): kept as int64. The narrowing is checked
  without a wait for the device: a flag, read by backward, says whether any value did not fit
  (then backward raises instead of reversing from a wrong state).
- Of the initial state, no copy: backward reconstructs it exactly by reversal, and the
  end-of-backward check compares it with a 64-bit fingerprint per row, layer and half (a
  weighted sum with fixed odd weights, wrapping in int64: a difference in a single element is
  always detected). Only what reversal itself reads is kept: with slice storage, the first k
  units of the top layer's h1 (the stored units "before step 0"), at the final state's width.

`kept_state_bits` gives the bits of both, which the accounting (accounting.py) charges.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

FINGERPRINT_BITS = 64
_BOUNDED = {"revgru": True, "revlstm": False}  # every half bounded by max(|h_0|, 1)?
_WEIGHTS: Dict[Tuple[int, str], Tensor] = {}


def kept_dtype(rnn) -> torch.dtype:
    """The width at which `rnn`'s final state is kept between forward and backward."""
    return torch.int32 if _BOUNDED.get(rnn.cell_name, False) else torch.int64


def kept_state_bits(rnn, batch: int) -> Tuple[int, int]:
    """(final state bits, initial state bits) a reversible run of `rnn` over `batch` rows keeps."""
    width = torch.iinfo(kept_dtype(rnn)).bits
    parts = rnn.state_parts // 2  # h, or h and c
    final = width * rnn.hidden_size * batch * rnn.num_layers * parts
    initial = FINGERPRINT_BITS * batch * rnn.num_layers * rnn.state_parts
    initial += width * batch * (rnn.stored_slice or 0)
    return final, initial


@dataclass
class KeptStates:
    """What a reversible run keeps of its exact states (see the module docstring)."""

    final_state: List[tuple]  # per layer, the halves at kept_dtype
    overflow: Optional[Tensor]  # bool scalar on the device: a value did not fit (None: int64)
    fingerprint: Tensor  # (layers x parts, batch) int64
    initial_slice: Optional[Tensor]  # (batch, k): the top h1's first k units before step 0

    @classmethod
    def keep(cls, rnn, initial_state: List[tuple], final_state: List[tuple]) -> "KeptStates":
        dtype = kept_dtype(rnn)
        overflow = None
        final = final_state
        if dtype != torch.int64:
            final = [tuple(part.to(dtype) for part in layer) for layer in final_state]
            overflow = torch.stack([(narrow.to(torch.int64) != part).any()
                                    for layer, narrow_layer in zip(final_state, final)
                                    for part, narrow in zip(layer, narrow_layer)]).any()
        units = rnn.stored_slice or 0
        initial_slice = initial_state[-1][0][:, :units].to(dtype).clone() if units else None
        return cls(final_state=final, overflow=overflow, fingerprint=fingerprint(initial_state),
                   initial_slice=initial_slice)

    def widened_final(self) -> List[tuple]:
        """The final exact state as int64, to reverse from."""
        return [tuple(part.to(torch.int64) for part in layer) for layer in self.final_state]

    def reversal_initial(self) -> List[tuple]:
        """What `ReversibleRNN.reverse_chunks` reads of the initial state: only the top layer's
        h1 units that slice storage restores before step 0 (`initial_state[-1][0][:, :k]`)."""
        if self.initial_slice is None:
            return []
        return [(self.initial_slice.to(torch.int64),)]

    def nbytes(self) -> Dict[str, int]:
        final = sum(part.numel() * part.element_size() for layer in self.final_state
                    for part in layer)
        initial = self.fingerprint.numel() * self.fingerprint.element_size()
        if self.initial_slice is not None:
            initial += self.initial_slice.numel() * self.initial_slice.element_size()
        return {"state": final, "initial": initial}


def fingerprint(state: List[tuple]) -> Tensor:
    """(layers x parts, batch) int64: per row, sum_i w_i x_i wrapping in int64, w_i fixed odd."""
    return torch.stack([(part * _weights(part.shape[1], part.device)).sum(1)
                        for layer in state for part in layer])


def _weights(size: int, device) -> Tensor:
    key = (size, str(device))
    if key not in _WEIGHTS:
        generator = torch.Generator().manual_seed(0x5EED)
        weights = torch.randint(-2**62, 2**62, (size,), generator=generator) | 1
        _WEIGHTS[key] = weights.to(device)
    return _WEIGHTS[key]
