"""Fused CPU gate steps: the float and integer arithmetic around one forget or unforget in C.

A half-state update (gated.py) is some ten small tensor operations besides the buffer's step (the
identity gate on padded rows and stored units, the rounded update, the sum, the float view), and a
forget gate's quantisation (fixed_point.forget_gate) six more; on a CPU, at the sizes of a
training batch, their per-operation overhead costs more than their arithmetic. The C versions in
buffer_kernels.c do each in one pass, one IEEE operation for each of the tensor code's, in its
order, so the results are the same bit for bit (tests/reversible/test_native_steps.py).

They apply where nothing needs a gradient graph (reversible forward, reversal and the recomputed
tapes; reference mode keeps the tensor code), on CPU buffers that use the C kernels, float32
arithmetic and stored units at 32 bits; each function returns None elsewhere and its caller runs
the tensor code. REVNMT_NATIVE=0 turns them off with the buffer's kernels.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import torch
from torch import Tensor

from nmt.reversible.native import kernels

if TYPE_CHECKING:  # buffer.py imports fixed_point.py, which imports this module
    from nmt.reversible.buffer import InformationBuffer

_NULL = None  # a NULL pointer for ctypes


def _plain(*tensors: Tensor) -> bool:
    """CPU tensors outside any gradient graph."""
    for t in tensors:
        if t.requires_grad or not t.is_cpu:
            return False
    return True


def from_fixed(h: Tensor) -> Optional[Tensor]:
    """fixed_point.from_fixed of a contiguous CPU int64 tensor, or None (tensor code)."""
    if h.dtype != torch.int64 or not h.is_cpu or not h.is_contiguous():
        return None
    library = kernels()
    if library is None:
        return None
    out = torch.empty(h.shape, dtype=torch.float32)
    library.from_fixed(h.data_ptr(), h.numel(), out.data_ptr())
    return out


def quantize(sigmoid: Tensor, *, n_min: int, forget_radix: int,
             with_slope: bool) -> Optional[Tuple[Tensor, Tensor, Optional[Tensor]]]:
    """forget_gate's (z_q, n, slope or None) from sigmoid(logits), or None (tensor code)."""
    library = kernels()
    if library is None or sigmoid.dtype != torch.float32 or not _plain(sigmoid):
        return None
    s = sigmoid.contiguous()
    scale = float(2**forget_radix)
    floor = n_min / scale
    n = torch.empty(s.shape, dtype=torch.int64)
    z_q = torch.empty_like(s)
    slope = torch.empty_like(s) if with_slope else None
    library.quantize(s.data_ptr(), s.numel(), 1.0 - floor, floor, scale, float(n_min), scale,
                     1.0 / scale, n.data_ptr(), z_q.data_ptr(),
                     slope.data_ptr() if slope is not None else _NULL)
    return z_q, n, slope


def _rows(mask: Optional[Tensor], rows: int):
    """(row bytes or None, its pointer): mask (batch,) bool, True on real rows."""
    if mask is None:
        return None, _NULL
    real = mask.reshape(-1).contiguous()
    if real.dtype != torch.bool or real.numel() != rows or real.device.type != "cpu":
        raise ValueError("a fused step takes a (batch,) bool CPU mask")
    return real, real.data_ptr()


def _fits(h: Tensor, n: Tensor, update: Tensor) -> bool:
    return (h.dim() == 2 and h.dtype == torch.int64 and n.shape == h.shape
            and n.dtype == torch.int64 and update.shape == h.shape
            and update.dtype == torch.float32 and _plain(h, n, update))


