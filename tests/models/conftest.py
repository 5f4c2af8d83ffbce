"""Tiny model configs and batches for the model tests (as fixtures returning factories)."""
import pytest
import torch

from nmt.config import AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig
from nmt.data.batching import Batch
from nmt.models.embeddings import BOS_ID, EOS_ID, PAD_ID

VOCAB = 23


def tiny_model_config(*, encoder=None, decoder=None, attention=None, **model) -> ModelConfig:
    """A small ModelConfig; encoder/decoder/attention take dicts of changed keys."""
    base = dict(embedding_dim=8, dropout=0.0, init_uniform=0.3)
    base.update(model)
    return ModelConfig(
        encoder=EncoderConfig(**{"hidden": 8, "dropout": 0.0, **(encoder or {})}),
        decoder=DecoderConfig(**{"hidden": 8, "dropout": 0.0, **(decoder or {})}),
        attention=AttentionConfig(**(attention or {})),
        **base)


def random_batch(generator: torch.Generator, *, src_lengths, tgt_lengths, vocab=VOCAB) -> Batch:
    """A Batch of random tokens (ids 4..vocab-1) with the given lengths (EOS counted)."""
    batch = len(src_lengths)
    src = torch.zeros(batch, max(src_lengths), dtype=torch.long)
    tgt_in = torch.zeros(batch, max(tgt_lengths), dtype=torch.long)
    tgt_out = torch.zeros_like(tgt_in)
    for row, (s, t) in enumerate(zip(src_lengths, tgt_lengths)):
        src[row, :s - 1] = torch.randint(4, vocab, (s - 1,), generator=generator)
        src[row, s - 1] = EOS_ID
        words = torch.randint(4, vocab, (t - 1,), generator=generator)
        tgt_in[row, 0], tgt_in[row, 1:t] = BOS_ID, words
        tgt_out[row, :t - 1], tgt_out[row, t - 1] = words, EOS_ID
    return Batch(src=src, src_lengths=torch.tensor(src_lengths), tgt_in=tgt_in, tgt_out=tgt_out,
                 tgt_lengths=torch.tensor(tgt_lengths), indices=torch.arange(batch),
                 num_tgt_tokens=int((tgt_out != PAD_ID).sum()))


@pytest.fixture
def make_config():
    return tiny_model_config


@pytest.fixture
def make_batch():
    """make_batch(src_lengths=[...], tgt_lengths=[...], seed=0) -> Batch."""
    def make(*, src_lengths, tgt_lengths, seed=0, vocab=VOCAB):
        generator = torch.Generator().manual_seed(seed)
        return random_batch(generator, src_lengths=src_lengths, tgt_lengths=tgt_lengths,
                            vocab=vocab)
    return make
