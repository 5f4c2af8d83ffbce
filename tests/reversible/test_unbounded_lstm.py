"""RevLSTM's h <- p * h + o * tanh(c) is unbounded: stored slices must stay exact at 32 bits too."""
import pytest
import torch

from nmt.reversible import AttentionStorage, MemoryMode, ReversibleRNN, to_fixed


def _grown_lstm(precision):
    torch.manual_seed(0)
    rnn = ReversibleRNN("revlstm", 6, 16, max_forget_bits=5,
                        storage=AttentionStorage("slice", 8, precision=precision))
    with torch.no_grad():
        for cell in rnn.cells:
            for gates in cell.gates:
                own = gates.out_features // 5
                gates.bias[3 * own: 4 * own] = 8.0  # p ~ 1 - 2**-5: h accumulates o * tanh(c)
                gates.bias[: own] = 8.0  # f ~ 1: c saturates
                gates.bias[4 * own:] = 3.0
    return rnn


@pytest.mark.parametrize("precision", [32, 16])
def test_stored_slice_of_large_h_is_exact_and_reverses(precision):
    rnn = _grown_lstm(precision)
    inputs = torch.randn(3, 40, 6, requires_grad=True)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[2, 25:] = False
    out = rnn(inputs, mask, mode=MemoryMode.REVERSIBLE)
    top_h1 = out.final_state[-1][0]
    assert top_h1.abs().max() > 4 * 2**23  # |h| > 4: beyond float32's exact fixed-point range
    last = torch.tensor([39, 39, 24])
    stored_last = out.stored[torch.arange(3), last]
    assert torch.equal(to_fixed(stored_last), top_h1[:, :8])
    (out.final[0].sum() + out.stored.sum()).backward()
    assert out.buffer.is_initial()


def test_plain_lstm_update_matches_the_paper():
    """One step from a known state against the paper's formula in float64."""
    torch.manual_seed(1)
    rnn = ReversibleRNN("revlstm", 3, 4, max_forget_bits=None)
    cell = rnn.cells[0]
    x = torch.randn(2, 3)
    state = tuple(to_fixed(torch.randn(2, 2)) for _ in range(4))
    buffer = rnn.new_buffer(2)
    new = cell(x, state, buffer, None)
    h1, h2, c1, c2 = (part.double() / 2**23 for part in state)
    gates = cell.gates[0](torch.cat([x, h2.float()], -1)).double()
    f, i, o, p, g = gates.split(2, -1)
    f, p = torch.sigmoid(f), torch.sigmoid(p)
    c1_new = f * c1 + torch.sigmoid(i) * torch.tanh(g)
    h1_new = p * h1 + torch.sigmoid(o) * torch.tanh(c1_new)
    assert torch.allclose(new[2].double() / 2**23, c1_new, atol=2e-3)
    assert torch.allclose(new[0].double() / 2**23, h1_new, atol=2e-3)
