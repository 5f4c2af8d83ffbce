"""Greedy and batched beam search over the model's decoding interface.

Works with any object that has `encode(src, src_lengths)`, `init_decoder_state(enc)`,
`decode_step(prev_tokens, state, enc) -> (log_probs (rows, vocab), state)`,
`reorder_encoder_output(enc, index)` and `reorder_state(state, index)`; search never looks inside
the encoder output or the state (except an optional `state.attention` (rows, src_len) when
attention is requested). Put the model in eval mode first; search runs without autograd.

Scores (GNMT, Wu et al. 2016): a hypothesis of `length` tokens, EOS included, with summed token
log-probability `log_prob` scores
    score = log_prob / lp(length),   lp(length) = ((5 + length) / 6) ** alpha
(alpha = `length_penalty`; 0 disables). A hypothesis holds at most
    max_len = int(max_len_ratio * src_len + max_len_offset)
tokens before its EOS (src_len: that sentence's own source length); at step max_len + 1 only EOS
is allowed. PAD and BOS are never generated.

Beam search keeps `beam_size` live beams per sentence, all sentences x beams in one tensor.
Each step it takes the best `beam_size` extensions of the live beams; those ending in EOS are set
aside as finished, the others stay live (so the beam refills from the remaining live beams, and
beam size 1 is exactly greedy). A sentence is done when no live beam can still beat the worst of
the `nbest` best finished hypotheses: log-probs only decrease, so a live beam with log-prob s can
at best reach s / max(lp(L)) over the final lengths L it can still reach (up to max_len + 1).
With alpha > 0 that keeps searching after the best beam ends if a longer hypothesis could still
win. Sentences leave the batch when done, so a translation never depends on its batch. An n-best
list is shorter than `nbest` only if fewer hypotheses can exist (tiny vocabulary and max_len).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from nmt.models.embeddings import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Hypothesis:
    """tokens: output ids without BOS/EOS; score: log_prob / lp(len(tokens) + 1);
    log_prob: summed token log-probabilities, EOS included;
    attention (len(tokens) + 1, src_len): weights of each step, EOS step included (on request)."""

    tokens: List[int]
    score: float
    log_prob: float
    attention: Optional[torch.Tensor] = None


def gnmt_length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha; length counts EOS."""
    return ((5.0 + length) / 6.0) ** alpha


def max_output_lengths(src_lengths: torch.Tensor, *, max_len_ratio: float,
                       max_len_offset: int) -> torch.Tensor:
    """(batch,) source lengths -> (batch,) most tokens (before EOS) each output may have."""
    limits = (src_lengths.double() * max_len_ratio + max_len_offset).floor().long()
    return limits.clamp(min=0)


def check_search_options(beam_size: int, nbest: int) -> None:
    """Raise ValueError for impossible settings (call it at start-up, before any input)."""
    if beam_size < 1:
        raise ValueError(f"beam size must be at least 1, got {beam_size}")
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest must be between 1 and the beam size ({beam_size}), got {nbest}")


def search_options(decode_cfg) -> dict:
    """Keyword arguments for `search` from a `decode` config section."""
    return dict(beam_size=decode_cfg.beam_size, nbest=decode_cfg.nbest,
                length_penalty=decode_cfg.length_penalty,
                max_len_ratio=decode_cfg.max_len_ratio, max_len_offset=decode_cfg.max_len_offset)


def _allowed_log_probs(log_probs: torch.Tensor, at_limit: torch.Tensor) -> torch.Tensor:
    """Forbid PAD and BOS everywhere, and anything but EOS on rows at their length limit."""
    log_probs = log_probs.clone()
    log_probs[:, PAD_ID] = float("-inf")
    log_probs[:, BOS_ID] = float("-inf")
    if bool(at_limit.any()):
        eos = log_probs[at_limit, EOS_ID]
        log_probs[at_limit] = float("-inf")
        log_probs[at_limit, EOS_ID] = eos
    return log_probs


def _step_attention(state) -> torch.Tensor:
    attention = getattr(state, "attention", None)
    if attention is None:
        raise ValueError("return_attention needs a decoder state with an `attention` field")
    return attention


