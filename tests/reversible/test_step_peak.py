"""What a reversible training step holds at its peak: no (batch, T, dim) gradient of the looked-up
embeddings kept over the run, no float dropout noise of the attention context kept until
backward, no per-chunk weight gradient of the readout's combine layer (issue 15, item 2)."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from nmt.config import AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig
from nmt.data.batching import Batch
from nmt.memory_peak import LiveBytes
from nmt.models.build import build_model
from nmt.models.reversible_encoder import context_dropout
from nmt.reversible.grad_totals import add_embedding_grads
from nmt.reversible.launch_count import OpCounter

VOCAB = 40


def _model(*, hidden=32, chunk_steps=2, dropout=0.3):
    config = ModelConfig(
        embedding_dim=hidden, dropout=dropout, init_uniform=0.1, tie_embeddings=True,
        encoder=EncoderConfig(cell="revgru", hidden=hidden, layers=2, dropout=dropout),
        decoder=DecoderConfig(cell="revgru", hidden=hidden, layers=2, dropout=dropout),
        attention=AttentionConfig(context="emb+slice", size=4))
    config.reversible.chunk_steps = chunk_steps
    torch.manual_seed(0)
    return build_model(config, VOCAB, VOCAB).train()


def _batch(batch: int, length: int, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    tokens = lambda: torch.randint(4, VOCAB, (batch, length), generator=generator)  # noqa: E731
    tgt = tokens()
    lengths = torch.full((batch,), length)
    return Batch(src=tokens(), src_lengths=lengths, tgt_in=tgt, tgt_out=tgt, tgt_lengths=lengths,
                 indices=torch.arange(batch), num_tgt_tokens=batch * length)


def _step_peak(model, batch: Batch) -> int:
    """Tracked peak of forward and backward (gradients dropped first)."""
    model.zero_grad(set_to_none=True)
    with LiveBytes() as live:
        model.training_loss(batch, label_smoothing=0.1).loss.backward()
    return live.peak


def test_add_embedding_grads_adds_autograds_table_gradient_bit_for_bit():
    torch.manual_seed(1)
    embedding = torch.nn.Embedding(50, 6, padding_idx=0)
    ids = torch.randint(0, 12, (5, 9))[:, 1:8]  # repeated ids and the padding id, a chunk's
    ids[0, :3] = 0  # columns (not contiguous)
    grad = torch.randn(5, 7, 6)
    (expected,) = torch.autograd.grad(embedding(ids), [embedding.weight], [grad])
    start = torch.randn(50, 6)
    total = start.clone()
    add_embedding_grads(embedding, ids, grad, total)
    assert torch.equal(total, start + expected)
    assert torch.equal(total[0], start[0])  # the padding row gets nothing


def test_context_dropout_is_f_dropout_bit_for_bit_and_keeps_no_noise():
    values = torch.randn(4, 9, 16, requires_grad=True)
    grad = torch.randn(4, 9, 16)
    torch.manual_seed(5)
    expected = F.dropout(values, 0.3, training=True)
    (expected_grad,) = torch.autograd.grad(expected, [values], [grad])
    after_expected = torch.rand(3)
    torch.manual_seed(5)
    with LiveBytes() as live:
        out = context_dropout(values, 0.3, training=True)
    assert live.current == out.numel() * 4  # the output only: no noise kept for backward
    (out_grad,) = torch.autograd.grad(out, [values], [grad])
    assert torch.equal(out, expected) and torch.equal(out_grad, expected_grad)
    assert torch.equal(torch.rand(3), after_expected)  # the generator ends where F.dropout's does


def test_step_peak_grows_with_length_only_by_what_attention_keeps():
    """Per extra source/target position the step may hold at most the attention context and
    keys and their gradients (4 vectors of about `hidden` floats a row, with the small stored
    slice and buffer words), not also the looked-up embeddings' gradients, the embeddings
    looked up again or the context's dropout noise (before: 5.1 vectors here; now 2.3)."""
    hidden, batch, short, long = 32, 4, 8, 40
    model = _model(hidden=hidden)
    growth = _step_peak(model, _batch(batch, long)) - _step_peak(model, _batch(batch, short))
    per_vector = batch * (long - short) * hidden * 4
    assert growth < 4 * per_vector, growth / per_vector


