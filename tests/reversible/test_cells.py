"""RevGRU/RevLSTM cells follow the paper's equations and reverse bit for bit."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.cells import RevGRUCell, RevLSTMCell, round_to_storage
from nmt.reversible.fixed_point import FORGET_RADIX, from_fixed, to_fixed

CELL_TYPES = [RevGRUCell, RevLSTMCell]
K_CHOICES = [1, 2, 3, 5, None]


def _random_state(cell, batch, generator, scale=1.0):
    sizes = cell.half_sizes * (cell.state_parts // 2)
    return tuple(to_fixed((torch.rand(batch, size, generator=generator) * 2 - 1) * scale)
                 for size in sizes)


def _quantised(logits, k):
    """Independent re-statement of the limited, quantised gate: n / 2**R with n in [2**(R-k), 2**R]."""
    floor = 2.0 ** -(k if k is not None else FORGET_RADIX)
    z = (1 - floor) * torch.sigmoid(logits) + floor
    n_min = 2 ** (FORGET_RADIX - k) if k is not None else 1
    return torch.round(z * 2**FORGET_RADIX).clamp(n_min, 2**FORGET_RADIX) / 2**FORGET_RADIX


def _paper_gru(cell, x, h1, h2, k, new_h1):
    """The cells of docs/design.md (MacKay et al. 2018), written out from the weights in plain float math; the second half
    reads the cell's new h1 (so errors of the first half do not compound)."""
    def half(i, own, other):
        size = own.shape[1]
        gates = torch.cat([x, other], 1) @ cell.gates[i].weight.T + cell.gates[i].bias
        z = _quantised(gates[:, :size], k)
        r = torch.sigmoid(gates[:, size:])
        g = torch.tanh(torch.cat([x, r * other], 1) @ cell.candidates[i].weight.T
                       + cell.candidates[i].bias)
        return z * own + (1 - z) * g
    return half(0, h1, h2), half(1, h2, new_h1)


def _paper_lstm(cell, x, h1, h2, c1, c2, k, new_h1):
    def half(i, h, c, other):
        f, inp, o, p, g = (torch.cat([x, other], 1) @ cell.gates[i].weight.T
                           + cell.gates[i].bias).split(h.shape[1], 1)
        f, p = _quantised(f, k), _quantised(p, k)
        c = f * c + torch.sigmoid(inp) * torch.tanh(g)
        return p * h + torch.sigmoid(o) * torch.tanh(c), c
    h1, c1 = half(0, h1, c1, h2)
    h2, c2 = half(1, h2, c2, new_h1)
    return h1, h2, c1, c2


@pytest.mark.parametrize("k", [1, 3, None])
@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_step_follows_the_paper_equations(cell_type, k):
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    cell = cell_type(6, 9, max_forget_bits=k)
    batch = 8
    state = _random_state(cell, batch, generator)
    x = torch.randn(batch, 6, generator=generator)
    new = cell(x, state, InformationBuffer((batch, 5)), None)
    floats = [from_fixed(part) for part in state]
    paper = _paper_gru if cell_type is RevGRUCell else _paper_lstm
    expected = paper(cell, x, *floats, k, new_h1=from_fixed(new[0]))
    for got, want in zip(new, expected):
        # forget(h, n) = floor(h / 2**R) * n + q with q in [0, n): within n units of 2**-23 of
        # h * n / 2**R, i.e. 2**-13; the LSTM's h also sees that error through tanh(c)
        torch.testing.assert_close(from_fixed(got), want, rtol=0, atol=2 * 2.0**-13 + 1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(new, state))


