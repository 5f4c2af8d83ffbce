"""A standalone driver of the fused Triton half-steps (`triton_kernels.py`) for RevGRU and RevLSTM.

Per half-step the matrix products stay in torch (addmm, as `own_product` does them) and so do the
transcendental activations (sigmoid, tanh: called on the very same views as the cells' tensor
path, so their values match bit for bit); everything else -- gate quantisation, the fixed-point
update, the buffer's heads and words, masks, stored units -- is one kernel launch per half-step
and direction (two for RevLSTM's halves: c, then h, which reads tanh(c')).

The driver mirrors `RevGRUCell` / `RevLSTMCell`'s `step`, `reverse` and `backward_step`, with a
`WordStack` in place of the InformationBuffer; it is what the tests compare with the tensor path,
and what a run loop would call (see `run_fused_steps` / `reverse_fused_steps`). Float views of the
state come back from the kernels, so a loop that keeps them never calls `from_fixed`.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from nmt.reversible.cells import RevGRUCell, RevLSTMCell, ReversibleCell
from nmt.reversible.fixed_point import from_fixed, min_forget_numerator
from nmt.reversible.triton_kernels import (
    MODE_GRU, MODE_PRODUCT, WordStack, gated_forward, gated_reverse, gru_backward_gates,
    gru_backward_reset, lstm_backward,
)

State = Tuple[Tensor, ...]


def word_stack_for(cell: ReversibleCell, batch: int, *, device=None, capacity: int = 0,
                   count: bool = True) -> WordStack:
    """A WordStack shaped like the cell's InformationBuffer (batch, ceil(H / 2))."""
    return WordStack((batch, cell.half_sizes[0]), device=device, capacity=capacity, count=count)


def _n_min(cell: ReversibleCell) -> int:
    return min_forget_numerator(cell.max_forget_bits)


def _values(state: State, values: Optional[State]) -> List[Tensor]:
    return [from_fixed(part) for part in state] if values is None else list(values)


# -- RevGRU ---------------------------------------------------------------------------------------

def _gru_gates(cell: RevGRUCell, half: int, pieces, other: Tensor):
    """sigmoid(forget logits), sigmoid(reset logits), tanh(candidate) as `half_update` has them."""
    own = cell.half_sizes[half]
    logits = cell.own_product(cell.gates[half], pieces[2 * half], other)
    forget, reset = logits.split([own, logits.shape[1] - own], dim=-1)
    s = torch.sigmoid(forget)
    reset = torch.sigmoid(reset)
    cand = torch.tanh(cell.own_product(cell.candidates[half], pieces[2 * half + 1],
                                       reset * other))
    return s, reset, cand


def gru_step(cell: RevGRUCell, projected: Tensor, state: State, stack: WordStack,
             mask: Optional[Tensor], *, values: Optional[State] = None, stored_units: int = 0,
             precision: int = 32) -> Tuple[State, State]:
    """`RevGRUCell.step` (no gradient) on the fused path: returns (state, float views)."""
    exact, floats = list(state), _values(state, values)
    pieces = cell.split_projection(projected)
    with torch.no_grad():
        for half in (0, 1):
            s, _, cand = _gru_gates(cell, half, pieces, floats[1 - half])
            exact[half], floats[half] = gated_forward(
                exact[half], s, cand, stack, mode=MODE_GRU, mask=mask, n_min=_n_min(cell),
                stored=stored_units if half == 0 else 0, precision=precision)
    return tuple(exact), tuple(floats)


