"""The readout contract: a loss on the top layer's states, evaluated chunk by chunk."""
from __future__ import annotations

import contextlib
import weakref
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def read_chunk(readout: Callable, tops: Union[List[Tensor], Tensor], start: int,
               extras: Sequence[Tensor]) -> Tensor:
    """The summed readout of steps start .. start + C - 1 (tops: C tensors h_t (batch, H), or
    them stacked (batch, C, H)).

    A readout with `reads_chunks = True` takes them at once, readout(h (batch, C, H), start,
    *extras), so attention and output layer run as a few large products; any other is called per
    step, readout(h_t, t, *extras)."""
    stacked = isinstance(tops, Tensor)
    if getattr(readout, "reads_chunks", False):
        return readout(tops if stacked else torch.stack(tops, dim=1), start, *extras)
    steps = tops.unbind(1) if stacked else tops
    return torch.stack([readout(h, start + i, *extras) for i, h in enumerate(steps)]).sum()


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


class WeightGradSink:
    """Running totals of the weight gradients of linear layers a chunked readout runs through
    `sink_linear`: each chunk's gradient is accumulated into one buffer per weight by one
    addmm_ (BLAS's beta = 1), never materialised beside the running total. The totals equal
    adding whole per-chunk products to float rounding (the product's partial sums may fold into
    the total in another order)."""

    def __init__(self, params: Sequence[Tensor]):
        self.totals = {id(param): None for param in params}

    def add(self, weight: Tensor, x: Tensor, grad: Tensor) -> None:
        total = self.totals[id(weight)]
        if total is None:  # the first chunk's product becomes the total
            self.totals[id(weight)] = grad.t().mm(x)
            return
        total.addmm_(grad.t(), x)  # BLAS accumulates into the total: no product-size term

    def total(self, param: Tensor) -> Optional[Tensor]:
        return self.totals.get(id(param))


class TensorGradSink:
    """Running totals of the gradients that a chunked readout sends, through `sink_bmm`, into
    whole-sequence tensors it reads every chunk (the attention keys and values): each chunk's
    term is accumulated into one buffer per tensor by one baddbmm_, never materialised beside
    the running total: autograd's bmm backward product, its sums folded into the total (equal
    to adding whole per-chunk terms to float rounding)."""

    def __init__(self, tensors: Sequence[Tensor]):
        self.totals = {id(tensor): None for tensor in tensors}

    def covers(self, tensor: Tensor) -> bool:
        return id(tensor) in self.totals

    def add_bmm(self, tensor: Tensor, left: Tensor, right: Tensor, transposed: bool) -> None:
        """totals[tensor] += left.bmm(right) (its transpose(1, 2) when `transposed`)."""
        total = self.totals[id(tensor)]
        if total is None:  # the first chunk's term becomes the total (as _accumulate's)
            term = left.bmm(right)
            term = term.transpose(1, 2) if transposed else term
            self.totals[id(tensor)] = term if term.is_contiguous() else term.clone()
            return
        if transposed:  # total += (left @ right)^T = right^T @ left^T
            total.baddbmm_(right.transpose(1, 2), left.transpose(1, 2))
        else:
            total.baddbmm_(left, right)

    def total(self, tensor: Tensor) -> Optional[Tensor]:
        return self.totals.get(id(tensor))


_SINKS: List[WeightGradSink] = []
_TENSOR_SINKS: List[TensorGradSink] = []


@contextlib.contextmanager
def tensor_grad_sink(sink: TensorGradSink):
    """While active, `sink_bmm` over a tensor the sink covers sends that tensor's gradient to the
    sink (autograd then sees no gradient for it) instead of returning it."""
    _TENSOR_SINKS.append(sink)
    try:
        yield sink
    finally:
        _TENSOR_SINKS.pop()


def sink_bmm(x: Tensor, other: Tensor, *, transpose_other: bool = False) -> Tensor:
    """torch.bmm(x, other.transpose(1, 2) if transpose_other else other), the gradient of
    `other` going to the active `tensor_grad_sink` if it covers `other`, else by autograd as
    usual. The same forward values either way."""
    sink = _TENSOR_SINKS[-1] if _TENSOR_SINKS else None
    if sink is None or not sink.covers(other) or not torch.is_grad_enabled():
        return torch.bmm(x, other.transpose(1, 2) if transpose_other else other)
    return _SinkBmm.apply(x, other, transpose_other, sink)


class _SinkBmm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, other, transpose_other, sink):
        mat2 = other.transpose(1, 2) if transpose_other else other
        ctx.save_for_backward(x, other)
        ctx.transpose_other, ctx.sink = transpose_other, sink
        return torch.bmm(x, mat2)

    @staticmethod
    def backward(ctx, grad):
        x, other = ctx.saved_tensors
        mat2 = other.transpose(1, 2) if ctx.transpose_other else other
        # autograd's bmm backward: grad x = grad @ mat2^T, grad mat2 = x^T @ grad
        grad_x = grad.bmm(mat2.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            ctx.sink.add_bmm(other, x.transpose(1, 2), grad, ctx.transpose_other)
        return grad_x, None, None, None


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
