"""One exact, differentiable half-state update h <- z * h + update and its inverse, shared by
the RevGRU and RevLSTM cells (cells.py): the gate applied through the information buffer, the
additive update rounded to the fixed-point grid, padded rows and stored units left out of the
buffer, and float32 gate arithmetic whatever autocast says (so reverse recomputes it bit for bit).
"""
from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Optional, Tuple

import torch
from torch import Tensor

from nmt.reversible import native_steps
from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.fixed_point import (FORGET_RADIX, from_fixed, quantized_gate, scaled_update,
                                        straight_through, to_fixed)

_IDENTITY_GATE = 2**FORGET_RADIX  # n / 2**R == 1: the buffer leaves the element alone
STORAGE_PRECISIONS = (32, 16)


def float32_math(device: torch.device):
    """Autocast off: gates are float32 however the caller runs, so backward (which runs outside
    the caller's autocast) recomputes them bit for bit. (Entering an autocast context costs more
    than a small step's arithmetic: done only when autocast is on.)"""
    if _autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def round_to_storage(value: Tensor, precision: int) -> Tensor:
    """The fixed-point state of a stored unit: value rounded to `precision` bits, then to the grid.

    At 16 bits the value goes through float16 first, at 32 bits through float32: a float32 value
    rounded to the grid (|h| < 2: fewer than 24 significant bits; |h| >= 2: already on the grid)
    is exactly representable in float32, so storage (float16/float32) and state agree bit for
    bit even where h exceeds 1 (RevLSTM).
    """
    dtype = torch.float16 if precision == 16 else torch.float32
    return to_fixed(value.detach().to(dtype).to(torch.float32))


def real_rows(mask: Optional[Tensor]) -> Optional[Tensor]:
    """mask (batch,) -> (batch, 1) broadcastable over units; None (every row real) stays None."""
    return None if mask is None else mask.view(-1, 1)


def on_real(real: Optional[Tensor], value: Tensor, padded) -> Tensor:
    """`value` on real rows, `padded` elsewhere (no copy when every row is real)."""
    return value if real is None else torch.where(real, value, padded)


def _effective(n: Tensor, update: Tensor, real: Optional[Tensor],
               stored_units: int) -> Tuple[Tensor, Tensor]:
    """Gates and scaled updates as applied: identity on padded rows and on stored units."""
    n = on_real(real, n, _IDENTITY_GATE)
    if stored_units:
        if real is None:
            n = n.clone()  # the caller's gate stays as computed
        n[:, :stored_units] = _IDENTITY_GATE
    return n, on_real(real, scaled_update(update), 0)


def gated_step(h: Tensor, value: Tensor, z_q: Tensor, n: Tensor, update: Tensor, *,
               buffer: Optional[InformationBuffer], mask: Optional[Tensor],
               next_exact: Optional[Tensor] = None, stored_units: int = 0, precision: int = 32,
               tag: str = "") -> Tuple[Tensor, Tensor]:
    """One half-state update h <- z * h + update, exact and differentiable.

    h: int64 (batch, units); value: its float view; z_q, n: the quantised gate (float, int64);
    update: (1 - z) * g in float32. Exact: forget(h, n) + round(update * 2**23) on real rows,
    h on padded rows; the first `stored_units` units skip the buffer and take
    round_to_storage(z * h + update) instead (the runner keeps them). With `next_exact` given the
    buffer is not touched and that result is used (recomputing a step for its gradient).
    Returns (exact, float view whose gradient flows to z * value + update).
    """
    if next_exact is None and buffer is not None:  # no graph, on a CPU: one fused C step
        fused = native_steps.gated_forget(buffer, h, value, z_q, n, update, mask=mask,
                                          stored_units=stored_units, precision=precision, tag=tag)
        if fused is not None:
            return fused
    real = real_rows(mask)
    surrogate = None
    if value.requires_grad or z_q.requires_grad or update.requires_grad or stored_units:
        surrogate = on_real(real, z_q * value + update, value)
    if next_exact is None:
        n_applied, step = _effective(n, update, real, stored_units)
        next_exact = buffer.forget(h, n_applied, tag=tag) + step
        if stored_units:
            kept = round_to_storage(surrogate[:, :stored_units], precision)
            next_exact[:, :stored_units] = on_real(real, kept, h[:, :stored_units])
    exact_value = from_fixed(next_exact)
    return next_exact, exact_value if surrogate is None else straight_through(surrogate, exact_value)


