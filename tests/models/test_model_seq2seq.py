import pytest
import torch

from nmt.errors import ConfigError
from nmt.models import Seq2Seq, build_model, register_encoder
from nmt.models.build import ENCODER_BUILDERS, build_rnn_encoder
from nmt.models.embeddings import PAD_ID

VOCAB = 23

VARIANTS = {
    "gru": {},
    "lstm-bi-2-feeding": dict(encoder={"cell": "lstm", "bidirectional": True, "layers": 2},
                              decoder={"cell": "lstm", "layers": 2, "input_feeding": True}),
    "gru-emb+proj-tied": dict(attention={"context": "emb+proj", "size": 3}, tie_embeddings=True),
    "gru-enc-lstm-dec-slice": dict(decoder={"cell": "lstm", "hidden": 6},
                                   attention={"context": "slice", "size": 4, "precision": 16}),
}


def _model(make_config, **changes):
    torch.manual_seed(0)
    return build_model(make_config(**changes), VOCAB, VOCAB)


def test_training_loss_matches_a_manual_cross_entropy(make_config, make_batch):
    model = _model(make_config).eval()
    batch = make_batch(src_lengths=[6, 5, 2], tgt_lengths=[4, 7, 1])
    out = model.training_loss(batch, label_smoothing=0.0)
    # reference: decode_step one token at a time, -log p(reference token), padding skipped
    total, uniform = 0.0, 0.0
    with torch.no_grad():
        encoder_output = model.encode(batch.src, batch.src_lengths)
        state = model.init_decoder_state(encoder_output)
        for t in range(batch.tgt_in.size(1)):
            log_probs, state = model.decode_step(batch.tgt_in[:, t], state, encoder_output)
            for b in range(3):
                if batch.tgt_out[b, t] != PAD_ID:
                    total -= float(log_probs[b, batch.tgt_out[b, t]])
                    uniform -= float(log_probs[b, 1:].mean())  # every token but padding
    assert out.num_tokens == 4 + 7 + 1
    assert float(out.nll) == pytest.approx(total, rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(total, rel=1e-5)
    assert out.memory == {}
    smoothed = model.training_loss(batch, label_smoothing=0.1)
    assert float(smoothed.nll) == pytest.approx(total, rel=1e-5)
    assert float(smoothed.loss.detach()) == pytest.approx(0.9 * total + 0.1 * uniform, rel=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gradients_reach_every_parameter(make_config, make_batch, variant):
    model = _model(make_config, **VARIANTS[variant]).train()
    batch = make_batch(src_lengths=[6, 5, 2], tgt_lengths=[4, 7, 2])
    model.training_loss(batch, label_smoothing=0.1).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
        assert torch.isfinite(parameter.grad).all(), name


def test_padding_embeddings_stay_zero_and_untrained(make_config, make_batch):
    model = _model(make_config)
    batch = make_batch(src_lengths=[6, 2], tgt_lengths=[4, 2])
    model.training_loss(batch).loss.backward()
    for embeddings in (model.encoder.embeddings, model.decoder.embeddings):
        assert not embeddings.weight[PAD_ID].any()
        assert not embeddings.weight.grad[PAD_ID].any()


def test_uniform_init_bounds_every_parameter(make_config):
    model = _model(make_config, init_uniform=0.05)
    for name, parameter in model.named_parameters():
        assert parameter.abs().max() <= 0.05, name
    default = _model(make_config, init_uniform=None)  # PyTorch's own init: N(0, 1) embeddings
    assert default.encoder.embeddings.weight.abs().max() > 0.05


def test_dropout_is_active_only_in_training(make_config, make_batch):
    model = _model(make_config, dropout=0.5)
    batch = make_batch(src_lengths=[6, 2], tgt_lengths=[4, 2])
    model.eval()
    assert model.training_loss(batch).nll == model.training_loss(batch).nll
    model.train()
    assert model.training_loss(batch).nll != model.training_loss(batch).nll


def test_forward_is_training_loss(make_config, make_batch):
    model = _model(make_config).eval()
    batch = make_batch(src_lengths=[3], tgt_lengths=[3])
    assert model(batch, label_smoothing=0.1).loss == model.training_loss(
        batch, label_smoothing=0.1).loss


def test_unavailable_cell_names_the_key(make_config, monkeypatch):
    from nmt.models import build

    monkeypatch.delitem(build.DECODER_BUILDERS, "revlstm")  # as in a build without it
    with pytest.raises(ConfigError, match=r"model\.decoder\.cell: cell 'revlstm' .*gru, lstm"):
        _model(make_config, decoder={"cell": "revlstm"}, attention={"context": "emb"})


def test_registered_encoder_builders_drop_in(make_config, monkeypatch):
    calls = []

    def builder(model_cfg, *, src_vocab_size):
        calls.append(src_vocab_size)
        model_cfg.encoder.cell = "gru"  # reuse the plain encoder under the new name
        return build_rnn_encoder(model_cfg, src_vocab_size=src_vocab_size)

    monkeypatch.setitem(ENCODER_BUILDERS, "revgru", None)
    register_encoder("revgru")(builder)
    config = make_config(encoder={"cell": "revgru"}, attention={"context": "emb"})
    model = build_model(config, 17, VOCAB)
    assert calls == [17] and isinstance(model, Seq2Seq)
