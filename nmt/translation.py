"""Translating lines with a trained model: shared by `nmt translate`, evaluation, validation and bench.

Input lines are tokenized, cut to the model's maximum source length (with a warning), batched
by length for speed, searched (greedy for beam size 1, else beam search), detokenized and put back
in input order. Empty lines give empty translations without touching the model, so the output
always has one line (n-best: `nbest` lines) per input line.

Streaming (`translate_stream`) reads input in chunks and writes and flushes each chunk as soon as
it is translated; a chunk ends early when no more input is waiting, so the translator answers
line by line when it sits in an interactive pipe.
"""
from __future__ import annotations

import os
import select
import sys
import dataclasses
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, List, Optional, Sequence, TextIO, Tuple

import torch

from nmt import checkpoint as ckpt
from nmt.config import DecodeConfig
from nmt.data.batching import make_eval_batches, restore_order
from nmt.data.corpus import LineCleaner

Hypothesis = Tuple[List[int], float]  # target ids (no BOS/EOS), score


@dataclass
class DecodeOptions(DecodeConfig):
    """How to search: the config's `decode` section plus the source length limit."""

    max_src_len: int = 100  # source subword tokens kept per line (EOS not counted)

    @classmethod
    def from_config(cls, cfg, **overrides) -> "DecodeOptions":
        options = cls(**dataclasses.asdict(cfg.decode), max_src_len=cfg.data.max_len)
        for key, value in overrides.items():
            if value is not None:
                setattr(options, key, value)
        return options


def search_batch(model, batch, options: DecodeOptions) -> List[List[Hypothesis]]:
    """Greedy (beam 1) or beam search of one Batch; per row (batch order), a best-first list."""
    from nmt.search import search

    results = search(model, batch.src, batch.src_lengths, beam_size=options.beam_size,
                     nbest=options.nbest, length_penalty=options.length_penalty,
                     max_len_ratio=options.max_len_ratio, max_len_offset=options.max_len_offset)
    return [[(list(hyp.tokens), float(hyp.score)) for hyp in row] for row in results]


