"""Subword tokenization with sentencepiece: one joint model or one per side, same special ids.

Ids: <pad>=0, <unk>=1, <s>=2 (BOS), </s>=3 (EOS) in both vocabularies. With byte fallback no
character becomes <unk>: unseen characters are spelled as UTF-8 byte pieces and decode back.
Models travel as bytes (`to_bytes`/`from_bytes`) so a checkpoint needs no side files.
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence

import sentencepiece as spm

from nmt.data.corpus import read_lines
from nmt.data.files import split_files
from nmt.errors import ConfigError, UserError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_IDS = (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
JOINT_FILE, SRC_FILE, TGT_FILE = "joint.model", "src.model", "tgt.model"
_BYTES_MAGIC = b"RevNMT-spm\n"


def _load_processor(model_bytes: bytes, name: str) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model_bytes)
    except (RuntimeError, OSError, TypeError) as error:
        raise UserError(f"{name}: not a sentencepiece model ({str(error).splitlines()[0]})") from None
    expected = {"<pad>": PAD_ID, "<unk>": UNK_ID, "<s>": BOS_ID, "</s>": EOS_ID}
    for piece, wanted in expected.items():
        if processor.piece_to_id(piece) != wanted:
            raise UserError(f"{name}: sentencepiece model must use {piece}={wanted}")
    return processor


class Tokenizer:
    """Source and target sentencepiece processors (the same object when joint)."""

    def __init__(self, src_model: bytes, tgt_model: Optional[bytes] = None):
        self._src_bytes = src_model
        self._tgt_bytes = tgt_model
        self.src = _load_processor(src_model, "source tokenizer")
        self.tgt = self.src if tgt_model is None else _load_processor(tgt_model, "target tokenizer")

    @property
    def joint(self) -> bool:
        return self._tgt_bytes is None

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    # ---- encoding and decoding (no BOS/EOS added; batching adds them)

    def encode_src(self, text: str) -> List[int]:
        return self.src.encode(text)

    def encode_tgt(self, text: str) -> List[int]:
        return self.tgt.encode(text)

    def encode_src_lines(self, lines: Sequence[str]) -> List[List[int]]:
        return self.src.encode(list(lines)) if lines else []

    def encode_tgt_lines(self, lines: Sequence[str]) -> List[List[int]]:
        return self.tgt.encode(list(lines)) if lines else []

    def decode_tgt(self, ids: Iterable[int]) -> str:
        """Detokenized text of target ids; stops at the first EOS, skips PAD and BOS."""
        pieces = []
        for token in ids:
            token = int(token)
            if token == EOS_ID:
                break
            if token not in (PAD_ID, BOS_ID):
                pieces.append(token)
        # word models spell unseen words with the bytes of their "▁" (space) marker too
        return self.tgt.decode(pieces).replace("\u2581", " ")

    def src_pieces(self, text: str) -> List[str]:
        """Source subword strings (for inspection and logs)."""
        return self.src.encode(text, out_type=str)

    def tgt_pieces(self, text: str) -> List[str]:
        return self.tgt.encode(text, out_type=str)

    # ---- serialization

    def to_bytes(self) -> bytes:
        """Both models in one byte string (safe inside `torch.load(..., weights_only=True)`)."""
        parts = [self._src_bytes] if self.joint else [self._src_bytes, self._tgt_bytes]
        header = json.dumps({"joint": self.joint, "sizes": [len(p) for p in parts]}).encode()
        return _BYTES_MAGIC + header + b"\n" + b"".join(parts)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "Tokenizer":
        if not isinstance(blob, (bytes, bytearray)) or not blob.startswith(_BYTES_MAGIC):
            raise UserError("tokenizer: stored tokenizer bytes are missing or corrupted")
        try:
            header_line, _, payload = bytes(blob[len(_BYTES_MAGIC):]).partition(b"\n")
            header = json.loads(header_line)
            sizes = header["sizes"]
            if sum(sizes) != len(payload) or len(sizes) != (1 if header["joint"] else 2):
                raise ValueError("sizes do not match")
        except (ValueError, KeyError, TypeError):
            raise UserError("tokenizer: stored tokenizer bytes are corrupted") from None
        src = payload[:sizes[0]]
        return cls(src, None if header["joint"] else payload[sizes[0]:])

    def save(self, directory) -> None:
        """Write `joint.model`, or `src.model` and `tgt.model`, plus readable `.vocab` lists."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        named = [(JOINT_FILE, self._src_bytes, self.src)] if self.joint else [
            (SRC_FILE, self._src_bytes, self.src), (TGT_FILE, self._tgt_bytes, self.tgt)]
        stale = {SRC_FILE, TGT_FILE} if self.joint else {JOINT_FILE}
        for name, model_bytes, processor in named:
            _write_atomic(directory / name, model_bytes)
            vocab = "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
                            for i in range(processor.get_piece_size()))
            _write_atomic(directory / name.replace(".model", ".vocab"), vocab.encode("utf-8"))
        for name in stale:  # a joint model replacing per-side ones (or back) must not leave both
            for path in (directory / name, directory / name.replace(".model", ".vocab")):
                if path.exists():
                    path.unlink()

    @classmethod
    def load(cls, directory) -> "Tokenizer":
        directory = Path(directory)
        if (directory / JOINT_FILE).is_file():
            return cls(_read_model(directory / JOINT_FILE))
        if (directory / SRC_FILE).is_file() and (directory / TGT_FILE).is_file():
            return cls(_read_model(directory / SRC_FILE), _read_model(directory / TGT_FILE))
        raise UserError(f"{directory}: no sentencepiece model ({JOINT_FILE}, or {SRC_FILE} and "
                        f"{TGT_FILE}); run `nmt prepare CONFIG` first")

    @staticmethod
    def exists(directory) -> bool:
        directory = Path(directory)
        return (directory / JOINT_FILE).is_file() or (
            (directory / SRC_FILE).is_file() and (directory / TGT_FILE).is_file())


