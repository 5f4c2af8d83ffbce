"""Counted memory: normal, used and optimal bits of a run (docs/design.md, "Memory accounting")."""
import pytest
import torch

from nmt.reversible.sequence import MemoryMode, ReversibleRNN
from nmt.reversible.storage import AttentionStorage


def _forward(rnn, inputs, mask=None):
    with torch.no_grad():
        return rnn(inputs, mask, mode=MemoryMode.REVERSIBLE)


@pytest.mark.parametrize("k", [1, 3, None])
@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_used_bits_stay_within_48_bits_per_element_of_the_optimum_at_1000_steps(cell, k):
    torch.manual_seed(40)
    rnn = ReversibleRNN(cell, 4, 9, max_forget_bits=k)
    batch = 6
    out = _forward(rnn, torch.randn(batch, 1000, 4) * 3)
    memory, elements = out.memory, out.buffer.num_elements
    assert elements == batch * 5
    # information kept = optimal + 10 bits of initial head per element <= 26-bit heads + words
    assert memory.optimal_bits < memory.used_bits <= memory.optimal_bits + 48 * elements
    states = memory.final_state_bits + memory.initial_state_bits
    assert memory.used_bits == memory.buffer_head_bits + memory.buffer_word_bits + states
    assert memory.words_only_bits == memory.buffer_word_bits
    width = 32 if cell == "revgru" else 64  # the kept final state: int32 where it is bounded
    assert memory.final_state_bits == width * 9 * batch * (1 if cell == "revgru" else 2)
    assert memory.initial_state_bits == 64 * batch * rnn.state_parts  # fingerprints only


def test_counts_follow_real_steps_layers_cells_and_storage():
    torch.manual_seed(41)
    lengths = torch.tensor([7, 3, 5])
    mask = torch.arange(7)[None] < lengths[:, None]
    rnn = ReversibleRNN("revlstm", 4, 10, num_layers=2, max_forget_bits=2,
                        storage=AttentionStorage("slice", 3, 16))
    out = _forward(rnn, torch.randn(3, 7, 4), mask)
    memory = out.memory
    real = 15
    assert memory.normal_bits == 32 * 10 * real * 2 * 2  # 32 bits x H x steps x layers x (h, c)
    assert memory.stored_bits == 16 * 3 * real
    assert memory.final_state_bits == 64 * 10 * 3 * 2 * 2  # RevLSTM: int64 (unbounded)
    # a fingerprint per row, layer and half, and the 3 slice units of the top h1 before step 0
    assert memory.initial_state_bits == 64 * 3 * 2 * 4 + 64 * 3 * 3
    assert memory.buffer_head_bits == 32 * 3 * 5
    assert memory.buffer_word_bits == 16 * out.buffer.pushed_words()
    # every gated unit-step loses at most k bits; stored units lose none in the buffer
    gated_unit_steps = real * 2 * (10 * 2) - real * 3
    kept = memory.stored_bits + memory.final_state_bits + memory.initial_state_bits
    assert 0 < memory.optimal_bits - kept <= 2 * gated_unit_steps
    assert memory.ratio_used == memory.normal_bits / memory.used_bits


def test_ratio_for_a_300_unit_revgru_at_3_bits_over_30_steps(capsys):
    """The issue's reference figure: batch 64, hidden 300, k = 3, 30 steps (random weights)."""
    torch.manual_seed(42)
    rnn = ReversibleRNN("revgru", 300, 300, max_forget_bits=3)
    out = _forward(rnn, torch.randn(64, 30, 300))
    memory = out.memory
    assert memory.normal_bits == 32 * 300 * 30 * 64
    kept = 32 * 300 * 64 + 64 * 64 * 2  # the int32 final state, the initial state's fingerprint
    assert memory.used_bits == 32 * 150 * 64 + 16 * out.buffer.pushed_words() + kept
    # at most 3 bits per unit and step: used <= head + optimal + one word per element + kept
    assert memory.optimal_bits <= 3 * 300 * 30 * 64 + kept
    bound = 32 * 150 + 3 * 300 * 30 + 16 * 150 + 32 * 300 + 128
    assert memory.ratio_used >= 32 * 300 * 30 / bound
    assert memory.ratio_optimal > memory.ratio_used
    with capsys.disabled():
        print(f"\nRevGRU H=300 k=3 T=30 B=64: normal/used = {memory.ratio_used:.1f}, "
              f"normal/optimal = {memory.ratio_optimal:.1f}")
