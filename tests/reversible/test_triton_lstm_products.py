"""RevLSTM half-steps with the hidden products inside the kernels (`triton_lstm_products`, run by
Triton's interpreter): bit for bit the activate=True driver of fused.py whose torch products are
replaced by a test-side kernel calling the same row-block jit functions; exact reversal; gradients
close to autograd's; one launch per half-step and direction with no aten compute in between."""
import contextlib

import pytest
import torch

from reversible.triton_setup import (DEVICE, RUNNABLE, InformationBuffer, fused,  # first: triton
                                     tl, triton, triton_kernels)

from nmt.reversible import triton_lstm_products as products
from nmt.reversible import triton_lstm_products_jit as pjit
from nmt.reversible.cells import RevLSTMCell
from nmt.reversible.fixed_point import FORGET_RADIX as R, from_fixed, min_forget_numerator
from nmt.reversible.launch_count import OpCounter

pytestmark = RUNNABLE

INPUT, HIDDEN, BATCH, STEPS = 5, 37, 9, 3  # halves of 19 and 18 units


@triton.jit
def _reference_logits_kernel(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride,
                             out_ptr, rows, own, k_size, RB: tl.constexpr, CP: tl.constexpr,
                             KC: tl.constexpr):
    rb = tl.program_id(0)
    r = rb * RB + tl.arange(0, RB)[:, None]
    cc = tl.arange(0, CP)[None, :]
    for gate in tl.static_range(5):
        x = pjit._lstm_logits(piece_ptr, piece_stride, other_ptr, other_stride, w_ptr, w_stride,
                              rb, rows, own, k_size, gate, RB, CP, KC)
        tl.store(out_ptr + r * (5 * own) + gate * own + cc, x, mask=(r < rows) & (cc < own))


@triton.jit
def _reference_d_other_kernel(acc_ptr, acc_stride, d_ptr, d_stride, w_ptr, w_stride, out_ptr,
                              rows, own, k_size, RB: tl.constexpr, CC: tl.constexpr,
                              KC: tl.constexpr):
    pjit._d_other(acc_ptr, acc_stride, d_ptr, d_stride, w_ptr, w_stride, out_ptr,
                  tl.program_id(0), rows, own, k_size, acc_ptr, acc_stride, False, RB, CC, KC)


@contextlib.contextmanager
def kernel_products(cell, monkeypatch):
    """fused.py's torch products (own_product, the backward's addmm) by the same jit functions
    and block shapes as the product kernels."""
    def own_product(layer, piece, other):
        rows, k_size = other.shape
        own = layer.out_features // 5
        weight = cell.hidden_weight(layer)
        rb, cp, kc = products.block_shapes(rows, own, k_size)
        out = torch.empty((rows, 5 * own), device=other.device)
        _reference_logits_kernel[(triton.cdiv(rows, rb),)](
            piece, piece.stride(0), other, other.stride(0), weight, weight.stride(0), out, rows,
            own, k_size, RB=rb, CP=cp, KC=kc)
        return out

    def addmm(acc, d_gates, weight):
        rows, k_size = acc.shape
        own = d_gates.shape[1] // 5
        rb, cp, kc = products.block_shapes(rows, own, k_size)
        out = torch.empty((rows, k_size), device=acc.device)
        _reference_d_other_kernel[(triton.cdiv(rows, rb),)](
            acc, acc.stride(0), d_gates, d_gates.stride(0), weight, weight.stride(0), out, rows,
            own, k_size, RB=rb, CC=products._width(own, products.CHUNK), KC=kc)
        return out

    with monkeypatch.context() as patch:
        patch.setattr(cell, "own_product", own_product)
        patch.setattr(torch, "addmm", addmm)
        yield


def setup(max_forget_bits, *, batch=BATCH, hidden=HIDDEN, steps=STEPS, seed=0,
          random_heads=True):
    torch.manual_seed(seed)
    cell = RevLSTMCell(INPUT, hidden, max_forget_bits=max_forget_bits).to(DEVICE)
    with torch.no_grad():  # small forget gates: many bits per step, words spill early
        for layer in cell.gates:
            layer.bias[: 2 * cell.half_sizes[0]] -= 1.5
    generator = torch.Generator().manual_seed(seed)
    stack = fused.word_stack_for(cell, batch, device=DEVICE)
    if random_heads:
        stack.head.copy_(torch.randint(2**R, 2**(R + 16), stack.head.shape, generator=generator))
    state = tuple(torch.randint(-2**23, 2**23, (batch, size), generator=generator).to(DEVICE)
                  for size in cell.half_sizes * 2)
    lengths = torch.arange(batch) % (steps + 1)
    masks = (torch.arange(steps).view(-1, 1) < lengths.view(1, -1)).to(DEVICE)
    with torch.no_grad():
        projected = cell.project_input(
            torch.randn(steps, batch, INPUT, generator=generator).to(DEVICE))
    return cell, stack, state, projected, masks