def _read_model(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None


def _write_atomic(path: Path, content: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


# --------------------------------------------------------------------------- training


def train_sentencepiece(lines: Iterable[str], tokenizer_config, *, seed: int = 1) -> bytes:
    """Train one sentencepiece model on `lines`; returns the serialized model.

    At most `input_sentence_size` lines are sampled (reservoir sampling inside sentencepiece),
    so large corpora do not need to fit in its memory. Errors name `data.tokenizer.*` keys.
    """
    cfg = tokenizer_config
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    sentences = _non_empty(lines)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_writer=model,
            vocab_size=cfg.vocab_size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            byte_fallback=cfg.byte_fallback,
            input_sentence_size=cfg.input_sentence_size,
            shuffle_input_sentence=True,
            hard_vocab_limit=False,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
            num_threads=min(2, os.cpu_count() or 1),
            minloglevel=2,
        )
    except RuntimeError as error:
        if sentences.count == 0:
            raise ConfigError("data.train: the training files contain no non-empty lines") from None
        lines = str(error).strip().splitlines() or ["training failed"]
        message = re.sub(r"^.*\]\s*", "", lines[-1])  # drop sentencepiece's source location
        key = "data.tokenizer.vocab_size" if "ocab" in message else "data.tokenizer"
        raise ConfigError(f"{key}: sentencepiece could not be trained: {message}") from None
    return model.getvalue()


class _non_empty:
    """Iterator over non-empty lines that counts them (sentencepiece rejects an empty input)."""

    def __init__(self, lines: Iterable[str]):
        self._lines = iter(lines)
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            line = next(self._lines)
            if line.strip():
                self.count += 1
                return line


def train_tokenizer(data_config, out_dir=None, *, seed: int = 1) -> Tokenizer:
    """Train the tokenizer described by `data_config` on its training files; save into `out_dir`.

    Joint: one model on source and target lines; otherwise one model per side.
    """
    paths = split_files(data_config, "train")
    src_lines, tgt_lines = read_lines(paths[0]), read_lines(paths[1])
    cfg = data_config.tokenizer
    if cfg.joint:
        tokenizer = Tokenizer(train_sentencepiece(src_lines + tgt_lines, cfg, seed=seed))
    else:
        tokenizer = Tokenizer(train_sentencepiece(src_lines, cfg, seed=seed),
                              train_sentencepiece(tgt_lines, cfg, seed=seed))
    if out_dir is not None:
        tokenizer.save(out_dir)
    return tokenizer
