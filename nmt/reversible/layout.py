"""How a ReversibleRNN's state is laid out: float (layers, batch, H) tensors (and (h, c) for
RevLSTM) outside, per-layer halves (h1, h2[, c1, c2]) inside, exact int64 fixed point for the
recurrence. A mixin of `ReversibleRNN` (it reads `cells`, `num_layers`, `state_parts`)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from nmt.reversible.cells import State, Values
from nmt.reversible.fixed_point import to_fixed
from nmt.reversible.plan import InitialState


class StateLayout:
    def exact_state(self, initial_state: Optional[InitialState], batch: int,
                    device=None) -> List[State]:
        """The exact fixed-point state per layer for a float initial state (zeros when None)."""
        return [tuple(to_fixed(part) for part in layer)
                for layer in self.initial_halves(initial_state, batch, device)]

    def initial_halves(self, initial_state: Optional[InitialState], batch: int,
                       device) -> List[Values]:
        """Float halves per layer, (h1, h2[, c1, c2]) each (batch, half); zeros when None."""
        if initial_state is None:
            return [tuple(torch.zeros(batch, size, device=device)
                          for size in self.cells[0].half_sizes * (self.state_parts // 2))
                    for _ in range(self.num_layers)]
        tensors = initial_state if isinstance(initial_state, tuple) else (initial_state,)
        halves = []
        for layer in range(self.num_layers):
            parts = []
            for tensor in tensors:
                parts.extend(self.cells[layer].split(tensor[layer].float()))
            halves.append(tuple(parts))
        return halves

    def join(self, values: List[Values]) -> InitialState:
        """Per-layer float halves -> (layers, batch, H), or (h, c) for RevLSTM."""
        h = torch.stack([torch.cat(layer[:2], dim=-1) for layer in values])
        if self.state_parts == 2:
            return h
        return h, torch.stack([torch.cat(layer[2:], dim=-1) for layer in values])


def stacked_tops(states: Sequence[List[State]]) -> Tensor:
    """The top layer's [h1, h2] in each of `states` (per layer halves) as (batch, C, H): one
    stack when the halves are as wide (step t's halves are then rows 2t and 2t + 1 of it)."""
    halves = [part for state in states for part in state[-1][:2]]
    if halves[0].shape == halves[1].shape:
        stacked = torch.stack(halves, dim=1)  # (batch, 2C, H / 2)
        return stacked.view(stacked.shape[0], len(states), -1)
    return torch.cat([torch.stack(halves[half::2], dim=1) for half in (0, 1)], dim=-1)
