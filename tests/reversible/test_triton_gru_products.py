"""RevGRU half-steps with the hidden products inside the kernels (`triton_gru_products`): bit for
bit the `activate=True` driver of fused.py when its torch products are replaced by test-side
kernels that call the same row-block jit functions; exact reversal (also staged); autograd's
gradients; two launches per layer-step and direction, and no aten compute op."""
import pytest
import torch

from reversible.triton_setup import DEVICE, R, RUNNABLE, fused, tl, triton, triton_kernels  # first

from nmt.reversible import triton_gru_products as products
from nmt.reversible import triton_gru_products_jit as pj
from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.cells import RevGRUCell
from nmt.reversible.fixed_point import from_fixed, min_forget_numerator
from nmt.reversible.launch_count import OpCounter

pytestmark = RUNNABLE

INPUT, HIDDEN, BATCH, STORED = 5, 37, 9, 4  # halves of 19 and 18 units


def _setup(max_forget_bits, *, seed=0, steps=3, random_heads=True, hidden=HIDDEN, batch=BATCH):
    """A forgetful RevGRU cell, a word stack, a state, projected inputs and padding masks."""
    torch.manual_seed(seed)
    cell = RevGRUCell(INPUT, hidden, max_forget_bits=max_forget_bits).to(DEVICE)
    with torch.no_grad():  # small forget gates: words spill early
        for layer in cell.gates:
            layer.bias[: cell.half_sizes[0]] -= 1.5
    generator = torch.Generator().manual_seed(seed)
    stack = fused.word_stack_for(cell, batch, device=DEVICE)
    if random_heads:
        stack.head.copy_(torch.randint(2**R, 2**(R + 16), tuple(stack.head.shape),
                                       generator=generator).to(torch.int32).to(DEVICE))
    state = tuple(torch.randint(-2**23, 2**23, (batch, size), generator=generator).to(DEVICE)
                  for size in cell.half_sizes)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    masks = (torch.arange(steps).view(-1, 1) < lengths.view(1, -1)).to(DEVICE)
    with torch.no_grad():
        projected = cell.project_input(
            torch.randn(steps, batch, INPUT, generator=generator).to(DEVICE))
    return cell, stack, state, projected, masks


def _copy_stack(stack):
    other = triton_kernels.WordStack(tuple(stack.head.shape), device=DEVICE)
    other.head.copy_(stack.head)
    return other


# -- the drivers of a whole step from the half-steps -----------------------------------------------

def _step(cell, projected, state, values, stack, mask, stored=0, precision=32):
    exact, floats = list(state), list(values)
    pieces = cell.split_projection(projected)
    for half in (0, 1):
        products.gru_forward_half(cell, half, pieces, exact, floats, stack, mask,
                                  n_min=min_forget_numerator(cell.max_forget_bits),
                                  stored=stored if half == 0 else 0, precision=precision)
    return tuple(exact), tuple(floats)


def _reverse(cell, projected, state, values, stack, mask, restored=None, tape=None):
    exact, floats = list(state), list(values)
    pieces = cell.split_projection(projected)
    for half in (1, 0):
        products.gru_reverse_half(cell, half, pieces, exact, floats, stack, mask,
                                  n_min=min_forget_numerator(cell.max_forget_bits),
                                  restored=restored if half == 0 else None, tape=tape)
    return tuple(exact), tuple(floats)


def _backward(cell, tape, grads, mask, extra=None):
    d = list(grads)
    inputs = [None] * 4
    d_projected, pieces = fused._d_projected(cell, d[0])
    for entry in tape:
        products.gru_backward_half(cell, entry, d, inputs, pieces, mask,
                                   n_min=min_forget_numerator(cell.max_forget_bits), extra=extra)
        extra = None
    return d, d_projected, inputs


# -- test-side product kernels: the same jit functions, the same block shapes ----------------------