class Translator:
    """A model, its tokenizer and decode options: lines in, detokenized translations out."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, options: DecodeOptions,
                 device: torch.device = torch.device("cpu"),
                 search: Callable = search_batch, warn: Optional[Callable[[str], None]] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.device = device
        self.search = search
        self.warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr))

    def translate_ids(self, src_ids: Sequence[Sequence[int]]) -> List[List[Hypothesis]]:
        """Search every non-empty id list (in batches sorted by length); input order kept."""
        if not src_ids:
            return []
        was_training = self.model.training
        self.model.eval()
        indexed = []
        try:
            with torch.no_grad():
                for batch in make_eval_batches(src_ids, batch_size=self.options.batch_size):
                    results = self.search(self.model, batch.to(self.device), self.options)
                    indexed.extend(zip(batch.indices.tolist(), results))
        finally:
            self.model.train(was_training)
        return restore_order(indexed, len(src_ids))

    def translate_lines(self, lines: Sequence[str], *, first_line_number: int = 1
                        ) -> List[List[Tuple[str, float]]]:
        """Per input line, `nbest` (text, score) pairs; empty lines give [("", 0.0)] * nbest."""
        ids = self.tokenizer.encode_src_lines([line.strip() for line in lines])
        limit = self.options.max_src_len
        for offset, line_ids in enumerate(ids):
            if len(line_ids) > limit:
                self.warn(f"line {first_line_number + offset}: {len(line_ids)} subword tokens, "
                          f"truncated to the model's maximum of {limit}")
        todo = [i for i, line_ids in enumerate(ids) if line_ids]
        found = self.translate_ids([ids[i][:limit] for i in todo])
        nbest = self.options.nbest
        outputs: List[List[Tuple[str, float]]] = [[("", 0.0)] * nbest for _ in lines]
        for i, hypotheses in zip(todo, found):
            texts = [(self.tokenizer.decode_tgt(tokens), score) for tokens, score in hypotheses]
            outputs[i] = (texts + [("", float("-inf"))] * nbest)[:nbest]
        return outputs

    def translate_texts(self, lines: Sequence[str]) -> List[str]:
        """The best translation of each line."""
        return [hypotheses[0][0] for hypotheses in self.translate_lines(lines)]

    def translate_stream(self, source: BinaryIO, target: TextIO, *, chunk_lines: Optional[int] = None,
                         name: str = "<stdin>") -> int:
        """Translates `source` (bytes) line by line into `target`; returns the lines written.

        One output line per input line (nbest > 1: `nbest` lines `index ||| translation ||| score`,
        index counting input lines from 0). Invalid UTF-8 is replaced (one warning at the end).
        """
        chunk_lines = chunk_lines or self.options.batch_size * 8
        cleaner = LineCleaner()
        count = 0
        for raw_chunk in read_chunks(source, chunk_lines):
            lines = [cleaner.clean(raw) for raw in raw_chunk]
            results = self.translate_lines(lines, first_line_number=count + 1)
            for offset, hypotheses in enumerate(results):
                if self.options.nbest == 1:
                    target.write(hypotheses[0][0] + "\n")
                else:
                    for text, score in hypotheses:
                        target.write(f"{count + offset} ||| {text} ||| {score:.4f}\n")
            target.flush()
            count += len(lines)
        repairs = cleaner.repairs()
        if repairs:
            self.warn(f"{name}: repaired " + "; ".join(repairs))
        return count


def read_chunks(stream: BinaryIO, max_lines: int) -> Iterator[List[bytes]]:
    """Byte lines in chunks of at most `max_lines`; a chunk also ends when no input is waiting.

    Real files and pipes are read with `os.read` on their descriptor (nothing must have been
    read through `stream`'s own buffer before), so a partial chunk is translated at once instead
    of blocking for more input.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None:  # in-memory streams: plain line iteration
        yield from _read_chunks_blocking(stream, max_lines)
        return
    pending = b""
    lines: List[bytes] = []
    while True:
        if lines and (len(lines) >= max_lines or not _input_waiting(fd)):
            yield lines[:max_lines]
            lines = lines[max_lines:]
            continue
        data = os.read(fd, 1 << 16)
        if not data:
            break
        pending += data
        *complete, pending = pending.split(b"\n")
        lines.extend(complete)
    if pending:
        lines.append(pending)
    while lines:
        yield lines[:max_lines]
        lines = lines[max_lines:]


def _read_chunks_blocking(stream: BinaryIO, max_lines: int) -> Iterator[List[bytes]]:
    chunk: List[bytes] = []
    for raw in stream:
        chunk.append(raw.rstrip(b"\n"))
        if len(chunk) >= max_lines:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _input_waiting(fd: int) -> bool:
    try:
        ready, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


# --- loading a model for inference ---------------------------------------------------------------

def load_translator(path, *, device: torch.device, warn=None, **overrides) -> Tuple[Translator, object]:
    """(Translator, Config) from a checkpoint file; `overrides` are DecodeOptions fields."""
    from nmt.config import config_from_dict
    from nmt.data.tokenizer import Tokenizer
    from nmt.errors import UserError
    from nmt.models.build import build_model

    payload = ckpt.load_checkpoint(path)
    config = config_from_dict(payload["config"])
    tokenizer = Tokenizer.from_bytes(ckpt.tensor_to_bytes(payload["tokenizer"]))
    model = build_model(config.model, payload["vocab_sizes"]["src"], payload["vocab_sizes"]["tgt"])
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise UserError(f"checkpoint {path}: model weights do not fit its config "
                        f"({str(error).splitlines()[0]})") from None
    model.to(device).eval()
    options = DecodeOptions.from_config(config, **overrides)
    return Translator(model, tokenizer, options=options, device=device, warn=warn), config
