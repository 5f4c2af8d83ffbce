"""The readout contract: a loss on the top layer's states, evaluated chunk by chunk."""
from __future__ import annotations

import contextlib
import weakref
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
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


SINK_BLOCK_BYTES = 4 << 20  # a weight-gradient block added into its running total at a time


class WeightGradSink:
    """Running totals of the weight gradients of linear layers a chunked readout runs through
    `sink_linear`: each chunk's gradient is added into one buffer per weight, a block of output
    rows at a time, instead of materialising it whole beside the running total. Row blocks of
    grad.t() @ x are the rows of the whole product (each element the same reduction), so the
    totals equal adding whole per-chunk products (checked bit for bit on CPU by the tests)."""

    def __init__(self, params: Sequence[Tensor]):
        self.totals = {id(param): None for param in params}

    def add(self, weight: Tensor, x: Tensor, grad: Tensor) -> None:
        total = self.totals[id(weight)]
        if total is None:  # the first chunk's product becomes the total
            self.totals[id(weight)] = grad.t().mm(x)
            return
        rows = max(1, SINK_BLOCK_BYTES // max(1, x.shape[1] * x.element_size()))
        for first in range(0, total.shape[0], rows):
            total[first: first + rows] += grad[:, first: first + rows].t().mm(x)

    def total(self, param: Tensor) -> Optional[Tensor]:
        return self.totals.get(id(param))


_SINKS: List[WeightGradSink] = []


@contextlib.contextmanager
def weight_grad_sink(sink: WeightGradSink):
    """While active, `sink_linear` over a weight the sink covers sends its gradient to the sink
    (autograd then sees no gradient for that weight) instead of returning it."""
    _SINKS.append(sink)
    try:
        yield sink
    finally:
        _SINKS.pop()


def sink_linear(x: Tensor, layer: torch.nn.Linear) -> Tensor:
    """layer(x) (2-D x), the weight's gradient going to the active `weight_grad_sink` if it
    covers that weight, else by autograd as usual. The same forward values either way."""
    sink = _SINKS[-1] if _SINKS else None
    if (sink is None or id(layer.weight) not in sink.totals or x.dim() != 2
            or not torch.is_grad_enabled()):
        return layer(x)
    return _SinkLinear.apply(x, layer.weight, layer.bias, sink)


class _SinkLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, sink):
        ctx.save_for_backward(x, weight)
        ctx.sink, ctx.has_bias = sink, bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad.mm(weight) if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            ctx.sink.add(weight, x, grad)
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias, None
