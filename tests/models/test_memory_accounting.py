"""Complete memory accounting over every cell, context, k, stored precision and memory mode
(docs/design.md, "Memory accounting"): used >= optimal on every side and on the total, the parts
add up to used, and the total charges the shared buffer's heads once."""
import pytest
import torch

from nmt.models.build import build_model
from nmt.reversible import MemoryMode
from nmt.reversible.accounting import PARTS
from tests.models.conftest import VOCAB, random_batch, tiny_model_config

CONTEXTS = ("emb", "slice", "proj", "emb+slice", "emb+proj", "hidden")
KS = (1, 2, 3, 5, None)


def _batch():
    generator = torch.Generator().manual_seed(3)
    return random_batch(generator, src_lengths=[6, 4, 5], tgt_lengths=[5, 6, 3])


@pytest.mark.parametrize("mode", [MemoryMode.REVERSIBLE, MemoryMode.REFERENCE],
                         ids=lambda mode: mode.value)
@pytest.mark.parametrize("precision", [16, 32])
@pytest.mark.parametrize("k", KS, ids=lambda k: f"k{k}")
@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_used_covers_optimal_and_the_parts_add_up(cell, context, k, precision, mode):
    torch.manual_seed(0)
    hidden = 6 if cell == "revgru" else 8  # the decoder's half is wider than the encoder's
    cfg = tiny_model_config(
        embedding_dim=4,
        encoder={"cell": cell, "hidden": hidden, "max_forget_bits": k,
                 "memory_saving": context != "hidden"},
        decoder={"cell": cell, "hidden": 8, "max_forget_bits": k},
        attention={"context": context, "size": None if context in ("emb", "hidden") else 2,
                   "precision": precision})
    model = build_model(cfg, VOCAB, VOCAB).train()
    output = model.training_loss(_batch(), mode=mode)
    output.loss.backward()
    memory = output.memory
    sides = {"encoder": memory.encoder, "decoder": memory.decoder, "total": memory.total}
    for name, account in sides.items():
        assert account.used_bits >= account.optimal_bits, name
        assert account.used_bits == sum(getattr(account, part) for part in PARTS), name
        assert account.normal_bits > 0 and account.ratio_optimal >= account.ratio_used, name
    encoder, decoder, total = sides["encoder"], sides["decoder"], sides["total"]
    assert decoder.buffer_head_bits == 32 * 3 * 4  # int32 heads: 3 sentences x the wider half
    assert decoder.final_state_bits == (32 if cell == "revgru" else 64) * 8 * 3 * (
        1 if cell == "revgru" else 2)  # kept int32 only where bounded
    if context == "hidden":  # plain autograd keeps every encoder state: nothing saved
        assert encoder.used_bits == encoder.normal_bits == encoder.autograd_state_bits
        assert total.buffer_head_bits == decoder.buffer_head_bits
    else:
        assert encoder.buffer_head_bits == decoder.buffer_head_bits  # as if it had its own
        assert encoder.final_state_bits > 0 and encoder.initial_state_bits > 0
        assert total.buffer_head_bits == decoder.buffer_head_bits  # charged once
    assert total.used_bits == (encoder.used_bits + decoder.used_bits
                               - (encoder.buffer_head_bits + decoder.buffer_head_bits
                                  - total.buffer_head_bits))
    assert total.normal_bits == encoder.normal_bits + decoder.normal_bits
    figures = memory.as_dict()
    assert figures["total_ratio"] == total.ratio_used
    assert figures["encoder_ratio"] == encoder.ratio_used
