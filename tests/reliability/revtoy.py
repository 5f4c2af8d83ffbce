"""A tiny model whose recurrence is a ReversibleRNN, trained through the real Trainer.

Stands in for the reversible seq2seq models in tests of DDP and drift detection: a RevGRU
language model of the target whose initial state comes from the mean source embedding, with the
per-step loss as the reversible run's readout (so gradients come from the reversible autograd
Function, parameters included)."""
from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from nmt.models.seq2seq import LossOutput
from nmt.reversible import MemoryMode, ReversibleRNN, check_reversal

VOCAB = 24


class TokenLoss(nn.Module):
    """readout(h_t, t): summed cross-entropy of step t's prediction against tgt_out[:, t]."""

    def __init__(self, output: nn.Linear, tgt_out: torch.Tensor):
        super().__init__()
        self.output = output
        self.tgt_out = tgt_out

    def forward(self, h, t):
        return F.cross_entropy(self.output(h), self.tgt_out[:, t], ignore_index=0, reduction="sum")


class ReversibleToyModel(nn.Module):
    def __init__(self, *, dim: int = 12, hidden: int = 16, layers: int = 2):
        super().__init__()
        self.layers = layers
        self.src_embedding = nn.Embedding(VOCAB, dim)
        self.bridge = nn.Linear(dim, hidden)
        self.tgt_embedding = nn.Embedding(VOCAB, dim)
        self.rnn = ReversibleRNN("revgru", dim, hidden, num_layers=layers)
        self.output = nn.Linear(hidden, VOCAB)
        self.tamper: Optional[Callable] = None  # tests: tamper(buffer) corrupts the check's buffer

    def initial_state(self, batch):
        """(layers, batch, hidden) from the mean source embedding."""
        mask = (batch.src != 0).unsqueeze(-1)
        mean = (self.src_embedding(batch.src) * mask).sum(1) / mask.sum(1)
        return torch.tanh(self.bridge(mean)).unsqueeze(0).expand(self.layers, -1, -1)

    def training_loss(self, batch, *, label_smoothing: float = 0.0) -> LossOutput:
        result = self.rnn(batch.tgt_in, batch.tgt_in != 0, mode=MemoryMode.REVERSIBLE,
                          initial_state=self.initial_state(batch), embedding=self.tgt_embedding,
                          readout=TokenLoss(self.output, batch.tgt_out))
        loss = result.readout  # filled in by backward (result.pending)
        return LossOutput(loss=loss, nll=loss.detach(), num_tokens=batch.num_tgt_tokens,
                          pending=result.pending)

    forward = training_loss

    def verify_reversal(self, batch) -> Optional[str]:
        """The Trainer's drift-check hook (see nmt.reversal_drift)."""
        drift = check_reversal(self.rnn, batch.tgt_in, batch.tgt_in != 0, exact=True,
                               initial_state=self.initial_state(batch),
                               embedding=self.tgt_embedding, corrupt=self.tamper)
        return None if drift.exact else drift.describe("decoder")


def toy_corpus(pairs: int = 48, seed: int = 0) -> SimpleNamespace:
    """Random id sequences (ids 4..VOCAB-1, lengths 2..7) in the EncodedCorpus layout."""
    rng = random.Random(seed)
    src = [[rng.randrange(4, VOCAB) for _ in range(rng.randint(2, 7))] for _ in range(pairs)]
    tgt = [[rng.randrange(4, VOCAB) for _ in range(rng.randint(2, 7))] for _ in range(pairs)]
    return SimpleNamespace(src=src, tgt=tgt, indices=list(range(pairs)))


def train_cfg(**overrides) -> SimpleNamespace:
    values = dict(label_smoothing=0.0, clip_grad_norm=None, max_epochs=5, max_steps=3,
                  max_minutes=None, valid_every=100, keep_last=3, early_stopping_patience=None,
                  verify_reversal_every=1, nonfinite_patience=3)
    values.update(overrides)
    return SimpleNamespace(**values)
