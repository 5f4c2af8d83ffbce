"""The whole pipeline through the command line on tiny synthetic data: prepare, train, translate, evaluate."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from nmt import checkpoint as ckpt
from training.toy import toy_config, write_config

REPO = Path(__file__).resolve().parent.parent


def nmt(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "nmt", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_prepare_train_translate_evaluate(tmp_path):
    values = toy_config(tmp_path, max_steps=5, valid_every=4, log_every=2)
    config = write_config(tmp_path, values)
    run_dir = Path(values["run_dir"])

    prepared = nmt("prepare", str(config))
    assert prepared.returncode == 0, prepared.stderr
    trained = nmt("train", str(config), "--no-progress", "--set", "train.max_steps=8")
    assert trained.returncode == 0, trained.stderr
    assert "max_steps: 8" in (run_dir / "config.yaml").read_text()  # the effective config
    assert "validation at step 8" in trained.stderr and "summary: stop_reason max_steps" in trained.stderr
    for name in ("config.yaml", "train.log", "metrics.jsonl", "best.pt", "latest.pt"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "tensorboard").iterdir())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = records[-1]
    assert summary["event"] == "summary" and summary["steps"] == 8
    # each validation's hypotheses are kept: sacreBLEU on them gives the logged validation BLEU
    kept = (run_dir / "validations" / "step-00000008.txt").read_text(encoding="utf-8")
    valid_refs = (tmp_path / "data" / "val.de").read_text().split("\n")[:-1]
    assert kept.count("\n") == len(valid_refs)
    logged = [r for r in records if r["event"] == "valid" and r["step"] == 8][0]["bleu"]
    assert sacrebleu.corpus_bleu(kept.split("\n")[:-1], [valid_refs]).score == pytest.approx(logged)
    assert "example 1 reference:  " + valid_refs[0] in trained.stderr

    translated = nmt("translate", "--checkpoint", str(run_dir / "latest.pt"),
                     stdin="the big dog\n\na red fish\n\n")
    assert translated.returncode == 0, translated.stderr
    lines = translated.stdout.split("\n")
    assert len(lines) == 5 and lines[1] == "" and lines[3] == "" and lines[4] == ""

    evaluated = nmt("evaluate", "--checkpoint", str(run_dir / "best.pt"), "--split", "valid",
                    "--output", str(tmp_path / "valid.hyp"))
    assert evaluated.returncode == 0, evaluated.stderr
    hypotheses = (tmp_path / "valid.hyp").read_text().split("\n")[:-1]
    references = (tmp_path / "data" / "val.de").read_text().split("\n")[:-1]
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert evaluated.stdout.startswith(f"BLEU = {bleu:.2f}")
    assert "chrF = " in evaluated.stdout and "case:mixed" in evaluated.stdout

    again = nmt("train", str(config))  # a finished run is not silently overwritten
    assert again.returncode == 2 and "--resume" in again.stderr and again.stderr.count("\n") == 1


def test_train_config_error_is_one_line(tmp_path):
    values = toy_config(tmp_path)
    values["train"]["optimizer"] = "adamw"
    result = nmt("train", str(write_config(tmp_path, values)))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "train.optimizer" in result.stderr


def test_resume_without_checkpoints_is_one_line(tmp_path):
    result = nmt("train", str(write_config(tmp_path, toy_config(tmp_path))), "--resume")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "no checkpoints to resume from" in result.stderr


def test_corrupted_latest_checkpoint_falls_back_on_resume(tmp_path):
    values = toy_config(tmp_path, max_steps=6, valid_every=3)
    config = write_config(tmp_path, values)
    assert nmt("train", str(config), "--no-progress").returncode == 0
    run_dir = Path(values["run_dir"])
    newest = ckpt.step_checkpoints(run_dir)[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    broken = nmt("translate", "--checkpoint", str(newest))
    assert broken.returncode == 2 and broken.stderr.count("\n") == 1 and str(newest) in broken.stderr
    values["train"]["max_steps"] = 9
    write_config(tmp_path, values)
    resumed = nmt("train", str(config), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"warning: checkpoint {newest}" in resumed.stderr
    assert "resumed from" in resumed.stderr and "at step 3" in resumed.stderr
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint_path(run_dir))["step"] == 9
