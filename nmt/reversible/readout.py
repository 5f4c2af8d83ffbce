"""The readout contract: a loss on the top layer's states, evaluated chunk by chunk."""
from __future__ import annotations

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