def copy_stack(stack):
    twin = triton_kernels.WordStack(tuple(stack.head.shape), device=DEVICE)
    twin.head.copy_(stack.head)
    return twin


def n_min(cell):
    return min_forget_numerator(cell.max_forget_bits)


def product_step(cell, projected, state, values, stack, mask, *, stored=0, precision=32):
    exact, floats = list(state), list(values)
    pieces = cell.split_projection(projected)
    for half in (0, 1):
        products.lstm_forward_half(cell, half, pieces, exact, floats, stack, mask,
                                   n_min=n_min(cell), stored=stored if half == 0 else 0,
                                   precision=precision, tag="")
    return tuple(exact), tuple(floats)


def product_reverse(cell, projected, state, values, stack, mask, *, restored=None, tape=None):
    exact, floats = list(state), list(values)
    pieces = cell.split_projection(projected)
    for half in (1, 0):
        products.lstm_reverse_half(cell, half, pieces, exact, floats, stack, mask,
                                   n_min=n_min(cell), restored=restored if half == 0 else None,
                                   tape=tape)
    return tuple(exact), tuple(floats)


def product_backward(cell, tape, grads, mask, extra=None):
    d, inputs = list(grads), [None, None]
    d_projected, pieces = fused._d_projected(cell, d[0])
    for entry in tape:
        products.lstm_backward_half(cell, entry, d, inputs, pieces, mask, n_min=n_min(cell),
                                    extra=extra)
        extra = None
    return d, d_projected, inputs


