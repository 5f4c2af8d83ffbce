"""Weight gradients of many small products, computed as one large product.

A recurrence multiplies the same weight W by a new state at every step, so its gradient is
sum_t g_t^T h_t. The hand-written backward of the cells records (h_t, g_t) per step, and
`weight_grads()` returns the sum for a whole chunk of steps as one matrix product (same value,
other rounding order) instead of one small product, zero-filled slice and addition per step.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterator, List, Tuple

import torch
from torch import Tensor, nn


class DeferredWeightGrads:
    """Recorded (input, output gradient) pairs per Linear whose columns [first:] were used."""

    def __init__(self):
        self._pairs: Dict[Tuple[nn.Linear, int], List[Tuple[Tensor, Tensor]]] = defaultdict(list)

    def record(self, key: Tuple[nn.Linear, int], inputs: Tensor, grad: Tensor) -> None:
        self._pairs[key].append((inputs, grad))

    def weight_grads(self) -> Iterator[Tuple[nn.Linear, int, Tensor]]:
        """(layer, first column, gradient of weight[:, first:]) for every recorded weight."""
        for (layer, first), pairs in self._pairs.items():
            inputs = torch.cat([pair[0] for pair in pairs])
            grads = torch.cat([pair[1] for pair in pairs])
            yield layer, first, grads.t().mm(inputs)
        self._pairs.clear()

    def pairs(self) -> Iterator[Tuple[nn.Linear, int, Tensor, Tensor]]:
        """(layer, first column, inputs, gradients) for every recorded weight, the steps' pairs
        concatenated: the gradient of weight[:, first:] is gradients.t() @ inputs (the caller
        may add it into a running total in blocks instead of materialising it)."""
        for (layer, first), pairs in self._pairs.items():
            yield (layer, first, torch.cat([pair[0] for pair in pairs]),
                   torch.cat([pair[1] for pair in pairs]))
        self._pairs.clear()