def gru_reverse(cell: RevGRUCell, projected: Tensor, state: State, stack: WordStack,
                mask: Optional[Tensor], *, values: Optional[State] = None,
                restored: Optional[Tensor] = None, tape: Optional[list] = None
                ) -> Tuple[State, State]:
    """`RevGRUCell.reverse` on the fused path: returns (previous state, its float views); with a
    `tape`, appends what `gru_backward` needs."""
    exact, floats = list(state), _values(state, values)
    pieces = cell.split_projection(projected)
    with torch.no_grad():
        for half in (1, 0):
            other = floats[1 - half]
            s, reset, cand = _gru_gates(cell, half, pieces, other)
            exact[half], floats[half] = gated_reverse(
                exact[half], s, cand, stack, mode=MODE_GRU, mask=mask, n_min=_n_min(cell),
                restored=restored if half == 0 else None)
            if tape is not None:
                tape.append((half, other, floats[half], s, reset, cand))
    return tuple(exact), tuple(floats)


def gru_backward(cell: RevGRUCell, tape: list, grads: Sequence[Tensor], mask: Optional[Tensor]
                 ) -> Tuple[List[Tensor], Tensor, List[Tensor]]:
    """`RevGRUCell.backward_step` on the fused path (same returns)."""
    d = list(grads)
    pieces: List[Optional[Tensor]] = [None] * 4
    inputs: List[Optional[Tensor]] = [None] * 4
    with torch.no_grad():
        for half, other, previous, s, reset, cand in tape:
            own = s.shape[1]
            d_logits = s.new_empty(s.shape[0], own + reset.shape[1])
            d[half], d_cand = gru_backward_gates(d[half], s, cand, previous, d_logits[:, :own],
                                                 mask=mask, n_min=_n_min(cell))
            d_reset_other = d_cand.mm(cell.hidden_weight(cell.candidates[half]))
            d_other, reset_other = gru_backward_reset(d_reset_other, other, reset, d[1 - half],
                                                      d_logits[:, own:])
            d[1 - half] = torch.addmm(d_other, d_logits, cell.hidden_weight(cell.gates[half]))
            pieces[2 * half], pieces[2 * half + 1] = d_logits, d_cand
            inputs[2 * half], inputs[2 * half + 1] = other, reset_other
    return d, torch.cat(pieces, dim=-1), inputs


# -- RevLSTM --------------------------------------------------------------------------------------

def _lstm_gates(cell: RevLSTMCell, half: int, pieces, other: Tensor):
    """sigmoid f, i, o, p and tanh g, as `half_gates` has them."""
    gates = cell.own_product(cell.gates[half], pieces[half], other)
    forget, inp, out, keep, cand = gates.split(cell.half_sizes[half], -1)
    return (torch.sigmoid(forget), torch.sigmoid(inp), torch.sigmoid(out), torch.sigmoid(keep),
            torch.tanh(cand))


def lstm_step(cell: RevLSTMCell, projected: Tensor, state: State, stack: WordStack,
              mask: Optional[Tensor], *, values: Optional[State] = None, stored_units: int = 0,
              precision: int = 32) -> Tuple[State, State]:
    """`RevLSTMCell.step` (no gradient) on the fused path: returns (state, float views)."""
    exact, floats = list(state), _values(state, values)
    pieces = cell.split_projection(projected)
    with torch.no_grad():
        for half in (0, 1):
            sf, si, so, sp, g = _lstm_gates(cell, half, pieces, floats[1 - half])
            c = 2 + half
            exact[c], floats[c] = gated_forward(exact[c], sf, g, stack, mode=MODE_PRODUCT, a=si,
                                                mask=mask, n_min=_n_min(cell))
            exact[half], floats[half] = gated_forward(
                exact[half], sp, torch.tanh(floats[c]), stack, mode=MODE_PRODUCT, a=so,
                mask=mask, n_min=_n_min(cell), stored=stored_units if half == 0 else 0,
                precision=precision)
    return tuple(exact), tuple(floats)


