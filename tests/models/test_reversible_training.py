"""A tiny reversible model trained on Multi30K sentences: memory curves in TensorBoard and in
metrics.jsonl (issue #4, item 5), and `nmt bench memory` on the same data (item 4's figures)."""
import gzip
import itertools
import json

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nmt.cli import main
from nmt.stats import read_metrics

MEMORY_TAGS = ("memory/encoder_ratio", "memory/decoder_ratio", "memory/encoder_optimal_ratio",
               "memory/decoder_optimal_ratio", "memory/total_ratio", "memory/total_optimal_ratio",
               "memory/activation_mib")


@pytest.fixture(scope="module")
def small_multi30k(multi30k_dir, tmp_path_factory):
    """The first lines of Multi30K's splits (a temporary copy, never in the repository)."""
    directory = tmp_path_factory.mktemp("multi30k")
    for split, count in (("train", 400), ("val", 12), ("test_2016_flickr", 12)):
        for lang in ("en", "de"):
            with gzip.open(multi30k_dir / f"{split}.{lang}.gz", "rt", encoding="utf-8") as handle:
                lines = list(itertools.islice(handle, count))
            (directory / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    return directory


def _config(tmp_path, data_dir, *, cell="revgru", context="emb+slice", precision=16):
    config = {
        "name": "rev-tiny", "run_dir": str(tmp_path / "run"),
        "data": {"dir": str(data_dir), "src": "en", "tgt": "de", "train": "train", "valid": "val",
                 "test": "test_2016_flickr", "max_len": 60, "batch_tokens": 300,
                 "eval_batch_size": 12,
                 "tokenizer": {"joint": True, "vocab_size": 250, "model_type": "unigram",
                               "character_coverage": 1.0, "byte_fallback": False}},
        "model": {"embedding_dim": 16, "tie_embeddings": True, "dropout": 0.1, "init_uniform": 0.1,
                  "encoder": {"cell": cell, "layers": 1, "hidden": 16, "bidirectional": False,
                              "dropout": 0.1, "max_forget_bits": 3},
                  "decoder": {"cell": cell, "layers": 1, "hidden": 16, "input_feeding": False,
                              "dropout": 0.1, "max_forget_bits": 3},
                  "attention": {"context": context, "size": 4, "precision": precision}},
        "train": {"seed": 1, "device": "cpu", "optimizer": "adam", "lr": 0.01,
                  "clip_grad_norm": 5.0, "label_smoothing": 0.1, "max_epochs": 5, "max_steps": 4,
                  "valid_every": 4, "log_every": 1, "keep_last": 1,
                  "early_stopping_patience": None, "verify_reversal_every": 2},
        "decode": {"beam_size": 2, "length_penalty": 1.0, "max_len_ratio": 1.0,
                   "max_len_offset": 3, "nbest": 1, "batch_size": 12},
    }
    path = tmp_path / "rev.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_multi30k):
    """A reversible Emb+slice model trained 4 steps by the real Trainer: (config path, run dir)."""
    from nmt.config import load_config
    from nmt.run import train_from_config

    directory = tmp_path_factory.mktemp("revrun")
    path = _config(directory, small_multi30k)
    train_from_config(load_config(path), progress=False, echo=False)
    return path, directory / "run"


def test_tensorboard_holds_the_memory_curves(trained_run):
    _, run_dir = trained_run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert set(MEMORY_TAGS) <= set(events.Tags()["scalars"])
    train = read_metrics(run_dir, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for tag in MEMORY_TAGS:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3, 4], tag
        assert [s.value for s in scalars] == pytest.approx([r[tag] for r in train], rel=1e-6), tag
    for record in train:
        assert record["memory/encoder_ratio"] > 1 and record["memory/decoder_ratio"] > 1
        assert 0 < record["memory/activation_mib"] < 1
    assert " decoder_ratio=" in (run_dir / "train.log").read_text(encoding="utf-8")


def test_bench_memory_counts_and_measures(trained_run, capsys):
    path, run_dir = trained_run
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "memory", "--config", str(path), "--checkpoint", str(run_dir / "best.pt"),
              "--batches", "2", "--json"])
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint"].endswith("best.pt")
    rev, plain = report["reversible"], report["plain"]
    # normal bits, independently: 32 x H x real source / target tokens of the two batches
    from nmt.config import load_config
    from nmt.bench.memory import _batches
    from nmt.data.tokenizer import Tokenizer

    config = load_config(path)
    batches = _batches(config, Tokenizer.load(run_dir / "spm"), 2, "cpu")
    assert rev["encoder"]["normal_bits"] == 32 * 16 * sum(int(b.src_lengths.sum()) for b in batches)
    assert rev["decoder"]["normal_bits"] == 32 * 16 * sum(b.num_tgt_tokens for b in batches)
    assert rev["encoder"]["stored_bits"] == 16 * 4 * sum(int(b.src_lengths.sum()) for b in batches)
    # complete accounting: both sides pay the shared heads, the total pays them once
    heads = rev["decoder"]["buffer_head_bits"]
    assert heads > 0 and rev["encoder"]["buffer_head_bits"] == heads
    assert rev["total"]["buffer_head_bits"] == heads
    for side in ("encoder", "decoder", "total"):
        counts = rev[side]
        assert counts["used_bits"] == sum(counts[part] for part in (
            "buffer_head_bits", "buffer_word_bits", "stored_bits", "final_state_bits",
            "initial_state_bits", "autograd_state_bits"))
        assert counts["used_bits"] >= counts["optimal_bits"] and counts["final_state_bits"] > 0
        assert rev[f"{side}_optimal_ratio"] >= rev[f"{side}_ratio"] > 1
        assert rev["paper_convention"][f"{side}_ratio_words_only"] > rev[f"{side}_ratio"]
    assert plain["encoder_rnn_saved_bytes"] > 0 and plain["decoder_rnn_saved_bytes"] > 0
    assert report["measured_recurrent_ratio"] > 1
    assert "total charges the heads once" in report["head_rule"]


