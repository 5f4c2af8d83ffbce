"""The readout contract: a loss on the top layer's states, evaluated chunk by chunk."""
from __future__ import annotations

import weakref
from typing import Callable, List, Sequence

import torch
from torch import Tensor


def read_chunk(readout: Callable, tops: List[Tensor], start: int, extras: Sequence[Tensor]) -> Tensor:
    """The summed readout of steps start .. start + len(tops) - 1 (tops: h_t (batch, H) each).

    A readout with `reads_chunks = True` takes them at once, readout(h (batch, C, H), start,
    *extras), so attention and output layer run as a few large products; any other is called per
    step, readout(h_t, t, *extras)."""
    if getattr(readout, "reads_chunks", False):
        return readout(torch.stack(tops, dim=1), start, *extras)
    return torch.stack([readout(h, start + i, *extras) for i, h in enumerate(tops)]).sum()


class PendingTotal:
    """The readout total of a reversible run while backward has yet to compute it.

    Forward returns a placeholder tensor (NaN); the run's backward copies the total into it.
    `value()` returns it once filled in and raises PendingValueError before. Holds the
    placeholder weakly (the autograd graph must not keep its own output alive)."""

    def __init__(self, placeholder: Tensor, tag: str = ""):
        self._placeholder = weakref.ref(placeholder)
        self.tag = tag
        self.done = False

    def fill(self, total: Tensor) -> None:
        placeholder = self._placeholder()
        if placeholder is not None:
            placeholder.copy_(total)
        self.done = True

    def check(self, what: str = "the readout total") -> None:
        """Raise PendingValueError unless backward has filled the total in."""
        if not self.done:
            run = f" of {self.tag}" if self.tag else ""
            raise PendingValueError(
                f"{what}{run} is computed while backward reverses the run: call backward() "
                f"on the loss before reading it")


class PendingValueError(RuntimeError):
    """A value a reversible run computes during backward was read before backward ran."""
