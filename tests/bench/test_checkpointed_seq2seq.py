"""The checkpointed baseline: same loss and gradients as the plain model, fewer saved bytes."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.bench.common import SavedBytes
from nmt.config import AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig
from nmt.data.batching import Batch
from nmt.models.build import build_model
from nmt.models.checkpointed import CheckpointedSeq2Seq, run_in_segments, segment_length

VOCAB = 29


def tiny_model(cell="gru", *, input_feeding=False, layers=2, bidirectional=False, context="hidden"):
    torch.manual_seed(7)
    config = ModelConfig(
        embedding_dim=6, dropout=0.0, init_uniform=0.4,
        encoder=EncoderConfig(cell=cell, hidden=8, layers=layers, dropout=0.0,
                              bidirectional=bidirectional),
        decoder=DecoderConfig(cell=cell, hidden=8, layers=layers, dropout=0.0,
                              input_feeding=input_feeding),
        attention=AttentionConfig(context=context, size=3 if "slice" in context else None))
    return build_model(config, VOCAB, VOCAB)


def make_batch(src_lengths, tgt_lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rows = len(src_lengths)
    src = torch.zeros(rows, max(src_lengths), dtype=torch.long)
    tgt_in = torch.zeros(rows, max(tgt_lengths), dtype=torch.long)
    tgt_out = torch.zeros_like(tgt_in)
    for row, (s, t) in enumerate(zip(src_lengths, tgt_lengths)):
        src[row, :s] = torch.randint(4, VOCAB, (s,), generator=generator)
        words = torch.randint(4, VOCAB, (t,), generator=generator)
        tgt_in[row, :t], tgt_out[row, :t] = words, words.roll(-1)
    return Batch(src=src, src_lengths=torch.tensor(src_lengths), tgt_in=tgt_in, tgt_out=tgt_out,
                 tgt_lengths=torch.tensor(tgt_lengths), indices=torch.arange(rows),
                 num_tgt_tokens=sum(tgt_lengths))


def loss_and_grads(model, batch):
    for parameter in model.parameters():
        parameter.grad = None
    output = model.training_loss(batch, label_smoothing=0.1)
    output.loss.backward()
    return output, [parameter.grad.clone() for parameter in model.parameters()]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("input_feeding", [False, True])
@pytest.mark.parametrize("segment_steps", [None, 3, 1])
def test_same_loss_and_gradients_as_the_plain_model(cell, input_feeding, segment_steps):
    plain = tiny_model(cell, input_feeding=input_feeding).eval()  # eval: no dropout draws
    checkpointed = CheckpointedSeq2Seq.sharing(plain, segment_steps=segment_steps)
    # ragged lengths: some sources end before later segments start
    batch = make_batch([11, 9, 4, 2], [3, 12, 7, 1])
    expected, expected_grads = loss_and_grads(plain, batch)
    got, got_grads = loss_and_grads(checkpointed, batch)
    assert got.num_tokens == expected.num_tokens == 23
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-6, atol=1e-6)
    assert float(got.nll) == pytest.approx(float(expected.nll), rel=1e-6)
    for name, (a, b) in zip([n for n, _ in plain.named_parameters()],
                            zip(got_grads, expected_grads)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_shares_parameters_and_state_dict_keys_with_the_plain_model():
    plain = tiny_model()
    checkpointed = CheckpointedSeq2Seq.sharing(plain)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    assert all(a is b for a, b in zip(checkpointed.parameters(), plain.parameters()))


def test_keeps_far_fewer_saved_bytes_at_length_100():
    plain = tiny_model(layers=1).train()
    checkpointed = CheckpointedSeq2Seq.sharing(plain)
    batch = make_batch([100] * 4, [100] * 4)
    mine = list(plain.parameters()) + [batch.src, batch.tgt_in, batch.tgt_out, batch.src_lengths]
    peaks = []
    for model in (plain, checkpointed):
        with SavedBytes(exclude=mine) as saved:
            output = model.training_loss(batch)
        output.loss.backward()
        assert saved.bytes == 0  # everything kept was released by backward
        peaks.append(saved.peak)
    plain_bytes, checkpointed_bytes = peaks
    # plain keeps at least the decoder's hidden states, 4 bytes x 8 units x 100 steps x 4 rows
    assert plain_bytes > 4 * 8 * 100 * 4
    assert checkpointed_bytes < plain_bytes / 3


def test_without_gradients_it_is_the_plain_model():
    plain = tiny_model().eval()
    checkpointed = CheckpointedSeq2Seq.sharing(plain)
    batch = make_batch([5, 3], [4, 6])
    with torch.no_grad():
        assert torch.equal(checkpointed.training_loss(batch).loss, plain.training_loss(batch).loss)


def test_bidirectional_encoder_is_refused():
    with pytest.raises(ValueError, match="unidirectional"):
        CheckpointedSeq2Seq.sharing(tiny_model(bidirectional=True))


@pytest.mark.parametrize("rnn_class", [nn.GRU, nn.LSTM])
def test_run_in_segments_matches_a_packed_rnn_call(rnn_class):
    torch.manual_seed(3)
    rnn = rnn_class(5, 7, num_layers=2, batch_first=True)
    inputs = torch.randn(4, 10, 5, requires_grad=True)
    lengths = torch.tensor([10, 3, 7, 1])
    packed, final = rnn(pack_padded_sequence(inputs, lengths, batch_first=True,
                                             enforce_sorted=False))
    outputs, _ = pad_packed_sequence(packed, batch_first=True, total_length=10)
    got_outputs, got_final = run_in_segments(rnn, inputs, lengths, segment=3)
    torch.testing.assert_close(got_outputs, outputs, rtol=0, atol=1e-6)
    for a, b in zip(got_final if isinstance(final, tuple) else [got_final],
                    final if isinstance(final, tuple) else [final]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert torch.all(got_outputs[1, 3:] == 0)  # padding stays zero
    first = torch.autograd.grad(outputs.sum() + final[0].sum() if isinstance(final, tuple)
                                else outputs.sum() + final.sum(), inputs)[0]
    got_final_h = got_final[0] if isinstance(got_final, tuple) else got_final
    second = torch.autograd.grad(got_outputs.sum() + got_final_h.sum(), inputs)[0]
    torch.testing.assert_close(second, first, rtol=0, atol=1e-6)


def test_segment_length_is_about_the_square_root():
    assert [segment_length(t) for t in (1, 10, 50, 100, 200)] == [1, 3, 7, 10, 14]
    assert segment_length(100, 4) == 4