@pytest.mark.parametrize("hidden", [7, 8])
@pytest.mark.parametrize("k", K_CHOICES)
@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_reverse_restores_every_state_bit_for_bit(cell_type, k, hidden):
    generator = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    cell = cell_type(3, hidden, max_forget_bits=k)
    batch, steps = 5, 120
    buffer = InformationBuffer((batch, (hidden + 1) // 2))
    xs = torch.randn(steps, batch, 3, generator=generator) * 3
    masks = torch.rand(steps, batch, generator=generator) > 0.2
    states = [_random_state(cell, batch, generator)]
    for t in range(steps):
        states.append(cell(xs[t], states[-1], buffer, masks[t]))
    assert buffer.pushed_words() > 0
    state = states[-1]
    for t in reversed(range(steps)):
        state = cell.reverse(cell.project_input(xs[t]), state, buffer, masks[t])
        assert all(torch.equal(a, b) for a, b in zip(state, states[t])), f"step {t} not restored"
    assert buffer.is_initial()


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_padded_rows_keep_their_state_and_leave_the_buffer_alone(cell_type):
    generator = torch.Generator().manual_seed(3)
    cell = cell_type(4, 6, max_forget_bits=1)
    buffer = InformationBuffer((3, 3))
    state = _random_state(cell, 3, generator)
    mask = torch.tensor([True, False, True])
    heads_before = buffer.head.clone()
    new = cell(torch.randn(3, 4, generator=generator), state, buffer, mask)
    for before, after in zip(state, new):
        assert torch.equal(before[1], after[1])
        assert not torch.equal(before[0], after[0])
    assert torch.equal(buffer.head[1], heads_before[1])
    assert buffer.optimal_bits() > 0


@pytest.mark.parametrize("stored_units", [0, 2])
@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_no_mask_is_an_all_real_mask(cell_type, stored_units):
    """mask=None skips the padding selects; every result must be that of an all-True mask."""
    generator = torch.Generator().manual_seed(6)
    cell = cell_type(4, 8, max_forget_bits=2)
    state = _random_state(cell, 5, generator)
    projected = cell.project_input(torch.randn(5, 4, generator=generator))
    grads = [torch.randn(5, size, generator=generator) for size in cell.half_sizes * (cell.state_parts // 2)]
    results = []
    for mask in (None, torch.ones(5, dtype=torch.bool)):
        buffer = InformationBuffer((5, 4))
        values = tuple(from_fixed(part) for part in state)
        new, _ = cell.step(projected, state, values, buffer, mask, stored_units=stored_units)
        tape = []
        back = cell.reverse(projected, new, buffer, mask, tape=tape,
                            restored=state[0][:, :stored_units] if stored_units else None)
        d_state, d_projected, _ = cell.backward_step(tape, grads, mask)
        assert all(torch.equal(a, b) for a, b in zip(back, state)) and buffer.is_initial()
        results.append((new, buffer.optimal_bits(), d_state, d_projected))
    (new_a, bits_a, d_a, p_a), (new_b, bits_b, d_b, p_b) = results
    assert all(torch.equal(a, b) for a, b in zip(new_a, new_b)) and bits_a == bits_b
    assert all(torch.equal(a, b) for a, b in zip(d_a, d_b)) and torch.equal(p_a, p_b)


class _GateSpy(InformationBuffer):
    """Records the gate numerators of every forget call, in order."""

    def forget(self, h, n, *, tag=""):
        self.gates = getattr(self, "gates", []) + [n.clone()]
        return super().forget(h, n, tag=tag)


@pytest.mark.parametrize("precision", [32, 16])
@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_stored_units_skip_the_buffer_and_come_back_from_storage(cell_type, precision):
    generator = torch.Generator().manual_seed(4)
    cell = cell_type(4, 10, max_forget_bits=5)
    batch, units = 6, 3
    buffer = _GateSpy((batch, 5), native=False)  # the tensor code: it calls forget
    state = _random_state(cell, batch, generator)
    x = torch.randn(batch, 4, generator=generator)
    new = cell(x, state, buffer, None, stored_units=units, precision=precision)
    # the stored columns of h1 go through the buffer as the identity gate (nothing kept) ...
    h1_gate = buffer.gates[0 if cell_type is RevGRUCell else 1]
    assert bool((h1_gate[:, :units] == 2**FORGET_RADIX).all())
    assert bool((h1_gate[:, units:] < 2**FORGET_RADIX).any())
    # ... and their state is a value that storage at `precision` bits holds exactly
    stored = from_fixed(new[0][:, :units])
    dtype = torch.float16 if precision == 16 else torch.float32
    assert torch.equal(stored.to(dtype).float(), stored)
    assert torch.equal(round_to_storage(stored, precision), new[0][:, :units])
    back = cell.reverse(cell.project_input(x), new, buffer, None, restored=state[0][:, :units])
    assert all(torch.equal(a, b) for a, b in zip(back, state))
    assert buffer.is_initial()


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_float_views_are_the_exact_state_and_carry_gradients(cell_type):
    generator = torch.Generator().manual_seed(5)
    cell = cell_type(4, 7, max_forget_bits=2)
    state = _random_state(cell, 3, generator)
    values = tuple(from_fixed(part).requires_grad_() for part in state)
    x = torch.randn(3, 4, generator=generator)
    exact, floats = cell.step(cell.project_input(x), state, values, InformationBuffer((3, 4)), None)
    for part, value in zip(exact, floats):
        assert torch.equal(value, from_fixed(part))
    sum(value.sum() for value in floats).backward()
    assert all(value.grad is not None and value.grad.abs().sum() > 0 for value in values)
    # recomputing with the known result leaves the buffer alone and gives the same views
    again, floats_again = cell.step(cell.project_input(x), state, values, None, None, next_state=exact)
    assert all(torch.equal(a, b) for a, b in zip(floats, floats_again))


def test_odd_hidden_sizes_split_ceil_then_floor():
    cell = RevLSTMCell(2, 7)
    assert cell.half_sizes == (4, 3)
    assert [tuple(p.shape) for p in cell.initial_state(2)] == [(2, 4), (2, 3), (2, 4), (2, 3)]


@settings(max_examples=40, deadline=None)
@given(
    cell_index=st.integers(0, 1),
    hidden=st.integers(2, 11),
    k=st.sampled_from(K_CHOICES),
    steps=st.integers(1, 40),
    input_scale=st.sampled_from([0.0, 1.0, 30.0, 1e4]),
    state_scale=st.sampled_from([0.0, 1.0, 4.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_any_cell_reverses_exactly(cell_index, hidden, k, steps, input_scale,
                                            state_scale, seed):
    """Random sizes, gates saturated or not, extreme inputs, random padding: always exact."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cell = CELL_TYPES[cell_index](2, hidden, max_forget_bits=k)
    batch = 3
    buffer = InformationBuffer((batch, (hidden + 1) // 2))
    xs = torch.randn(steps, batch, 2, generator=generator) * input_scale
    masks = torch.rand(steps, batch, generator=generator) > 0.3
    states = [_random_state(cell, batch, generator, scale=state_scale)]
    for t in range(steps):
        states.append(cell(xs[t], states[-1], buffer, masks[t]))
    state = states[-1]
    for t in reversed(range(steps)):
        state = cell.reverse(cell.project_input(xs[t]), state, buffer, masks[t])
        assert all(torch.equal(a, b) for a, b in zip(state, states[t]))
    assert buffer.is_initial()
