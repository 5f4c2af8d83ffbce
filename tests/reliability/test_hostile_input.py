"""Hostile input through `nmt prepare/train/translate/evaluate` as subprocesses: invalid UTF-8,
NUL bytes, control characters, a 100,000-character line, empty files, mismatched line counts, a
YAML file that is not a mapping. None may end in a traceback; none may lose or misalign lines.

Set HOSTILE_TABLE=path.md to also write the table (input, command, message, exit status)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.toy import toy_config, train_toy_model, write_config

REPO = Path(__file__).resolve().parent.parent.parent
ROWS = []

INVALID_UTF8 = b"the \xff\xfe cat \xc3 sees"
NUL_BYTES = b"the\x00 dog\x00\x00 eats"
CONTROL = "the \x1b[31mred\x0b fish\u2028is\u0085 old\x7f".encode("utf-8")
LONG_LINE = (b"a big cat " * 10_000)[:100_000]  # one line of 100,000 characters
HOSTILE_LINES = {"invalid UTF-8": INVALID_UTF8, "NUL bytes": NUL_BYTES,
                 "control characters (ESC, VT, U+2028, U+0085, DEL)": CONTROL,
                 "one 100,000-character line": LONG_LINE}


def nmt(label: str, arguments, *, stdin: bytes = b"", cwd=REPO):
    """Runs `python -m nmt ARGS`; records a table row; never a traceback."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "nmt", *arguments], cwd=cwd, env=env,
                          input=stdin, capture_output=True, timeout=120)
    stderr = done.stderr.decode("utf-8", errors="replace")
    assert "Traceback" not in stderr, stderr[-3000:]
    keys = ("error", "warning", "repaired", "truncated", "skipped")
    said = list(dict.fromkeys(re.sub(r"/\S*/", ".../", line) for line in stderr.splitlines()
                              if any(key in line.lower() for key in keys)))
    command = "nmt " + " ".join(a if len(a) < 40 else ".../" + Path(a).name for a in arguments)
    ROWS.append((label, command, " / ".join(said) or "(nothing)", done.returncode))
    return done


def hostile_data(tmp_path: Path, *, edit) -> dict:
    """A fresh toy config whose data files `edit(data_dir)` spoils."""
    config = toy_config(tmp_path, max_steps=2, valid_every=2)
    edit(Path(config["data"]["dir"]))
    return config


def replace_lines(path: Path, replacements: dict) -> None:
    lines = path.read_bytes().split(b"\n")
    for index, raw in replacements.items():
        lines[index] = raw
    path.write_bytes(b"\n".join(lines))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    return train_toy_model(tmp_path_factory.mktemp("hostile"), max_steps=4, valid_every=4)


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    target = os.environ.get("HOSTILE_TABLE")
    if target:
        lines = ["| input | command | message printed | exit status |", "|---|---|---|---|"]
        lines += [f"| {a} | `{b}` | {c.replace('|', '/')} | {d} |" for a, b, c, d in ROWS]
        Path(target).write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- prepare and train -----------------------------------------------------------------------------

@pytest.mark.parametrize("label", list(HOSTILE_LINES))
def test_prepare_repairs_lines_and_keeps_every_pair(tmp_path, label):
    config = hostile_data(tmp_path, edit=lambda d: replace_lines(d / "train.en", {4: HOSTILE_LINES[label]}))
    done = nmt(f"train.en line 5: {label}", ["prepare", str(write_config(tmp_path, config))])
    assert done.returncode == 0
    out = done.stdout.decode()
    assert "train: 240 pairs" in out  # no line lost: the pair is kept (or skipped by max_len, counted)
    stderr = done.stderr.decode()
    if label == "invalid UTF-8":
        assert "train.en: repaired 1 line(s) with invalid UTF-8" in stderr
    if label.startswith(("NUL", "control")):
        assert "train.en: repaired 1 line(s)" in stderr and "control" in stderr
    if label.startswith("one 100,000"):
        assert "1 longer than data.max_len=20 skipped" in out