class _CountShapes(TorchDispatchMode):
    def __init__(self, shape):
        super().__init__()
        self.shape, self.count = tuple(shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Counts outputs of the shape with a storage of their own (not views or in place)."""
        inputs = [t.untyped_storage()._cdata for t in list(args) + list((kwargs or {}).values())
                  if isinstance(t, torch.Tensor)]
        out = func(*args, **(kwargs or {}))
        if (isinstance(out, torch.Tensor) and tuple(out.shape) == self.shape
                and out.untyped_storage()._cdata not in inputs and not out._is_view()):
            self.count += 1
        return out


@pytest.mark.parametrize("chunk_steps", [1, 3])
def test_combine_weight_gradient_is_one_running_total_not_one_per_chunk(chunk_steps):
    model = _model(chunk_steps=chunk_steps)
    weight = model.decoder.readout.combine.weight
    with _CountShapes(weight.shape) as counted:
        model.training_loss(_batch(3, 9)).loss.backward()
    assert counted.count == 1  # the first chunk's product; later chunks accumulate into it
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


class _MostLive(LiveBytes):
    """LiveBytes that also records the most storages of one shape live at once."""

    def __init__(self, shape):
        super().__init__(record=True)
        self.shape, self.most = tuple(shape), 0

    def _change(self, delta: int) -> None:
        super()._change(delta)
        live = sum(1 for origin in self._origins.values() if origin[2] == self.shape)
        self.most = max(self.most, live)


def test_one_stacked_input_weight_live_at_a_time():
    """The first layer's chunk projection keeps no graph (which would hold its stacked input
    weight through the chunk's steps while each step's backward stacks the next layer's)."""
    model = _model(hidden=32)  # embedding_dim == hidden: both layers' stacked weights (96, 32)
    cell = model.decoder.rnn.cells[0]
    shape = (sum(layer.out_features for layer in cell.input_layers()), cell.input_size)
    assert shape == (sum(layer.out_features for layer in model.decoder.rnn.cells[1].input_layers()),
                     model.decoder.rnn.cells[1].input_size)
    with _MostLive(shape) as live:
        model.training_loss(_batch(3, 9)).loss.backward()
    assert live.most == 1


@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_input_weight_x_columns_are_one_product_into_one_stacked_total(cell):
    from types import SimpleNamespace
    from nmt.reversible.grad_totals import add_projection_grads
    from nmt.reversible.sequence import ReversibleRNN
    torch.manual_seed(5)
    rnn = ReversibleRNN(cell, 6, 10)
    layers, params = rnn.cells[0].input_layers(), list(rnn.parameters())
    chunks = [(torch.randn(3, 4, 6), torch.randn(3, 4, sum(l.out_features for l in layers)))
              for _ in range(2)]
    param_grads = [None] * len(params)
    for x, d in chunks:
        counter = OpCounter()
        with counter:
            add_projection_grads(rnn, SimpleNamespace(inputs=x), d, param_grads, params)
        assert counter.ops["aten.addmm_.default"] == 1  # for every Linear at once
    totals = [param_grads[[id(p) for p in params].index(id(layer.weight))] for layer in layers]
    base = totals[0]._base
    assert base is not None and all(total._base is base for total in totals)
    first = 0
    for layer, total in zip(layers, totals):  # autograd's d.t() @ x per Linear, summed
        width = layer.out_features
        expected = sum(d.reshape(-1, d.shape[-1])[:, first: first + width].t()
                       @ x.reshape(-1, 6) for x, d in chunks)
        torch.testing.assert_close(total[:, :6], expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(total[:, 6:], torch.zeros_like(total[:, 6:]))
        first += width
