"""Whole stacks reverse bit for bit: every intermediate state and the buffer's initial state."""
import pytest
import torch

from nmt.reversible.fixed_point import from_fixed, to_fixed
from nmt.reversible.sequence import ReversibleRNN
from nmt.reversible.storage import AttentionStorage

K_CHOICES = [1, 2, 3, 5, None]


class _Fingerprints:
    """Every intermediate state, compared exactly: a 64-bit random linear hash per row of every
    state tensor at every step (int64 arithmetic wraps, so any changed bit changes the hash except
    with probability ~2**-60), plus full copies every `every` steps compared with torch.equal."""

    def __init__(self, width, *, every=97, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.weights = torch.randint(-2**62, 2**62, (width,), generator=generator) | 1
        self.every = every
        self.hashes, self.copies = {}, {}

    def _hash(self, state):
        return torch.stack([(part * self.weights[: part.shape[1]]).sum(1)
                            for layer in state for part in layer])

    def record(self, t, state):
        self.hashes[t] = self._hash(state)
        if t % self.every == 0:
            self.copies[t] = [tuple(part.clone() for part in layer) for layer in state]

    def check(self, t, state):
        assert torch.equal(self._hash(state), self.hashes[t]), f"state before step {t} differs"
        if t in self.copies:
            assert all(torch.equal(a, b) for layer_a, layer_b in zip(state, self.copies[t])
                       for a, b in zip(layer_a, layer_b)), f"state before step {t} differs"


def _run_and_reverse(rnn, batch, steps, generator, *, input_scale=2.0):
    """Forward with random lengths from a random initial state, then reverse step by step."""
    x = torch.randn(batch, steps, rnn.input_size, generator=generator) * input_scale
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    mask = torch.arange(steps)[None] < lengths[:, None]
    buffer = rnn.new_buffer(batch)
    state = [tuple(to_fixed(torch.rand(batch, part.shape[1], generator=generator) - 0.5)
                   for part in cell.initial_state(batch)) for cell in rnn.cells]
    prints = _Fingerprints(rnn.half_size)
    units = rnn.stored_slice
    stored = [state[-1][0][:, :units]]
    with torch.no_grad():
        for t in range(steps):
            prints.record(t, state)
            values = [tuple(from_fixed(part) for part in layer) for layer in state]
            state, _, _ = rnn.step(x[:, t], state, values, buffer, mask[:, t])
            stored.append(state[-1][0][:, :units].clone())
        assert buffer.pushed_words() > 0 and buffer.pushed_steps > 0
        for t in reversed(range(steps)):
            state = rnn.reverse_step(x[:, t], state, buffer, mask[:, t],
                                     restored=stored[t] if units else None)
            prints.check(t, state)
    assert buffer.is_initial(), "buffer not back at its initial state"


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("k", K_CHOICES)
@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_small_odd_stack_reverses_exactly(cell, k, layers):
    torch.manual_seed(10)
    rnn = ReversibleRNN(cell, 5, 7, num_layers=layers, max_forget_bits=k)
    _run_and_reverse(rnn, 3, 200, torch.Generator().manual_seed(11))


@pytest.mark.parametrize("precision", [32, 16])
@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_slice_storage_reverses_exactly(cell, precision):
    torch.manual_seed(12)
    rnn = ReversibleRNN(cell, 4, 9, num_layers=2, max_forget_bits=2,
                        storage=AttentionStorage("slice", 3, precision))
    _run_and_reverse(rnn, 4, 150, torch.Generator().manual_seed(13))


@pytest.mark.slow
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
@pytest.mark.parametrize("k", K_CHOICES)
def test_paper_size_stack_reverses_exactly_over_1000_steps(k, cell, layers):
    """Batch 32, hidden 300, 1000 steps with random lengths, every k (issue #2, item 2)."""
    torch.manual_seed(20)
    rnn = ReversibleRNN(cell, 16, 300, num_layers=layers, max_forget_bits=k)
    _run_and_reverse(rnn, 32, 1000, torch.Generator().manual_seed(21))