def undo_step(h_next: Tensor, n: Tensor, update: Tensor, *, buffer: InformationBuffer,
              mask: Optional[Tensor], restored: Optional[Tensor] = None) -> Tensor:
    """The exact inverse of `gated_step`; `restored` (batch, k) int64 gives the stored units."""
    fused = native_steps.gated_unforget(buffer, h_next, n, update, mask=mask, restored=restored)
    if fused is not None:
        return fused
    real = real_rows(mask)
    stored_units = 0 if restored is None else restored.shape[1]
    n_applied, step = _effective(n, update, real, stored_units)
    h = buffer.unforget(h_next - step, n_applied)
    if stored_units:
        h[:, :stored_units] = on_real(real, restored, h_next[:, :stored_units])
    return h


def lstm_gate_grads(grad_h: Tensor, grad_c: Tensor, mask: Optional[Tensor], previous: Tensor,
                    previous_cell: Tensor, tanh_cell: Tensor, g) -> Tuple[Tensor, Tensor, Tensor]:
    """RevLSTMCell.backward_step's elementwise part for one half: (d h, d c, d gates (batch,
    5 units) as [f, i, o, p, g]) before the step, from its gates `g` (_LSTMGates)."""
    fused = native_steps.lstm_backward(grad_h, grad_c, mask, previous, previous_cell, tanh_cell,
                                       g)  # the same values, in one pass
    if fused is not None:
        return fused
    real = real_rows(mask)
    live_h = on_real(real, grad_h, 0.0)
    d_h = on_real(real, grad_h * g.p_q, grad_h)
    grad_c = grad_c + live_h * g.out_gate * (1.0 - tanh_cell * tanh_cell)
    live_c = on_real(real, grad_c, 0.0)
    d_c = on_real(real, grad_c * g.f_q, grad_c)
    d_gates = live_c.new_empty(live_c.shape[0], 5 * live_c.shape[1])
    d_f, d_i, d_o, d_p, d_g = d_gates.split(live_c.shape[1], dim=-1)  # no cat
    torch.mul(live_c * previous_cell, g.f_slope, out=d_f)
    torch.mul(live_c * g.candidate * g.inp, 1.0 - g.inp, out=d_i)
    torch.mul(live_h * tanh_cell * g.out_gate, 1.0 - g.out_gate, out=d_o)
    torch.mul(live_h * previous, g.p_slope, out=d_p)
    torch.mul(live_c * g.inp, 1.0 - g.candidate * g.candidate, out=d_g)
    return d_h, d_c, d_gates


def lstm_kept_grads(half: int, kept: Tensor, before, after, grad_h: Tensor, grad_c: Tensor,
                    mask: Optional[Tensor], max_forget_bits: Optional[int]):
    """`lstm_gate_grads` from a RevLSTMCell.kept_tape entry (the activations [f, i, o, p, g] the
    reversal left, the exact states): (the gates' input h_j, d h, d c, d gates), the values a
    recomputed tape gives, bit for bit (f, p quantised from their kept sigmoids)."""
    c = 2 + half
    other = from_fixed(after[0] if half == 1 else before[1])
    tanh_cell = torch.tanh(from_fixed(after[c]))
    fused = native_steps.lstm_backward_kept(grad_h, grad_c, mask, kept, before[half], before[c],
                                            tanh_cell, max_forget_bits)
    if fused is not None:
        return (other, *fused)
    f, i, o, p, g = kept.split_with_sizes([kept.shape[1] // 5] * 5, -1)
    f_q, _, f_slope = quantized_gate(f, max_forget_bits, with_slope=True)
    p_q, _, p_slope = quantized_gate(p, max_forget_bits, with_slope=True)
    gates = SimpleNamespace(f_q=f_q, p_q=p_q, out_gate=o, inp=i, candidate=g, f_slope=f_slope,
                            p_slope=p_slope)
    return (other, *lstm_gate_grads(grad_h, grad_c, mask, from_fixed(before[half]),
                                    from_fixed(before[c]), tanh_cell, gates))


def reverse_keeping(cell, projected: Tensor, state, buffer: InformationBuffer,
                    mask: Optional[Tensor], *, restored: Optional[Tensor] = None, tape=None):
    """RevLSTMCell.reverse leaving each half's gate activations in its columns of `projected`
    (read by then): backward's tapes (`kept_tapes`) for no memory more, no gates recomputed."""
    exact, pieces = list(state), cell.split_projection(projected)
    with torch.no_grad():
        for half in (1, 0):
            cell.undo_half(half, pieces, from_fixed(exact[1 - half]), exact, buffer, mask,
                           restored=None if half else restored, recording=False, keep=True)
    return tuple(exact)
