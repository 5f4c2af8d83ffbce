import random

import pytest
import yaml

from nmt.cli import main
from nmt.config import load_config
from nmt.data.tokenizer import Tokenizer

WORDS = {"en": "a the dog cat man runs over red house street".split(),
         "de": "ein der hund katze mann läuft über rot haus straße".split()}


def write_data(directory, sizes=(("train", 300), ("val", 20), ("test_2016_flickr", 10))):
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for prefix, count in sizes:
        lengths = [rng.randint(1, 8) for _ in range(count)]
        if prefix == "train":
            lengths[0] = 40  # longer than max_len: skipped in training only
        for lang, words in WORDS.items():
            lines = [" ".join(rng.choice(words) for _ in range(n)) for n in lengths]
            (directory / f"{prefix}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_config(tmp_path, vocab_size=300):
    path = tmp_path / "tiny.yaml"
    path.write_text(f"name: tiny\nrun_dir: {tmp_path / 'run'}\n"
                    f"data:\n  dir: {tmp_path / 'data'}\n  max_len: 20\n"
                    f"  tokenizer: {{vocab_size: {vocab_size}}}\n", encoding="utf-8")
    return path


def run_cli(argv):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return exited.value.code


def test_prepare_trains_reuses_and_refuses_to_clobber(tmp_path, capsys):
    write_data(tmp_path / "data")
    config_path = write_config(tmp_path)
    assert run_cli(["prepare", str(config_path)]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "run"
    tokenizer = Tokenizer.load(run_dir / "spm")
    assert tokenizer.joint and tokenizer.src_vocab_size <= 300
    assert f"trained joint unigram sentencepiece in {run_dir / 'spm'}" in out
    assert f"src vocabulary {tokenizer.src_vocab_size}" in out
    lines = {lang: (tmp_path / "data" / f"train.{lang}").read_text().splitlines() for lang in WORDS}
    too_long = sum(len(tokenizer.encode_src(en)) > 20 or len(tokenizer.encode_tgt(de)) > 20
                   for en, de in zip(lines["en"], lines["de"]))
    assert too_long >= 1  # the 40-word line
    assert f"train: 300 pairs, {too_long} longer than data.max_len=20 skipped" in out
    assert "valid: 20 pairs" in out and "test: 10 pairs" in out
    copy = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert copy == load_config(config_path).to_dict()

    model_bytes = tokenizer.to_bytes()
    assert run_cli(["prepare", str(config_path)]) == 0
    assert "reused joint unigram" in capsys.readouterr().out
    assert Tokenizer.load(run_dir / "spm").to_bytes() == model_bytes

    write_config(tmp_path, vocab_size=290)
    assert run_cli(["prepare", str(config_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "retrain it with `nmt prepare --force CONFIG`" in error
    assert Tokenizer.load(run_dir / "spm").to_bytes() == model_bytes  # nothing lost
    assert run_cli(["prepare", "--force", str(config_path)]) == 0
    assert Tokenizer.load(run_dir / "spm").src_vocab_size <= 290
    capsys.readouterr()

    # the same files elsewhere (another machine, another data.dir): the tokenizer is reused
    (tmp_path / "data").rename(tmp_path / "moved")
    config_path.write_text(config_path.read_text().replace(str(tmp_path / "data"),
                                                           str(tmp_path / "moved")))
    assert run_cli(["prepare", str(config_path)]) == 0
    assert "reused joint unigram" in capsys.readouterr().out
    # changed training data: refused again
    with open(tmp_path / "moved" / "train.de", "a", encoding="utf-8") as handle:
        handle.write("ein neuer satz\n")
    with open(tmp_path / "moved" / "train.en", "a", encoding="utf-8") as handle:
        handle.write("a new sentence\n")
    assert run_cli(["prepare", str(config_path)]) == 2


def test_prepare_names_missing_and_mismatched_files(tmp_path, capsys):
    write_data(tmp_path / "data", sizes=(("train", 50),))
    config_path = write_config(tmp_path)
    assert run_cli(["prepare", str(config_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("nmt prepare: error: data.valid: neither ") and "val.en" in error
    assert not (tmp_path / "run" / "spm").exists()

    write_data(tmp_path / "data")
    (tmp_path / "data" / "val.de").write_text("nur eine zeile\n", encoding="utf-8")
    assert run_cli(["prepare", str(config_path)]) == 2
    error = capsys.readouterr().err
    assert "val.en has 20 lines but" in error and "val.de has 1" in error


def test_prepare_without_test_split_notes_it(tmp_path, capsys):
    write_data(tmp_path / "data", sizes=(("train", 100), ("val", 5)))
    assert run_cli(["prepare", str(write_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "note: data.test: neither" in out and "test:" not in out.replace("data.test:", "")
