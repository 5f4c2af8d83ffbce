import random
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmt.data.batching import (Batch, TokenBatchSampler, TrainingBatches, collate,
                               make_eval_batches, restore_order, truncate)
from nmt.data.corpus import EncodedCorpus
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


def random_corpus(count, seed, max_len=30):
    rng = random.Random(seed)
    src = [[rng.randint(4, 99) for _ in range(rng.randint(0, max_len))] for _ in range(count)]
    tgt = [[rng.randint(4, 99) for _ in range(rng.randint(0, max_len))] for _ in range(count)]
    return EncodedCorpus(src, tgt, indices=[10 * i for i in range(count)])


def padded_cost(indices, tgt_lengths):
    return len(indices) * max(tgt_lengths[i] + 1 for i in indices)


# ---------------------------------------------------------------- collate


def test_collate_layout():
    src = [[5, 6], [7, 8, 9, 10], []]
    tgt = [[11], [12, 13], [14, 15, 16]]
    batch = collate(src, tgt, indices=[40, 41, 42])
    # longest source first: rows are inputs 1, 0, 2
    assert batch.indices.tolist() == [41, 40, 42]
    assert batch.src.tolist() == [[7, 8, 9, 10, EOS_ID], [5, 6, EOS_ID, PAD_ID, PAD_ID],
                                  [EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]]
    assert batch.src_lengths.tolist() == [5, 3, 1]
    assert batch.tgt_in.tolist() == [[BOS_ID, 12, 13, PAD_ID], [BOS_ID, 11, PAD_ID, PAD_ID],
                                     [BOS_ID, 14, 15, 16]]
    assert batch.tgt_out.tolist() == [[12, 13, EOS_ID, PAD_ID], [11, EOS_ID, PAD_ID, PAD_ID],
                                      [14, 15, 16, EOS_ID]]
    assert batch.tgt_lengths.tolist() == [3, 2, 4]
    assert batch.num_tgt_tokens == 9 == int(batch.tgt_mask.sum())
    assert batch.src_mask.sum(dim=1).tolist() == batch.src_lengths.tolist()
    for tensor in (batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out, batch.indices):
        assert tensor.dtype == torch.long
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.tgt_out, batch.tgt_out)


def test_collate_source_only():
    batch = collate([[4], [5, 6]], None, indices=[0, 1])
    assert batch.tgt_in is None and batch.tgt_out is None and batch.tgt_lengths is None
    assert batch.num_tgt_tokens == 0 and batch.tgt_mask is None
    assert batch.src.tolist() == [[5, 6, EOS_ID], [4, EOS_ID, PAD_ID]]


# ---------------------------------------------------------------- training batches


def test_every_pair_once_per_epoch_within_budget():
    corpus = random_corpus(500, seed=1)
    tgt_lengths = [len(t) for t in corpus.tgt]
    sampler = TokenBatchSampler([len(s) for s in corpus.src], tgt_lengths, batch_tokens=200, seed=7)
    for epoch in range(3):
        batches = list(sampler)
        assert sampler.epoch == epoch + 1 and sampler.batch_index == 0
        assert sorted(i for batch in batches for i in batch) == list(range(500))
        assert all(padded_cost(batch, tgt_lengths) <= 200 for batch in batches)
        # length buckets: little padding overall
        real = sum(tgt_lengths[i] + 1 for batch in batches for i in batch)
        assert real / sum(padded_cost(batch, tgt_lengths) for batch in batches) > 0.9


