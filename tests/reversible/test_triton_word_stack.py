"""The fused kernels' word stack on the device: a prepared chunk never synchronises with the
host, the stack grows and keeps its words, counts words and gates per tag as the buffer does,
flags a pop below its bottom on the device; and the launch/op counter that shows it."""
import pytest
import torch

from reversible.triton_setup import (BATCH, CELLS, DEVICE, RUNNABLE, STORED, setup_cell,  # first
                                     fused, triton_kernels)

from nmt.reversible.fixed_point import from_fixed

pytestmark = RUNNABLE


def test_a_prepared_chunk_never_reads_the_height():
    """prepare(worst case of a chunk) up front: the chunk's steps then never synchronise."""
    from nmt.reversible.launch_count import OpCounter

    cell, buffer, _, state, projected, masks = setup_cell("revlstm", None)
    stack = fused.word_stack_for(cell, BATCH, device=DEVICE)
    stack.prepare(projected.shape[0] * 4 * BATCH * cell.half_sizes[0])
    counter = OpCounter()
    with counter:
        final, values, _ = fused.run_fused_steps(cell, projected, state, stack, masks)
    assert counter.sync == [] and int(stack.top) > 0
    fused.reverse_fused_steps(cell, projected, final, stack, masks, values=values)
    assert stack.is_initial()


def test_word_stack_grows_and_keeps_its_words():
    """A stack of capacity 1 grows (reading its height once per growth) and keeps the words."""
    cell, buffer, _, state, projected, masks = setup_cell("revgru", None)
    stack = fused.word_stack_for(cell, BATCH, capacity=1, device=DEVICE)
    stack.head.copy_(buffer.head)
    with torch.no_grad():
        for t in range(2):
            ref, _ = cell.step(projected[t], state, tuple(from_fixed(p) for p in state), buffer,
                               masks[t])
            state, _ = fused.step(cell, projected[t], state, stack, masks[t])
            assert all(torch.equal(a, b) for a, b in zip(state, ref))
    assert torch.equal(stack.stacked(), buffer.words()) and buffer.pushed_words() > 1


@pytest.mark.parametrize("name", ["revgru", "revlstm"])
def test_fused_time_step_never_synchronises_and_counts_its_launches(name):
    """Forward, reverse and backward on the fused path: no op reads a device value on the host;
    at most 41 launches per time step (aten compute ops plus Triton kernels; the element-wise
    work is one kernel per half-step and direction)."""
    from nmt.reversible.launch_count import count_fused_time_step

    cell = CELLS[name](32, 64).to(DEVICE)
    counts = count_fused_time_step(cell, 8, stored_units=STORED, steps=2, device=DEVICE)
    assert counts["sync_per_time_step"] == 0
    assert counts["buffer_initial"]
    kernels = sum(counts[phase]["kernels"] for phase in ("forward", "reverse", "backward"))
    assert kernels == (8 if name == "revgru" else 10)
    assert counts["launches_per_time_step"] <= 41
    counts = count_fused_time_step(cell, 8, stored_units=STORED, steps=2, activate=True,
                                   device=DEVICE)
    assert counts["sync_per_time_step"] == 0 and counts["buffer_initial"]
    assert counts["launches_per_time_step"] <= 24


def test_op_counter_sees_a_host_synchronisation():
    from nmt.reversible.launch_count import OpCounter

    counter = OpCounter()
    with counter:
        x = torch.arange(6)
        int(x.sum())
        torch.masked_select(x, x > 2)
    assert len(counter.sync) == 2


def test_words_and_gates_are_counted_per_tag_as_the_buffer_counts_them():
    cell, buffer, stack, state, projected, masks = setup_cell("revlstm", 3)
    fused_state = state
    with torch.no_grad():
        for t, tag in enumerate(["encoder", "decoder", "encoder"]):
            state, _ = cell.step(projected[t], state, tuple(from_fixed(p) for p in state), buffer,
                                 masks[t], tag=tag)
            fused_state, _ = fused.step(cell, projected[t], fused_state, stack, masks[t], tag=tag)
    for tag in ("encoder", "decoder", None):
        assert stack.pushed_words(tag) == buffer.pushed_words(tag)
        assert stack.optimal_bits(tag) == buffer.optimal_bits(tag)
    assert stack.pushed_words("encoder") > 0


@pytest.mark.parametrize("staged", [False, True])
def test_a_pop_below_the_bottom_is_flagged_on_the_device(staged, monkeypatch):
    """One reverse step too many: no host check inside the step; `check` raises afterwards."""
    monkeypatch.setattr(triton_kernels, "_MAX_BLOCK", 64)
    monkeypatch.setattr(triton_kernels, "_SINGLE_PROGRAM_LIMIT", 0 if staged else 10**9)
    cell, _, stack, state, projected, masks = setup_cell("revgru", None, random_heads=False)
    after, values = fused.step(cell, projected[0], state, stack, masks[0])
    before, values = fused.reverse(cell, projected[0], after, stack, masks[0], values=values)
    stack.check()
    assert stack.is_initial()
    fused.reverse(cell, projected[1], before, stack, masks[1], values=values)
    with pytest.raises(RuntimeError, match="more words than the stack held"):
        stack.check()
