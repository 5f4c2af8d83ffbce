"""Corpus scores with sacreBLEU: BLEU and chrF on detokenized, cased text, with their signatures."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from sacrebleu.metrics import BLEU, CHRF

from nmt.errors import UserError


@dataclass
class Scores:
    """Corpus-level BLEU and chrF; the signatures say exactly how they were computed."""

    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    num_sentences: int

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        return (f"BLEU = {self.bleu:.2f}  ({self.bleu_signature})\n"
                f"chrF = {self.chrf:.2f}  ({self.chrf_signature})")


def score_corpus(hypotheses: Sequence[str], references: Sequence[str], *,
                 lowercase: bool = False) -> Scores:
    """sacreBLEU corpus BLEU (13a tokenization) and chrF of detokenized `hypotheses`."""
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise UserError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise UserError("no sentences to score (empty input)")
    bleu_metric = BLEU(lowercase=lowercase)
    chrf_metric = CHRF(lowercase=lowercase)
    bleu = bleu_metric.corpus_score(hypotheses, [references])
    chrf = chrf_metric.corpus_score(hypotheses, [references])
    return Scores(bleu=bleu.score, chrf=chrf.score,
                  bleu_signature=str(bleu_metric.get_signature()),
                  chrf_signature=str(chrf_metric.get_signature()),
                  num_sentences=len(hypotheses))


# --- scoring a model on a split ------------------------------------------------------------------

def corpus_loss(model, src_ids, tgt_ids, *, batch_size: int, device) -> dict:
    """Teacher-forced per-token NLL (no label smoothing) and perplexity over a tokenized corpus."""
    import math

    import torch

    from nmt.data.batching import make_eval_batches

    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        with torch.no_grad():
            for batch in make_eval_batches(src_ids, tgt_ids, batch_size=batch_size):
                output = model.training_loss(batch.to(device), label_smoothing=0.0)
                total_nll += float(output.nll)
                total_tokens += int(batch.num_tgt_tokens)
    finally:
        model.train(was_training)
    loss = total_nll / max(total_tokens, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 100.0))}


def evaluate_translator(translator, src_lines: Sequence[str], references: Sequence[str], *,
                        lowercase: bool = False):
    """(Scores, hypotheses) of translating `src_lines` against detokenized `references`."""
    hypotheses = translator.translate_texts(src_lines)
    return score_corpus(hypotheses, references, lowercase=lowercase), hypotheses
