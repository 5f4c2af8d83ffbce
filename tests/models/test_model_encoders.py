import pytest
import torch

from nmt.errors import ConfigError
from nmt.models import build_model
from nmt.models.context import AttentionContext

VOCAB = 23


def _encoder(make_config, **encoder):
    torch.manual_seed(0)
    return build_model(make_config(encoder=encoder), VOCAB, VOCAB).eval().encoder


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_padding_never_changes_a_sentence(make_config, make_batch, cell, bidirectional, layers):
    encoder = _encoder(make_config, cell=cell, bidirectional=bidirectional, layers=layers)
    batch = make_batch(src_lengths=[9, 3, 6, 1], tgt_lengths=[2, 2, 2, 2])
    together = encoder(batch.src, batch.src_lengths)
    for row, length in enumerate(batch.src_lengths.tolist()):
        alone = encoder(batch.src[row:row + 1, :length], batch.src_lengths[row:row + 1])
        assert torch.allclose(together.outputs[row, :length], alone.outputs[0], atol=1e-6)
        assert torch.allclose(together.final_hidden[:, row], alone.final_hidden[:, 0], atol=1e-6)
        if cell == "lstm":
            assert torch.allclose(together.final_cell[:, row], alone.final_cell[:, 0], atol=1e-6)
        assert not together.outputs[row, length:].any()  # padded positions are zero
    assert together.mask.tolist()[1] == [True] * 3 + [False] * 6


def test_final_state_layout_is_last_forward_and_first_backward_output(make_config, make_batch):
    encoder = _encoder(make_config, bidirectional=True, layers=2, hidden=8)
    batch = make_batch(src_lengths=[7, 4], tgt_lengths=[2, 2])
    out = encoder(batch.src, batch.src_lengths)
    assert out.final_hidden.shape == (2, 2, 16) and out.outputs.shape == (2, 7, 16)
    for row, length in enumerate([7, 4]):
        top = out.final_hidden[1, row]
        assert torch.allclose(top[:8], out.outputs[row, length - 1, :8])  # forward: last token
        assert torch.allclose(top[8:], out.outputs[row, 0, 8:])  # backward: first token


def test_context_variants_read_the_right_values(make_config, make_batch):
    batch = make_batch(src_lengths=[5, 3], tgt_lengths=[2, 2])
    for context, size, width in [("hidden", None, 8), ("emb", None, 8), ("slice", 3, 3),
                                 ("proj", 2, 2), ("emb+slice", 3, 11), ("emb+proj", 4, 12)]:
        torch.manual_seed(0)
        model = build_model(make_config(attention={"context": context, "size": size}),
                            VOCAB, VOCAB).eval()
        out = model.encoder(batch.src, batch.src_lengths)
        embedded = model.encoder.embeddings(batch.src)
        assert out.context.shape == (2, 5, width), context
        if context == "emb":
            assert torch.equal(out.context, embedded)
        if context == "hidden":
            assert torch.equal(out.context, out.outputs)
        if context == "emb+slice":
            assert torch.equal(out.context, torch.cat([embedded, out.outputs[..., :3]], -1))


def test_half_precision_context_is_exactly_representable_in_float16(make_config, make_batch):
    batch = make_batch(src_lengths=[5, 3], tgt_lengths=[2, 2])
    model = build_model(make_config(attention={"precision": 16}), VOCAB, VOCAB).eval()
    out = model.encoder(batch.src, batch.src_lengths)
    assert out.context.dtype == torch.float32
    assert torch.equal(out.context, out.context.half().float())
    assert not torch.equal(out.context, out.outputs)  # the full-precision states were rounded
    assert torch.allclose(out.context, out.outputs, atol=1e-3)


def test_context_needs_a_size_for_slices():
    with pytest.raises(ConfigError, match="model.attention.size"):
        AttentionContext("slice", None, embedding_dim=4, hidden_size=8)
    with pytest.raises(ConfigError, match="model.attention.context"):
        AttentionContext("slices", 2, embedding_dim=4, hidden_size=8)


def test_empty_source_is_refused(make_config):
    encoder = _encoder(make_config)
    with pytest.raises(ValueError, match="at least one token"):
        encoder(torch.zeros(1, 3, dtype=torch.long), torch.tensor([0]))