@triton.jit
def _gate_product_kernel(other_ptr, other_stride, gate_ptr, gate_stride, wg_ptr, wg_stride,
                         out_ptr, rows, own, k_size, RB: tl.constexpr, OP: tl.constexpr,
                         KC: tl.constexpr):
    row = tl.program_id(0) * RB + tl.arange(0, RB)
    forget = pj._gru_forget_logits(other_ptr, other_stride, gate_ptr, gate_stride, row, rows,
                                   wg_ptr, wg_stride, own, k_size, KC, OP)
    pj._store_rows(out_ptr, own + k_size, row, rows, own, forget, OP)
    for c0 in range(0, k_size, KC):
        reset = pj._gru_reset_logits(c0, other_ptr, other_stride, gate_ptr, gate_stride, row,
                                     rows, wg_ptr, wg_stride, own, k_size, KC)
        pj._store_rows(out_ptr + own + c0, own + k_size, row, rows, k_size - c0, reset, KC)


@triton.jit
def _candidate_product_kernel(ro_ptr, ro_stride, cand_ptr, cand_stride, wc_ptr, wc_stride,
                              out_ptr, rows, own, k_size, RB: tl.constexpr, OP: tl.constexpr,
                              KC: tl.constexpr):
    row = tl.program_id(0) * RB + tl.arange(0, RB)
    cand = pj._times_weight_t_chunks(pj._load_rows(cand_ptr, cand_stride, row, rows, own, OP),
                                     ro_ptr, ro_stride, row, rows, k_size, wc_ptr, wc_stride, own,
                                     KC, OP)
    pj._store_rows(out_ptr, own, row, rows, own, cand, OP)


@triton.jit
def _d_reset_other_kernel(a_ptr, a_stride, wc_ptr, wc_stride, out_ptr, rows, own, k_size,
                          RB: tl.constexpr, OP: tl.constexpr, KC: tl.constexpr):
    row = tl.program_id(0) * RB + tl.arange(0, RB)
    a = pj._load_rows(a_ptr, a_stride, row, rows, own, OP)
    for c0 in range(0, k_size, KC):
        product = pj._times_weight(a, wc_ptr + c0, wc_stride, own, k_size - c0, OP, KC)
        pj._store_rows(out_ptr + c0, k_size, row, rows, k_size - c0, product, KC)


@triton.jit
def _gate_grad_kernel(c_ptr, c_stride, dl_ptr, dl_stride, wg_ptr, wg_stride, out_ptr, rows, own,
                      k_size, RB: tl.constexpr, OP: tl.constexpr, KC: tl.constexpr):
    row = tl.program_id(0) * RB + tl.arange(0, RB)
    d_forget = pj._load_rows(dl_ptr, dl_stride, row, rows, own, OP)
    for c0 in range(0, k_size, KC):
        total = pj._gate_grad_chunk(pj._load_rows(c_ptr + c0, c_stride, row, rows, k_size - c0,
                                                  KC),
                                    d_forget, dl_ptr, dl_stride, row, rows, wg_ptr, wg_stride,
                                    own, k_size, c0, OP, KC)
        pj._store_rows(out_ptr + c0, k_size, row, rows, k_size - c0, total, KC)


def _shape(own, k_size):
    return dict(RB=products._ROW_BLOCK, OP=products._pad(own), KC=products._K_CHUNK)