def test_training_batches_cover_corpus_and_count_tokens():
    corpus = random_corpus(300, seed=2)
    batches = TrainingBatches(corpus, batch_tokens=256, seed=1)
    assert len(batches) > 1
    seen = Counter()
    for batch in batches:
        assert batch.tgt_out.numel() <= 256
        assert batch.num_tgt_tokens == sum(len(corpus.tgt[i // 10]) + 1 for i in batch.indices.tolist())
        for row, index in enumerate(batch.indices.tolist()):
            source = corpus.src[index // 10]
            assert batch.src[row, :len(source)].tolist() == source
        lengths = batch.src_lengths.tolist()
        assert lengths == sorted(lengths, reverse=True)
        seen.update(batch.indices.tolist())
    assert seen == Counter(corpus.indices)
    assert batches.epoch == 1


def test_oversized_pair_gets_its_own_batch():
    sampler = TokenBatchSampler([3, 3, 3], [2, 50, 2], batch_tokens=10, seed=0)
    batches = sorted(list(sampler))
    assert batches == [[0, 2], [1]]


def test_seeded_shuffling_is_reproducible_and_varies():
    lengths = [len(t) for t in random_corpus(400, seed=3).tgt]
    first = TokenBatchSampler(lengths, lengths, batch_tokens=128, seed=11)
    again = TokenBatchSampler(lengths, lengths, batch_tokens=128, seed=11)
    other = TokenBatchSampler(lengths, lengths, batch_tokens=128, seed=12)
    assert first.batches_for_epoch(0) == again.batches_for_epoch(0)
    assert list(first) == list(again)
    assert first.batches_for_epoch(1) != first.batches_for_epoch(0)
    assert other.batches_for_epoch(0) != first.batches_for_epoch(0)


def test_resume_mid_epoch_gives_the_same_batches():
    corpus = random_corpus(200, seed=4)
    uninterrupted = TrainingBatches(corpus, batch_tokens=100, seed=5)
    expected = [b.indices.tolist() for _ in range(2) for b in uninterrupted]

    first_run = TrainingBatches(corpus, batch_tokens=100, seed=5)
    taken = []
    for batch in first_run:
        taken.append(batch.indices.tolist())
        if len(taken) == 7:
            break
    state = first_run.state_dict()
    assert (state["epoch"], state["batch_index"]) == (0, 7)

    resumed = TrainingBatches(corpus, batch_tokens=100, seed=5)
    resumed.load_state_dict(state)
    taken += [b.indices.tolist() for b in resumed]  # rest of epoch 0
    assert resumed.epoch == 1
    taken += [b.indices.tolist() for b in resumed]  # epoch 1
    assert taken == expected


def test_resume_after_last_batch_of_epoch():
    lengths = list(range(1, 40))
    sampler = TokenBatchSampler(lengths, lengths, batch_tokens=60, seed=0)
    epoch_zero = list(sampler.batches_for_epoch(0))
    iterator = iter(sampler)
    for _ in epoch_zero:
        next(iterator)
    state = sampler.state_dict()  # taken right after the last batch, before the epoch rolls over
    resumed = TokenBatchSampler(lengths, lengths, batch_tokens=60, seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == []
    assert list(resumed) == sampler.batches_for_epoch(1)


def test_state_from_other_data_is_rejected():
    sampler = TokenBatchSampler([1, 2], [1, 2], batch_tokens=10, seed=0)
    with pytest.raises(ValueError, match="num_pairs=3"):
        sampler.load_state_dict({"epoch": 1, "batch_index": 0, "seed": 0, "batch_tokens": 10,
                                 "num_pairs": 3})
    with pytest.raises(ValueError, match="seed=4"):
        sampler.load_state_dict({"epoch": 1, "batch_index": 0, "seed": 4})


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), min_size=1, max_size=80),
       batch_tokens=st.integers(1, 300), seed=st.integers(0, 1000), epoch=st.integers(0, 5))
def test_batching_properties(lengths, batch_tokens, seed, epoch):
    src_lengths = [s for s, _ in lengths]
    tgt_lengths = [t for _, t in lengths]
    sampler = TokenBatchSampler(src_lengths, tgt_lengths, batch_tokens=batch_tokens, seed=seed)
    batches = sampler.batches_for_epoch(epoch)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert batch, "empty batch"
        assert len(batch) == 1 or padded_cost(batch, tgt_lengths) <= batch_tokens


# ---------------------------------------------------------------- evaluation batches


@pytest.mark.parametrize("sort_by_length", [True, False])
def test_eval_batches_keep_order_recoverable(sort_by_length):
    corpus = random_corpus(103, seed=6)
    batches = make_eval_batches(corpus.src, corpus.tgt, batch_size=16, sort_by_length=sort_by_length)
    assert [b.size for b in batches] == [16] * 6 + [7]
    results = []
    for batch in batches:
        for row, index in enumerate(batch.indices.tolist()):
            length = int(batch.src_lengths[row]) - 1
            results.append((index, batch.src[row, :length].tolist()))
    assert restore_order(results, 103) == corpus.src
    if not sort_by_length:
        assert sorted(batches[0].indices.tolist()) == list(range(16))


def test_eval_batches_source_only_and_empty():
    batches = make_eval_batches([[4, 5], [], [6]], batch_size=2)
    assert [b.indices.tolist() for b in batches] == [[0, 2], [1]]
    assert batches[1].src.tolist() == [[EOS_ID]]  # an empty line still gets a (one-token) row
    assert all(b.tgt_out is None for b in batches)
    assert make_eval_batches([], batch_size=4) == []


def test_restore_order_checks_indices():
    assert restore_order([(1, "b"), (0, "a")], 2) == ["a", "b"]
    with pytest.raises(ValueError, match="missing"):
        restore_order([(0, "a")], 2)
    with pytest.raises(ValueError, match="twice"):
        restore_order([(0, "a"), (0, "b")], 1)


def test_truncate_counts_cut_lines():
    ids, cut = truncate([[1, 2, 3], [4], [5, 6, 7, 8]], 2)
    assert ids == [[1, 2], [4], [5, 6]] and cut == 2
