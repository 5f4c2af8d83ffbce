"""What a reversible run keeps of its exact states (nmt/reversible/kept.py): the final state at
its narrowest exact width, the initial state as a fingerprint; both checked by backward."""
import pytest
import torch

from nmt.reversible import AttentionStorage, MemoryMode, ReversalError, ReversibleRNN
from nmt.reversible.kept import KeptStates, fingerprint, kept_dtype, kept_state_bits


@pytest.mark.parametrize("cell, width", [("revgru", 4), ("revlstm", 8)])
def test_kept_bytes_follow_the_kept_widths_and_match_the_counted_bits(cell, width):
    torch.manual_seed(0)
    rnn = ReversibleRNN(cell, 4, 10, num_layers=2, storage=AttentionStorage("slice", 3, 16))
    initial = torch.rand(2, 5, 10) * 2 - 1
    inputs = torch.randn(5, 7, 4, requires_grad=True)
    state = (initial, initial.clone()) if cell == "revlstm" else initial
    out = rnn(inputs, mode=MemoryMode.REVERSIBLE, initial_state=state)
    parts = rnn.state_parts
    assert out.kept_bytes["state"] == width * 10 * 5 * 2 * (parts // 2)
    assert out.kept_bytes["initial"] == 8 * 5 * 2 * parts + width * 5 * 3  # fingerprints, slice
    final_bits, initial_bits = kept_state_bits(rnn, 5)
    assert (final_bits, initial_bits) == (8 * out.kept_bytes["state"], 8 * out.kept_bytes["initial"])
    assert out.memory.final_state_bits == final_bits
    (out.final[0].sum() + out.stored.sum()).backward()  # reverses from the narrow copy, exactly
    assert out.buffer.is_initial() and inputs.grad is not None


def test_fingerprint_tells_any_single_element_apart():
    torch.manual_seed(1)
    state = [tuple(torch.randint(-2**30, 2**30, (3, 6)) for _ in range(2))]
    reference = fingerprint(state)
    for row, column, delta in ((0, 0, 1), (2, 5, -1), (1, 3, 2**40)):
        changed = [tuple(part.clone() for part in state[0])]
        changed[0][1][row, column] += delta
        differs = (fingerprint(changed) != reference).any(1)
        assert differs.tolist() == [False, True]


def test_a_revgru_state_beyond_int32_is_refused_not_reversed_wrongly():
    """|h| >= 256 does not fit the int32 copy: backward raises instead of a wrong reversal."""
    rnn = ReversibleRNN("revgru", 3, 4, max_forget_bits=1)  # |h| at least halves per step
    assert kept_dtype(rnn) == torch.int32
    inputs = torch.randn(2, 3, 3, requires_grad=True)
    out = rnn(inputs, mode=MemoryMode.REVERSIBLE, initial_state=torch.full((1, 2, 4), 1e5))
    assert out.final_state[0][0].abs().max() >= 2**31  # 1e5 / 8 at least, at radix 23
    with pytest.raises(ReversalError, match="did not fit the width it was kept at"):
        out.final.sum().backward()


def test_check_restored_compares_the_fingerprint():
    from nmt.reversible import InformationBuffer
    from nmt.reversible.checks import check_restored

    rnn = ReversibleRNN("revgru", 3, 6, num_layers=2)
    state = [tuple(torch.randint(-2**20, 2**20, (2, 3)) for _ in range(2)) for _ in range(2)]
    kept = KeptStates.keep(rnn, state, state)
    buffer = InformationBuffer((2, 3))
    check_restored(state, kept, buffer, buffer.mark(), tag="decoder")
    wrong = [state[0], (state[1][0], state[1][1] + 1)]
    with pytest.raises(ReversalError, match=r"reversing decoder was not exact: layer 1's state "
                                            r"restored before step 0 differs"):
        check_restored(wrong, kept, buffer, buffer.mark(), tag="decoder")
