"""Validation during training: loss and perplexity, greedy BLEU and chrF on the `data.valid`
split, every hypothesis and a few examples (the `validate` of nmt.training's Trainer)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from nmt import distributed
from nmt.config import Config
from nmt.data.corpus import encode_parallel, read_parallel
from nmt.data.files import check_data_files
from nmt.distributed import SINGLE_PROCESS, Distributed
from nmt.evaluation import corpus_loss, score_corpus
from nmt.translation import DecodeOptions, Translator


@dataclass
class ValidationOutput:
    """A validation: scores for the logs and decisions, every hypothesis (one line per validation
    sentence, kept per step) and a few (source, reference, hypothesis) examples to log."""

    scores: dict
    hypotheses: Optional[List[str]] = None
    examples: List[Tuple[str, str, str]] = field(default_factory=list)


NO_LIMIT = 1 << 30


def make_validator(config: Config, tokenizer, device: torch.device,
                   placement: Distributed = SINGLE_PROCESS):
    """`validate(model) -> ValidationOutput` on the `data.valid` split: loss/ppl, greedy BLEU and
    chrF, every hypothesis, and the first `train.valid_examples` (source, reference, hypothesis).

    Under torchrun each rank scores every world_size-th sentence; NLL sums and hypotheses are
    combined across ranks, so every rank returns the same scores (and takes the same
    early-stopping and learning-rate decisions)."""
    src_path, tgt_path = check_data_files(config, ["valid"])["valid"]
    src_lines, references = read_parallel(src_path, tgt_path)
    corpus = encode_parallel(src_lines, references, tokenizer)
    options = DecodeOptions.from_config(config, beam_size=1, nbest=1,
                                        batch_size=config.data.eval_batch_size)
    options.max_src_len = NO_LIMIT
    mine = list(range(placement.rank, len(corpus.src), placement.world_size))
    src_ids, tgt_ids = [corpus.src[i] for i in mine], [corpus.tgt[i] for i in mine]
    num_tokens = sum(len(t) + 1 for t in tgt_ids)  # target tokens + EOS, as the loss counts them
    example_rows = range(min(config.train.valid_examples, len(corpus.src)))

    def validate(model) -> dict:
        scores = corpus_loss(model, src_ids, tgt_ids, batch_size=config.data.eval_batch_size,
                             device=device)
        if placement.enabled:
            nll_sum, tokens = distributed.all_reduce_sums([scores["loss"] * num_tokens, num_tokens],
                                                          placement, device)
            loss = nll_sum / max(tokens, 1)
            scores = {"loss": loss, "ppl": math.exp(min(loss, 100.0))}
        translator = Translator(model, tokenizer, options=options, device=device)
        found = translator.translate_ids(src_ids) if src_ids else []
        hypotheses = [tokenizer.decode_tgt(best[0][0]) if best else "" for best in found]
        ordered = [""] * len(corpus.src)
        for part in distributed.gather_objects(list(zip(mine, hypotheses)), placement):
            for index, hypothesis in part:
                ordered[index] = hypothesis
        bleu = score_corpus(ordered, references)
        scores.update(bleu=bleu.bleu, chrf=bleu.chrf, bleu_signature=bleu.bleu_signature,
                      chrf_signature=bleu.chrf_signature, note="greedy")
        return ValidationOutput(scores, hypotheses=ordered, examples=[
            (src_lines[i], references[i], ordered[i]) for i in example_rows])

    return validate


