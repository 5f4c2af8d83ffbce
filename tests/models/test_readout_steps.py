"""model.reversible.readout_steps: the decoder's readout evaluated a few steps at a time inside
longer chunks. Losses and gradients are those of plain autograd over the same readout blocks,
and the readout's memory follows the block, not the chunk."""
import copy

import pytest
import torch

from conftest import tiny_model_config
from nmt.config import ReversibleConfig
from nmt.memory_peak import measure_step, prime_optimizer
from nmt.models import build_model
from nmt.reversible.plan import MemoryMode

VOCAB = 400  # a wide output layer: the readout's logits are most of a step's memory


def _model(cell, chunk_steps, readout_steps):
    torch.manual_seed(0)
    cfg = tiny_model_config(
        embedding_dim=12, dropout=0.2, init_uniform=0.3,
        encoder={"cell": cell, "hidden": 14, "dropout": 0.2},
        decoder={"cell": cell, "hidden": 14, "dropout": 0.2},
        attention={"context": "emb+slice", "size": 4},
        reversible=ReversibleConfig(chunk_steps=str(chunk_steps), readout_steps=readout_steps))
    model = build_model(cfg, VOCAB, VOCAB)
    model.train()
    return model


@pytest.mark.parametrize("cell", ["revgru", "revlstm"])
def test_readout_blocks_match_plain_autograd_over_the_same_blocks(cell, make_batch):
    batch = make_batch(src_lengths=[7, 5, 2], tgt_lengths=[9, 6, 3], seed=3, vocab=VOCAB)
    model = _model(cell, 6, 2)
    reference = copy.deepcopy(model)
    outputs = {}
    for name, net in (("reversible", model), ("reference", reference)):
        torch.manual_seed(4)
        mode = MemoryMode.REFERENCE if name == "reference" else None
        outputs[name] = net.training_loss(batch, label_smoothing=0.1, mode=mode)
        outputs[name].loss.backward()
    assert torch.equal(outputs["reversible"].loss, outputs["reference"].loss)
    for (name, mine), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)
    # the same loss as reading whole chunks, up to the order its terms are summed in
    whole_model = _model(cell, 6, None)
    torch.manual_seed(4)  # the same dropout masks
    whole = whole_model.training_loss(batch, label_smoothing=0.1).loss
    whole.backward()  # (the reversible run's loss is complete once backward has read it)
    torch.testing.assert_close(outputs["reversible"].loss, whole, rtol=1e-6, atol=0)


def test_readout_memory_follows_the_block_not_the_chunk(make_batch):
    batch = make_batch(src_lengths=[4] * 8, tgt_lengths=[24] * 8, seed=5, vocab=VOCAB)
    peaks = {}
    for chunk, block in ((24, None), (24, 3), (3, None)):
        model = _model("revgru", chunk, block)
        optimizer = torch.optim.Adam(model.parameters())
        prime_optimizer(model, optimizer)
        peaks[chunk, block] = measure_step(model, optimizer, batch).peak_step_bytes
    # 24-step chunks read 3 steps at a time: far below reading all 24 at once (8 rows x 24
    # steps x 400 logits, several copies); still above 3-step chunks (a chunk's inputs, states)
    assert peaks[3, None] < peaks[24, 3] < 0.5 * peaks[24, None]
