import pytest
import torch

from nmt.models import build_model
from nmt.models.embeddings import BOS_ID

VOCAB = 23


def _model(make_config, **changes):
    torch.manual_seed(0)
    return build_model(make_config(**changes), VOCAB, VOCAB).eval()


def _stepwise_log_probs(model, batch):
    """(batch, tgt_len, vocab) log-probs from decode_step, one target position at a time."""
    encoder_output = model.encode(batch.src, batch.src_lengths)
    state = model.init_decoder_state(encoder_output)
    steps = []
    for t in range(batch.tgt_in.size(1)):
        log_probs, state = model.decode_step(batch.tgt_in[:, t], state, encoder_output)
        steps.append(log_probs)
    return torch.stack(steps, dim=1)


def test_decoder_without_input_feeding_is_the_reversible_decoder_structure(make_config,
                                                                          make_batch):
    """Reference by hand: h_t = GRUCell(emb(y_{t-1}), h_{t-1}); c_t = attention over encoder
    outputs with Luong general scores; a_t = tanh(Wc [c_t; h_t]); log_softmax(Wo a_t)."""
    model = _model(make_config)
    decoder = model.decoder
    batch = make_batch(src_lengths=[6, 4], tgt_lengths=[5, 3])
    cell = torch.nn.GRUCell(8, 8)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(cell, name).data.copy_(getattr(decoder.rnn, name + "_l0"))
    encoder_output = model.encoder(batch.src, batch.src_lengths)
    hidden = encoder_output.final_hidden[0]  # identity bridge: same sizes, unidirectional
    W_a, W_c = decoder.attention.key_projection.weight, decoder.combine.weight
    expected = []
    for t in range(batch.tgt_in.size(1)):
        hidden = cell(decoder.embeddings.embedding.weight[batch.tgt_in[:, t]], hidden)
        rows = []
        for b in range(2):
            n = int(batch.src_lengths[b])
            memory = encoder_output.outputs[b, :n]
            weights = torch.softmax(memory @ W_a.t() @ hidden[b], dim=0)
            context = weights @ memory
            attentional = torch.tanh(W_c @ torch.cat([context, hidden[b]]))
            rows.append(torch.log_softmax(decoder.output(attentional), dim=-1))
        expected.append(torch.stack(rows))
    expected = torch.stack(expected, dim=1)
    assert torch.allclose(_stepwise_log_probs(model, batch), expected, atol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("input_feeding", [False, True])
def test_teacher_forcing_equals_step_by_step(make_config, make_batch, cell, input_feeding):
    model = _model(make_config, encoder={"cell": cell, "layers": 2, "bidirectional": True},
                   decoder={"cell": cell, "layers": 2, "input_feeding": input_feeding})
    batch = make_batch(src_lengths=[7, 5, 2], tgt_lengths=[6, 6, 2])
    encoder_output = model.encode(batch.src, batch.src_lengths)
    vectors = model.decoder.attentional_vectors(batch.tgt_in, encoder_output)
    full = torch.log_softmax(model.decoder.output(vectors), dim=-1)
    assert torch.allclose(full, _stepwise_log_probs(model, batch), atol=1e-5)


def test_input_feeding_feeds_the_previous_attentional_vector(make_config, make_batch):
    batch = make_batch(src_lengths=[4], tgt_lengths=[2])
    prev = torch.tensor([BOS_ID])
    for input_feeding in (True, False):
        model = _model(make_config, decoder={"input_feeding": input_feeding})
        encoder_output = model.encode(batch.src, batch.src_lengths)
        state = model.init_decoder_state(encoder_output)
        log_probs, after = model.decode_step(prev, state, encoder_output)
        if not input_feeding:
            assert state.attentional is None and after.attentional is None
            continue
        assert torch.equal(state.attentional, torch.zeros(1, 8))
        state.attentional = torch.ones(1, 8)
        changed, _ = model.decode_step(prev, state, encoder_output)
        assert not torch.allclose(log_probs, changed)
        assert after.attentional.shape == (1, 8)


def test_bridge_is_identity_when_sizes_match(make_config, make_batch):
    batch = make_batch(src_lengths=[4, 2], tgt_lengths=[2, 2])
    model = _model(make_config, encoder={"cell": "lstm", "layers": 2},
                   decoder={"cell": "lstm", "layers": 2})
    encoder_output = model.encode(batch.src, batch.src_lengths)
    state = model.init_decoder_state(encoder_output)
    assert not list(model.decoder.bridge.parameters())
    assert torch.equal(state.hidden, encoder_output.final_hidden)
    assert torch.equal(state.cell, encoder_output.final_cell)


@pytest.mark.parametrize("encoder, decoder", [
    ({"bidirectional": True}, {}),
    ({"layers": 2}, {"layers": 3, "hidden": 6}),
    ({"cell": "gru"}, {"cell": "lstm", "hidden": 5}),
])
def test_bridge_maps_other_shapes_with_linear_tanh(make_config, make_batch, encoder, decoder):
    batch = make_batch(src_lengths=[4, 2], tgt_lengths=[2, 2])
    model = _model(make_config, encoder=encoder, decoder=decoder)
    state = model.init_decoder_state(model.encode(batch.src, batch.src_lengths))
    layers, hidden = decoder.get("layers", 1), decoder.get("hidden", 8)
    assert state.hidden.shape == (layers, 2, hidden)
    assert state.hidden.abs().max() < 1 and list(model.decoder.bridge.parameters())
    if decoder.get("cell") == "lstm":  # a GRU encoder has no cell to hand over
        assert torch.equal(state.cell, torch.zeros(layers, 2, hidden))


def test_tied_embeddings_share_one_matrix(make_config):
    model = _model(make_config, tie_embeddings=True)
    assert model.decoder.output.weight is model.decoder.embeddings.weight
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in _model(make_config).parameters()) - VOCAB * 8


def test_reorder_selects_rows_of_state_and_encoder_output(make_config, make_batch):
    model = _model(make_config, decoder={"cell": "lstm", "input_feeding": True},
                   encoder={"cell": "lstm"})
    batch = make_batch(src_lengths=[5, 4, 2], tgt_lengths=[2, 2, 2])
    encoder_output = model.encode(batch.src, batch.src_lengths)
    _, state = model.decode_step(torch.full((3,), BOS_ID), model.init_decoder_state(
        encoder_output), encoder_output)
    index = torch.tensor([2, 2, 0])
    moved = model.reorder_state(state, index)
    assert torch.equal(moved.hidden, state.hidden[:, index])
    assert torch.equal(moved.cell, state.cell[:, index])
    assert torch.equal(moved.attentional, state.attentional[index])
    assert torch.equal(moved.attention, state.attention[index])
    moved_output = model.reorder_encoder_output(encoder_output, index)
    for name in ("context", "mask", "lengths", "keys", "outputs"):
        assert torch.equal(getattr(moved_output, name), getattr(encoder_output, name)[index])
    assert torch.equal(moved_output.final_hidden, encoder_output.final_hidden[:, index])