def test_train_on_all_hostile_lines_at_once(tmp_path):
    spoiled = {1: INVALID_UTF8, 3: NUL_BYTES, 5: CONTROL, 7: LONG_LINE}
    config = hostile_data(tmp_path, edit=lambda d: replace_lines(d / "train.en", spoiled))
    done = nmt("train.en with all four of the above", ["train", str(write_config(tmp_path, config)),
                                                       "--no-progress"])
    assert done.returncode == 0
    assert "239 training pairs (1 skipped by data.max_len)" in done.stderr.decode()
    # alignment: the pairs training reads are the files' lines, in order, one for one
    from nmt.data.corpus import read_parallel
    data = Path(config["data"]["dir"])
    src, tgt = read_parallel(data / "train.en", data / "train.de")
    assert len(src) == len(tgt) == 240
    clean_src = (data / "train.en").read_bytes().split(b"\n")
    for index in range(240):
        if index not in spoiled:
            assert src[index] == clean_src[index].decode()
    assert src[3] == "the  dog   eats" and "\x1b" not in src[5] and len(src[7]) == 100_000


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_mismatched_line_counts_name_both_files_and_counts(tmp_path, command):
    def drop_lines(data):
        lines = (data / "train.de").read_text().splitlines()[:200]
        (data / "train.de").write_text("\n".join(lines) + "\n")
    config = hostile_data(tmp_path, edit=drop_lines)
    done = nmt("train.en 240 lines, train.de 200 lines", [command, str(write_config(tmp_path, config))])
    assert done.returncode == 2
    data = config["data"]["dir"]
    assert (f"{data}/train.en has 240 lines but {data}/train.de has 200" in done.stderr.decode())
    # found before a run directory is made or a tokenizer trained
    assert not (Path(config["run_dir"]) / "spm").exists()
    assert not Path(config["run_dir"]).exists()


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_empty_training_files(tmp_path, command):
    def empty(data):
        (data / "train.en").write_bytes(b"")
        (data / "train.de").write_bytes(b"")
    config = hostile_data(tmp_path, edit=empty)
    done = nmt("empty train.en and train.de", [command, str(write_config(tmp_path, config))])
    assert done.returncode == 2
    assert "data.train: the training files contain no non-empty lines" in done.stderr.decode()


@pytest.mark.parametrize("command,content,label", [
    ("prepare", "- data\n- model\n", "YAML list, not a mapping"),
    ("train", "- data\n- model\n", "YAML list, not a mapping"),
    ("train", "just a string\n", "YAML scalar, not a mapping"),
    ("prepare", "data: [1, 2\n", "YAML syntax error")])
def test_yaml_that_is_not_a_mapping(tmp_path, command, content, label):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    done = nmt(label, [command, str(path)])
    assert done.returncode == 2
    first = done.stderr.decode().strip()
    assert first.startswith(f"nmt {command}: error: {path}") and "\n" not in first


# --- translate and evaluate ------------------------------------------------------------------------

def test_translate_keeps_one_output_line_per_input_line(trained_run, tmp_path):
    checkpoint = str(trained_run / "best.pt")
    clean = nmt("clean reference input", ["translate", "--checkpoint", checkpoint],
                stdin=b"the big cat\n\nthe red fish\n")
    assert clean.returncode == 0
    first, blank, last = clean.stdout.decode().split("\n")[:3]
    for label, raw in HOSTILE_LINES.items():
        done = nmt(f"stdin line 2: {label}", ["translate", "--checkpoint", checkpoint],
                   stdin=b"the big cat\n" + raw + b"\nthe red fish\n")
        assert done.returncode == 0
        lines = done.stdout.decode().split("\n")
        assert len(lines) == 4 and lines[3] == ""  # three lines out, newline-terminated
        assert (lines[0], lines[2]) == (first, last)  # its neighbours are translated as before
    empty = nmt("empty stdin", ["translate", "--checkpoint", checkpoint], stdin=b"")
    assert empty.returncode == 0 and empty.stdout == b""


def test_evaluate_files_and_splits(trained_run, tmp_path):
    ref = tmp_path / "ref.de"
    ref.write_text("ein haus\nder hund\nrot\n")
    short = tmp_path / "short.de"
    short.write_text("ein haus\nder hund\n")
    done = nmt("--hyp 2 lines, --ref 3 lines", ["evaluate", "--hyp", str(short), "--ref", str(ref)])
    assert done.returncode == 2
    assert "2" in done.stderr.decode() and "3" in done.stderr.decode()

    dirty = tmp_path / "dirty.de"
    dirty.write_bytes(b"ein \xff haus\nder\x00 hund\nrot\x1b\n")
    done = nmt("--hyp with invalid UTF-8, NUL, ESC", ["evaluate", "--hyp", str(dirty), "--ref", str(ref)])
    assert done.returncode == 0 and "BLEU" in done.stdout.decode()

    empty = tmp_path / "empty.de"
    empty.write_bytes(b"")
    done = nmt("empty --hyp and --ref", ["evaluate", "--hyp", str(empty), "--ref", str(empty)])
    assert done.returncode == 2
    assert f"--hyp {empty} and --ref {empty} are empty: nothing to score" in done.stderr.decode()

    data = tmp_path / "data"
    shutil.copytree(yaml.safe_load((trained_run / "config.yaml").read_text())["data"]["dir"], data)
    spoiled = {0: INVALID_UTF8, 1: NUL_BYTES, 2: CONTROL, 3: LONG_LINE, 4: b""}
    replace_lines(data / "test.en", spoiled)
    output = tmp_path / "hyp.de"
    done = nmt("test.en with all hostile lines and an empty one",
               ["evaluate", "--checkpoint", str(trained_run / "best.pt"), "--split", "test",
                "--data-dir", str(data), "--output", str(output)])
    assert done.returncode == 0
    assert len(output.read_text().split("\n")) == 24 + 1  # one hypothesis per source line
