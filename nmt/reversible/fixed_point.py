"""Exact fixed-point arithmetic for reversible recurrences.

Floating point is not invertible, so a reversible state lives in fixed point: an int64 holding
round(h * 2**HIDDEN_RADIX). Gates that multiply the state are quantised to n / 2**FORGET_RADIX
with n an integer, so multiplying by them can be undone exactly with the information buffer.
Gradients pass straight through every rounding (the conversions count as identity in backward).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from nmt.reversible import native_steps

HIDDEN_RADIX = 23  # fractional bits of the fixed-point state
FORGET_RADIX = 10  # forget gates are multiples of 2**-FORGET_RADIX
WORD_BITS = 16  # width of the words the information buffer spills
MAX_FORGET_CHOICES = (1, 2, 3, 5, None)  # bits forgotten per unit per step at most; None = no limit

_HIDDEN_SCALE = float(2**HIDDEN_RADIX)


def check_max_forget_bits(max_forget_bits: Optional[int]) -> None:
    """Raise ValueError unless `max_forget_bits` is one of MAX_FORGET_CHOICES."""
    if isinstance(max_forget_bits, bool) or max_forget_bits not in MAX_FORGET_CHOICES:
        allowed = ", ".join("none" if k is None else str(k) for k in MAX_FORGET_CHOICES)
        raise ValueError(f"max_forget_bits={max_forget_bits!r} is not one of {allowed}")


def min_forget_numerator(max_forget_bits: Optional[int], forget_radix: int = FORGET_RADIX) -> int:
    """Smallest gate numerator n_min = 2**(R - k): at most k bits are lost per step (None: 1)."""
    check_max_forget_bits(max_forget_bits)
    if max_forget_bits is None:
        return 1
    return 2 ** (forget_radix - max_forget_bits)


@functools.lru_cache(maxsize=None)
def _min_numerator(kind: type, max_forget_bits: Optional[int], forget_radix: int) -> int:
    """Validated once per setting (`kind` keeps True apart from 1 in the cache)."""
    return min_forget_numerator(max_forget_bits, forget_radix)


def to_fixed(x: Tensor) -> Tensor:
    """round(x * 2**HIDDEN_RADIX) as int64 (no gradient)."""
    return torch.round(x.detach().double() * _HIDDEN_SCALE).to(torch.int64)


def from_fixed(h: Tensor) -> Tensor:
    """The float32 value of a fixed-point tensor (no gradient). One multiplication, converting as
    it goes (the power-of-two scale is exact, so the result is h's value rounded to float32
    whatever the default dtype; `.to` is then a no-op). On a CPU, in one C pass (the same
    values: native_steps.py)."""
    fused = native_steps.from_fixed(h)
    if fused is not None:
        return fused
    return torch.mul(h, 1.0 / _HIDDEN_SCALE).to(torch.float32)


def scaled_update(value: Tensor) -> Tensor:
    """round(value * 2**HIDDEN_RADIX) as int64, from float32 math so reverse recomputes it exactly."""
    return torch.round(value.detach() * _HIDDEN_SCALE).to(torch.int64)


class _StraightThrough(torch.autograd.Function):
    """Forward returns `exact`; backward hands the whole gradient to `surrogate`."""

    @staticmethod
    def forward(ctx, surrogate: Tensor, exact: Tensor) -> Tensor:
        return exact.detach().clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def straight_through(surrogate: Tensor, exact: Tensor) -> Tensor:
    """A tensor with the values of `exact`, bit for bit, whose gradient flows to `surrogate`."""
    if not surrogate.requires_grad:
        return exact.detach()
    return _StraightThrough.apply(surrogate, exact.to(surrogate.dtype))


def forget_gate(logits: Tensor, max_forget_bits: Optional[int],
                forget_radix: int = FORGET_RADIX, *, with_slope: bool = False,
                out: Optional[Tensor] = None):
    """A state-multiplying gate limited to [2**-k, 1] and quantised to n / 2**R.

    z = (1 - 2**-k) * sigmoid(logits) + 2**-k, n = clamp(round(z * 2**R), n_min, 2**R).
    Returns (z_q, n): z_q has the values n / 2**R (float32) and z's gradient; n is int64.
    with_slope: also dz/dlogits (what a hand-written backward multiplies z_q's gradient by).
    out: where sigmoid(logits) goes (a tape's kept activations; see `quantized_gate`).
    """
    return quantized_gate(torch.sigmoid(logits, out=out), max_forget_bits, forget_radix,
                          with_slope=with_slope)


def quantized_gate(sigmoid: Tensor, max_forget_bits: Optional[int],
                   forget_radix: int = FORGET_RADIX, *, with_slope: bool = False):
    """`forget_gate` from sigmoid(logits): the same values (backward quantises kept sigmoids)."""
    n_min = _min_numerator(type(max_forget_bits), max_forget_bits, forget_radix)
    scale = float(2**forget_radix)
    floor = n_min / scale
    fused = native_steps.quantize(sigmoid, n_min=n_min, forget_radix=forget_radix,
                                  with_slope=with_slope)  # the same values in one C pass
    if fused is not None:
        return fused if with_slope else fused[:2]
    z = (1.0 - floor) * sigmoid + floor
    numerator = torch.round(z.detach() * scale).clamp_(n_min, 2**forget_radix)  # whole floats
    n = numerator.to(torch.int64)
    z_q = straight_through(z, numerator * (1.0 / scale))  # exact: the scale is a power of two
    if with_slope:
        return z_q, n, (1.0 - floor) * sigmoid * (1.0 - sigmoid)
    return z_q, n
