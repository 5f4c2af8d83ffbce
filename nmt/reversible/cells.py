"""RevGRU and RevLSTM cells (MacKay et al. 2018): exact fixed-point steps that can be undone.

The hidden state is split in halves h1, h2 (and c1, c2 for the LSTM), each updated from the other;
the second half reads the *new* first half. Every state-multiplying gate is quantised to n / 2**R
and applied through the information buffer, and every additive update is rounded from float32 math
that `reverse` recomputes bit for bit (one gate function serves both directions).

Every gate reads [x, h_j] through one Linear; its x columns do not depend on the recurrence, so
`project_input` computes them (biases included) for many steps in one matrix product and the steps
add only the h_j part. Forward, reverse and the gradient re-run all take the same projected values,
which keeps them bit-identical.

A state is a tuple of int64 fixed-point tensors, (h1, h2) or (h1, h2, c1, c2), each (batch, half)
with halves of ceil(H/2) and floor(H/2) units. Beside the exact path, `step` carries float32 views
of the state with gradients (straight through the rounding) for the sequence runner.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nmt.reversible import native_steps
from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.fixed_point import check_max_forget_bits, forget_gate, from_fixed
from nmt.reversible.gated import (  # noqa: F401 (round_to_storage, STORAGE_PRECISIONS: re-exported)
    STORAGE_PRECISIONS, on_real, real_rows, float32_math, gated_step, lstm_gate_grads,
    lstm_kept_grads, reverse_keeping, round_to_storage, undo_step,
)

State = Tuple[Tensor, ...]  # int64 fixed-point halves, each (batch, half)
Values = Tuple[Tensor, ...]  # float32 views of the same halves, possibly with gradients

class ReversibleCell(nn.Module):
    """Shared shape bookkeeping of the reversible cells.

    Args:
        input_size: features of x (batch, input_size).
        hidden_size: H >= 2, split into halves of ceil(H/2) and floor(H/2) units.
        max_forget_bits: k in MAX_FORGET_CHOICES: at most k bits forgotten per unit per step.
    """

    state_parts = 2  # number of int64 halves in a state

    def __init__(self, input_size: int, hidden_size: int, *, max_forget_bits: Optional[int] = 3):
        super().__init__()
        check_max_forget_bits(max_forget_bits)
        if input_size < 1:
            raise ValueError(f"input_size must be positive, got {input_size}")
        if hidden_size < 2:
            raise ValueError(f"hidden_size must be at least 2 (two halves), got {hidden_size}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.max_forget_bits = max_forget_bits
        self.half_sizes = ((hidden_size + 1) // 2, hidden_size // 2)

    def input_layers(self) -> List[nn.Linear]:
        """The Linears over [x, h_j], in the order of `project_input`'s output columns."""
        raise NotImplementedError

    def project_input(self, x: Tensor, stacked: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        """x (..., input) -> the x share of every gate pre-activation, biases included (..., P):
        one product for any number of steps (stacked: `stacked_input()`, if made already)."""
        with float32_math(x.device):
            weight, bias = self.stacked_input() if stacked is None else stacked  # (P, input), (P,)
            flat = x.float().reshape(-1, x.shape[-1])  # one 2-D product, whatever x's layout
            return F.linear(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])

    def split_projection(self, projected: Tensor) -> Tuple[Tensor, ...]:
        """(batch, P) -> one piece per Linear of `input_layers`."""
        return projected.split_with_sizes([layer.out_features for layer in self.input_layers()],
                                          dim=-1)  # (split_with_sizes: no Python wrapper)

    def own_product(self, layer: nn.Linear, projected: Tensor, other: Tensor) -> Tensor:
        """Pre-activation of `layer`: its projected x share plus W_h @ other (one fused product)."""
        return torch.addmm(projected, other, self.hidden_weight(layer).t())

    def hidden_weight(self, layer: nn.Linear) -> Tensor:
        """W_h: the columns of `layer` that multiply the other half of the state."""
        return layer.weight[:, self.input_size:]

    def input_weight(self) -> Tensor:
        """The x columns of every Linear of `input_layers`, stacked: (P, input_size)."""
        return torch.cat([layer.weight[:, : self.input_size] for layer in self.input_layers()])

    def stacked_input(self) -> Tuple[Tensor, Tensor]:
        """`input_weight()` and the biases stacked alike: what `project_input` multiplies by."""
        return self.input_weight(), torch.cat([layer.bias for layer in self.input_layers()])

    def forward(self, x: Tensor, state: State, buffer: InformationBuffer, mask: Optional[Tensor],
                *, stored_units: int = 0, precision: int = 32, tag: str = "") -> State:
        """One exact step (no gradient). x: (batch, input); mask: (batch,) bool, True = real step."""
        with torch.no_grad():
            values = tuple(from_fixed(part) for part in state)
            new_state, _ = self.step(self.project_input(x), state, values, buffer, mask,
                                     stored_units=stored_units, precision=precision, tag=tag)
        return new_state

    def step(self, projected: Tensor, state: State, values: Values,
             buffer: Optional[InformationBuffer], mask: Optional[Tensor], *,
             next_state: Optional[State] = None, stored_units: int = 0, precision: int = 32,
             tag: str = "") -> Tuple[State, Values]:
        """One step on the exact state and its float views; returns (state, values).
        projected: `project_input(x)` (batch, P). The first half, then the second (reading the
        new first half)."""
        exact, floats = list(state), list(values)
        pieces = self.split_projection(projected)
        for half in (0, 1):
            self.update_half(half, pieces, exact, floats, buffer=buffer, mask=mask,
                             next_state=next_state, stored_units=stored_units if half == 0 else 0,
                             precision=precision, tag=tag)
        return tuple(exact), tuple(floats)

    def update_half(self, half: int, pieces: Tuple[Tensor, ...], exact: list, floats: list, *,
                    buffer, mask, next_state, stored_units: int, precision: int, tag: str) -> None:
        """Update one half of `exact` and `floats` in place (see `gated_step`)."""
        raise NotImplementedError

    def reverse(self, projected: Tensor, state: State, buffer: InformationBuffer,
                mask: Optional[Tensor], *, restored: Optional[Tensor] = None,
                tape: Optional[list] = None) -> State:
        """Undo one `step` exactly, given the same `projected` input; `restored` (batch, k) int64
        are the stored units of h1. With a `tape` (list), also appends what `backward_step` needs
        (the gate values reversal computes anyway), in the order backward uses them."""
        exact = list(state)
        pieces = self.split_projection(projected)
        restored_h2 = None  # with a tape: the float h2 it recorded, which h1's gates then read
        with torch.no_grad():
            for half in (1, 0):
                other = restored_h2 if restored_h2 is not None else from_fixed(exact[1 - half])
                entry = self.undo_half(half, pieces, other, exact, buffer, mask,
                                       restored=restored if half == 0 else None,
                                       recording=tape is not None)
                if tape is not None:
                    tape.append(entry)
                    restored_h2 = entry[2]  # the restored float h_i
        return tuple(exact)

    def keeping(self, buffer):
        """A reversal (as `cell_reverse`) that leaves backward its tapes on `buffer`, or None."""
        return None

    def recompute_tape(self, projected: Tensor, before: State, after: State) -> list:
        """The tape `reverse` records for the step from `before` to `after` (exact states),
        recomputed from them without the buffer: the same gate functions of the same values, so
        the same tensors bit for bit. Lets backward hold one step's tape instead of a chunk's."""
        pieces = self.split_projection(projected)
        with torch.no_grad():
            # half 2 is undone first, its gates reading the new h1; half 1's read the old h2
            return [self.tape_entry(half, pieces, from_fixed(after[0] if half == 1 else before[1]),
                                    before, after) for half in (1, 0)]

    def tape_entry(self, half: int, pieces: Tuple[Tensor, ...], other: Tensor, before: State,
                   after: State) -> tuple:
        """One half's entry of `recompute_tape` (what `undo_half` returns when recording)."""
        raise NotImplementedError

    def undo_half(self, half: int, pieces: Tuple[Tensor, ...], other: Tensor, exact: list,
                  buffer: InformationBuffer, mask: Optional[Tensor], *,
                  restored: Optional[Tensor], recording: bool) -> Optional[tuple]:
        """Undo the update of one half in `exact` (in place), its gates read from `other`;
        returns the tape entry (half, other, restored float h_i, ...) when recording."""
        raise NotImplementedError

    def backward_step(self, tape: list, grads: List[Tensor], mask: Optional[Tensor]
                      ) -> Tuple[List[Tensor], Tensor, List[Tensor]]:
        """The gradient of one `step`, by hand, from the `tape` its reversal recorded.

        grads: d loss / d each float half after the step. Returns (the same before the step,
        d loss / d projected (batch, P), the inputs W_h multiplied per Linear of `input_layers`,
        whose weight gradient is d_projected_piece^T @ input)."""
        raise NotImplementedError

    def initial_state(self, batch: int, device=None) -> State:
        """The all-zero state."""
        return tuple(torch.zeros(batch, size, dtype=torch.int64, device=device)
                     for size in self.half_sizes * (self.state_parts // 2))

    def split(self, hidden: Tensor) -> Tuple[Tensor, Tensor]:
        """(batch, H) -> the two halves (batch, ceil(H/2)), (batch, floor(H/2))."""
        return hidden[:, : self.half_sizes[0]], hidden[:, self.half_sizes[0]:]


class _GRUGates(NamedTuple):
    """One half's gates: what the update applies (z_q, n, update) and what its gradient needs."""

    z_q: Tensor
    n: Tensor
    update: Tensor  # (1 - z_q) * candidate
    reset: Tensor
    candidate: Tensor
    slope: Optional[Tensor]  # d z / d logit (with_slope only)


class RevGRUCell(ReversibleCell):
    """RevGRU: [z_i, r_i] = sigmoid(W_i [x, h_j]); g_i = tanh(U_i [x, r_i * h_j]);
    h_i <- z_i * h_i + (1 - z_i) * g_i, for (i, j) = (1, 2) then (2, 1) with the new h1."""

    state_parts = 2

    def __init__(self, input_size: int, hidden_size: int, *, max_forget_bits: Optional[int] = 3):
        super().__init__(input_size, hidden_size, max_forget_bits=max_forget_bits)
        first, second = self.half_sizes
        self.gates = nn.ModuleList([nn.Linear(input_size + second, first + second),
                                    nn.Linear(input_size + first, second + first)])
        self.candidates = nn.ModuleList([nn.Linear(input_size + second, first),
                                         nn.Linear(input_size + first, second)])

    def input_layers(self):
        return [self.gates[0], self.candidates[0], self.gates[1], self.candidates[1]]

    def half_update(self, half: int, projected: Tuple[Tensor, ...], other: Tensor, *,
                    with_slope: bool = False) -> _GRUGates:
        """The gate function of one half, shared by forward, reverse and backward."""
        own = self.half_sizes[half]
        with float32_math(other.device):
            logits = self.own_product(self.gates[half], projected[2 * half], other)
            forget, reset = logits.split_with_sizes([own, logits.shape[1] - own], -1)  # its
            gate = forget_gate(forget, self.max_forget_bits,  # backward is one cat, not two fills
                               with_slope=with_slope)
            reset = torch.sigmoid(reset)
            candidate = torch.tanh(self.own_product(self.candidates[half], projected[2 * half + 1],
                                                    reset * other))
            return _GRUGates(gate[0], gate[1], (1.0 - gate[0]) * candidate, reset, candidate,
                             gate[2] if with_slope else None)

    def update_half(self, half, pieces, exact, floats, *, buffer, mask, next_state, stored_units,
                    precision, tag):
        gates = self.half_update(half, pieces, floats[1 - half])
        exact[half], floats[half] = gated_step(
            exact[half], floats[half], gates.z_q, gates.n, gates.update, buffer=buffer,
            mask=mask, next_exact=None if next_state is None else next_state[half],
            stored_units=stored_units, precision=precision, tag=tag)

    def undo_half(self, half, pieces, other, exact, buffer, mask, *, restored, recording):
        gates = self.half_update(half, pieces, other, with_slope=recording)
        exact[half] = undo_step(exact[half], gates.n, gates.update, buffer=buffer, mask=mask,
                                restored=restored)
        return (half, other, from_fixed(exact[half]), gates) if recording else None

    def tape_entry(self, half, pieces, other, before, after):
        return half, other, from_fixed(before[half]), self.half_update(half, pieces, other,
                                                                       with_slope=True)

    def backward_step(self, tape, grads, mask):
        """h_i' = z_q h_i + (1 - z_q) g on real rows (h_i' = h_i on padding), so
        dh_i = z_q dh_i', dz_q = (h_i - g) dh_i', dg = (1 - z_q) dh_i'; the gates read h_j."""
        d = list(grads)
        real = real_rows(mask)
        pieces: List[Optional[Tensor]] = [None] * 4
        inputs: List[Optional[Tensor]] = [None] * 4
        with torch.no_grad():
            for half, other, previous, gates in tape:  # half 2 first: it read the new h1
                fused = native_steps.gru_backward(  # the same values, elementwise work in C
                    d[half], mask, gates, previous, other, d[1 - half],
                    self.hidden_weight(self.candidates[half]), self.hidden_weight(self.gates[half]))
                if fused is not None:
                    d[half], d[1 - half], d_logits, d_candidate = fused
                else:
                    d[half], d[1 - half], d_logits, d_candidate = self._backward_half(
                        half, d, real, other, previous, gates)
                pieces[2 * half], pieces[2 * half + 1] = d_logits, d_candidate
                inputs[2 * half], inputs[2 * half + 1] = other, gates.reset * other
        return d, torch.cat(pieces, dim=-1), inputs

    def _backward_half(self, half, d, real, other, previous, gates):
        """backward_step's tensor code for one half: (d h_i, d h_j, d_logits, d_candidate)."""
        grad = d[half]
        live = on_real(real, grad, 0.0)
        d_candidate = live * (1.0 - gates.z_q) * (1.0 - gates.candidate * gates.candidate)
        d_reset_other = d_candidate.mm(self.hidden_weight(self.candidates[half]))
        d_logits = torch.cat([live * (previous - gates.candidate) * gates.slope,
                              d_reset_other * other * gates.reset * (1.0 - gates.reset)], dim=-1)
        return (on_real(real, grad * gates.z_q, grad),
                d[1 - half] + d_reset_other * gates.reset
                + d_logits.mm(self.hidden_weight(self.gates[half])), d_logits, d_candidate)


class _LSTMGates(NamedTuple):
    """One half's gates: what the updates apply and what their gradient needs."""

    f_q: Tensor
    n_f: Tensor
    cell_update: Tensor  # i * g
    out_gate: Tensor
    p_q: Tensor
    n_p: Tensor
    inp: Tensor  # sigmoid input gate i
    candidate: Tensor  # tanh candidate g
    f_slope: Optional[Tensor]  # d f / d logit, d p / d logit (with_slope only)
    p_slope: Optional[Tensor]


class RevLSTMCell(ReversibleCell):
    """RevLSTM: [f_i, i_i, o_i, p_i] = sigmoid(W_i [x, h_j]); g_i = tanh(U_i [x, h_j]);
    c_i <- f_i * c_i + i_i * g_i;  h_i <- p_i * h_i + o_i * tanh(c_i)  (exactly the paper's update),
    for (i, j) = (1, 2) then (2, 1) with the new h1. f and p are the limited, quantised gates.
    h is not bounded by 1 (up to 1 / (1 - max p) ~ 2**k in magnitude); the fixed-point state and
    the float32-rounded stored units represent it exactly all the same. State: (h1, h2, c1, c2)."""

    state_parts = 4

    def __init__(self, input_size: int, hidden_size: int, *, max_forget_bits: Optional[int] = 3):
        super().__init__(input_size, hidden_size, max_forget_bits=max_forget_bits)
        first, second = self.half_sizes
        self.gates = nn.ModuleList([nn.Linear(input_size + second, 5 * first),
                                    nn.Linear(input_size + first, 5 * second)])

    def input_layers(self):
        return list(self.gates)

    def half_gates(self, half: int, projected: Tuple[Tensor, ...], other: Tensor, *,
                   with_slope: bool = False, kept: Optional[Tensor] = None) -> _LSTMGates:
        """Gate function of one half, shared by forward, reverse and backward. kept (batch,
        5 own), e.g. projected[half] once read: receives the activations [f, i, o, p, g] (the
        same values: sigmoid / tanh written in place) for `kept_tapes`."""
        own = self.half_sizes[half]
        with float32_math(other.device):
            gates = self.own_product(self.gates[half], projected[half], other)
            forget, inp, out, keep, cand = gates.split_with_sizes([own] * 5, -1)
            into = [None] * 5 if kept is None else kept.split_with_sizes([own] * 5, -1)
            f = forget_gate(forget, self.max_forget_bits, with_slope=with_slope, out=into[0])
            p = forget_gate(keep, self.max_forget_bits, with_slope=with_slope, out=into[3])
            inp, cand = torch.sigmoid(inp, out=into[1]), torch.tanh(cand, out=into[4])
            return _LSTMGates(f[0], f[1], inp * cand, torch.sigmoid(out, out=into[2]), p[0], p[1],
                              inp, cand, f[2] if with_slope else None, p[2] if with_slope else None)

    @staticmethod
    def hidden_update(out_gate: Tensor, tanh_cell: Tensor) -> Tensor:
        """The additive part o * tanh(c) of h <- p * h + o * tanh(c), given tanh(c) (which
        backward reuses); both directions call it."""
        return out_gate * tanh_cell

    def update_half(self, half, pieces, exact, floats, *, buffer, mask, next_state, stored_units,
                    precision, tag):
        g = self.half_gates(half, pieces, floats[1 - half])
        c = 2 + half
        exact[c], floats[c] = gated_step(
            exact[c], floats[c], g.f_q, g.n_f, g.cell_update, buffer=buffer, mask=mask,
            next_exact=None if next_state is None else next_state[c], tag=tag)
        exact[half], floats[half] = gated_step(
            exact[half], floats[half], g.p_q, g.n_p,
            self.hidden_update(g.out_gate, torch.tanh(floats[c])), buffer=buffer, mask=mask,
            next_exact=None if next_state is None else next_state[half],
            stored_units=stored_units, precision=precision, tag=tag)

    def undo_half(self, half, pieces, other, exact, buffer, mask, *, restored, recording,
                  keep=False):
        c = 2 + half
        g = self.half_gates(half, pieces, other, with_slope=recording,
                            kept=pieces[half] if keep else None)
        tanh_cell = torch.tanh(from_fixed(exact[c]))
        exact[half] = undo_step(exact[half], g.n_p, self.hidden_update(g.out_gate, tanh_cell),
                                buffer=buffer, mask=mask, restored=restored)
        exact[c] = undo_step(exact[c], g.n_f, g.cell_update, buffer=buffer, mask=mask)
        if not recording:
            return None
        return half, other, from_fixed(exact[half]), from_fixed(exact[c]), tanh_cell, g

    def keeping(self, buffer):
        return reverse_keeping if isinstance(buffer, InformationBuffer) else None  # tensor path

    def kept_tapes(self, projected: Tensor, states: list) -> list:
        """Per step of a chunk reversed by `reverse_keeping`, its tape: per half (half 2 first),
        (half, its activations, the exact states before and after the step)."""
        return [[(0, None, [(half, piece, states[i][0], states[i + 1][0]) for half, piece in
                            reversed(list(enumerate(self.split_projection(projected[:, i]))))])]
                for i in range(projected.shape[1])]

    def tape_entry(self, half, pieces, other, before, after):
        c = 2 + half
        g = self.half_gates(half, pieces, other, with_slope=True)
        tanh_cell = torch.tanh(from_fixed(after[c]))
        return half, other, from_fixed(before[half]), from_fixed(before[c]), tanh_cell, g

    def backward_step(self, tape, grads, mask):
        """On real rows h' = p_q h + o tanh(c'), c' = f_q c + i g (padding: unchanged), so
        dc' += o (1 - tanh(c')^2) dh', dh = p_q dh', dp_q = h dh', do = tanh(c') dh',
        dc = f_q dc', df_q = c dc', di = g dc', dg = i dc'; the gates read h_j."""
        d = list(grads)
        pieces: List[Optional[Tensor]] = [None] * 2
        inputs: List[Optional[Tensor]] = [None] * 2
        with torch.no_grad():
            for entry in tape:  # half 2 first
                half, c = entry[0], 2 + entry[0]
                if len(entry) == 4:  # a kept_tape's: (half, activations, before, after)
                    other, d[half], d[c], d_gates = lstm_kept_grads(
                        half, *entry[1:], d[half], d[c], mask, self.max_forget_bits)
                else:
                    other, previous, previous_cell, tanh_cell, g = entry[1:]
                    d[half], d[c], d_gates = lstm_gate_grads(d[half], d[c], mask, previous,
                                                             previous_cell, tanh_cell, g)
                d[1 - half] = d[1 - half] + d_gates.mm(self.hidden_weight(self.gates[half]))
                pieces[half], inputs[half] = d_gates, other
        return d, torch.cat(pieces, dim=-1), inputs


CELLS = {"revgru": RevGRUCell, "revlstm": RevLSTMCell}
