"""A standalone driver of the fused Triton half-steps (`triton_kernels.py`) for RevGRU and RevLSTM.

Per half-step the matrix products stay in torch (addmm, as `own_product` does them) and so do the
transcendental activations (sigmoid, tanh: called on the very same views as the cells' tensor
path, so their values match bit for bit); everything else -- gate quantisation, the fixed-point
update, the buffer's heads and words, masks, stored units -- is one kernel launch per half-step
and direction (two for RevLSTM's halves: c, then h, which reads tanh(c')).

With `activate=True` the activations move into the kernels too (sigmoid and tanh by one fixed
formula: torch's CUDA formula with libdevice on a GPU, numpy's exp under the interpreter), and the
reset product r * h_j becomes one small kernel: fewer launches, but the integers equal the tensor
path's only where the kernels' sigmoid and tanh equal torch's (to be shown on a GPU; never on the
CPU, where torch's own sigmoid depends on an element's position in a vectorised loop).

The driver mirrors `RevGRUCell` / `RevLSTMCell`'s `step`, `reverse` and `backward_step`, with a
`WordStack` in place of the InformationBuffer; it is what the tests compare with the tensor path,
and what a run loop would call (see `run_fused_steps` / `reverse_fused_steps`). Float views of the
state come back from the kernels, so a loop that keeps them never calls `from_fixed`.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from nmt.reversible.cells import RevGRUCell, RevLSTMCell, ReversibleCell, float32_math
from nmt.reversible.fixed_point import from_fixed, min_forget_numerator
from nmt.reversible.triton_kernels import (
    MODE_GRU, MODE_PRODUCT, WordStack, activation, gated_forward, gated_reverse,
    gru_backward_gates, gru_backward_reset, lstm_backward,
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

def _gru_gates(cell: RevGRUCell, half: int, pieces, other: Tensor, activate: bool):
    """sigmoid(forget logits), sigmoid(reset logits), tanh(candidate) as `half_update` has them;
    with `activate`, the forget and reset logits and the candidate's pre-activation."""
    own = cell.half_sizes[half]
    logits = cell.own_product(cell.gates[half], pieces[2 * half], other)
    forget, reset = logits.split([own, logits.shape[1] - own], dim=-1)
    if activate:
        reset_other = activation(reset, times=other)
        return forget, reset, cell.own_product(cell.candidates[half], pieces[2 * half + 1],
                                               reset_other)
    s = torch.sigmoid(forget)
    reset = torch.sigmoid(reset)
    cand = torch.tanh(cell.own_product(cell.candidates[half], pieces[2 * half + 1],
                                       reset * other))
    return s, reset, cand


def _gru_forward_half(cell: RevGRUCell, half: int, pieces, exact: list, floats: list,
                      stack: WordStack, mask: Optional[Tensor], *, stored: int, precision: int,
                      activate: bool, tag: str) -> None:
    """Half `half` of `RevGRUCell.step`, in place on `exact` and `floats`."""
    s, _, cand = _gru_gates(cell, half, pieces, floats[1 - half], activate)
    exact[half], floats[half] = gated_forward(
        exact[half], s, cand, stack, mode=MODE_GRU, mask=mask, n_min=_n_min(cell), stored=stored,
        precision=precision, activate=activate, tag=tag)


def _gru_reverse_half(cell: RevGRUCell, half: int, pieces, exact: list, floats: list,
                      stack: WordStack, mask: Optional[Tensor], *, restored: Optional[Tensor],
                      tape: Optional[list], activate: bool) -> None:
    """Undo half `half` of `RevGRUCell.step`; with a `tape`, append what `gru_backward` needs."""
    other = floats[1 - half]
    s, reset, cand = _gru_gates(cell, half, pieces, other, activate)
    exact[half], floats[half] = gated_reverse(
        exact[half], s, cand, stack, mode=MODE_GRU, mask=mask, n_min=_n_min(cell),
        restored=restored, activate=activate)
    if tape is not None:
        tape.append((half, other, floats[half], s, reset, cand))


def _d_projected(cell: ReversibleCell, like: Tensor) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """d loss / d projected (batch, P), empty, and its pieces per Linear (views: the backward
    kernels write into them, so no concatenation follows)."""
    width = sum(layer.out_features for layer in cell.input_layers())
    d_projected = like.new_empty(like.shape[0], width)
    return d_projected, cell.split_projection(d_projected)