def gated_forget(buffer: Optional["InformationBuffer"], h: Tensor, value: Tensor, z_q: Tensor,
                 n: Tensor, update: Tensor, *, mask: Optional[Tensor], stored_units: int,
                 precision: int, tag: str) -> Optional[Tuple[Tensor, Tensor]]:
    """gated_step's (exact, float view) without a graph, or None (tensor code)."""
    if (buffer is None or buffer._native is None or not _fits(h, n, update)
            or not _plain(value, z_q) or (stored_units and precision != 32)):
        return None
    rows, cols = h.shape
    h, n, update = h.contiguous(), n.contiguous(), update.contiguous()
    if stored_units:
        z_q, value = z_q.contiguous(), value.contiguous()
        if z_q.dtype != torch.float32 or value.dtype != torch.float32:
            return None
    real, real_ptr = _rows(mask, rows)
    out = torch.empty_like(h)
    value_out = torch.empty(h.shape, dtype=torch.float32)

    def run(head: Tensor, words: Tensor, hist: Tensor):
        count = buffer._native.gated_forget(
            h.data_ptr(), n.data_ptr(), update.data_ptr(), real_ptr, stored_units,
            z_q.data_ptr() if stored_units else _NULL,
            value.data_ptr() if stored_units else _NULL, head.data_ptr(), head.stride(0), rows,
            cols, buffer.word_bits, buffer.forget_radix, words.data_ptr(), hist.data_ptr(),
            out.data_ptr(), value_out.data_ptr())
        if count < 0:
            raise ValueError(f"gate numerators must be in [1, {2**buffer.forget_radix}]")
        return (out, value_out), count

    return buffer.fused_forget(h, n, run, tag=tag)


def gated_unforget(buffer: "InformationBuffer", h_next: Tensor, n: Tensor, update: Tensor, *,
                   mask: Optional[Tensor], restored: Optional[Tensor]) -> Optional[Tensor]:
    """undo_step's previous exact state, or None (tensor code)."""
    if buffer._native is None or not _fits(h_next, n, update):
        return None
    rows, cols = h_next.shape
    stored_units = 0 if restored is None else restored.shape[1]
    if stored_units and (restored.dtype != torch.int64 or restored.dim() != 2
                         or restored.shape[0] != rows or restored.stride(1) != 1
                         or not _plain(restored)):
        return None
    h_next, n, update = h_next.contiguous(), n.contiguous(), update.contiguous()
    real, real_ptr = _rows(mask, rows)
    out = torch.empty_like(h_next)

    def run(head: Tensor, words: Tensor, top: int):
        new_top = buffer._native.gated_unforget(
            h_next.data_ptr(), n.data_ptr(), update.data_ptr(), real_ptr, stored_units,
            restored.data_ptr() if stored_units else _NULL,
            restored.stride(0) if stored_units else 0, head.data_ptr(), head.stride(0), rows,
            cols, buffer.word_bits, buffer.forget_radix, buffer.lower, words.data_ptr(), top,
            out.data_ptr())
        if new_top == -1:
            raise ValueError(f"gate numerators must be in [1, {2**buffer.forget_radix}]")
        if new_top < 0:
            raise RuntimeError("information buffer: this reverse step needs more words than the "
                               "stack holds (its gates are not those of the matching forward "
                               "step)")
        return out, new_top

    return buffer.fused_unforget(h_next, n, run)


def lstm_backward(grad_h: Tensor, grad_c: Tensor, mask: Optional[Tensor], previous: Tensor,
                  previous_cell: Tensor, tanh_cell: Tensor, gates
                  ) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    """RevLSTMCell.backward_step's elementwise part for one half: (d h, d c, d gates (batch,
    5 units) as [f, i, o, p, g]) before the step, or None (tensor code)."""
    library = kernels()
    floats = (grad_h, grad_c, gates.p_q, gates.f_q, gates.out_gate, tanh_cell, previous,
              previous_cell, gates.inp, gates.candidate, gates.f_slope, gates.p_slope)
    if (library is None or grad_h.dim() != 2
            or any(t is None or t.shape != grad_h.shape or t.dtype != torch.float32
                   for t in floats) or not _plain(*floats)):
        return None
    floats = [t.contiguous() for t in floats]
    rows, cols = grad_h.shape
    real, real_ptr = _rows(mask, rows)
    d_h, d_c = torch.empty_like(floats[0]), torch.empty_like(floats[0])
    d_gates = torch.empty(rows, 5 * cols)
    library.lstm_backward(rows, cols, real_ptr, *[t.data_ptr() for t in floats], d_h.data_ptr(),
                          d_c.data_ptr(), d_gates.data_ptr())
    return d_h, d_c, d_gates