def search(model, src: torch.Tensor, src_lengths: torch.Tensor, *, beam_size: int = 5,
           nbest: int = 1, length_penalty: float = 1.0, max_len_ratio: float = 1.5,
           max_len_offset: int = 10, return_attention: bool = False) -> List[List[Hypothesis]]:
    """n-best lists (best first) for each sentence; greedy when beam_size == 1."""
    check_search_options(beam_size, nbest)
    options = dict(length_penalty=length_penalty, max_len_ratio=max_len_ratio,
                   max_len_offset=max_len_offset, return_attention=return_attention)
    if beam_size == 1:
        return [[hypothesis] for hypothesis in greedy_search(model, src, src_lengths, **options)]
    return beam_search(model, src, src_lengths, beam_size=beam_size, nbest=nbest, **options)


@torch.no_grad()
def greedy_search(model, src: torch.Tensor, src_lengths: torch.Tensor, *,
                  length_penalty: float = 1.0, max_len_ratio: float = 1.5,
                  max_len_offset: int = 10, return_attention: bool = False) -> List[Hypothesis]:
    """The most probable next token at every step. src (batch, src_len) -> one per sentence."""
    batch = src.size(0)
    if batch == 0:
        return []
    encoder_output = model.encode(src, src_lengths)
    state = model.init_decoder_state(encoder_output)
    limits = max_output_lengths(src_lengths, max_len_ratio=max_len_ratio,
                                max_len_offset=max_len_offset)
    sentence = torch.arange(batch, device=src.device)  # original index of each active row
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=src.device)
    log_prob_sums = None
    tokens: List[List[int]] = [[] for _ in range(batch)]
    attention: List[list] = [[] for _ in range(batch)]
    results: List[Optional[Hypothesis]] = [None] * batch
    src_len = src_lengths.tolist()
    step = 0
    while sentence.numel():
        step += 1
        log_probs, state = model.decode_step(prev, state, encoder_output)
        if log_prob_sums is None:
            log_prob_sums = log_probs.new_zeros(batch)
        log_probs = _allowed_log_probs(log_probs, step > limits[sentence])
        best = (log_prob_sums.unsqueeze(1) + log_probs).topk(1, dim=1)  # as beam search ranks
        log_prob_sums, prev = best.values.squeeze(1), best.indices.squeeze(1)
        step_attention = _step_attention(state) if return_attention else None
        ended = prev == EOS_ID
        for row, (index, token) in enumerate(zip(sentence.tolist(), prev.tolist())):
            if return_attention:
                attention[index].append(step_attention[row, :src_len[index]])
            if token != EOS_ID:
                tokens[index].append(token)
                continue
            total = float(log_prob_sums[row])
            results[index] = Hypothesis(
                tokens=tokens[index], log_prob=total,
                score=total / gnmt_length_penalty(step, length_penalty),
                attention=torch.stack(attention[index]) if return_attention else None)
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(1)
            sentence, prev, log_prob_sums = sentence[keep], prev[keep], log_prob_sums[keep]
            if keep.numel():
                state = model.reorder_state(state, keep)
                encoder_output = model.reorder_encoder_output(encoder_output, keep)
    return results


class _FinishedHypotheses:
    """The nbest best finished hypotheses of one sentence, best first."""

    def __init__(self, nbest: int):
        self.nbest = nbest
        self.best: List[Hypothesis] = []

    def add(self, hypothesis: Hypothesis) -> None:
        self.best.append(hypothesis)
        self.best.sort(key=lambda h: h.score, reverse=True)  # stable: earlier first on ties
        del self.best[self.nbest:]

    def can_improve(self, bound: float) -> bool:
        """Could a live beam whose final score is at most `bound` still enter the n-best?"""
        return len(self.best) < self.nbest or bound > self.best[-1].score


