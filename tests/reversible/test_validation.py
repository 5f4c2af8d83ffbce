"""Bad input raises a ValueError naming the problem, before any computation."""
import pytest
import torch
from torch import nn

from nmt.reversible.buffer import InformationBuffer
from nmt.reversible.cells import RevGRUCell
from nmt.reversible.sequence import ReversibleRNN
from nmt.reversible.storage import AttentionStorage


@pytest.fixture
def rnn():
    return ReversibleRNN("revgru", 4, 6, num_layers=2)


def _raises(match, call):
    with pytest.raises(ValueError, match=match):
        call()


def test_wrong_input_shapes(rnn):
    _raises(r"inputs must be floats of shape \(batch, T, 4\)", lambda: rnn(torch.randn(3, 4)))
    _raises("inputs have 5 features.*input_size=4", lambda: rnn(torch.randn(3, 7, 5)))
    _raises("token-id inputs must be", lambda: rnn(torch.randn(3, 7, 4), embedding=nn.Embedding(9, 4)))
    _raises("embedding width 3 does not match input_size 4",
            lambda: rnn(torch.zeros(3, 7, dtype=torch.long), embedding=nn.Embedding(9, 3)))
    _raises("at least one sequence and one step", lambda: rnn(torch.randn(3, 0, 4)))
    _raises("embedding must be an nn.Module",
            lambda: rnn(torch.zeros(3, 7, dtype=torch.long), embedding=lambda ids: ids))


def test_bad_masks(rnn):
    x = torch.randn(3, 7, 4)
    _raises("mask has length 6 but the inputs have 7 steps",
            lambda: rnn(x, torch.ones(3, 6, dtype=torch.bool)))
    _raises(r"mask must be \(batch, T\)", lambda: rnn(x, torch.ones(2, 7, dtype=torch.bool)))
    _raises("mask must be bool", lambda: rnn(x, torch.ones(3, 7)))
    gap = torch.ones(3, 7, dtype=torch.bool)
    gap[1, 2] = False
    _raises("prefix of each row", lambda: rnn(x, gap))


def test_max_forget_bits_outside_the_allowed_set():
    for bad in (0, 4, 10, True, "3"):
        _raises(r"max_forget_bits=.* is not one of 1, 2, 3, 5, none",
                lambda: ReversibleRNN("revlstm", 4, 6, max_forget_bits=bad))
        _raises("is not one of", lambda: RevGRUCell(4, 6, max_forget_bits=bad))


def test_storage_settings():
    _raises("slice storage of 4 units exceeds the half state of 3 units",
            lambda: ReversibleRNN("revgru", 4, 6, storage=AttentionStorage("slice", 4)))
    _raises("proj storage of 5 units exceeds the half state of 4 units",
            lambda: ReversibleRNN("revgru", 4, 7, storage=AttentionStorage("proj", 5)))
    _raises("precision 8 is not one of 32, 16", lambda: AttentionStorage("slice", 2, 8))
    _raises("'keys' is not one of slice, proj", lambda: AttentionStorage("keys", 2))
    _raises("units must be a positive integer", lambda: AttentionStorage("proj", 0))


def test_model_settings():
    _raises("'revgur' is not one of revgru, revlstm", lambda: ReversibleRNN("revgur", 4, 6))
    _raises("hidden_size must be at least 2", lambda: ReversibleRNN("revgru", 4, 1))
    _raises("num_layers must be at least 1", lambda: ReversibleRNN("revgru", 4, 6, num_layers=0))


def test_bad_initial_state_buffer_mode_and_readout(rnn):
    x = torch.randn(3, 7, 4)
    _raises(r"initial state h must be \(layers, batch, H\) = \(2, 3, 6\), got \(1, 3, 6\)",
            lambda: rnn(x, initial_state=torch.zeros(1, 3, 6)))
    lstm = ReversibleRNN("revlstm", 4, 6)
    _raises(r"pair \(h, c\)", lambda: lstm(x, initial_state=torch.zeros(1, 3, 6)))
    _raises("does not fit a batch of 3",
            lambda: rnn(x, buffer=InformationBuffer((2, 3))))
    _raises("keeps its words",
            lambda: rnn(x, buffer=InformationBuffer((3, 3), keep_words=False)))
    _raises("mode 'reversible' is not one of MemoryMode.REFERENCE, MemoryMode.REVERSIBLE",
            lambda: rnn(x, mode="reversible"))
    _raises("readout_extras were given without a readout",
            lambda: rnn(x, readout_extras=(torch.zeros(1),)))
    _raises(r"input_dropout mask must be \(batch, input\)",
            lambda: rnn(x, input_dropout=torch.ones(3, 5)))
    _raises(r"layer_dropout masks must be \(layers - 1, batch, H\) = \(1, 3, 6\)",
            lambda: rnn(x, layer_dropout=torch.ones(2, 3, 6)))


def test_integer_overflow_risk_is_refused():
    _raises("overflow", lambda: InformationBuffer((2, 3), word_bits=24, forget_radix=10))


def test_errors_come_before_any_computation(rnn):
    buffer = rnn.new_buffer(3)
    calls = []
    rnn.cells[0].register_forward_pre_hook(lambda *args: calls.append(args))
    for module in rnn.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_pre_hook(lambda *args: calls.append(args))
    with pytest.raises(ValueError):
        rnn(torch.randn(3, 7, 4), torch.ones(3, 8, dtype=torch.bool), buffer=buffer)
    assert not calls and buffer.pushed_steps == 0 and buffer.is_initial()
