"""Weight gradients of many small products, computed as one large product.

A recurrence multiplies the same weight W by a new state at every step. Autograd would give each
step's product its own weight gradient g_t^T h_t, and the weight being a column slice of a Linear,
a zero-filled full-size tensor too, summed step by step. Inside `deferred_weight_grads()` the
products record (h_t, g_t) instead, and `weight_grads()` returns sum_t g_t^T h_t per weight as one
matrix product over all recorded steps (same value, other rounding order).
"""
from __future__ import annotations

import contextlib
import contextvars
from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

_ACTIVE: contextvars.ContextVar[Optional["DeferredWeightGrads"]] = contextvars.ContextVar(
    "deferred_weight_grads", default=None)


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


@contextlib.contextmanager
def deferred_weight_grads() -> Iterator[DeferredWeightGrads]:
    """Products made by `column_product` inside the block defer their weight gradients."""
    collector = DeferredWeightGrads()
    token = _ACTIVE.set(collector)
    try:
        yield collector
    finally:
        _ACTIVE.reset(token)


def column_product(layer: nn.Linear, first: int, inputs: Tensor) -> Tensor:
    """inputs @ layer.weight[:, first:]^T, its weight gradient deferred inside
    `deferred_weight_grads()` (when gradients are on), an ordinary product elsewhere."""
    weight = layer.weight[:, first:]
    collector = _ACTIVE.get()
    if collector is None or not torch.is_grad_enabled() or not layer.weight.requires_grad:
        return F.linear(inputs, weight)
    return _DeferredProduct.apply(inputs, weight.detach(), collector, (layer, first))


class _DeferredProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, weight, collector, key):
        ctx.save_for_backward(inputs, weight)
        ctx.collector, ctx.key = collector, key
        return F.linear(inputs, weight)

    @staticmethod
    def backward(ctx, grad):
        inputs, weight = ctx.saved_tensors
        ctx.collector.record(ctx.key, inputs, grad)
        grad_inputs = grad.mm(weight) if ctx.needs_input_grad[0] else None
        return grad_inputs, None, None, None