@torch.no_grad()
def beam_search(model, src: torch.Tensor, src_lengths: torch.Tensor, *, beam_size: int,
                nbest: int = 1, length_penalty: float = 1.0, max_len_ratio: float = 1.5,
                max_len_offset: int = 10, return_attention: bool = False
                ) -> List[List[Hypothesis]]:
    """Beam search (see the module docstring). src (batch, src_len) -> n-best list per sentence."""
    check_search_options(beam_size, nbest)
    batch, k, device = src.size(0), beam_size, src.device
    if batch == 0:
        return []
    alpha = length_penalty
    encoder_output = model.encode(src, src_lengths)
    state = model.init_decoder_state(encoder_output)
    expand = torch.arange(batch, device=device).repeat_interleave(k)
    encoder_output = model.reorder_encoder_output(encoder_output, expand)
    state = model.reorder_state(state, expand)
    limits = max_output_lengths(src_lengths, max_len_ratio=max_len_ratio,
                                max_len_offset=max_len_offset)
    sentence = torch.arange(batch, device=device)  # original index of each active sentence
    finished = [_FinishedHypotheses(nbest) for _ in range(batch)]
    src_len = src_lengths.tolist()
    prev = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=device)
    scores = None  # (active, k) summed log-probs of live beams; -inf marks an empty slot
    history = torch.zeros(batch, k, 0, dtype=torch.long, device=device)
    attention_history = None
    step = 0
    while sentence.numel():
        step += 1
        active = sentence.numel()
        log_probs, state = model.decode_step(prev, state, encoder_output)
        vocab = log_probs.size(1)
        if scores is None:
            scores = torch.full((batch, k), float("-inf"), dtype=log_probs.dtype, device=device)
            scores[:, 0] = 0.0  # all beams start equal: expand only the first
        at_limit = (step > limits[sentence]).repeat_interleave(k)
        log_probs = _allowed_log_probs(log_probs, at_limit)
        candidates = (scores.view(-1, 1) + log_probs).view(active, k * vocab)
        top_scores, top_ids = candidates.topk(k, dim=1)  # (active, k)
        origin, token = top_ids // vocab, top_ids % vocab
        rows = (torch.arange(active, device=device) * k).unsqueeze(1) + origin  # (active, k)
        history = torch.cat([history.gather(1, origin.unsqueeze(2).expand(-1, -1, step - 1)),
                             token.unsqueeze(2)], dim=2)
        if return_attention:
            step_attention = _step_attention(state)[rows.view(-1)].view(active, k, 1, -1)
            attention_history = step_attention if attention_history is None else torch.cat(
                [attention_history.gather(1, origin.view(active, k, 1, 1).expand(
                    -1, -1, step - 1, attention_history.size(3))), step_attention], dim=2)
        ended = (token == EOS_ID) & torch.isfinite(top_scores)
        for position, slot in ended.nonzero().tolist():
            index = int(sentence[position])
            total = float(top_scores[position, slot])
            attention = None
            if return_attention:
                attention = attention_history[position, slot, :, :src_len[index]].clone()
            finished[index].add(Hypothesis(
                tokens=history[position, slot, :-1].tolist(), log_prob=total,
                score=total / gnmt_length_penalty(step, alpha), attention=attention))
        scores = top_scores.masked_fill(token == EOS_ID, float("-inf"))
        # the best final score any live beam could still reach, given the length penalty
        best_live = scores.max(dim=1).values
        reach = torch.maximum(torch.full_like(best_live, gnmt_length_penalty(step + 1, alpha)),
                              ((5.0 + limits[sentence] + 1).to(best_live.dtype) / 6.0) ** alpha)
        bounds = (best_live / reach).tolist()
        done = torch.tensor(
            [not finished[int(index)].can_improve(bound) or bound == float("-inf")
             for index, bound in zip(sentence.tolist(), bounds)], device=device)
        keep = (~done).nonzero().squeeze(1)
        if not keep.numel():
            break
        sentence, scores, history, token, rows = (
            sentence[keep], scores[keep], history[keep], token[keep], rows[keep])
        if attention_history is not None:
            attention_history = attention_history[keep]
        prev = token.reshape(-1)
        state = model.reorder_state(state, rows.reshape(-1))
        if keep.numel() < active:
            beams = (keep * k).unsqueeze(1) + torch.arange(k, device=device)
            encoder_output = model.reorder_encoder_output(encoder_output, beams.reshape(-1))
    return [hypotheses.best for hypotheses in finished]
