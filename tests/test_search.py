"""Greedy and beam search, driven by hand-made log-probabilities and by small random models."""
import itertools
import math
import zlib
from types import SimpleNamespace

import pytest
import torch

from nmt.config import DecodeConfig, DecoderConfig, EncoderConfig, ModelConfig
from nmt.models import build_model
from nmt.models.embeddings import BOS_ID, EOS_ID, PAD_ID
from nmt.search import (beam_search, check_search_options, gnmt_length_penalty, greedy_search,
                        max_output_lengths, search, search_options)

A, B = 4, 5  # the two words of the hand-made vocabulary
VOCAB = 6


def distribution(probs: dict, vocab=VOCAB) -> torch.Tensor:
    """{token: probability} -> log-probs (vocab,), -inf elsewhere."""
    log_probs = torch.full((vocab,), float("-inf"))
    for token, p in probs.items():
        log_probs[token] = math.log(p)
    return log_probs


class _Rows:
    """Encoder output of TableModel: the source sentence of every row."""

    def __init__(self, src):
        self.src = src


class TableModel:
    """The decoding contract with next-token log-probs from `table(src_tokens, prefix)`.

    The state is the prefix of every row (BOS first), so reordering mistakes change the
    log-probs search sees. Records the number of rows of every step.
    """

    def __init__(self, table):
        self.table = table
        self.rows_per_step = []

    def encode(self, src, src_lengths):
        return _Rows(src)

    def init_decoder_state(self, encoder_output):
        return torch.zeros(encoder_output.src.size(0), 0, dtype=torch.long)

    def decode_step(self, prev_tokens, state, encoder_output):
        state = torch.cat([state, prev_tokens.unsqueeze(1)], dim=1)
        self.rows_per_step.append(state.size(0))
        assert (state[:, 0] == BOS_ID).all()
        log_probs = torch.stack([
            self.table(tuple(src.tolist()), tuple(prefix[1:].tolist()))
            for src, prefix in zip(encoder_output.src, state)])
        return log_probs, state

    def reorder_encoder_output(self, encoder_output, index):
        return _Rows(encoder_output.src.index_select(0, index))

    def reorder_state(self, state, index):
        return state.index_select(0, index)


def from_dict(entries: dict, default: dict):
    return lambda src, prefix: distribution(entries.get(prefix, default))


def one_sentence(length=2):
    return torch.full((1, length), 7), torch.tensor([length])


def test_beam_search_finds_a_better_sequence_that_greedy_misses():
    model = TableModel(from_dict({
        (): {A: 0.55, B: 0.4, EOS_ID: 0.05},
        (A,): {A: 0.36, B: 0.34, EOS_ID: 0.30},
        (B,): {EOS_ID: 0.95, A: 0.05},
    }, default={EOS_ID: 0.5, A: 0.3, B: 0.2}))
    src, lengths = one_sentence()
    greedy = greedy_search(model, src, lengths, length_penalty=0.0)[0]
    best = beam_search(model, src, lengths, beam_size=2, length_penalty=0.0)[0][0]
    assert greedy.tokens == [A, A]
    assert greedy.log_prob == pytest.approx(math.log(0.55 * 0.36 * 0.5), rel=1e-6)
    assert best.tokens == [B]
    assert best.score == pytest.approx(math.log(0.4 * 0.95), rel=1e-6)
    assert best.score > greedy.score


LONGER_WINS = {
    (): {EOS_ID: 0.5, A: 0.45, B: 0.05},
    (A,): {A: 0.95, EOS_ID: 0.04, B: 0.01},
    (A, A): {A: 0.95, EOS_ID: 0.04, B: 0.01},
    (A, A, A): {EOS_ID: 0.95, A: 0.05},
}


def test_length_penalty_keeps_searching_after_the_best_beam_ends():
    """Step 1's best candidate is EOS, but with alpha = 1 the longer A A A EOS scores higher:
    log(0.45 * 0.95^3) / ((5 + 4) / 6) = -0.635 > log(0.5) / 1 = -0.693."""
    model = TableModel(from_dict(LONGER_WINS, default={EOS_ID: 0.9, A: 0.05, B: 0.05}))
    src, lengths = one_sentence()
    best = beam_search(model, src, lengths, beam_size=2, length_penalty=1.0)[0][0]
    assert best.tokens == [A, A, A]
    assert best.score == pytest.approx(math.log(0.45 * 0.95 ** 3) / 1.5, rel=1e-6)
    assert best.score > math.log(0.5)
    # without a length penalty the empty hypothesis wins and search stops at once
    model = TableModel(from_dict(LONGER_WINS, default={EOS_ID: 0.9, A: 0.05, B: 0.05}))
    unpenalised = beam_search(model, src, lengths, beam_size=2, length_penalty=0.0)[0][0]
    assert unpenalised.tokens == [] and len(model.rows_per_step) == 1