def lstm_backward_kept(grad_h: Tensor, grad_c: Tensor, mask: Optional[Tensor], kept: Tensor,
                       h: Tensor, c: Tensor, tanh_cell: Tensor, max_forget_bits: Optional[int]
                       ) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    """lstm_backward from a kept tape's activations (batch, 5 units; rows may be strided) and
    the int64 states h, c before the step (quantisation and from_fixed as `quantize` and
    `from_fixed`: the same values), or None (tensor code)."""
    library = kernels()
    if (library is None or grad_h.dim() != 2 or kept.dim() != 2 or kept.stride(1) != 1
            or kept.dtype != torch.float32 or kept.shape != (grad_h.shape[0], 5 * grad_h.shape[1])
            or not _floats(grad_h.shape, grad_h, grad_c, tanh_cell) or not _plain(kept, h, c)
            or any(t.shape != grad_h.shape or t.dtype != torch.int64 for t in (h, c))):
        return None
    from nmt.reversible.fixed_point import FORGET_RADIX, min_forget_numerator

    n_min, scale = min_forget_numerator(max_forget_bits), float(2**FORGET_RADIX)
    q = torch.tensor([1.0 - n_min / scale, n_min / scale, scale, float(n_min), scale, 1.0 / scale])
    grad_h, grad_c, h, c, tanh_cell = (t.contiguous() for t in (grad_h, grad_c, h, c, tanh_cell))
    rows, cols = grad_h.shape
    real, real_ptr = _rows(mask, rows)
    d_h, d_c = torch.empty_like(grad_h), torch.empty_like(grad_h)
    d_gates = torch.empty(rows, 5 * cols)
    library.lstm_backward_kept(rows, cols, real_ptr, grad_h.data_ptr(), grad_c.data_ptr(),
                               kept.data_ptr(), kept.stride(0), h.data_ptr(), c.data_ptr(),
                               tanh_cell.data_ptr(), q.data_ptr(), d_h.data_ptr(), d_c.data_ptr(),
                               d_gates.data_ptr())
    return d_h, d_c, d_gates


def _floats(shape, *tensors: Optional[Tensor]) -> bool:
    """float32 CPU tensors of `shape` outside any gradient graph."""
    for t in tensors:
        if t is None or t.shape != shape or t.dtype != torch.float32:
            return False
    return _plain(*tensors)


def gru_backward(grad: Tensor, mask: Optional[Tensor], gates, previous: Tensor, other: Tensor,
                 d_other: Tensor, candidate_weight: Tensor, gate_weight: Tensor
                 ) -> Optional[Tuple[Tensor, Tensor, Tensor, Tensor]]:
    """RevGRUCell.backward_step for one half: (d h_i, d h_j, d_logits, d_candidate), the products
    by W_h (`candidate_weight`, `gate_weight`) in torch as the tensor code does them; or None."""
    library = kernels()
    if (library is None or grad.dim() != 2 or other.dim() != 2
            or not _floats(grad.shape, grad, gates.z_q, gates.candidate, previous, gates.slope)
            or not _floats(other.shape, other, gates.reset, d_other)):
        return None
    grad, z_q, candidate, previous, slope = (t.contiguous() for t in (
        grad, gates.z_q, gates.candidate, previous, gates.slope))
    (rows, own), other_cols = grad.shape, other.shape[1]
    real, real_ptr = _rows(mask, rows)
    d_h, d_candidate = torch.empty_like(grad), torch.empty_like(grad)
    d_logits = torch.empty(rows, own + other_cols)
    library.gru_backward_a(rows, own, other_cols, real_ptr, grad.data_ptr(), z_q.data_ptr(),
                           candidate.data_ptr(), previous.data_ptr(), slope.data_ptr(),
                           d_h.data_ptr(), d_candidate.data_ptr(), d_logits.data_ptr())
    d_reset_other = d_candidate.mm(candidate_weight).contiguous()
    other, reset, d_other = other.contiguous(), gates.reset.contiguous(), d_other.contiguous()
    partial = torch.empty_like(d_other)
    library.gru_backward_b(rows, own, other_cols, d_reset_other.data_ptr(), other.data_ptr(),
                           reset.data_ptr(), d_other.data_ptr(), d_logits.data_ptr(),
                           partial.data_ptr())
    return d_h, partial + d_logits.mm(gate_weight), d_logits, d_candidate