def assert_equal(ours, theirs):
    if isinstance(ours, (tuple, list)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_equal(a, b)
    elif isinstance(ours, torch.Tensor):
        assert torch.equal(ours, theirs)
    else:
        assert ours == theirs


@pytest.mark.parametrize("stored,precision", [(0, 32), (4, 32), (4, 16)])
@pytest.mark.parametrize("max_forget_bits", [1, 3, None])
def test_products_in_the_kernels_equal_the_driver_bit_for_bit(max_forget_bits, stored, precision,
                                                              monkeypatch):
    """States, float views, heads, words, gate counts, tapes (also recomputed) and gradients;
    products in chunks of 16 columns (two per gate block and per half)."""
    monkeypatch.setattr(products, "CHUNK", 16)
    cell, stack, state, projected, masks = setup(max_forget_bits)
    reference = copy_stack(stack)
    values = tuple(from_fixed(part) for part in state)
    ours, theirs, kept, states = (state, values), (state, values), [], [state]
    with torch.no_grad():
        for t in range(STEPS):
            kept.append(ours[0][0][:, :stored])
            ours = product_step(cell, projected[t], *ours, stack, masks[t], stored=stored,
                                precision=precision)
            with kernel_products(cell, monkeypatch):
                theirs = fused.step(cell, projected[t], theirs[0], reference, masks[t],
                                    values=theirs[1], stored_units=stored, precision=precision,
                                    activate=True)
            assert_equal(ours, theirs)
            assert_equal((stack.head, stack.stacked(), stack.hist, stack.pushed),
                         (reference.head, reference.stacked(), reference.hist, reference.pushed))
            states.append(ours[0])
        assert int(stack.top) > 0 and not masks[STEPS - 1].all()
        generator = torch.Generator().manual_seed(5)
        grads = grads_ref = [torch.randn(v.shape, generator=generator).to(DEVICE)
                             for v in ours[1]]
        for t in reversed(range(STEPS)):
            tape, tape_ref = [], []
            restored = kept[t] if stored else None
            ours = product_reverse(cell, projected[t], *ours, stack, masks[t], restored=restored,
                                   tape=tape)
            with kernel_products(cell, monkeypatch):
                theirs = fused.reverse(cell, projected[t], theirs[0], reference, masks[t],
                                       values=theirs[1], restored=restored, tape=tape_ref,
                                       activate=True)
                grads_ref, d_ref, inputs_ref = fused.backward_step(cell, tape_ref, grads_ref,
                                                                   masks[t], activate=True)
            assert_equal(ours, theirs)
            assert_equal(ours[0], states[t])
            assert_equal((stack.head, stack.stacked()), (reference.head, reference.stacked()))
            assert_equal(tape, tape_ref)
            pieces = cell.split_projection(projected[t])
            before, after = states[t], states[t + 1]
            recomputed = [products.lstm_tape_entry(
                cell, half, pieces, from_fixed(after[0] if half == 1 else before[1]),
                from_fixed(before[half]), from_fixed(before[2 + half]),
                from_fixed(after[2 + half])) for half in (1, 0)]
            assert_equal(recomputed, tape)
            grads, d_projected, inputs = product_backward(cell, tape, grads, masks[t])
            assert_equal((grads, d_projected, inputs), (grads_ref, d_ref, inputs_ref))
    assert int(stack.top) == 0


def test_steps_then_their_reversal_give_the_initial_state_and_stack():
    cell, stack, state, projected, masks = setup(None, steps=5, random_heads=False)
    values = tuple(from_fixed(part) for part in state)
    current, kept = (state, values), []
    with torch.no_grad():
        for t in range(5):
            kept.append(current[0][0][:, :4])
            current = product_step(cell, projected[t], *current, stack, masks[t], stored=4)
        assert int(stack.top) > 0
        for t in reversed(range(5)):
            current = product_reverse(cell, projected[t], *current, stack, masks[t],
                                      restored=kept[t])
    assert_equal(current, (state, values))
    assert stack.is_initial()
    stack.check()


def _autograd_reference(cell, projected, state, mask, weights):
    """Gradients of sum(w * float state after one step) by autograd through `cell.step`."""
    values = tuple(from_fixed(part).requires_grad_() for part in state)
    projected = projected.detach().requires_grad_()
    buffer = InformationBuffer((state[0].shape[0], cell.half_sizes[0]), native=False,
                               device=DEVICE)
    layers = cell.input_layers()
    _, floats = cell.step(projected, state, values, buffer, mask, stored_units=4)
    loss = sum((w * f).sum() for w, f in zip(weights, floats))
    grads = torch.autograd.grad(loss, [*values, projected] + [layer.weight for layer in layers])
    hidden = [grad[:, cell.input_size:] for grad in grads[len(values) + 1:]]
    return list(grads[: len(values)]), grads[len(values)], hidden


@pytest.mark.parametrize("chunk", [16, 32])
@pytest.mark.parametrize("max_forget_bits", [1, None])
def test_backward_matches_autograd(max_forget_bits, chunk, monkeypatch):
    monkeypatch.setattr(products, "CHUNK", chunk)
    cell, stack, state, projected, masks = setup(max_forget_bits, random_heads=False)
    mask = masks[1]
    assert not mask.all()
    generator = torch.Generator().manual_seed(3)
    weights = [torch.randn(part.shape, generator=generator).to(DEVICE) for part in state]
    d_ref, d_projected_ref, hidden_ref = _autograd_reference(cell, projected[0], state, mask,
                                                             weights)
    with torch.no_grad():
        values = tuple(from_fixed(part) for part in state)
        after = product_step(cell, projected[0], state, values, stack, mask, stored=4)
        tape = []
        before, _ = product_reverse(cell, projected[0], *after, stack, mask,
                                    restored=state[0][:, :4], tape=tape)
        assert_equal(before, state)
        d, d_projected, inputs = product_backward(cell, tape, weights, mask)
    for ours, theirs in zip(d, d_ref):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(d_projected, d_projected_ref, rtol=1e-4, atol=1e-6)
    for piece, inp, theirs in zip(cell.split_projection(d_projected), inputs, hidden_ref):
        torch.testing.assert_close(piece.t().mm(inp), theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("max_forget_bits", [1, None])
def test_extra_added_in_the_kernel_equals_adding_it_before(max_forget_bits):
    """The readout's h gradient, added by the first backward launch (a strided (rows, H) view,
    as backprop passes top_grads[:, i]), gives the bits of adding it to d h with torch first."""
    cell, stack, state, projected, masks = setup(max_forget_bits, random_heads=False)
    mask = masks[1]
    assert not mask.all()
    generator = torch.Generator().manual_seed(5)
    grads = [torch.randn(part.shape, generator=generator).to(DEVICE) for part in state]
    extra = torch.randn(BATCH, 3, HIDDEN, generator=generator).to(DEVICE)[:, 1]
    first = cell.half_sizes[0]
    with torch.no_grad():
        values = tuple(from_fixed(part) for part in state)
        after = product_step(cell, projected[0], state, values, stack, mask, stored=4)
        tape = []
        product_reverse(cell, projected[0], *after, stack, mask, restored=state[0][:, :4],
                        tape=tape)
        ours = product_backward(cell, tape, grads, mask, extra)
        added = [grads[0] + extra[:, :first], grads[1] + extra[:, first:], *grads[2:]]
        theirs = product_backward(cell, tape, added, mask)
    for a, b in zip(ours[0] + [ours[1]] + ours[2], theirs[0] + [theirs[1]] + theirs[2]):
        assert torch.equal(a, b)  # the same float32 sums in the same order


def test_one_launch_per_half_step_and_direction_and_no_aten_compute():
    """Forward, reverse (with a tape) and backward of a layer-step: 2 launches each, and only
    allocations and views as aten ops (no compute, no synchronisation)."""
    cell, stack, state, projected, masks = setup(3)
    stack.prepare(4 * BATCH * cell.half_sizes[0])
    values = tuple(from_fixed(part) for part in state)
    mask = masks[1].view(torch.uint8)
    grads = [torch.ones_like(v) for v in values]
    tape = []
    phases = [
        lambda: product_step(cell, projected[0], state, values, stack, mask, stored=4),
        lambda: product_reverse(cell, projected[0], *after, stack, mask,
                                restored=state[0][:, :4], tape=tape),
        lambda: product_backward(cell, tape, grads, mask)]
    with torch.no_grad():
        for index, phase in enumerate(phases):
            counter, launches = OpCounter(), triton_kernels.LAUNCHES[0]
            with counter:
                result = phase()
            assert triton_kernels.LAUNCHES[0] - launches == 2
            assert counter.compute == 0 and counter.sync == []
            if index == 0:
                after = result
    assert int(stack.top) == 0


def test_staged_row_blocks_equal_one_program_and_reverse_exactly(monkeypatch):
    """One program per row block (forward: + `_place_words_kernel`; reverse: h pass, refill, c
    pass, refill) gives one program's words in the same order, and reverses exactly."""
    cell, stack, state, projected, masks = setup(None, batch=40, steps=2)
    single = copy_stack(stack)
    values = tuple(from_fixed(part) for part in state)
    staged_now, single_now, states = (state, values), (state, values), [state]
    with torch.no_grad():
        for t in range(2):
            monkeypatch.setattr(triton_kernels, "_SINGLE_PROGRAM_LIMIT", 0)
            launches = triton_kernels.LAUNCHES[0]
            staged_now = product_step(cell, projected[t], *staged_now, stack, masks[t], stored=4)
            assert triton_kernels.LAUNCHES[0] - launches == 4
            monkeypatch.setattr(triton_kernels, "_SINGLE_PROGRAM_LIMIT", 10**9)
            single_now = product_step(cell, projected[t], *single_now, single, masks[t],
                                      stored=4)
            assert_equal(staged_now, single_now)
            assert_equal((stack.head, stack.stacked(), stack.hist, stack.pushed),
                         (single.head, single.stacked(), single.hist, single.pushed))
            states.append(staged_now[0])
        monkeypatch.setattr(triton_kernels, "_SINGLE_PROGRAM_LIMIT", 0)
        for t in reversed(range(2)):
            staged_now = product_reverse(cell, projected[t], *staged_now, stack, masks[t],
                                         restored=states[t][0][:, :4])
            assert_equal(staged_now[0], states[t])
    assert int(stack.top) == 0
    stack.check()


def test_a_size_past_the_single_program_limit_reverses_exactly():
    """batch 130 x half 128 (16640 elements > _SINGLE_PROGRAM_LIMIT): staged, one step."""
    cell, stack, state, projected, masks = setup(None, batch=130, hidden=256, steps=1)
    assert 130 * cell.half_sizes[0] > triton_kernels._SINGLE_PROGRAM_LIMIT
    values = tuple(from_fixed(part) for part in state)
    heads = stack.head.clone()
    with torch.no_grad():
        launches = triton_kernels.LAUNCHES[0]
        after = product_step(cell, projected[0], state, values, stack, masks[0], stored=4)
        assert triton_kernels.LAUNCHES[0] - launches == 4 and int(stack.top) > 0
        before = product_reverse(cell, projected[0], *after, stack, masks[0],
                                 restored=state[0][:, :4])
    assert_equal(before, (state, values))
    assert torch.equal(stack.head, heads) and int(stack.top) == 0
    stack.check()
