"""The fused Triton half-steps (run by Triton's interpreter on the CPU) give the tensor path's
integers bit for bit -- states, float views, heads, words and their order, gate counts -- reverse
exactly, and their backward step gives autograd's gradients.

On a GPU: REVNMT_TRITON_TEST_DEVICE=cuda TRITON_INTERPRET=0 runs the same tests compiled, on CUDA
tensors, plus the one claim only a GPU can show (activations inside the kernels equal torch's).
"""
import pytest
import torch

from reversible.triton_setup import (BATCH, CELLS, DEVICE, R, RUNNABLE, STORED,  # first: triton
                                     InformationBuffer, assert_same_buffer, setup_cell, fused, tl, triton,
                                     triton_kernels)

from nmt.reversible import triton_arith
from nmt.reversible.fixed_point import forget_gate, from_fixed

pytestmark = RUNNABLE


@triton.jit
def _helpers_kernel(a_ptr, n_ptr, y_ptr, q_ptr, r_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + offs)
    n = tl.load(n_ptr + offs)
    q = triton_arith._floor_div(a, n)
    tl.store(q_ptr + offs, q)
    tl.store(r_ptr + offs, triton_arith._rint(tl.load(y_ptr + offs)))


def test_floor_division_and_rounding_handle_negative_values():
    """Triton's // truncates toward zero; the helpers floor (division) and round half to even."""
    generator = torch.Generator().manual_seed(0)
    a = torch.cat([torch.tensor([-7, 7, -8, 8, -1, 0, -2**40 - 3, 2**40 + 3]),
                   torch.randint(-2**45, 2**45, (56,), generator=generator)])
    n = torch.cat([torch.tensor([2, 2, 4, 4, 3, 3, 1024, 1000]),
                   torch.randint(1, 2**R + 1, (56,), generator=generator)])
    y = torch.cat([torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -0.49999997, 8388607.5]),
                   torch.randn(56, generator=generator) * 2**23])
    a, n, y = a.to(DEVICE), n.to(DEVICE), y.to(DEVICE)
    q, r = torch.empty_like(a), torch.empty_like(a)
    _helpers_kernel[(1,)](a, n, y, q, r, BLOCK=64)
    assert torch.equal(q, torch.div(a, n, rounding_mode="floor"))
    assert torch.equal(r, torch.round(y).to(torch.int64))


@pytest.mark.parametrize("width", [9, 6])  # 6: a state narrower than the buffer
@pytest.mark.parametrize("magnitude", [2**24, 2**40])
def test_raw_half_steps_match_the_buffer(width, magnitude):
    """forget / unforget with no update: the same outputs, heads and words as InformationBuffer,
    for negative and large states, with a padding mask."""
    generator = torch.Generator().manual_seed(width)
    reference = InformationBuffer((6, 9), native=False, device=DEVICE)
    stack = triton_kernels.WordStack((6, 9), device=DEVICE)
    mask = torch.tensor([True, True, False, True, True, False], device=DEVICE)
    zero = torch.zeros(6, width, device=DEVICE)
    states = [torch.randint(-magnitude, magnitude, (6, width), generator=generator).to(DEVICE)]
    gates = []
    for step in range(12):
        logits = (torch.randn(6, width, generator=generator) * 3 - 2).to(DEVICE)
        _, n = forget_gate(logits, None)
        n = torch.where(mask.view(-1, 1), n, 2**R)
        out, value = triton_kernels.gated_forward(states[-1], torch.sigmoid(logits), zero, stack,
                                                  mode=triton_kernels.MODE_PRODUCT, a=zero,
                                                  mask=mask, n_min=1)
        assert torch.equal(out, reference.forget(states[-1], n))
        assert torch.equal(value, from_fixed(out))
        assert torch.equal(stack.head, reference.head)
        assert torch.equal(stack.stacked(), reference.words())
        states.append(out)
        gates.append(logits)
    h = states.pop()
    for logits in reversed(gates):
        h, _ = triton_kernels.gated_reverse(h, torch.sigmoid(logits), zero, stack,
                                            mode=triton_kernels.MODE_PRODUCT, a=zero, mask=mask,
                                            n_min=1)
        assert torch.equal(h, states.pop())
    assert stack.is_initial()
    assert int(stack.pushed) == reference.pushed_words() > 0