def _kernel_products(cell, monkeypatch):
    """Replace fused's torch products (own_product, d_cand.mm(Wc), addmm(., d_logits, Wg)) by
    the test-side kernels above."""
    def own_product(layer, piece, x):
        weight = cell.hidden_weight(layer)
        rows, k_size = x.shape
        gate = any(layer is g for g in cell.gates)
        own = weight.shape[0] - k_size if gate else weight.shape[0]
        out = torch.empty((rows, weight.shape[0]), device=x.device)
        kernel = _gate_product_kernel if gate else _candidate_product_kernel
        kernel[(triton.cdiv(rows, products._ROW_BLOCK),)](
            x, x.stride(0), piece, piece.stride(0), weight, weight.stride(0), out, rows, own,
            k_size, **_shape(own, k_size))
        return out

    def mm(a, w):
        rows, (own, k_size) = a.shape[0], w.shape
        out = torch.empty((rows, k_size), device=a.device)
        _d_reset_other_kernel[(triton.cdiv(rows, products._ROW_BLOCK),)](
            a, a.stride(0), w, w.stride(0), out, rows, own, k_size, **_shape(own, k_size))
        return out

    def addmm(c, d_logits, w):
        rows, k_size = c.shape
        own = w.shape[0] - k_size
        out = torch.empty((rows, k_size), device=c.device)
        c = c.contiguous()
        _gate_grad_kernel[(triton.cdiv(rows, products._ROW_BLOCK),)](
            c, c.stride(0), d_logits, d_logits.stride(0), w, w.stride(0), out, rows, own, k_size,
            **_shape(own, k_size))
        return out

    monkeypatch.setattr(cell, "own_product", own_product)
    monkeypatch.setattr(torch.Tensor, "mm", mm)
    monkeypatch.setattr(torch, "addmm", addmm)


