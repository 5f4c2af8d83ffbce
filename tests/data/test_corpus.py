import gzip
import io
import logging
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmt.config import config_from_dict
from nmt.data.corpus import (EncodedCorpus, LineCleaner, encode_parallel, iter_clean_lines,
                             load_split, read_lines, read_parallel)
from nmt.errors import UserError


class WhitespaceTokenizer:
    """Independent stand-in: one id per whitespace-separated word (id = word length + 3)."""

    def encode_src_lines(self, lines):
        return [[len(word) + 3 for word in line.split()] for line in lines]

    encode_tgt_lines = encode_src_lines


def test_invalid_utf8_is_replaced_counted_and_warned(tmp_path, caplog):
    path = tmp_path / "bad.en"
    path.write_bytes(b"good line\nbad \xff\xfe here\nalso \xc3 bad\n\xe2\x82\xac fine\n")
    with caplog.at_level(logging.WARNING, logger="nmt.data"):
        lines = read_lines(path)
    assert lines == ["good line", "bad \ufffd\ufffd here", "also \ufffd bad", "\u20ac fine"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{path}: repaired 2 line(s) with invalid UTF-8 (bytes replaced by U+FFFD)"]


def test_control_characters_and_line_endings(tmp_path, caplog):
    path = tmp_path / "ctl.en"
    path.write_bytes(b"\xef\xbb\xbfbom first\r\na\x00b\n\x1b[31mred\ttab\nsep\xe2\x80\xa8here\nlast")
    with caplog.at_level(logging.WARNING, logger="nmt.data"):
        lines = read_lines(path)
    assert lines == ["bom first", "a b", " [31mred tab", "sep here", "last"]
    assert "3 line(s) with control characters" in caplog.text  # a tab alone is not a repair


def test_clean_file_gives_no_warning(tmp_path, caplog):
    path = tmp_path / "ok.de"
    path.write_text("Ein Mann läuft.\n\nZwei Hunde.\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="nmt.data"):
        assert read_lines(path) == ["Ein Mann läuft.", "", "Zwei Hunde."]
    assert caplog.records == []


def test_gzip_and_plain_read_the_same(tmp_path):
    content = "eins\nzwei \xfc\n\ndrei\n".encode("latin-1")  # also invalid UTF-8
    (tmp_path / "x.de").write_bytes(content)
    with gzip.open(tmp_path / "x.de.gz", "wb") as handle:
        handle.write(content)
    assert read_lines(tmp_path / "x.de.gz") == read_lines(tmp_path / "x.de") == [
        "eins", "zwei \ufffd", "", "drei"]


def test_empty_and_missing_and_corrupt_files(tmp_path):
    (tmp_path / "empty.en").write_bytes(b"")
    (tmp_path / "empty.de").write_bytes(b"")
    assert read_lines(tmp_path / "empty.en") == []
    assert read_parallel(tmp_path / "empty.en", tmp_path / "empty.de") == ([], [])
    (tmp_path / "newline.en").write_bytes(b"\n")
    assert read_lines(tmp_path / "newline.en") == [""]
    with pytest.raises(UserError, match=r"nothere\.en: file not found"):
        read_lines(tmp_path / "nothere.en")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(b"a\nb\n")[:-12] + b"garbage!")
    with pytest.raises(UserError, match=r"broken\.gz: cannot read"):
        read_lines(tmp_path / "broken.gz")


def test_mismatched_line_counts_name_both_files(tmp_path):
    (tmp_path / "a.en").write_text("1\n2\n3\n")
    (tmp_path / "a.de").write_text("1\n2\n")
    with pytest.raises(UserError) as caught:
        read_parallel(tmp_path / "a.en", tmp_path / "a.de")
    message = str(caught.value)
    assert "a.en has 3 lines but" in message and "a.de has 2" in message
    (tmp_path / "empty.de").write_bytes(b"")
    with pytest.raises(UserError, match="has 0"):
        read_parallel(tmp_path / "a.en", tmp_path / "empty.de")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20))
def test_one_clean_line_per_input_line(raw_lines):
    """Whatever the bytes, line i in is line i out, and no output line holds a line break."""
    data = b"".join(line + b"\n" for line in raw_lines)
    lines = list(iter_clean_lines(io.BytesIO(data), name="<bytes>"))  # splits on \n only, like a file
    assert len(lines) == len(raw_lines)
    for line in lines:
        assert len(line.splitlines()) <= 1
        assert not any(unicodedata.category(char) == "Cc" for char in line)
    for raw, line in zip(raw_lines, lines):
        if raw.decode("utf-8", "ignore").isprintable() and not raw.startswith(b"\xef\xbb\xbf") \
                and b"\r" not in raw:
            assert line == raw.decode("utf-8", "replace")


def test_line_cleaner_counts_for_streams():
    cleaner = LineCleaner()
    lines = list(iter_clean_lines(iter([b"ok\n", b"\xff\n", b"a\x07\n"]), name="stdin", cleaner=cleaner))
    assert lines == ["ok", "\ufffd", "a "]
    assert (cleaner.lines, cleaner.invalid_utf8_lines, cleaner.control_char_lines) == (3, 1, 1)


def test_length_filter_is_counted_and_keeps_line_numbers():
    src = ["a b c", "a", "a b c d e", "", "x y"]
    tgt = ["a", "a b c d", "a", "a", "x y z"]
    corpus = encode_parallel(src, tgt, WhitespaceTokenizer(), max_len=3)
    assert corpus.indices == [0, 3, 4] and corpus.num_skipped == 2
    assert corpus.src == [[4, 4, 4], [], [4, 4]] and corpus.tgt == [[4], [4], [4, 4, 4]]
    assert corpus.num_tgt_tokens == (1 + 1) + (1 + 1) + (3 + 1)
    unfiltered = encode_parallel(src, tgt, WhitespaceTokenizer())
    assert len(unfiltered) == 5 and unfiltered.num_skipped == 0


def test_load_split_filters_training_only(tmp_path):
    for prefix in ("train", "val"):
        (tmp_path / f"{prefix}.en").write_text("short\none two three four\n")
        (tmp_path / f"{prefix}.de").write_text("kurz\nlang\n")
    config = config_from_dict({"data": {"dir": str(tmp_path), "max_len": 2}})
    train = load_split(config, "train", WhitespaceTokenizer())
    valid = load_split(config, "valid", WhitespaceTokenizer())
    assert isinstance(train, EncodedCorpus)
    assert (len(train), train.num_skipped, train.indices) == (1, 1, [0])
    assert (len(valid), valid.num_skipped) == (2, 0)


def test_multi30k_reads_cleanly(multi30k_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="nmt.data"):
        for prefix, count in (("train", 29000), ("val", 1014), ("test_2016_flickr", 1000)):
            src, tgt = read_parallel(multi30k_dir / f"{prefix}.en.gz", multi30k_dir / f"{prefix}.de.gz")
            assert len(src) == len(tgt) == count
            assert all(line.strip() for line in src + tgt)
    assert caplog.records == []
    assert src[0] == "A man in an orange hat starring at something."