def _gru_backward_half(cell: RevGRUCell, entry: tuple, d: list, inputs: list, pieces,
                       mask: Optional[Tensor], activate: bool) -> None:
    """Backpropagate one half of a RevGRU step (a tape entry of `reverse`), in place on `d`
    (the state gradients), `inputs` and `pieces` (d projected)."""
    half, other, previous, s, reset, cand = entry
    own = s.shape[1]
    d_logits = pieces[2 * half]
    d[half], d_cand = gru_backward_gates(d[half], s, cand, previous, d_logits[:, :own],
                                         mask=mask, n_min=_n_min(cell),
                                         d_cand=pieces[2 * half + 1], activate=activate)
    d_reset_other = d_cand.mm(cell.hidden_weight(cell.candidates[half]))
    d_other, reset_other = gru_backward_reset(d_reset_other, other, reset, d[1 - half],
                                              d_logits[:, own:], activate=activate)
    d[1 - half] = torch.addmm(d_other, d_logits, cell.hidden_weight(cell.gates[half]))
    inputs[2 * half], inputs[2 * half + 1] = other, reset_other


# -- RevLSTM --------------------------------------------------------------------------------------

def _lstm_gates(cell: RevLSTMCell, half: int, pieces, other: Tensor, activate: bool):
    """sigmoid f, i, o, p and tanh g, as `half_gates` has them (`activate`: their logits)."""
    gates = cell.own_product(cell.gates[half], pieces[half], other)
    forget, inp, out, keep, cand = gates.split(cell.half_sizes[half], -1)
    if activate:
        return forget, inp, out, keep, cand
    return (torch.sigmoid(forget), torch.sigmoid(inp), torch.sigmoid(out), torch.sigmoid(keep),
            torch.tanh(cand))


def _lstm_forward_half(cell: RevLSTMCell, half: int, pieces, exact: list, floats: list,
                       stack: WordStack, mask: Optional[Tensor], *, stored: int, precision: int,
                       activate: bool, tag: str) -> None:
    """Half `half` of `RevLSTMCell.step` (c, then h, which reads tanh(c')), in place."""
    sf, si, so, sp, g = _lstm_gates(cell, half, pieces, floats[1 - half], activate)
    c = 2 + half
    exact[c], floats[c] = gated_forward(exact[c], sf, g, stack, mode=MODE_PRODUCT, a=si,
                                        mask=mask, n_min=_n_min(cell), activate=activate, tag=tag)
    exact[half], floats[half] = gated_forward(
        exact[half], sp, floats[c] if activate else torch.tanh(floats[c]), stack,
        mode=MODE_PRODUCT, a=so, mask=mask, n_min=_n_min(cell), stored=stored,
        precision=precision, activate=activate, tag=tag)


def _lstm_reverse_half(cell: RevLSTMCell, half: int, pieces, exact: list, floats: list,
                       stack: WordStack, mask: Optional[Tensor], *, restored: Optional[Tensor],
                       tape: Optional[list], activate: bool) -> None:
    """Undo half `half` of `RevLSTMCell.step` (h, then c); with a `tape`, append what
    `lstm_backward_step` needs."""
    c = 2 + half
    other = floats[1 - half]
    gates = _lstm_gates(cell, half, pieces, other, activate)
    sf, si, so, sp, g = gates
    tanh_cell = floats[c] if activate else torch.tanh(floats[c])  # activate: c' itself
    exact[half], floats[half] = gated_reverse(
        exact[half], sp, tanh_cell, stack, mode=MODE_PRODUCT, a=so, mask=mask,
        n_min=_n_min(cell), restored=restored, activate=activate)
    exact[c], floats[c] = gated_reverse(exact[c], sf, g, stack, mode=MODE_PRODUCT, a=si,
                                        mask=mask, n_min=_n_min(cell), activate=activate)
    if tape is not None:
        tape.append((half, other, floats[half], floats[c], tanh_cell, gates))


