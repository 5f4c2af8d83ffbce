"""The information buffer is an exact bijection and stores close to the optimal number of bits."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.fixed_point import (
    FORGET_RADIX, HIDDEN_RADIX, forget_gate, from_fixed, min_forget_numerator, straight_through,
    to_fixed,
)

R = FORGET_RADIX
INT_RANGE = 2**40  # far beyond any hidden state (|h| ~ 2**23 per unit of value)


def _random_gates(generator, shape, n_min):
    return torch.randint(n_min, 2**R + 1, shape, generator=generator, dtype=torch.int64)


def _run(buffer, h, gates):
    states = [h]
    for n in gates:
        states.append(buffer.forget(states[-1], n))
    return states


def _reverse_and_check(buffer, states, gates):
    h = states[-1]
    for t in range(len(gates) - 1, -1, -1):
        h = buffer.unforget(h, gates[t])
        assert torch.equal(h, states[t]), f"state {t} not restored"
    assert buffer.is_initial()


@pytest.mark.parametrize("device_offsets", [False, True])
@pytest.mark.parametrize("max_forget_bits", [1, 2, 3, 5, None])
def test_long_sequence_is_reversed_bit_for_bit(max_forget_bits, device_offsets):
    generator = torch.Generator().manual_seed(0)
    shape = (16, 37)
    buffer = InformationBuffer(shape, device_offsets=device_offsets)
    h = torch.randint(-2**24, 2**24, shape, generator=generator)
    gates = [_random_gates(generator, shape, min_forget_numerator(max_forget_bits)) for _ in range(300)]
    states = _run(buffer, h, gates)
    assert buffer.pushed_steps == len(gates)
    _reverse_and_check(buffer, states, gates)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(-INT_RANGE, INT_RANGE), min_size=1, max_size=12),
    steps=st.integers(1, 120),
    n_min=st.sampled_from([1, 2, 2**5, 2**7, 2**8, 2**9, 2**R]),
    seed=st.integers(0, 2**31 - 1),
    device_offsets=st.booleans(),
)
def test_property_forget_is_a_bijection(values, steps, n_min, seed, device_offsets):
    """Random h (negative and extreme values), gates and long push/pop sequences."""
    generator = torch.Generator().manual_seed(seed)
    h = torch.tensor(values, dtype=torch.int64).unsqueeze(0)
    buffer = InformationBuffer(tuple(h.shape), device_offsets=device_offsets)
    gates = [_random_gates(generator, h.shape, n_min) for _ in range(steps)]
    states = _run(buffer, h, gates)
    assert (buffer.head >= buffer.lower).all() and (buffer.head < 2**(16 + R)).all()
    _reverse_and_check(buffer, states, gates)


def test_device_offsets_lay_out_the_same_stack_and_grow_it_as_needed():
    """Offsets computed on the device (no count read per step, CUDA's default) give the stack the
    words selected on the host give it, through several reallocations and partial reversals."""
    generator = torch.Generator().manual_seed(7)
    shape = (8, 10)
    host, device = InformationBuffer(shape), InformationBuffer(shape, device_offsets=True)
    assert not host.device_offsets and device.device_offsets
    h_host = h_device = torch.randint(-2**24, 2**24, shape, generator=generator)
    # strong forgetting (up to 10 bits per step): about every other element spills a word per step
    gates = [torch.randint(1, 17, shape, generator=generator) for _ in range(200)]
    allocations = set()
    for n in gates[:120]:
        h_host, h_device = host.forget(h_host, n, tag="a"), device.forget(h_device, n, tag="a")
        assert torch.equal(h_host, h_device)
        allocations.add(device._words.numel())
    assert len(allocations) >= 3  # the stack was reallocated as it grew
    assert host.equal(device) and torch.equal(host.words(), device.words())
    assert host.pushed_words("a") == device.pushed_words("a") == host.words().numel() > 0
    for n in reversed(gates[60:120]):  # half way back, then forward again
        h_host, h_device = host.unforget(h_host, n), device.unforget(h_device, n)
        assert torch.equal(h_host, h_device)
    assert host.equal(device) and host.pushed_steps == device.pushed_steps == 60
    for n in gates[60:]:
        h_host, h_device = host.forget(h_host, n), device.forget(h_device, n)
    assert host.equal(device)
    device.compact()
    words = device.words().numel()
    assert device.nbytes() == 4 * device.head.numel() + 2 * (words + 1)  # the words + 1 scratch word
    for n in reversed(gates):
        h_host, h_device = host.unforget(h_host, n), device.unforget(h_device, n)
        assert torch.equal(h_host, h_device)
    assert host.is_initial() and device.is_initial()


def test_device_offsets_read_the_stack_height_rarely(monkeypatch):
    """Each read of the height is a host-device synchronisation on CUDA: at most one per
    _SPARE_STEPS steps, however many words the steps push."""
    reads = []
    original = InformationBuffer._read_height
    monkeypatch.setattr(InformationBuffer, "_read_height",
                        lambda self: reads.append(1) or original(self))
    generator = torch.Generator().manual_seed(3)
    shape, steps = (64, 150), 160
    buffer = InformationBuffer(shape, device_offsets=True)
    h = torch.randint(-2**24, 2**24, shape, generator=generator)
    gates = [_random_gates(generator, shape, 2**(R - 3)) for _ in range(steps)]
    states = _run(buffer, h, gates)
    assert buffer.pushed_words() > steps * 64 * 150 // 20  # words were pushed all along
    assert 0 < len(reads) <= steps // 16 + 1
    reads.clear()
    for t in range(steps - 1, -1, -1):
        states[t + 1] = buffer.unforget(states[t + 1], gates[t])
    assert not reads  # reversing never asks


def test_forget_approximates_multiplication():
    generator = torch.Generator().manual_seed(1)
    h = torch.randint(-2**23, 2**23, (8, 50), generator=generator)
    n = _random_gates(generator, h.shape, 1)
    out = InformationBuffer(h.shape).forget(h, n)
    # h' = (h div 2**R) * n + q with q < n: within n of h * n / 2**R
    assert ((out.double() - h.double() * n.double() / 2**R).abs() <= n.double()).all()


def test_identity_gate_never_pushes_and_changes_nothing():
    h = torch.randint(-2**30, 2**30, (4, 9))
    buffer = InformationBuffer(h.shape)
    full = torch.full_like(h, 2**R)
    for _ in range(50):
        assert torch.equal(buffer.forget(h, full), h)
    assert buffer.pushed_words() == 0 and buffer.optimal_bits() == 0.0
    assert (buffer.head == buffer.lower).all()


def test_narrow_state_uses_first_columns():
    generator = torch.Generator().manual_seed(2)
    buffer = InformationBuffer((3, 5))
    wide = torch.randint(-2**23, 2**23, (3, 5), generator=generator)
    narrow = torch.randint(-2**23, 2**23, (3, 4), generator=generator)
    n_wide, n_narrow = (_random_gates(generator, x.shape, 2**7) for x in (wide, narrow))
    a = buffer.forget(wide, n_wide)
    b = buffer.forget(narrow, n_narrow)
    assert torch.equal(buffer.unforget(b, n_narrow), narrow)
    assert torch.equal(buffer.unforget(a, n_wide), wide)
    assert buffer.is_initial()


def test_storage_is_within_one_word_and_head_of_optimal():
    generator = torch.Generator().manual_seed(3)
    shape = (64, 150)
    buffer = InformationBuffer(shape)
    h = torch.randint(-2**23, 2**23, shape, generator=generator)
    for _ in range(400):
        h = buffer.forget(h, _random_gates(generator, shape, 2**7))
    elements = math.prod(shape)
    assert buffer.optimal_bits() > 0
    assert buffer.used_bits() <= buffer.optimal_bits() + 48 * elements
    # the words alone cannot hold less than the information they carry, minus the head's 26 bits
    assert buffer.used_bits() - buffer.head_bits() >= buffer.optimal_bits() - 26 * elements


def test_counts_by_tag():
    generator = torch.Generator().manual_seed(4)
    buffer = InformationBuffer((8, 8))
    h = torch.randint(-2**23, 2**23, (8, 8), generator=generator)
    for tag in ("encoder", "decoder"):
        for _ in range(30):
            h = buffer.forget(h, _random_gates(generator, h.shape, 2**7), tag=tag)
    assert buffer.pushed_words("encoder") > 0 and buffer.pushed_words("decoder") > 0
    assert buffer.pushed_words() == buffer.pushed_words("encoder") + buffer.pushed_words("decoder")
    assert buffer.used_bits() == buffer.head_bits() + 16 * buffer.pushed_words()
    assert buffer.optimal_bits() == pytest.approx(
        buffer.optimal_bits("encoder") + buffer.optimal_bits("decoder"))


def test_optimal_bits_sum_what_each_gate_forgets():
    generator = torch.Generator().manual_seed(6)
    buffer = InformationBuffer((4, 6))
    h = torch.randint(-2**23, 2**23, (4, 6), generator=generator)
    gates = [_random_gates(generator, h.shape, 1) for _ in range(5)]
    for n in gates:
        h = buffer.forget(h, n, tag="t")
    expected = sum(float((FORGET_RADIX - torch.log2(n.double())).sum()) for n in gates)
    assert buffer.optimal_bits("t") == pytest.approx(expected, rel=1e-12)
    buffer.reset_counts()
    assert buffer.optimal_bits() == 0.0 and buffer.pushed_words() == 0


def test_without_words_forward_values_are_unchanged():
    generator = torch.Generator().manual_seed(5)
    h = torch.randint(-2**23, 2**23, (6, 10), generator=generator)
    gates = [_random_gates(generator, h.shape, 2**7) for _ in range(100)]
    kept, dropped = InformationBuffer(h.shape), InformationBuffer(h.shape, keep_words=False)
    assert torch.equal(_run(kept, h, gates)[-1], _run(dropped, h, gates)[-1])
    assert dropped.pushed_steps == 0
    with pytest.raises(RuntimeError, match="cannot reverse"):
        dropped.unforget(h, gates[0])


@pytest.mark.parametrize("settings_, message", [
    (dict(word_bits=8, forget_radix=10), "word_bits=8 must be >= forget_radix"),
    (dict(word_bits=24, forget_radix=10), "int32"),
    (dict(word_bits=16, forget_radix=0), "forget_radix"),
])
def test_overflow_prone_settings_are_refused(settings_, message):
    with pytest.raises(ValueError, match=message):
        InformationBuffer((2, 2), **settings_)


def test_wrong_state_is_refused():
    buffer = InformationBuffer((2, 3))
    with pytest.raises(ValueError, match="does not fit"):
        buffer.forget(torch.zeros(3, 3, dtype=torch.int64), torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        buffer.forget(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.int64))


def test_fixed_point_round_trip_and_straight_through():
    x = torch.linspace(-1, 1, 101)
    assert torch.equal(to_fixed(from_fixed(to_fixed(x))), to_fixed(x))
    assert (from_fixed(to_fixed(x)) - x).abs().max() <= 2.0 ** -(HIDDEN_RADIX + 1)
    surrogate = torch.randn(5, requires_grad=True)
    exact = torch.arange(5.0)
    out = straight_through(surrogate * 3, exact)
    assert torch.equal(out, exact)
    out.sum().backward()
    assert torch.equal(surrogate.grad, torch.full((5,), 3.0))


@pytest.mark.parametrize("max_forget_bits", [1, 2, 3, 5, None])
def test_forget_gate_respects_the_limit(max_forget_bits):
    logits = torch.linspace(-30, 30, 1001, requires_grad=True)
    z, n = forget_gate(logits, max_forget_bits)
    assert n.min() >= min_forget_numerator(max_forget_bits) and n.max() <= 2**R
    assert torch.equal(z, n.float() / 2**R)
    z.sum().backward()
    assert (logits.grad >= 0).all() and logits.grad.max() > 0


@pytest.mark.parametrize("bad", [0, 4, 11, "3", True])
def test_forget_gate_rejects_unknown_limits(bad):
    with pytest.raises(ValueError, match="max_forget_bits"):
        forget_gate(torch.zeros(2), bad)