@pytest.mark.parametrize("precision", [32, 16])
@pytest.mark.parametrize("max_forget_bits", [1, 3, None])
@pytest.mark.parametrize("name", ["revgru", "revlstm"])
def test_fused_steps_match_the_tensor_path_bit_for_bit(name, max_forget_bits, precision):
    _check_steps_and_reversal(name, max_forget_bits, precision)


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("name", ["revgru", "revlstm"])
def test_blocks_keep_the_word_order(name, staged, monkeypatch):
    """Many blocks of 64 elements: one program walking them in order (reverse: last first), or
    one program per block staging its words and a second launch placing them after the words
    of the blocks before (reverse: popping below those after): either way the same words in the
    same order as the tensor path."""
    monkeypatch.setattr(triton_kernels, "_MAX_BLOCK", 64)
    monkeypatch.setattr(triton_kernels, "_SINGLE_PROGRAM_LIMIT", 0 if staged else 10**9)
    launches = triton_kernels.LAUNCHES[0]
    _check_steps_and_reversal(name, None, 32)
    gated = 3 * 2 * 2 * (1 if name == "revgru" else 2)  # steps, directions, halves, kernels
    assert triton_kernels.LAUNCHES[0] - launches == gated * (2 if staged else 1)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="only a GPU can show it: torch's CPU sigmoid "
                    "depends on an element's position in a vectorised loop, no kernel can match it")
@pytest.mark.parametrize("precision", [32, 16])
@pytest.mark.parametrize("max_forget_bits", [1, 3, None])
@pytest.mark.parametrize("name", ["revgru", "revlstm"])
def test_activated_kernels_match_the_tensor_path_on_cuda(name, max_forget_bits, precision):
    """activate=True: libdevice's sigmoid and tanh in the kernels equal torch's CUDA ones, so the
    integers equal the tensor path's bit for bit here too."""
    _check_steps_and_reversal(name, max_forget_bits, precision, activate=True)


def _check_steps_and_reversal(name, max_forget_bits, precision, activate=False):
    cell, buffer, stack, state, projected, masks = setup_cell(name, max_forget_bits)
    states, fused_state, values = [state], state, None
    with torch.no_grad():
        for t in range(projected.shape[0]):
            exact = states[-1]
            ref_state, ref_values = cell.step(projected[t], exact,
                                              tuple(from_fixed(p) for p in exact), buffer,
                                              masks[t], stored_units=STORED, precision=precision)
            fused_state, values = fused.step(cell, projected[t], fused_state, stack, masks[t],
                                             values=values, stored_units=STORED,
                                             precision=precision, activate=activate)
            for ours, theirs in zip(fused_state + values, ref_state + ref_values):
                assert torch.equal(ours, theirs)
            assert_same_buffer(stack, buffer)
            states.append(ref_state)
        assert buffer.pushed_words() > 0
        for t in reversed(range(projected.shape[0])):
            restored = states[t][0][:, :STORED]
            ref_state = cell.reverse(projected[t], states[t + 1], buffer, masks[t],
                                     restored=restored)
            fused_state, values = fused.reverse(cell, projected[t], fused_state, stack, masks[t],
                                                values=values, restored=restored,
                                                activate=activate)
            for ours, theirs, before in zip(fused_state, ref_state, states[t]):
                assert torch.equal(ours, theirs) and torch.equal(ours, before)
            assert torch.equal(stack.head, buffer.head)
            assert torch.equal(stack.stacked(), buffer.words())
    assert int(stack.top) == 0


@pytest.mark.parametrize("name", ["revgru", "revlstm"])
def test_multi_step_forward_then_reverse_ends_at_the_initial_buffer(name):
    cell, _, stack, state, projected, masks = setup_cell(name, None, steps=6, random_heads=False)
    final, values, kept = fused.run_fused_steps(cell, projected, state, stack, masks,
                                                stored_units=STORED)
    assert int(stack.top) > 0
    back, _, _ = fused.reverse_fused_steps(cell, projected, final, stack, masks, kept=kept,
                                        values=values)
    assert all(torch.equal(a, b) for a, b in zip(back, state))
    assert stack.is_initial()