def test_bench_memory_rejects_a_plain_config(tmp_path, small_multi30k, capsys):
    path = _config(tmp_path, small_multi30k, cell="gru", context="emb")
    text = path.read_text().replace("size: 4", "size: null")
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "memory", "--config", str(path), "--batches", "1"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "revgru or revlstm" in error


def test_translate_cli_from_a_reversible_checkpoint(trained_run, small_multi30k, tmp_path):
    """`nmt translate` decodes a reversible checkpoint: one line out per line in, greedy and beam,
    and the file output equals the in-process search."""
    import torch

    from nmt.translation import load_translator

    _, run_dir = trained_run
    lines = (small_multi30k / "val.en").read_text(encoding="utf-8").splitlines()[:5]
    source = tmp_path / "in.en"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for beam in ("1", "3"):
        out = tmp_path / f"out{beam}.de"
        with pytest.raises(SystemExit) as exit_info:
            main(["translate", "--checkpoint", str(run_dir / "best.pt"), "--input", str(source),
                  "--output", str(out), "--beam-size", beam, "--device", "cpu"])
        assert exit_info.value.code == 0
        assert len(out.read_text(encoding="utf-8").splitlines()) == len(lines)
    translator, _ = load_translator(run_dir / "best.pt", device=torch.device("cpu"), beam_size=1)
    assert translator.translate_texts(lines) == (tmp_path / "out1.de").read_text(
        encoding="utf-8").splitlines()


def test_bench_memory_on_a_checkpoint_takes_only_the_reversible_execution_sets(trained_run):
    """A trained model is measured at another chunk length with --set model.reversible.*; its
    other model keys stay the checkpoint's (they must match its weights and training)."""
    import argparse

    from nmt.bench.memory import _load
    from nmt.checkpoint import load_checkpoint

    path, run_dir = trained_run
    saved = load_checkpoint(run_dir / "best.pt")["config"]
    args = argparse.Namespace(config=str(path), checkpoint=str(run_dir / "best.pt"),
                              set=["model.reversible.chunk_steps=1", "model.dropout=0.45"])
    config, _, weights = _load(args)
    assert str(config.model.reversible.chunk_steps) == "1"
    assert str(saved["model"]["reversible"]["chunk_steps"]) != "1"
    assert config.model.dropout == saved["model"]["dropout"] != 0.45
    assert weights is not None
