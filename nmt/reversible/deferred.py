"""Weight gradients of many small products, computed as one large product.

A recurrence multiplies the same weight W by a new state at every step, so its gradient is
sum_t g_t^T h_t. The hand-written backward of the cells records (h_t, g_t) per step, and
`pairs()` gives a whole chunk's steps as one matrix pair (one product: same value, other
rounding order) instead of one small product, zero-filled slice and addition per step.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn


class DeferredWeightGrads:
    """Recorded (input, output gradient) pairs per Linear whose columns [first:] were used."""

    def __init__(self):
        self._pairs: Dict[Tuple[nn.Linear, int], List[Tuple[Tensor, Tensor]]] = defaultdict(list)
        self._sliced: Dict[Tuple[nn.Linear, int], Tuple[int, List[Tensor]]] = {}

    def record(self, key: Tuple[nn.Linear, int], inputs: Tensor, grad: Tensor) -> None:
        self._pairs[key].append((inputs, grad))

    def record_sliced(self, key: Tuple[nn.Linear, int], offset: int, inputs: Tensor) -> None:
        """Record a step's inputs (last step first, as backward runs) whose gradient is the
        Linear's columns [offset: offset + out_features] of the chunk's stacked d projected
        (`pairs(sliced_grads=...)`): no per-step gradient is held or concatenated."""
        self._sliced.setdefault(key, (offset, []))[1].append(inputs)

    def pairs(self, sliced_grads: Optional[Tensor] = None
              ) -> Iterator[Tuple[nn.Linear, int, Tensor, Tensor]]:
        """(layer, first column, inputs, gradients) for every recorded weight, the steps' pairs
        concatenated: the gradient of weight[:, first:] is gradients.t() @ inputs (the caller
        may add it into a running total in blocks instead of materialising it).
        sliced_grads (batch, C, P): the d projected of the steps `record_sliced` saw, in step
        order."""
        for (layer, first), pairs in self._pairs.items():
            yield (layer, first, torch.cat([pair[0] for pair in pairs]),
                   torch.cat([pair[1] for pair in pairs]))
        for (layer, first), (offset, inputs) in self._sliced.items():
            stacked = torch.stack(inputs[::-1], dim=1)  # (batch, C, in), rows as sliced_grads'
            width = layer.out_features
            yield (layer, first, stacked.view(-1, stacked.shape[-1]),
                   sliced_grads[..., offset: offset + width].reshape(-1, width))
        self._pairs.clear()
        self._sliced.clear()
