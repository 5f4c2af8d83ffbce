"""Batches: token-budget length buckets for training (resumable), sentence counts for evaluation.

Training: `TrainingBatches(corpus, batch_tokens=, seed=)` yields `Batch`es; each epoch uses every
pair exactly once. Pairs are sorted by length (ties broken by a seeded shuffle), cut into batches
whose padded target cost `sentences x longest target (+EOS)` stays within `batch_tokens`, and the
batch order is shuffled with a generator seeded by (seed, epoch). `state_dict()` holds only the
epoch and the next batch index, so a resumed run sees exactly the batches it would have seen.
`EpochBatches` are one epoch's batches as the Trainer indexes them (a rank's share under torchrun).

Evaluation/translation: `make_eval_batches(src_ids, tgt_ids, batch_size=)` sorts by source length
for speed; `Batch.indices` and `restore_order` give back the input order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import torch

from nmt.data.corpus import EncodedCorpus, load_split
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from nmt.distributed import SINGLE_PROCESS, Distributed, Shard, shard_of
from nmt.errors import UserError

T = TypeVar("T")


@dataclass
class Batch:
    """Padded tensors of one batch, sorted by source length, longest first.

    src (batch, src_len) long: source ids + EOS, padded with 0
    src_lengths (batch,) long: len(source ids) + 1
    tgt_in (batch, tgt_len) long: BOS + target ids; None for source-only (translation) batches
    tgt_out (batch, tgt_len) long: target ids + EOS; None for source-only batches
    tgt_lengths (batch,) long: len(target ids) + 1; None for source-only batches
    indices (batch,) long: position of each sentence in the corpus / input
    num_tgt_tokens: non-padding target tokens (EOS included); 0 for source-only batches
    """

    src: torch.Tensor
    src_lengths: torch.Tensor
    tgt_in: Optional[torch.Tensor]
    tgt_out: Optional[torch.Tensor]
    tgt_lengths: Optional[torch.Tensor]
    indices: torch.Tensor
    num_tgt_tokens: int

    @property
    def size(self) -> int:
        return self.src.size(0)

    @property
    def src_mask(self) -> torch.Tensor:
        """(batch, src_len) bool, True on real tokens."""
        return self.src != PAD_ID

    @property
    def tgt_mask(self) -> Optional[torch.Tensor]:
        """(batch, tgt_len) bool, True on real target positions."""
        return None if self.tgt_out is None else self.tgt_out != PAD_ID

    def to(self, device) -> "Batch":
        """A copy on `device` (lengths and indices too; the model decides what it needs on CPU)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return Batch(**moved)