def _lstm_backward_half(cell: RevLSTMCell, entry: tuple, d: list, inputs: list, pieces,
                        mask: Optional[Tensor], activate: bool) -> None:
    """Backpropagate one half of a RevLSTM step (a tape entry of `reverse`), in place."""
    half, other, previous, previous_cell, tanh_cell, gates = entry
    c = 2 + half
    d[half], d[c], d_gates = lstm_backward(
        d[half], d[c], gates, tanh_cell, previous, previous_cell, mask=mask,
        n_min=_n_min(cell), d_gates=pieces[half], activate=activate)
    d[1 - half] = torch.addmm(d[1 - half], d_gates, cell.hidden_weight(cell.gates[half]))
    inputs[half] = other


# -- dispatch and multi-step drivers ---------------------------------------------------------------

def _product(cell: ReversibleCell, name: str) -> Callable:
    """The fused-products kernel driver `name` of the cell's kind (triton_gru_products.py /
    triton_lstm_products.py: the recurrent products inside the kernels)."""
    if isinstance(cell, RevGRUCell):
        from nmt.reversible import triton_gru_products as module
        return getattr(module, "gru_" + name)
    from nmt.reversible import triton_lstm_products as module
    return getattr(module, "lstm_" + name)


def _run_halves(cell: ReversibleCell, projected: Tensor, state: State, values: Optional[State],
                order: Tuple[int, int], run_half) -> Tuple[State, State]:
    """run_half(half, pieces, exact, floats) for each half in `order`, on copies of the state
    and its float views; returns both."""
    exact, floats = list(state), _values(state, values)
    pieces = cell.split_projection(projected)
    with torch.no_grad(), float32_math(projected.device):
        for half in order:
            run_half(half, pieces, exact, floats)
    return tuple(exact), tuple(floats)


def step(cell: ReversibleCell, projected: Tensor, state: State, stack: WordStack,
         mask: Optional[Tensor], *, values: Optional[State] = None, stored_units: int = 0,
         precision: int = 32, activate: bool = False, products: bool = False, tag: str = ""
         ) -> Tuple[State, State]:
    """The cell's `step` (no gradient) on the fused path: returns (state, float views).
    `products`: the kernels compute the recurrent products too (one launch per half)."""
    if products:
        return _run_halves(cell, projected, state, values, (0, 1), lambda half, *parts: _product(
            cell, "forward_half")(cell, half, *parts, stack, mask, n_min=_n_min(cell),
                                  stored=stored_units if half == 0 else 0, precision=precision,
                                  tag=tag))
    forward_half = _gru_forward_half if isinstance(cell, RevGRUCell) else _lstm_forward_half
    return _run_halves(cell, projected, state, values, (0, 1), lambda half, *parts: forward_half(
        cell, half, *parts, stack, mask, stored=stored_units if half == 0 else 0,
        precision=precision, activate=activate, tag=tag))


def reverse(cell: ReversibleCell, projected: Tensor, state: State, stack: WordStack,
            mask: Optional[Tensor], *, values: Optional[State] = None,
            restored: Optional[Tensor] = None, tape: Optional[list] = None,
            activate: bool = False, products: bool = False) -> Tuple[State, State]:
    """The cell's `reverse` on the fused path: returns (previous state, its float views); with a
    `tape`, appends what `backward_step` needs."""
    if products:
        return _run_halves(cell, projected, state, values, (1, 0), lambda half, *parts: _product(
            cell, "reverse_half")(cell, half, *parts, stack, mask, n_min=_n_min(cell),
                                  restored=restored if half == 0 else None, tape=tape))
    reverse_half = _gru_reverse_half if isinstance(cell, RevGRUCell) else _lstm_reverse_half
    return _run_halves(cell, projected, state, values, (1, 0), lambda half, *parts: reverse_half(
        cell, half, *parts, stack, mask, restored=restored if half == 0 else None, tape=tape,
        activate=activate))