def _random_table(src, prefix):
    """Seeded by the sentence and the prefix: A, B and EOS get random probabilities."""
    generator = torch.Generator().manual_seed(zlib.crc32(repr((src, prefix)).encode()))
    logits = torch.randn(3, generator=generator) * 1.5
    log_probs = torch.full((VOCAB,), float("-inf"))
    log_probs[[A, B, EOS_ID]] = torch.log_softmax(logits, dim=0)
    return log_probs


def _exhaustive(src, max_len, alpha):
    """Every hypothesis of at most max_len words, scored as the search docstring says."""
    scored = []
    for length in range(max_len + 1):
        for words in itertools.product([A, B], repeat=length):
            log_prob = sum(float(_random_table(src, words[:t])[words[t]]) for t in range(length))
            log_prob += float(_random_table(src, words)[EOS_ID])
            scored.append((log_prob / gnmt_length_penalty(length + 1, alpha), list(words)))
    return sorted(scored, key=lambda pair: -pair[0])


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, 2.0])
def test_wide_beam_search_equals_exhaustive_search(alpha):
    """With 12 beams nothing is ever pruned (at most 12 candidates per step for 3 words), so
    the n-best lists must be exactly the best of all 15 hypotheses, in order, for each
    sentence at its own maximum length (max_len_ratio 1 -> max_len = source length)."""
    src = torch.tensor([[7, 8, 9], [9, 9, 0], [8, 0, 0]])
    lengths = torch.tensor([3, 2, 1])
    model = TableModel(_random_table)
    nbests = beam_search(model, src, lengths, beam_size=12, nbest=12, length_penalty=alpha,
                         max_len_ratio=1.0, max_len_offset=0)
    for row, hypotheses in enumerate(nbests):
        n = int(lengths[row])
        expected = _exhaustive(tuple(src[row].tolist()), n, alpha)[:12]
        assert [h.tokens for h in hypotheses] == [words for _, words in expected]
        assert [h.score for h in hypotheses] == pytest.approx([s for s, _ in expected],
                                                              rel=1e-5)


@pytest.mark.parametrize("beam_size, nbest", [(2, 2), (3, 1), (5, 5), (4, 3)])
def test_nbest_lists_are_sorted_distinct_and_as_long_as_asked(beam_size, nbest):
    src = torch.tensor([[7, 8, 9, 10], [9, 9, 0, 0]])
    lengths = torch.tensor([4, 2])
    nbests = beam_search(TableModel(_random_table), src, lengths, beam_size=beam_size,
                         nbest=nbest, length_penalty=1.0)
    for hypotheses in nbests:
        scores = [h.score for h in hypotheses]
        assert len(hypotheses) == nbest
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hypotheses}) == nbest


def test_impossible_options_are_refused_before_searching():
    with pytest.raises(ValueError, match="nbest"):
        check_search_options(beam_size=2, nbest=3)
    with pytest.raises(ValueError, match="beam size"):
        check_search_options(beam_size=0, nbest=1)
    with pytest.raises(ValueError, match="nbest"):
        search(TableModel(_random_table), *one_sentence(), beam_size=2, nbest=3)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_maximum_length_follows_each_source_and_ends_with_a_forced_eos(beam_size):
    """EOS is very unlikely before the limit (so A A ... wins) and unlikely at it (so only
    forcing ends the greedy path there)."""
    def table(src, prefix):
        limit = int(1.5 * sum(token != PAD_ID for token in src) + 1)
        eos = 1e-5 if len(prefix) == limit else 1e-12
        return distribution({A: 0.98 - eos, B: 0.02, EOS_ID: eos})

    src = torch.tensor([[7, 7, 7, 7], [7, 7, 0, 0]])
    lengths = torch.tensor([4, 2])
    results = search(TableModel(table), src, lengths, beam_size=beam_size, max_len_ratio=1.5,
                     max_len_offset=1, length_penalty=0.0)
    assert max_output_lengths(lengths, max_len_ratio=1.5, max_len_offset=1).tolist() == [7, 4]
    for hypotheses, limit in zip(results, [7, 4]):
        best = hypotheses[0]
        assert best.tokens == [A] * limit
        assert best.log_prob == pytest.approx(limit * math.log(0.98) + math.log(1e-5))


def test_padding_and_bos_are_never_generated():
    model = TableModel(from_dict({}, default={PAD_ID: 0.4, BOS_ID: 0.3, A: 0.1, EOS_ID: 0.2}))
    for beam_size in (1, 3):
        for hypotheses in search(model, *one_sentence(), beam_size=beam_size, nbest=1):
            assert not {PAD_ID, BOS_ID} & set(hypotheses[0].tokens)
    greedy = greedy_search(model, *one_sentence(), length_penalty=0.0)[0]
    assert greedy.tokens == [] and greedy.log_prob == pytest.approx(math.log(0.2))


# --------------------------------------------------------------- small random models


def _random_model(seed=0, cell="gru"):
    torch.manual_seed(seed)
    config = ModelConfig(embedding_dim=16, dropout=0.0, init_uniform=0.5,
                         encoder=EncoderConfig(cell=cell, hidden=16, dropout=0.0),
                         decoder=DecoderConfig(cell=cell, hidden=16, dropout=0.0))
    return build_model(config, 30, 30).eval()


