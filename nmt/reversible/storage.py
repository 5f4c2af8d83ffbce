"""What the top layer stores at every step for a consumer (e.g. attention) of its states.

A reversible encoder keeps no hidden states, so whatever must be read later is stored explicitly:

- slice k: the first k units of h1, taken out of the buffer. Their update is done lossily and the
  state takes the stored (rounded) value, so reverse restores them exactly from storage.
- proj k: a learned projection Linear(H, k) of the float state; in backward the gradient that
  reaches a stored projection enters h_t when step t is recomputed.

Stored values are kept at 32 or 16 bits (float16; the model itself uses the rounded values so
storage stays exact) and are zero on padded steps.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor

from nmt.reversible.cells import STORAGE_PRECISIONS
from nmt.reversible.fixed_point import straight_through


class StorageKind(enum.Enum):
    SLICE = "slice"
    PROJ = "proj"


@dataclass(frozen=True)
class AttentionStorage:
    """Per-step storage of the top layer: `units` values of kind slice or proj, at `precision` bits."""

    kind: StorageKind
    units: int
    precision: int = 32

    def __post_init__(self):
        if not isinstance(self.kind, StorageKind):
            try:
                object.__setattr__(self, "kind", StorageKind(self.kind))
            except ValueError:
                raise ValueError(f"storage kind {self.kind!r} is not one of slice, proj") from None
        if isinstance(self.units, bool) or not isinstance(self.units, int) or self.units < 1:
            raise ValueError(f"storage units must be a positive integer, got {self.units!r}")
        if self.precision not in STORAGE_PRECISIONS:
            raise ValueError(f"storage precision {self.precision!r} is not one of 32, 16")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.precision == 16 else torch.float32

    def check_fits(self, half_size: int) -> None:
        """Stored units may not exceed the first half of the state (ceil(H/2) units)."""
        if self.units > half_size:
            raise ValueError(f"{self.kind.value} storage of {self.units} units exceeds the half "
                             f"state of {half_size} units")

    def bits_per_step(self) -> int:
        return self.units * self.precision


def rounded_projection(value: Tensor, precision: int) -> Tensor:
    """A projected value as stored: rounded to float16 at 16 bits (gradient straight through)."""
    if precision == 32:
        return value
    return straight_through(value, value.detach().to(torch.float16).to(torch.float32))