def _autograd_reference(cell, projected, state, mask, weights, precision):
    """Gradients of sum(w * float state after one step) by autograd through `cell.step`."""
    values = tuple(from_fixed(part).requires_grad_() for part in state)
    projected = projected.detach().requires_grad_()
    buffer = InformationBuffer((BATCH, cell.half_sizes[0]), native=False, device=DEVICE)
    layers = cell.input_layers()
    _, floats = cell.step(projected, state, values, buffer, mask, stored_units=STORED,
                          precision=precision)
    loss = sum((w * f).sum() for w, f in zip(weights, floats))
    grads = torch.autograd.grad(loss, [*values, projected] + [layer.weight for layer in layers])
    hidden = [grad[:, cell.input_size:] for grad in grads[len(values) + 1:]]
    return list(grads[: len(values)]), grads[len(values)], hidden


@pytest.mark.parametrize("max_forget_bits", [1, 3, None])
@pytest.mark.parametrize("name", ["revgru", "revlstm"])
def test_fused_backward_matches_autograd(name, max_forget_bits):
    cell, _, stack, state, projected, masks = setup_cell(name, max_forget_bits, random_heads=False)
    mask = masks[1]  # some rows padded
    assert not mask.all()
    generator = torch.Generator().manual_seed(3)
    weights = [torch.randn(part.shape, generator=generator).to(DEVICE) for part in state]
    d_ref, d_projected_ref, hidden_ref = _autograd_reference(cell, projected[0], state, mask,
                                                             weights, 32)
    after, values = fused.step(cell, projected[0], state, stack, mask, stored_units=STORED)
    tape = []
    before, _ = fused.reverse(cell, projected[0], after, stack, mask, values=values,
                              restored=state[0][:, :STORED], tape=tape)
    assert all(torch.equal(a, b) for a, b in zip(before, state))
    d, d_projected, inputs = fused.backward_step(cell, tape, weights, mask)
    for ours, theirs in zip(d, d_ref):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(d_projected, d_projected_ref, rtol=1e-4, atol=1e-6)
    pieces = d_projected.split([layer.out_features for layer in cell.input_layers()], dim=-1)
    for piece, inp, theirs in zip(pieces, inputs, hidden_ref):
        torch.testing.assert_close(piece.t().mm(inp), theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("precision", [32, 16])
@pytest.mark.parametrize("name", ["revgru", "revlstm"])
def test_activations_in_the_kernels_equal_the_kernels_fed_their_activations(name, precision,
                                                                             monkeypatch):
    """activate=True (sigmoid and tanh inside the kernels) gives, bit for bit, what the plain
    kernels give when torch's sigmoid and tanh are replaced by the kernels' formula: states,
    views, heads, words, the reversal and the backward step."""
    cell, _, stack, state, projected, masks = setup_cell(name, 3, steps=3)
    plain = triton_kernels.WordStack(tuple(stack.head.shape), device=DEVICE)
    plain.head.copy_(stack.head)
    activated_state, plain_state = state, state
    activated_values = plain_values = None
    sigmoid, tanh = torch.sigmoid, torch.tanh
    kernel_sigmoid = triton_kernels.activation
    kernel_tanh = lambda x: triton_kernels.activation(x, tanh=True)  # noqa: E731
    kept = []
    with torch.no_grad():
        for t in range(projected.shape[0]):
            kept.append(activated_state[0][:, :STORED])
            activated_state, activated_values = fused.step(
                cell, projected[t], activated_state, stack, masks[t], values=activated_values,
                stored_units=STORED, precision=precision, activate=True)
            monkeypatch.setattr(torch, "sigmoid", kernel_sigmoid)
            monkeypatch.setattr(torch, "tanh", kernel_tanh)
            plain_state, plain_values = fused.step(
                cell, projected[t], plain_state, plain, masks[t], values=plain_values,
                stored_units=STORED, precision=precision)
            monkeypatch.setattr(torch, "sigmoid", sigmoid)
            monkeypatch.setattr(torch, "tanh", tanh)
            for ours, theirs in zip(activated_state + activated_values, plain_state + plain_values):
                assert torch.equal(ours, theirs)
            assert torch.equal(stack.head, plain.head)
            assert torch.equal(stack.stacked(), plain.stacked())
    assert int(stack.top) > 0
    generator = torch.Generator().manual_seed(5)
    grads = activated_grads = [torch.randn(v.shape, generator=generator).to(DEVICE)
                               for v in plain_values]
    for t in reversed(range(projected.shape[0])):
        tape, plain_tape = [], []
        activated_state, activated_values = fused.reverse(
            cell, projected[t], activated_state, stack, masks[t], values=activated_values,
            restored=kept[t], tape=tape, activate=True)
        activated_grads, d_activated, _ = fused.backward_step(cell, tape, activated_grads,
                                                              masks[t], activate=True)
        monkeypatch.setattr(torch, "sigmoid", kernel_sigmoid)
        monkeypatch.setattr(torch, "tanh", kernel_tanh)
        plain_state, plain_values = fused.reverse(
            cell, projected[t], plain_state, plain, masks[t], values=plain_values,
            restored=kept[t], tape=plain_tape)
        monkeypatch.setattr(torch, "sigmoid", sigmoid)
        monkeypatch.setattr(torch, "tanh", tanh)
        grads, d_plain, _ = fused.backward_step(cell, plain_tape, grads, masks[t])
        for ours, theirs in zip(activated_state + activated_values, plain_state + plain_values):
            assert torch.equal(ours, theirs)
        assert all(torch.equal(a, b) for a, b in zip(activated_grads, grads))
        assert torch.equal(d_activated, d_plain)
    assert all(torch.equal(a, b) for a, b in zip(activated_state, state))
    assert torch.equal(stack.head, plain.head) and int(stack.top) == 0


@pytest.mark.parametrize("name", ["revgru", "revlstm"])
def test_activated_steps_reverse_to_the_initial_buffer(name):
    cell, _, stack, state, projected, masks = setup_cell(name, None, steps=5, random_heads=False)
    final, values, kept = fused.run_fused_steps(cell, projected, state, stack, masks,
                                                stored_units=STORED, precision=16, activate=True)
    assert int(stack.top) > 0
    back, _, _ = fused.reverse_fused_steps(cell, projected, final, stack, masks, kept=kept,
                                        values=values, activate=True)
    assert all(torch.equal(a, b) for a, b in zip(back, state))
    assert stack.is_initial()


@pytest.mark.parametrize("hidden, batch, stored", [(2, 1, 0), (5, 3, 3), (4, 2, 1)])
@pytest.mark.parametrize("name", ["revgru", "revlstm"])
def test_small_and_edge_shapes_match_the_tensor_path(name, hidden, batch, stored):
    """Halves of one unit, a single row, every unit of h1 stored: the same integers."""
    torch.manual_seed(hidden)
    cell = CELLS[name](3, hidden, max_forget_bits=None).to(DEVICE)
    generator = torch.Generator().manual_seed(batch)
    buffer = InformationBuffer((batch, cell.half_sizes[0]), native=False, device=DEVICE)
    stack = fused.word_stack_for(cell, batch, device=DEVICE)
    heads = torch.randint(2**R, 2**(R + 16), buffer.shape, generator=generator).to(torch.int32)
    buffer.head.copy_(heads.to(DEVICE))
    stack.head.copy_(heads.to(DEVICE))
    state = tuple(torch.randint(-2**24, 2**24, (batch, size), generator=generator).to(DEVICE)
                  for size in cell.half_sizes * (cell.state_parts // 2))
    mask = (torch.arange(batch) % 2 == 0).to(DEVICE)
    with torch.no_grad():
        projected = cell.project_input(torch.randn(batch, 3, generator=generator).to(DEVICE))
        ref, _ = cell.step(projected, state, tuple(from_fixed(p) for p in state), buffer, mask,
                           stored_units=stored, precision=16)
    out, values = fused.step(cell, projected, state, stack, mask, stored_units=stored,
                             precision=16)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    assert_same_buffer(stack, buffer)
    back, _ = fused.reverse(cell, projected, out, stack, mask, values=values,
                            restored=state[0][:, :stored] if stored else None)
    assert all(torch.equal(a, b) for a, b in zip(back, state))
    assert torch.equal(stack.head, heads.to(DEVICE)) and int(stack.top) == 0