def _equal_tensors(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        if isinstance(a, torch.Tensor):
            assert a.shape == b.shape and torch.equal(a, b)
        else:
            assert a == b


@pytest.mark.parametrize("stored, precision", [(0, 32), (STORED, 32), (STORED, 16)])
@pytest.mark.parametrize("max_forget_bits", [1, 3, None])
def test_products_in_the_kernels_equal_the_driver_bit_for_bit(max_forget_bits, stored, precision,
                                                              monkeypatch):
    _check_against_driver(max_forget_bits, stored, precision, BATCH, monkeypatch)


def test_row_blocks_equal_the_driver_bit_for_bit(monkeypatch):
    """35 rows: three row blocks (the last partial), walked in order and back."""
    _check_against_driver(3, STORED, 16, 35, monkeypatch)


def _check_against_driver(max_forget_bits, stored, precision, batch, monkeypatch):
    cell, stack, state, projected, masks = _setup(max_forget_bits, batch=batch)
    assert not masks.all() and masks[0].all()  # some padded rows
    reference = _copy_stack(stack)
    ours, ref = state, state
    our_values = ref_values = tuple(from_fixed(p) for p in state)
    kept = []
    with torch.no_grad():
        for t in range(projected.shape[0]):
            kept.append(ours[0][:, :stored])
            ours, our_values = _step(cell, projected[t], ours, our_values, stack, masks[t],
                                     stored, precision)
            with monkeypatch.context() as patch:
                _kernel_products(cell, patch)
                ref, ref_values = fused.step(cell, projected[t], ref, reference, masks[t],
                                             values=ref_values, stored_units=stored,
                                             precision=precision, activate=True)
            _equal_tensors(ours + our_values, ref + ref_values)
            assert torch.equal(stack.head, reference.head)
            assert torch.equal(stack.stacked(), reference.stacked())
            assert torch.equal(stack.hist, reference.hist)
            assert int(stack.pushed) == int(reference.pushed)
        assert int(stack.top) > 0
        generator = torch.Generator().manual_seed(5)
        grads = ref_grads = [torch.randn(v.shape, generator=generator).to(DEVICE)
                             for v in our_values]
        for t in reversed(range(projected.shape[0])):
            restored = kept[t] if stored else None
            after = ours
            tape, ref_tape = [], []
            ours, our_values = _reverse(cell, projected[t], ours, our_values, stack, masks[t],
                                        restored, tape)
            grads, d_projected, inputs = _backward(cell, tape, grads, masks[t])
            with monkeypatch.context() as patch:
                _kernel_products(cell, patch)
                ref, ref_values = fused.reverse(cell, projected[t], ref, reference, masks[t],
                                                values=ref_values, restored=restored,
                                                tape=ref_tape, activate=True)
                ref_grads, ref_d_projected, ref_inputs = fused.backward_step(
                    cell, ref_tape, ref_grads, masks[t], activate=True)
            _equal_tensors(ours + our_values, ref + ref_values)
            assert torch.equal(stack.head, reference.head) and int(stack.top) == int(reference.top)
            for entry, ref_entry in zip(tape, ref_tape):
                _equal_tensors(entry, ref_entry)
            _equal_tensors(grads, ref_grads)
            assert torch.equal(d_projected, ref_d_projected)
            _equal_tensors(inputs, ref_inputs)
            # the tape recomputed without the stack: the same entries
            pieces = cell.split_projection(projected[t])
            recomputed = [products.gru_tape_entry(cell, 1, pieces, from_fixed(after[0]),
                                                  from_fixed(ours[1])),
                          products.gru_tape_entry(cell, 0, pieces, from_fixed(ours[1]),
                                                  from_fixed(ours[0]))]
            for entry, again in zip(tape, recomputed):
                _equal_tensors(entry, again)
    assert all(torch.equal(a, b) for a, b in zip(ours, state))
    assert int(stack.top) == 0


def test_many_steps_reverse_to_the_initial_state_and_stack():
    cell, stack, state, projected, masks = _setup(None, steps=6, random_heads=False, seed=1)
    values = tuple(from_fixed(p) for p in state)
    exact, kept = state, []
    with torch.no_grad():
        for t in range(projected.shape[0]):
            kept.append(exact[0][:, :STORED])
            exact, values = _step(cell, projected[t], exact, values, stack, masks[t], STORED, 16)
        assert int(stack.top) > 0
        for t in reversed(range(projected.shape[0])):
            exact, values = _reverse(cell, projected[t], exact, values, stack, masks[t],
                                     kept[t])
    assert all(torch.equal(a, b) for a, b in zip(exact, state))
    assert stack.is_initial() and int(stack.error) == 0


@pytest.mark.parametrize("max_forget_bits", [1, None])
def test_backward_matches_autograd(max_forget_bits):
    cell, stack, state, projected, masks = _setup(max_forget_bits, random_heads=False)
    mask = masks[-1]
    assert not mask.all()
    generator = torch.Generator().manual_seed(3)
    weights = [torch.randn(part.shape, generator=generator).to(DEVICE) for part in state]
    values = tuple(from_fixed(part).requires_grad_() for part in state)
    x = projected[0].detach().requires_grad_()
    buffer = InformationBuffer((BATCH, cell.half_sizes[0]), native=False, device=DEVICE)
    layers = cell.input_layers()
    _, floats = cell.step(x, state, values, buffer, mask, stored_units=STORED)
    loss = sum((w * f).sum() for w, f in zip(weights, floats))
    ref = torch.autograd.grad(loss, [*values, x] + [layer.weight for layer in layers])
    with torch.no_grad():
        after, after_values = _step(cell, projected[0], state,
                                    tuple(v.detach() for v in values), stack, mask, STORED)
        tape = []
        before, _ = _reverse(cell, projected[0], after, after_values, stack, mask,
                             state[0][:, :STORED], tape)
        assert all(torch.equal(a, b) for a, b in zip(before, state))
        d, d_projected, inputs = _backward(cell, tape, weights, mask)
    for ours, theirs in zip(d, ref[:2]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(d_projected, ref[2], rtol=1e-4, atol=1e-6)
    pieces = d_projected.split([layer.out_features for layer in layers], dim=-1)
    for piece, inp, theirs in zip(pieces, inputs, ref[3:]):
        torch.testing.assert_close(piece.t().mm(inp), theirs[:, cell.input_size:], rtol=1e-4,
                                   atol=1e-6)


@pytest.mark.parametrize("max_forget_bits", [1, None])
def test_extra_added_in_the_kernel_equals_adding_it_before(max_forget_bits):
    """The readout's gradient, added by the first backward launch (a strided (rows, H) view,
    as backprop passes top_grads[:, i]), gives the bits of adding it to d with torch first."""
    cell, stack, state, projected, masks = _setup(max_forget_bits, random_heads=False)
    mask = masks[-1]
    assert not mask.all()
    generator = torch.Generator().manual_seed(5)
    grads = [torch.randn(part.shape, generator=generator).to(DEVICE) for part in state]
    extra = torch.randn(BATCH, 3, HIDDEN, generator=generator).to(DEVICE)[:, 1]
    first = cell.half_sizes[0]
    with torch.no_grad():
        after = _step(cell, projected[0], state, tuple(from_fixed(p) for p in state), stack,
                      mask, STORED)
        tape = []
        _reverse(cell, projected[0], *after, stack, mask, state[0][:, :STORED], tape)
        ours = _backward(cell, tape, grads, mask, extra)
        theirs = _backward(cell, tape, [grads[0] + extra[:, :first], grads[1] + extra[:, first:]],
                           mask)
    for a, b in zip(ours[0] + [ours[1]] + ours[2], theirs[0] + [theirs[1]] + theirs[2]):
        assert torch.equal(a, b)  # the same float32 sums in the same order


def test_two_launches_per_layer_step_and_direction_and_no_aten_compute():
    cell, stack, state, projected, masks = _setup(3, random_heads=False)
    stack.prepare(10 * BATCH * HIDDEN)  # no growth (a read of the height) inside the step
    values = tuple(from_fixed(p) for p in state)
    measured = {}

    def measure(phase, run):
        counter, launches = OpCounter(), triton_kernels.LAUNCHES[0]
        with counter:
            result = run()
        measured[phase] = (triton_kernels.LAUNCHES[0] - launches, counter.compute,
                           len(counter.sync))
        return result

    mask = masks[0].view(torch.uint8)
    with torch.no_grad():
        after, after_values = measure("forward", lambda: _step(
            cell, projected[0], state, values, stack, mask, STORED))
        tape = []
        measure("reverse", lambda: _reverse(cell, projected[0], after, after_values, stack, mask,
                                            state[0][:, :STORED], tape))
        measure("backward", lambda: _backward(cell, tape, list(after_values), mask))
    assert measured == {phase: (2, 0, 0) for phase in ("forward", "reverse", "backward")}


@pytest.mark.parametrize("staged", [False, True])
def test_staged_size_matches_one_program_and_reverses(staged, monkeypatch):
    """130 rows x 128 units: past the single-program limit, one program per row block and a
    second launch placing (popping) the words; the same words in the same order as one program
    walking all nine row blocks, and an exact reversal."""
    cell, stack, state, projected, masks = _setup(None, steps=1, hidden=256, batch=130)
    assert 130 * 128 > triton_kernels._SINGLE_PROGRAM_LIMIT
    single = _copy_stack(stack)
    heads = stack.head.clone()
    values = tuple(from_fixed(p) for p in state)
    monkeypatch.setattr(products, "_K_CHUNK", 64)  # fewer, larger products: the interpreter's
    with torch.no_grad():  # time goes to their count (the other tests cover partial chunks)
        if not staged:
            monkeypatch.setattr(triton_kernels, "_SINGLE_PROGRAM_LIMIT", 10**9)
        launches = triton_kernels.LAUNCHES[0]
        after, after_values = _step(cell, projected[0], state, values, stack, masks[0], STORED)
        assert triton_kernels.LAUNCHES[0] - launches == (4 if staged else 2)
        monkeypatch.setattr(triton_kernels, "_SINGLE_PROGRAM_LIMIT", 10**9)
        one, one_values = _step(cell, projected[0], state, values, single, masks[0], STORED)
        _equal_tensors(after + after_values, one + one_values)
        assert torch.equal(stack.head, single.head)
        assert torch.equal(stack.stacked(), single.stacked()) and int(stack.top) > 0
        assert int(stack.pushed) == int(single.pushed)
        if staged:
            monkeypatch.setattr(triton_kernels, "_SINGLE_PROGRAM_LIMIT", 16384)
        before, _ = _reverse(cell, projected[0], after, after_values, stack, masks[0],
                             state[0][:, :STORED])
    assert all(torch.equal(a, b) for a, b in zip(before, state))
    assert torch.equal(stack.head, heads) and int(stack.top) == 0 and int(stack.error) == 0