def _pad(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max(len(seq) for seq in sequences)
    out = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            out[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def collate(src_ids: Sequence[Sequence[int]], tgt_ids: Optional[Sequence[Sequence[int]]],
            indices: Sequence[int]) -> Batch:
    """Build a `Batch` from unpadded ids (no BOS/EOS yet); rows are reordered longest source first.

    Ties in source length keep their given order, so the result does not depend on sort details.
    """
    if not src_ids:
        raise ValueError("cannot collate an empty batch")
    order = sorted(range(len(src_ids)), key=lambda i: -len(src_ids[i]))
    src = [list(src_ids[i]) + [EOS_ID] for i in order]
    batch_indices = torch.tensor([indices[i] for i in order], dtype=torch.long)
    src_lengths = torch.tensor([len(s) for s in src], dtype=torch.long)
    if tgt_ids is None:
        return Batch(_pad(src), src_lengths, None, None, None, batch_indices, 0)
    tgt = [list(tgt_ids[i]) for i in order]
    tgt_lengths = torch.tensor([len(t) + 1 for t in tgt], dtype=torch.long)
    return Batch(src=_pad(src), src_lengths=src_lengths,
                 tgt_in=_pad([[BOS_ID] + t for t in tgt]), tgt_out=_pad([t + [EOS_ID] for t in tgt]),
                 tgt_lengths=tgt_lengths, indices=batch_indices,
                 num_tgt_tokens=int(tgt_lengths.sum()))


def collate_pairs(corpus: EncodedCorpus, chosen: Sequence[int]) -> Batch:
    """`collate` of the pairs at positions `chosen` of an encoded corpus."""
    return collate([corpus.src[i] for i in chosen], [corpus.tgt[i] for i in chosen],
                   [corpus.indices[i] for i in chosen])


# --------------------------------------------------------------------------- training


class TokenBatchSampler:
    """Epochs of index batches under a padded target-token budget; resumable mid-epoch.

    `batch_tokens` bounds `len(batch) * max(tgt_len + 1)` (padding counts); a pair that alone
    exceeds it forms a batch of one rather than being dropped. Iterating yields the remaining
    batches of the current epoch, then moves to the next epoch.
    """

    def __init__(self, src_lengths: Sequence[int], tgt_lengths: Sequence[int], *,
                 batch_tokens: int, seed: int):
        if len(src_lengths) != len(tgt_lengths):
            raise ValueError("src_lengths and tgt_lengths differ in length")
        if batch_tokens < 1:
            raise ValueError("batch_tokens must be positive")
        self.src_lengths = list(src_lengths)
        self.tgt_lengths = list(tgt_lengths)
        self.batch_tokens = batch_tokens
        self.seed = seed
        self.epoch = 0
        self.batch_index = 0  # next batch to yield within self.epoch
        self._cached: Tuple[int, List[List[int]]] = (-1, [])

    def batches_for_epoch(self, epoch: int) -> List[List[int]]:
        """The epoch's batches of pair indices, in order; a pure function of (lengths, seed, epoch)."""
        if self._cached[0] == epoch:
            return self._cached[1]
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.tgt_lengths)))
        rng.shuffle(order)  # random ties, then a stable sort by length
        order.sort(key=lambda i: (self.tgt_lengths[i], self.src_lengths[i]))
        batches: List[List[int]] = []
        current: List[int] = []
        longest = 0
        for i in order:
            cost = self.tgt_lengths[i] + 1  # target tokens + EOS
            if current and max(longest, cost) * (len(current) + 1) > self.batch_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, cost)
        if current:
            batches.append(current)
        rng.shuffle(batches)
        self._cached = (epoch, batches)
        return batches

    def __len__(self) -> int:
        """Batches in the current epoch."""
        return len(self.batches_for_epoch(self.epoch))

    def __iter__(self) -> Iterator[List[int]]:
        batches = self.batches_for_epoch(self.epoch)
        while self.batch_index < len(batches):
            self.batch_index += 1  # advance first: a checkpoint taken now resumes after this batch
            yield batches[self.batch_index - 1]
        self.epoch += 1
        self.batch_index = 0

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "batch_index": self.batch_index, "seed": self.seed,
                "batch_tokens": self.batch_tokens, "num_pairs": len(self.tgt_lengths)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the position; the data, seed and budget must be those the state came from."""
        for key, current in (("seed", self.seed), ("batch_tokens", self.batch_tokens),
                             ("num_pairs", len(self.tgt_lengths))):
            if key in state and state[key] != current:
                raise ValueError(f"batch sampler state has {key}={state[key]}, this run has {current}"
                                 f": the data or config changed since the checkpoint")
        self.epoch = int(state["epoch"])
        self.batch_index = int(state["batch_index"])


class TrainingBatches:
    """Training `Batch`es over an `EncodedCorpus`: `TokenBatchSampler` plus `collate`.

    `for batch in batches:` runs the rest of the current epoch; `epoch`, `batch_index`,
    `state_dict()` and `load_state_dict()` come from the sampler.
    """

    def __init__(self, corpus, *, batch_tokens: int, seed: int):
        self.corpus = corpus
        self.sampler = TokenBatchSampler([len(s) for s in corpus.src], [len(t) for t in corpus.tgt],
                                         batch_tokens=batch_tokens, seed=seed)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def batch_index(self) -> int:
        return self.sampler.batch_index

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        for chosen in self.sampler:
            yield collate_pairs(self.corpus, chosen)

    def state_dict(self) -> Dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


class EpochBatches:
    """The batches of one epoch, collated on access (a Sequence the Trainer indexes).

    Under torchrun each item is this rank's `Shard` of the global batch (nmt.distributed)."""

    def __init__(self, corpus, index_batches: List[List[int]],
                 placement: Distributed = SINGLE_PROCESS):
        self.corpus = corpus
        self.index_batches = index_batches
        self.placement = placement

    def __len__(self) -> int:
        return len(self.index_batches)

    def __getitem__(self, position: int):
        chosen, weight = self.index_batches[position], 1.0
        if self.placement.enabled:
            chosen, weight = shard_of(chosen, self.placement)
        batch = collate_pairs(self.corpus, chosen)
        return Shard(batch, weight) if self.placement.enabled else batch


# --------------------------------------------------------------------------- evaluation


def make_eval_batches(src_ids: Sequence[Sequence[int]],
                      tgt_ids: Optional[Sequence[Sequence[int]]] = None, *,
                      batch_size: int, sort_by_length: bool = True) -> List[Batch]:
    """Batches of at most `batch_size` sentences covering every input once, in any length.

    With `sort_by_length` similar lengths share a batch (less padding); `Batch.indices` are
    positions in `src_ids`, so `restore_order` puts per-sentence results back in input order.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    if tgt_ids is not None and len(tgt_ids) != len(src_ids):
        raise ValueError(f"{len(src_ids)} source sentences but {len(tgt_ids)} targets")
    order = list(range(len(src_ids)))
    if sort_by_length:
        order.sort(key=lambda i: -len(src_ids[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batches.append(collate([src_ids[i] for i in chosen],
                               None if tgt_ids is None else [tgt_ids[i] for i in chosen], chosen))
    return batches


def restore_order(indexed: Sequence[Tuple[int, T]], count: int) -> List[T]:
    """[(index, value), ...] in any order -> values by index; every index 0..count-1 exactly once."""
    result: List[Optional[T]] = [None] * count
    seen = [False] * count
    for index, value in indexed:
        if seen[index]:
            raise ValueError(f"index {index} given twice")
        seen[index] = True
        result[index] = value
    if not all(seen):
        raise ValueError(f"index {seen.index(False)} missing")
    return result  # type: ignore[return-value]


def truncate(ids: Sequence[Sequence[int]], max_len: int) -> Tuple[List[List[int]], int]:
    """Cut each id list to `max_len` tokens; returns the lists and how many were cut (to warn)."""
    cut = sum(1 for seq in ids if len(seq) > max_len)
    return [list(seq[:max_len]) for seq in ids], cut


def training_sampler(config, tokenizer) -> Tuple[EncodedCorpus, "TokenBatchSampler"]:
    """The training split (encoded, length-filtered) and its seeded token-budget sampler."""
    corpus = load_split(config, "train", tokenizer)
    if len(corpus) == 0:
        raise UserError(f"data.train: no training pair has at most data.max_len="
                        f"{config.data.max_len} tokens on both sides")
    sampler = TokenBatchSampler([len(s) for s in corpus.src], [len(t) for t in corpus.tgt],
                                batch_tokens=config.data.batch_tokens, seed=config.train.seed)
    return corpus, sampler
