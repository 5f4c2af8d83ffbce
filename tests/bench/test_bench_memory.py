"""`nmt bench memory`'s measured bytes when the reversible encoder stores every state."""
import torch

from nmt.bench.memory import measure_plain, measure_reversible, plain_model_config
from nmt.models.build import build_model
from tests.models.conftest import random_batch, tiny_model_config

VOCAB = 23


def _batches():
    generator = torch.Generator().manual_seed(0)
    return [random_batch(generator, src_lengths=[9, 7, 5], tgt_lengths=[6, 8, 4])
            for _ in range(2)]


def _models(memory_saving):
    config = tiny_model_config(encoder={"cell": "revgru", "hidden": 16,
                                        "memory_saving": memory_saving},
                               decoder={"cell": "revgru", "hidden": 16},
                               attention={"context": "hidden" if not memory_saving else "emb"})
    torch.manual_seed(0)
    reversible = build_model(config, VOCAB, VOCAB).train()
    plain = build_model(plain_model_config(config), VOCAB, VOCAB).train()
    return reversible, plain


def test_an_encoder_storing_its_states_is_charged_what_autograd_saves_for_them():
    reversible, plain = _models(memory_saving=False)
    stored = measure_reversible(reversible, _batches(), 0.0)
    plain_bytes = measure_plain(plain, _batches(), 0.0)
    # the 300H setting keeps every encoder state: at least what the plain GRU keeps for them
    assert stored["recurrent_kept_bytes"] >= plain_bytes["encoder_rnn_saved_bytes"]
    assert stored["encoder_ratio"] == 1.0
    saving, _ = _models(memory_saving=True)
    kept = measure_reversible(saving, _batches(), 0.0)
    assert kept["recurrent_kept_bytes"] < stored["recurrent_kept_bytes"]
    # the whole step counts those states once, not twice
    assert stored["step_total_bytes"] <= stored["recurrent_kept_bytes"] + stored["autograd_saved_peak_bytes"]
