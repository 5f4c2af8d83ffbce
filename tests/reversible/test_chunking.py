"""The bounded backward: chunk length as a setting (fixed or "auto" from a byte budget), and the
per-step tape recomputed from a chunk's exact states equal to the one reversal records."""
import pytest
import torch

from nmt.config import config_from_dict
from nmt.models.build import build_model
from nmt.reversible.fixed_point import from_fixed
from nmt.reversible.plan import TAPE_BYTES_PER_UNIT, auto_chunk_steps, step_bytes
from nmt.reversible.sequence import ReversibleRNN
from nmt.reversible.storage import AttentionStorage


def test_auto_chunk_is_the_largest_under_the_budget():
    per_step = step_bytes(batch=8, hidden=10, layers=2, readout_row_bytes=40)
    assert per_step == 8 * (TAPE_BYTES_PER_UNIT * 10 * 2 + 40)
    assert auto_chunk_steps(5 * per_step, batch=8, steps=30, hidden=10, layers=2,
                            readout_row_bytes=40) == 5
    assert auto_chunk_steps(5 * per_step - 1, batch=8, steps=30, hidden=10, layers=2,
                            readout_row_bytes=40) == 4
    assert auto_chunk_steps(1, batch=8, steps=30, hidden=10, layers=2) == 1  # at least one step
    assert auto_chunk_steps(1 << 40, batch=8, steps=30, hidden=10, layers=2) == 30  # at most T


def test_rnn_picks_its_chunk_per_run():
    rnn = ReversibleRNN("revgru", 5, 10, chunk_steps="auto",
                        chunk_bytes=3 * step_bytes(batch=4, hidden=10, layers=1))
    assert rnn.chunk_steps_for(4, 20) == 3
    assert rnn.chunk_steps_for(2, 20) == 6  # half the rows: twice the steps
    assert ReversibleRNN("revgru", 5, 10, chunk_steps=7).chunk_steps_for(4, 20) == 7
    with pytest.raises(ValueError):
        ReversibleRNN("revgru", 5, 10, chunk_steps="auto")


def test_config_reaches_both_sides():
    base = {"encoder": {"cell": "revgru"}, "decoder": {"cell": "revgru"},
            "attention": {"context": "emb"}}
    model = build_model(config_from_dict({"model": base}).model, 30, 30)
    assert model.encoder.rnn.chunk_steps == model.decoder.rnn.chunk_steps == 4  # the default
    config = config_from_dict({"model": {**base, "reversible": {"chunk_steps": "auto",
                                                                "chunk_mib": 2}}})
    model = build_model(config.model, 30, 30)
    assert model.decoder.rnn.chunk_steps == "auto" and model.decoder.rnn.chunk_bytes == 2 << 20
    config = config_from_dict({"model": {**base, "reversible": {"chunk_steps": 5}}})
    assert build_model(config.model, 30, 30).encoder.rnn.chunk_steps == 5


@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_recomputed_tape_equals_the_recorded_one(cell):
    torch.manual_seed(3)
    batch, steps = 4, 7
    rnn = ReversibleRNN(cell, 5, 8, num_layers=2, chunk_steps=3,
                        storage=AttentionStorage("slice", 2, 16))
    mask = torch.arange(steps)[None] < torch.tensor([7, 5, 2, 1])[:, None]
    buffer = rnn.new_buffer(batch)
    plan = rnn.plan(torch.randn(batch, steps, 5), mask, buffer=buffer,
                    layer_dropout=(torch.rand(1, batch, 8) > 0.3).float() / 0.7)
    initial = rnn.exact_state(None, batch)
    state, values = initial, [tuple(from_fixed(p) for p in layer) for layer in initial]
    stored = torch.zeros(batch, steps, 2)
    with torch.no_grad():
        for step in rnn.run_steps(plan, state, values):
            state, values = step.state, step.values
            stored[:, step.t] = step.stored
    compared = 0
    for chunk in rnn.reverse_chunks(plan, state, initial_state=initial, stored=stored,
                                    tapes=True):
        for i, recorded in enumerate(chunk.tapes):
            again = rnn.recompute_tape(chunk.states[i], chunk.states[i + 1],
                                       chunk.projected[:, i], layer_dropout=plan.layer_dropout)
            _assert_same(recorded, again)
            compared += 1
    assert compared == steps


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_sink_linear_adds_chunk_weight_grads_in_place_as_whole_products_would():
    from nmt.reversible import readout
    torch.manual_seed(2)
    layer = torch.nn.Linear(7, 13)
    xs = [torch.randn(5, 7) for _ in range(3)]
    grads = [torch.randn(5, 13) for _ in range(3)]
    expected, input_grads, bias_grads = None, [], []
    for x, grad in zip(xs, grads):  # by autograd, whole products added up
        x = x.clone().requires_grad_()
        gx, gw, gb = torch.autograd.grad([layer(x)], [x, layer.weight, layer.bias], [grad])
        expected = gw if expected is None else expected + gw
        input_grads.append(gx)
        bias_grads.append(gb)
    sink = readout.WeightGradSink([layer.weight])
    for x, grad, gx_expected, gb_expected in zip(xs, grads, input_grads, bias_grads):
        x = x.clone().requires_grad_()
        with readout.weight_grad_sink(sink):
            y = readout.sink_linear(x, layer)
        assert torch.equal(y, layer(x))
        gx, gb = torch.autograd.grad([y], [x, layer.bias], [grad])
        assert torch.equal(gx, gx_expected) and torch.equal(gb, gb_expected)
    torch.testing.assert_close(sink.total(layer.weight), expected, rtol=0, atol=1e-6)
    assert readout.sink_linear(xs[0], layer).grad_fn.name() != "_SinkLinearBackward"  # inactive


@pytest.mark.parametrize("transpose_other", [False, True])
def test_sink_bmm_adds_chunk_grads_of_a_whole_sequence_tensor_in_place(transpose_other):
    from nmt.reversible import readout
    torch.manual_seed(3)
    other = torch.randn(5, 6, 4).requires_grad_()  # (batch, src, dim), read by every chunk
    xs = [torch.randn(5, 2, 4 if transpose_other else 6) for _ in range(3)]

    def plain(x):
        return torch.bmm(x, other.transpose(1, 2) if transpose_other else other)

    grads = [torch.randn_like(plain(x)) for x in xs]
    expected, x_grads = None, []
    for x, grad in zip(xs, grads):  # by autograd, whole terms added up (as _accumulate did)
        x = x.clone().requires_grad_()
        gx, go = torch.autograd.grad([plain(x)], [x, other], [grad])
        expected = go.clone() if expected is None else expected.add_(go)
        x_grads.append(gx)
    sink = readout.TensorGradSink([other])
    for x, grad, gx_expected in zip(xs, grads, x_grads):
        x = x.clone().requires_grad_()
        with readout.tensor_grad_sink(sink):
            y = readout.sink_bmm(x, other, transpose_other=transpose_other)
        assert torch.equal(y, plain(x))
        (gx,) = torch.autograd.grad([y], [x], [grad])
        assert torch.equal(gx, gx_expected)
    torch.testing.assert_close(sink.total(other), expected, rtol=0, atol=1e-6)
    y = readout.sink_bmm(xs[0], other, transpose_other=transpose_other)
    assert y.grad_fn.name() != "_SinkBmmBackward"  # inactive