@pytest.fixture(scope="module")
def copy_model():
    """A tiny GRU trained for a moment to copy its source: outputs end by themselves, at
    varied lengths (untrained models mostly stop at once or run to the maximum length)."""
    model = _random_model(seed=2).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        src, lengths = _random_sources(32, generator=generator)
        tgt_out = src.clone()
        tgt_in = torch.cat([torch.full((32, 1), BOS_ID), src[:, :-1]], dim=1)
        tgt_in[tgt_in == EOS_ID] = PAD_ID
        batch = SimpleNamespace(src=src, src_lengths=lengths, tgt_in=tgt_in, tgt_out=tgt_out,
                                num_tgt_tokens=int(lengths.sum()))
        optimizer.zero_grad()
        loss = model.training_loss(batch).loss
        (loss / batch.num_tgt_tokens).backward()
        optimizer.step()
    return model.eval()


def _random_sources(count, seed=0, max_len=9, generator=None):
    """(count, max_len) random sentences ending in EOS, lengths 1..max_len (EOS included)."""
    generator = generator or torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (count,), generator=generator)
    src = torch.zeros(count, max_len, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        src[row, :length - 1] = torch.randint(4, 30, (length - 1,), generator=generator)
        src[row, length - 1] = EOS_ID
    return src, lengths


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_beam_size_one_is_greedy(alpha, cell):
    model = _random_model(cell=cell)
    src, lengths = _random_sources(12, seed=3)
    greedy = greedy_search(model, src, lengths, length_penalty=alpha, return_attention=True)
    beam = beam_search(model, src, lengths, beam_size=1, length_penalty=alpha,
                       return_attention=True)
    assert len({len(h.tokens) for h in greedy}) > 2  # not all trivially empty or cut at max
    for g, (b,) in zip(greedy, beam):
        assert g.tokens == b.tokens
        assert g.score == b.score and g.log_prob == b.log_prob
        assert torch.equal(g.attention, b.attention)


def _teacher_forced_log_prob(model, src, tokens):
    """Summed log-prob of tokens + EOS for one unpadded source sentence (src_len,)."""
    with torch.no_grad():
        encoder_output = model.encode(src.unsqueeze(0), torch.tensor([src.size(0)]))
        state = model.init_decoder_state(encoder_output)
        total = 0.0
        for prev, target in zip([BOS_ID] + tokens, tokens + [EOS_ID]):
            log_probs, state = model.decode_step(torch.tensor([prev]), state, encoder_output)
            total += float(log_probs[0, target])
    return total


def test_beam_hypotheses_carry_their_own_log_probs_and_attention():
    model = _random_model(seed=1)
    src, lengths = _random_sources(6, seed=4)
    nbests = beam_search(model, src, lengths, beam_size=5, nbest=5, length_penalty=1.0,
                         return_attention=True)
    for row, hypotheses in enumerate(nbests):
        for h in hypotheses:
            n = int(lengths[row])
            reference = _teacher_forced_log_prob(model, src[row, :n], h.tokens)
            assert h.log_prob == pytest.approx(reference, abs=1e-4)
            assert h.score == pytest.approx(h.log_prob / ((5 + len(h.tokens) + 1) / 6))
            assert h.attention.shape == (len(h.tokens) + 1, n)
            assert torch.allclose(h.attention.sum(1), torch.ones(len(h.tokens) + 1), atol=1e-5)


@pytest.mark.parametrize("beam_size, nbest", [(1, 1), (4, 2)])
def test_translation_does_not_depend_on_the_rest_of_the_batch(copy_model, beam_size, nbest):
    model = copy_model
    src, lengths = _random_sources(64, seed=5)
    together = search(model, src, lengths, beam_size=beam_size, nbest=nbest)
    for row in [0, 7, 33, 63]:
        n = int(lengths[row])
        alone = search(model, src[row:row + 1, :n], lengths[row:row + 1], beam_size=beam_size,
                       nbest=nbest)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[row]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in together[row]],
                                                         abs=1e-5)
    limits = max_output_lengths(lengths, max_len_ratio=1.5, max_len_offset=10).tolist()
    ended = [len(h[0].tokens) < limit for h, limit in zip(together, limits)]
    assert sum(ended) > 48 and len({len(h[0].tokens) for h in together}) > 5


def test_search_options_come_from_the_decode_section():
    options = search_options(DecodeConfig(beam_size=3, nbest=2, length_penalty=0.6,
                                          max_len_ratio=2.0, max_len_offset=4))
    assert options == dict(beam_size=3, nbest=2, length_penalty=0.6, max_len_ratio=2.0,
                           max_len_offset=4)


def test_an_empty_batch_gives_empty_results():
    src, lengths = torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    model = _random_model()
    assert search(model, src, lengths, beam_size=1) == []
    assert search(model, src, lengths, beam_size=3, nbest=2) == []
