"""`nmt evaluate` and nmt.evaluation agree with sacreBLEU's own corpus functions."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from nmt.errors import UserError
from nmt.data.corpus import read_lines
from nmt.evaluation import score_corpus
from training.toy import train_toy_model

REPO = Path(__file__).resolve().parent.parent
HYPS = ["The cat sat on the mat.", "A dog runs in the park!", "Two men, one car.", ""]
REFS = ["The cat is sitting on the mat.", "a dog runs in a park!", "Two men and one car.", "Nothing."]


def nmt(*args):
    return subprocess.run([sys.executable, "-m", "nmt", *args], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_scores_equal_sacrebleu_corpus_functions():
    scores = score_corpus(HYPS, REFS)
    assert scores.bleu == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    assert scores.chrf == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-9)
    assert "case:mixed" in scores.bleu_signature and "tok:13a" in scores.bleu_signature
    lower = score_corpus(HYPS, REFS, lowercase=True)
    assert lower.bleu == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS], lowercase=True).score)
    assert lower.bleu > scores.bleu and "case:lc" in lower.bleu_signature


def test_length_mismatch_is_user_error():
    with pytest.raises(UserError, match="3 hypotheses but 4 references"):
        score_corpus(HYPS[:3], REFS)


def test_evaluate_hyp_ref_files(tmp_path):
    (tmp_path / "hyp.txt").write_text("\n".join(HYPS) + "\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("\n".join(REFS) + "\n", encoding="utf-8")
    assert read_lines(tmp_path / "hyp.txt") == HYPS  # the empty last hypothesis is kept
    result = nmt("evaluate", "--hyp", str(tmp_path / "hyp.txt"), "--ref", str(tmp_path / "ref.txt"),
                 "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-9)
    text = nmt("evaluate", "--hyp", str(tmp_path / "hyp.txt"), "--ref", str(tmp_path / "ref.txt"))
    assert text.stdout.startswith(f"BLEU = {sacrebleu.corpus_bleu(HYPS, [REFS]).score:.2f}")
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in text.stdout
    assert "chrF = " in text.stdout


def test_evaluate_errors_are_one_line(tmp_path):
    (tmp_path / "hyp.txt").write_text("a\nb\n")
    (tmp_path / "ref.txt").write_text("a\n")
    mismatch = nmt("evaluate", "--hyp", str(tmp_path / "hyp.txt"), "--ref", str(tmp_path / "ref.txt"))
    assert mismatch.returncode == 2 and mismatch.stderr.count("\n") == 1
    assert "has 2 lines" in mismatch.stderr
    missing = nmt("evaluate", "--hyp", str(tmp_path / "nope.txt"), "--ref", str(tmp_path / "ref.txt"))
    assert missing.returncode == 2 and "nope.txt" in missing.stderr
    neither = nmt("evaluate")
    assert neither.returncode == 2 and neither.stderr.count("\n") == 1


def test_evaluate_checkpoint_scores_its_own_translations(tmp_path):
    run_dir = train_toy_model(tmp_path, max_steps=20, valid_every=20)
    out = tmp_path / "test.hyp"
    result = nmt("evaluate", "--checkpoint", str(run_dir / "best.pt"), "--split", "test",
                 "--beam-size", "2", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    hypotheses = out.read_text(encoding="utf-8").split("\n")[:-1]
    references = (tmp_path / "data" / "test.de").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(hypotheses) == len(references) == 24
    scores = json.loads(result.stdout)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