def recompute_tape(cell: ReversibleCell, projected: Tensor, before: State, after: State, *,
                   activate: bool = False, products: bool = False) -> list:
    """The tape `reverse(..., tape=[], activate=activate)` records for the step from `before` to
    `after` (exact states), recomputed without the stack: the same gate functions of the same
    float views, so the same tensors bit for bit (as `ReversibleCell.recompute_tape`)."""
    pieces = cell.split_projection(projected)
    gru = isinstance(cell, RevGRUCell)
    tape = []
    with torch.no_grad(), float32_math(projected.device):
        for half in (1, 0):  # half 2 is undone first: its gates read the new h1
            other = from_fixed(after[0] if half == 1 else before[1])
            previous = from_fixed(before[half])
            if products and gru:
                tape.append(_product(cell, "tape_entry")(cell, half, pieces, other, previous))
            elif products:
                tape.append(_product(cell, "tape_entry")(
                    cell, half, pieces, other, previous, from_fixed(before[2 + half]),
                    from_fixed(after[2 + half])))
            elif gru:
                tape.append((half, other, previous,
                             *_gru_gates(cell, half, pieces, other, activate)))
            else:
                c = 2 + half
                cell_after = from_fixed(after[c])  # activate: the kernels take c' itself
                tape.append((half, other, previous, from_fixed(before[c]),
                             cell_after if activate else torch.tanh(cell_after),
                             _lstm_gates(cell, half, pieces, other, activate)))
    return tape


def backward_step(cell: ReversibleCell, tape: list, grads: Sequence[Tensor],
                  mask: Optional[Tensor], *, activate: bool = False, products: bool = False,
                  extra: Optional[Tensor] = None) -> Tuple[List[Tensor], Tensor, List[Tensor]]:
    """The cell's `backward_step` on the fused path (same returns: state gradients, d projected,
    the inputs of the recurrent products); `activate` as the tape's `reverse` had it. `extra`
    (batch, H; products only): added to the h gradients by the first entry's launch, which
    saves the two torch additions per step."""
    if extra is not None and not products:
        raise ValueError("backward_step: extra needs the fused products")
    gru = isinstance(cell, RevGRUCell)
    backward_half = _gru_backward_half if gru else _lstm_backward_half
    d = list(grads)
    inputs: List[Optional[Tensor]] = [None] * (4 if gru else 2)
    d_projected, pieces = _d_projected(cell, d[0])
    with torch.no_grad(), float32_math(d[0].device):
        for entry in tape:
            if products:
                _product(cell, "backward_half")(cell, entry, d, inputs, pieces, mask,
                                                n_min=_n_min(cell), extra=extra)
                extra = None  # the first entry's launch took it in
            else:
                backward_half(cell, entry, d, inputs, pieces, mask, activate)
    return d, d_projected, inputs


def _call(phase: Optional[Callable], name: str, thunk: Callable):
    """thunk(), or phase(name, thunk) when a caller measures the phases (see launch_count)."""
    return thunk() if phase is None else phase(name, thunk)


def run_fused_steps(cell: ReversibleCell, projected: Tensor, state: State, stack: WordStack,
                    masks: Optional[Tensor] = None, *, values: Optional[State] = None,
                    stored_units: int = 0, precision: int = 32, activate: bool = False,
                    phase: Optional[Callable] = None) -> Tuple[State, State, List[Tensor]]:
    """Forward over `projected` (time, batch, P) with masks (time, batch). Returns (final state,
    its float views, the stored units of h1 at each step (before it), for `restored`)."""
    kept = []
    for t in range(projected.shape[0]):
        if stored_units:
            kept.append(state[0][:, :stored_units])
        state, values = _call(phase, "forward", lambda: step(
            cell, projected[t], state, stack, None if masks is None else masks[t], values=values,
            stored_units=stored_units, precision=precision, activate=activate))
    return state, values, kept


def reverse_fused_steps(cell: ReversibleCell, projected: Tensor, state: State, stack: WordStack,
                        masks: Optional[Tensor] = None, *, kept: Sequence[Tensor] = (),
                        values: Optional[State] = None, grads: Optional[Sequence[Tensor]] = None,
                        activate: bool = False, phase: Optional[Callable] = None
                        ) -> Tuple[State, State, Optional[List[Tensor]]]:
    """Undo `run_fused_steps`, last step first (`kept` is what it returned). With `grads` (d loss /
    d the final float views), each step is backpropagated right after it is reversed, from its
    tape. Returns (initial state, its float views, d loss / d them or None)."""
    for t in reversed(range(projected.shape[0])):
        mask = None if masks is None else masks[t]
        tape = None if grads is None else []
        state, values = _call(phase, "reverse", lambda: reverse(
            cell, projected[t], state, stack, mask, values=values,
            restored=kept[t] if kept else None, tape=tape, activate=activate))
        if grads is not None:
            grads, _, _ = _call(phase, "backward", lambda: backward_step(
                cell, tape, grads, mask, activate=activate))
    return state, values, grads
