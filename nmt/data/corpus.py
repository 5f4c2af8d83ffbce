"""Reading text robustly: plain or gzip, invalid UTF-8 and control characters repaired, never a line lost.

Lines are split on `\\n` only (a trailing `\\r` is dropped), so line i of the output is line i of
the file. What had to be repaired is counted and reported once per file as a warning on the
`nmt.data` logger; mismatched parallel files are a `UserError` naming both files.
"""
from __future__ import annotations

import contextlib
import gzip
import logging
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, Sequence, Tuple

from nmt.data.files import check_data_files
from nmt.errors import UserError

logger = logging.getLogger("nmt.data")

# Unicode categories replaced by a space: controls (NUL, ESC, VT, ...) and line/paragraph
# separators, which other tools would treat as line breaks and so break line alignment.
_REPLACED_CATEGORIES = ("Cc", "Zl", "Zp")


@dataclass
class LineCleaner:
    """Turns raw byte lines into clean text and counts what it repaired (for one warning)."""

    invalid_utf8_lines: int = 0
    control_char_lines: int = 0
    lines: int = 0

    def clean(self, raw: bytes) -> str:
        """One line of bytes (with or without its newline) -> text without control characters."""
        if self.lines == 0 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # UTF-8 byte order mark
        self.lines += 1
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            self.invalid_utf8_lines += 1
        if not text.isprintable():  # fast path: most lines have nothing to replace
            text = text.replace("\t", " ")
            cleaned = "".join(" " if unicodedata.category(char) in _REPLACED_CATEGORIES else char
                              for char in text)
            if cleaned != text:
                self.control_char_lines += 1
            text = cleaned
        return text

    def repairs(self) -> List[str]:
        found = []
        if self.invalid_utf8_lines:
            found.append(f"{self.invalid_utf8_lines} line(s) with invalid UTF-8 (bytes replaced by U+FFFD)")
        if self.control_char_lines:
            found.append(f"{self.control_char_lines} line(s) with control characters (replaced by spaces)")
        return found

    def warn(self, name: str) -> None:
        """Log one warning naming the input if anything was repaired (once per process: a
        file read twice, e.g. for the tokenizer and for training, is reported once)."""
        message = f"{name}: repaired {'; '.join(self.repairs())}"
        if self.repairs() and message not in _WARNED:
            _WARNED.add(message)
            logger.warning("%s", message)


_WARNED: set = set()  # repair warnings already logged by this process


def open_binary(path: Path) -> BinaryIO:
    """Open plain or gzip (by magic bytes, not by name) for binary reading."""
    handle = open(path, "rb")
    if handle.peek(2)[:2] == b"\x1f\x8b":
        handle.close()
        return gzip.open(path, "rb")
    return handle


def iter_clean_lines(stream: BinaryIO, *, name: str,
                     cleaner: Optional[LineCleaner] = None) -> Iterator[str]:
    """Yield clean lines from a binary stream (a file or stdin's buffer) as they arrive.

    Warns about repairs when the stream ends. Pass a `cleaner` to read its counts afterwards.
    """
    cleaner = cleaner if cleaner is not None else LineCleaner()
    for raw in stream:
        yield cleaner.clean(raw)
    cleaner.warn(name)


@contextlib.contextmanager
def _reading(path: Path):
    """The file opened for binary reading; a missing/unreadable file is a UserError."""
    try:
        with open_binary(path) as stream:
            yield stream
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a text file") from None
    except (OSError, EOFError, zlib.error) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise UserError(f"{path}: cannot read ({reason})") from None


def read_lines(path) -> List[str]:
    """All lines of a text file (plain or .gz); a missing/unreadable file is a UserError."""
    path = Path(path)
    with _reading(path) as stream:
        return list(iter_clean_lines(stream, name=str(path)))


def count_lines(path) -> int:
    """How many lines `read_lines` would return, without decoding or repairing them."""
    path = Path(path)
    with _reading(path) as stream:
        return sum(1 for _ in stream)


def check_parallel(src_path, tgt_path, src_count: int, tgt_count: int) -> None:
    """Different line counts of parallel files are a UserError naming both files and counts."""
    if src_count != tgt_count:
        raise UserError(f"{src_path} has {src_count} lines but {tgt_path} has {tgt_count}: "
                        f"parallel files must have one line per sentence pair")


def read_parallel(src_path, tgt_path) -> Tuple[List[str], List[str]]:
    """Aligned source and target lines; different line counts are a UserError naming both."""
    src_lines = read_lines(src_path)
    tgt_lines = read_lines(tgt_path)
    check_parallel(src_path, tgt_path, len(src_lines), len(tgt_lines))
    return src_lines, tgt_lines


@dataclass
class EncodedCorpus:
    """Token ids of parallel text (no BOS/EOS added), with the line number of each pair.

    `indices[i]` is the 0-based line of pair i in the files; pairs filtered by length are
    counted in `num_skipped`, so `len(self) + num_skipped` is the line count.
    """

    src: List[List[int]]
    tgt: List[List[int]]
    indices: List[int]
    num_skipped: int = 0

    def __len__(self) -> int:
        return len(self.src)

    @property
    def num_tgt_tokens(self) -> int:
        """Target tokens including one EOS per sentence (what training batches count)."""
        return sum(len(ids) + 1 for ids in self.tgt)


def encode_parallel(src_lines: Sequence[str], tgt_lines: Sequence[str], tokenizer, *,
                    max_len: Optional[int] = None) -> EncodedCorpus:
    """Tokenize aligned lines; with `max_len` (training only) skip pairs longer on either side."""
    if len(src_lines) != len(tgt_lines):
        raise ValueError(f"{len(src_lines)} source lines but {len(tgt_lines)} target lines")
    src_ids = tokenizer.encode_src_lines(src_lines)
    tgt_ids = tokenizer.encode_tgt_lines(tgt_lines)
    if max_len is None:
        return EncodedCorpus(src_ids, tgt_ids, list(range(len(src_ids))))
    kept = [i for i, (src, tgt) in enumerate(zip(src_ids, tgt_ids))
            if len(src) <= max_len and len(tgt) <= max_len]
    return EncodedCorpus([src_ids[i] for i in kept], [tgt_ids[i] for i in kept], kept,
                         num_skipped=len(src_ids) - len(kept))


def load_split(config, split: str, tokenizer) -> EncodedCorpus:
    """Read and tokenize one split of `config` ('train' is length-filtered by data.max_len).

    Logs how many training pairs were skipped; raises ConfigError for missing files.
    """
    src_path, tgt_path = check_data_files(config, [split])[split]
    src_lines, tgt_lines = read_parallel(src_path, tgt_path)
    max_len = config.data.max_len if split == "train" else None
    corpus = encode_parallel(src_lines, tgt_lines, tokenizer, max_len=max_len)
    if corpus.num_skipped:
        logger.info("%s: skipped %d of %d pairs longer than data.max_len=%d tokens",
                    src_path, corpus.num_skipped, len(src_lines), max_len)
    return corpus