def lstm_reverse(cell: RevLSTMCell, projected: Tensor, state: State, stack: WordStack,
                 mask: Optional[Tensor], *, values: Optional[State] = None,
                 restored: Optional[Tensor] = None, tape: Optional[list] = None
                 ) -> Tuple[State, State]:
    """`RevLSTMCell.reverse` on the fused path: returns (previous state, its float views)."""
    exact, floats = list(state), _values(state, values)
    pieces = cell.split_projection(projected)
    with torch.no_grad():
        for half in (1, 0):
            c = 2 + half
            other = floats[1 - half]
            gates = _lstm_gates(cell, half, pieces, other)
            sf, si, so, sp, g = gates
            tanh_cell = torch.tanh(floats[c])
            exact[half], floats[half] = gated_reverse(
                exact[half], sp, tanh_cell, stack, mode=MODE_PRODUCT, a=so, mask=mask,
                n_min=_n_min(cell), restored=restored if half == 0 else None)
            exact[c], floats[c] = gated_reverse(exact[c], sf, g, stack, mode=MODE_PRODUCT, a=si,
                                                mask=mask, n_min=_n_min(cell))
            if tape is not None:
                tape.append((half, other, floats[half], floats[c], tanh_cell, gates))
    return tuple(exact), tuple(floats)


def lstm_backward_step(cell: RevLSTMCell, tape: list, grads: Sequence[Tensor],
                       mask: Optional[Tensor]) -> Tuple[List[Tensor], Tensor, List[Tensor]]:
    """`RevLSTMCell.backward_step` on the fused path (same returns)."""
    d = list(grads)
    pieces: List[Optional[Tensor]] = [None] * 2
    inputs: List[Optional[Tensor]] = [None] * 2
    with torch.no_grad():
        for half, other, previous, previous_cell, tanh_cell, gates in tape:
            c = 2 + half
            d[half], d[c], d_gates = lstm_backward(d[half], d[c], gates, tanh_cell, previous,
                                                   previous_cell, mask=mask, n_min=_n_min(cell))
            d[1 - half] = torch.addmm(d[1 - half], d_gates, cell.hidden_weight(cell.gates[half]))
            pieces[half], inputs[half] = d_gates, other
    return d, torch.cat(pieces, dim=-1), inputs


# -- dispatch and multi-step drivers ---------------------------------------------------------------

def step(cell, projected, state, stack, mask, **kwargs):
    return (gru_step if isinstance(cell, RevGRUCell) else lstm_step)(
        cell, projected, state, stack, mask, **kwargs)


def reverse(cell, projected, state, stack, mask, **kwargs):
    return (gru_reverse if isinstance(cell, RevGRUCell) else lstm_reverse)(
        cell, projected, state, stack, mask, **kwargs)


def backward_step(cell, tape, grads, mask):
    return (gru_backward if isinstance(cell, RevGRUCell) else lstm_backward_step)(
        cell, tape, grads, mask)


def run_fused_steps(cell: ReversibleCell, projected: Tensor, state: State, stack: WordStack,
                    masks: Optional[Tensor] = None, *, stored_units: int = 0,
                    precision: int = 32) -> Tuple[State, State, List[Tensor]]:
    """Forward over `projected` (time, batch, P) with masks (time, batch) bool. Returns (final
    state, its float views, the stored units of h1 at each step (before it), for `restored`)."""
    values = None
    kept = []
    for t in range(projected.shape[0]):
        if stored_units:
            kept.append(state[0][:, :stored_units])
        state, values = step(cell, projected[t], state, stack,
                             None if masks is None else masks[t], values=values,
                             stored_units=stored_units, precision=precision)
    return state, values, kept


def reverse_fused_steps(cell: ReversibleCell, projected: Tensor, state: State, stack: WordStack,
                        masks: Optional[Tensor] = None, *, kept: Sequence[Tensor] = (),
                        values: Optional[State] = None) -> Tuple[State, State]:
    """Undo `run_fused_steps`, last step first; `kept` is what it returned."""
    for t in reversed(range(projected.shape[0])):
        state, values = reverse(cell, projected[t], state, stack,
                                None if masks is None else masks[t], values=values,
                                restored=kept[t] if kept else None)
    return state, values
