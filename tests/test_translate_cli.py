"""`nmt translate`: one output line per input line whatever the input, in order, streaming."""
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.translation import DecodeOptions, Translator, load_translator, read_chunks
from training.toy import SRC_WORDS, train_toy_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run_dir = train_toy_model(tmp_path_factory.mktemp("translate"))
    return run_dir / "best.pt"


def nmt(*args, input_bytes=b""):
    return subprocess.run([sys.executable, "-m", "nmt", *args], cwd=REPO, input=input_bytes,
                          capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_awkward_input_keeps_one_line_per_input_line(checkpoint, tmp_path):
    long_line = " ".join(SRC_WORDS[i % len(SRC_WORDS)] for i in range(5000))
    lines = [b"the big dog", b"", b"a red \xff\xfe fish", b"   ", long_line.encode(), b"the cat",
             b"last line without newline"]
    source = tmp_path / "in.txt"
    source.write_bytes(b"\n".join(lines))
    result = nmt("translate", "--checkpoint", str(checkpoint), "--input", str(source))
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode("utf-8").split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    assert out[1] == "" and out[3] == ""  # empty (and blank) in, empty out
    stderr = result.stderr.decode()
    assert "line 5: 5000 subword tokens, truncated to the model's maximum of 20" in stderr
    assert "invalid UTF-8" in stderr
    assert "Traceback" not in stderr


def test_stdin_to_stdout_matches_file_output(checkpoint, tmp_path):
    text = "the big dog\n\nthe cat sees a fish\n"
    via_stdin = nmt("translate", "--checkpoint", str(checkpoint), "--beam-size", "2",
                    input_bytes=text.encode())
    assert via_stdin.returncode == 0, via_stdin.stderr.decode()
    (tmp_path / "in.txt").write_text(text)
    via_files = nmt("translate", "--checkpoint", str(checkpoint), "--beam-size", "2", "--input",
                    str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.txt"))
    assert via_files.returncode == 0
    assert (tmp_path / "out.txt").read_text() == via_stdin.stdout.decode()
    assert via_stdin.stdout.decode().count("\n") == 3


def test_nbest_format(checkpoint):
    result = nmt("translate", "--checkpoint", str(checkpoint), "--beam-size", "3", "--nbest", "3",
                 input_bytes=b"the big dog\n\na cat\n")
    assert result.returncode == 0, result.stderr.decode()
    rows = [line.split(" ||| ") for line in result.stdout.decode().splitlines()]
    assert [int(row[0]) for row in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(len(row) == 3 for row in rows)
    for index in (0, 2):
        scores = [float(row[2]) for row in rows if int(row[0]) == index]
        assert scores == sorted(scores, reverse=True)
    assert [row[1] for row in rows if row[0] == "1"] == ["", "", ""]


def test_nbest_larger_than_beam_is_one_line_error(checkpoint):
    result = nmt("translate", "--checkpoint", str(checkpoint), "--beam-size", "2", "--nbest", "3")
    assert result.returncode == 2
    assert result.stderr.decode().strip() == ("nmt translate: error: --nbest 3 is larger than "
                                             "the beam size 2")


def test_missing_checkpoint_is_one_line_error(tmp_path):
    result = nmt("translate", "--checkpoint", str(tmp_path / "none.pt"))
    assert result.returncode == 2
    assert result.stderr.decode().count("\n") == 1 and "none.pt: no such file" in result.stderr.decode()


def test_answers_each_line_while_the_pipe_stays_open(checkpoint):
    process = subprocess.Popen([sys.executable, "-m", "nmt", "translate", "--checkpoint",
                                str(checkpoint)], cwd=REPO, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        answers = []
        for line in (b"the big dog\n", b"\n"):
            process.stdin.write(line)
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], 60)
            assert ready, "no answer while stdin is still open"
            answers.append(process.stdout.readline())
        assert answers[0].endswith(b"\n") and answers[1] == b"\n"
    finally:
        process.stdin.close()
        process.wait(timeout=60)
    assert process.returncode == 0


def test_batched_translation_keeps_input_order(checkpoint):
    translator, _ = load_translator(checkpoint, device=torch.device("cpu"), batch_size=3, beam_size=2)
    lines = ["the big dog", "a", "", "the quick red fish sees the old man", "cat", "green house is near",
             "the dog", "a fish jumps"]
    together = translator.translate_texts(lines)
    alone = [translator.translate_texts([line])[0] for line in lines]
    assert together == alone
    assert together[2] == ""


def test_translator_restores_order_with_a_fake_search():
    """Independent of the model: the fake 'translation' of a sentence is its own source ids."""
    class Tokenizer:
        def encode_src_lines(self, lines):
            return [[int(w) for w in line.split()] for line in lines]

        def decode_tgt(self, ids):
            return " ".join(str(i) for i in ids)

    def echo_search(model, batch, options):
        return [[(row[:length - 1].tolist(), 0.0)] for row, length in zip(batch.src, batch.src_lengths)]

    translator = Translator(torch.nn.Identity(), Tokenizer(), search=echo_search,
                            options=DecodeOptions(batch_size=2, max_src_len=3))
    warnings = []
    translator.warn = warnings.append
    lines = ["5 6", "7", "", "8 9 10 11 12", "13 14 15"]
    assert translator.translate_texts(lines) == ["5 6", "7", "", "8 9 10", "13 14 15"]
    assert warnings == ["line 4: 5 subword tokens, truncated to the model's maximum of 3"]


def test_read_chunks_splits_and_keeps_last_partial_line(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\nb\n\nc\nd")
    with open(path, "rb", buffering=0) as stream:
        chunks = list(read_chunks(stream, 2))
    assert [line for chunk in chunks for line in chunk] == [b"a", b"b", b"", b"c", b"d"]
    assert all(len(chunk) <= 2 for chunk in chunks)


def test_bench_translate_reports_speeds_and_bleu(checkpoint, capsys):
    import json as json_module

    from nmt.cli import build_parser

    args = build_parser().parse_args(["bench", "translate", "--checkpoint", str(checkpoint),
                                      "--split", "test", "--beam-size", "2", "--batch-size", "5",
                                      "--limit", "7", "--json"])
    assert args.run(args) == 0
    result = json_module.loads(capsys.readouterr().out)
    assert result["sentences"] == 7 and result["beam_size"] == 2 and result["batch_size"] == 5
    assert result["decode_sentences_per_sec"] > 0 and result["end_to_end_sentences_per_sec"] > 0
    # end to end includes everything the decoding loop does, and start-up
    assert result["end_to_end_seconds"] >= result["decode_seconds"]
    assert 0 <= result["bleu"] <= 100


def test_thousand_lines_in_thousand_lines_out(checkpoint, multi30k_dir, tmp_path):
    import gzip

    path = multi30k_dir / "test_2016_flickr.en.gz"
    source = tmp_path / "test.en"
    source.write_bytes(gzip.decompress(path.read_bytes()) if path.exists()
                       else (multi30k_dir / "test_2016_flickr.en").read_bytes())
    result = nmt("translate", "--checkpoint", str(checkpoint), "--input", str(source),
                 "--batch-size", "64")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode("utf-8").count("\n") == 1000
