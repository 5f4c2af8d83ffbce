"""Measured memory: bytes autograd saves for backward, plus what the reversible Function keeps.

Counts live saved tensors through torch.autograd.graph.saved_tensors_hooks (each saved storage
once, parameters and user inputs excluded), takes the peak during the forward call, and adds the
bytes the reversible mode holds itself (buffer heads and words, storage, final state).
"""
import torch
from torch import nn

from nmt.reversible.sequence import MemoryMode, ReversibleRNN

BATCH, HIDDEN, EMB, VOCAB = 8, 24, 6, 17


class _LiveSavedBytes:
    """Peak bytes of the distinct storages autograd holds for backward."""

    def __init__(self, exclude):
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.live = {}  # storage pointer -> [references, bytes]
        self.bytes = self.peak = 0

    def pack(self, tensor):
        return _Held(self, tensor)

    @staticmethod
    def unpack(held):
        return held.tensor

    def add(self, key, size):
        if key in self.excluded:
            return
        entry = self.live.setdefault(key, [0, size])
        entry[0] += 1
        if entry[0] == 1:
            self.bytes += size
            self.peak = max(self.peak, self.bytes)

    def remove(self, key):
        entry = self.live.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                self.bytes -= entry[1]
                del self.live[key]


class _Held:
    def __init__(self, counter, tensor):
        storage = tensor.untyped_storage()
        self.counter, self.tensor, self.key = counter, tensor, storage.data_ptr()
        counter.add(self.key, storage.nbytes())

    def __del__(self):
        self.counter.remove(self.key)


class _StepLoss(nn.Module):
    def __init__(self, targets):
        super().__init__()
        self.out = nn.Linear(HIDDEN, VOCAB)
        self.targets = targets

    def forward(self, h, t):
        return nn.functional.cross_entropy(self.out(h), self.targets[:, t], reduction="sum")


def _measure(mode, steps, *, storage=None):
    """(peak bytes autograd saved during the forward call, the run's output)."""
    torch.manual_seed(50)
    rnn = ReversibleRNN("revgru", EMB, HIDDEN, num_layers=2, max_forget_bits=3, storage=storage)
    embedding = nn.Embedding(VOCAB, EMB)
    ids = torch.randint(0, VOCAB, (BATCH, steps))
    mask = torch.ones(BATCH, steps, dtype=torch.bool)
    targets = torch.randint(0, VOCAB, (BATCH, steps))
    readout = _StepLoss(targets) if storage is None else None
    # the user's own tensors (parameters, ids, mask, targets) are not activations
    exclude = list(rnn.parameters()) + list(embedding.parameters()) + [ids, mask, targets]
    exclude += list(readout.parameters()) if readout is not None else []
    counter = _LiveSavedBytes(exclude)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        out = rnn(ids, mask, mode=mode, embedding=embedding, readout=readout)
    return counter.peak, out


def _reversible_bytes(steps, storage=None):
    """Peak saved bytes + what the Function holds itself (storage is among the saved tensors)."""
    saved, out = _measure(MemoryMode.REVERSIBLE, steps, storage=storage)
    kept = out.kept_bytes
    return saved + kept["buffer"] + kept["state"] + kept["initial"], out


def test_reversible_mode_with_token_ids_and_a_readout_keeps_only_the_buffer_and_constant_state():
    short, out_short = _reversible_bytes(10)
    long, out_long = _reversible_bytes(200)
    word_bytes = 2 * (out_long.buffer.pushed_words() - out_short.buffer.pushed_words())
    assert word_bytes > 0
    # growth from 10 to 200 steps is exactly the buffer's counted words
    assert long - short == word_bytes
    # the buffer holds its counted bits and one scratch word (where non-spilling elements write)
    assert out_long.kept_bytes["buffer"] * 8 == out_long.buffer.used_bits() + 16
    # and far below what storing the hidden states would take
    assert long - short < 4 * HIDDEN * BATCH * 190 * 2 / 4


def test_reversible_mode_with_storage_adds_exactly_the_stored_values():
    from nmt.reversible.storage import AttentionStorage

    storage = AttentionStorage("proj", 5, 16)
    short, out_short = _reversible_bytes(10, storage)
    long, out_long = _reversible_bytes(200, storage)
    word_bytes = 2 * (out_long.buffer.pushed_words() - out_short.buffer.pushed_words())
    stored_bytes = BATCH * 190 * 5 * 2
    assert long - short == word_bytes + stored_bytes


def test_reference_mode_saves_at_least_32_bits_per_unit_and_step():
    short, _ = _measure(MemoryMode.REFERENCE, 10)
    long, _ = _measure(MemoryMode.REFERENCE, 200)
    assert long - short >= 4 * HIDDEN * BATCH * 190
