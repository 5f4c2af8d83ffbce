"""Translate text with a checkpoint: stdin to stdout by default, one output line per input line.

Output is detokenized. An empty input line gives an empty output line. With `--nbest N` (N <=
beam size) every input line gives N lines `INDEX ||| TRANSLATION ||| SCORE`, INDEX counting input
lines from 0 and SCORE the length-penalised log-probability, best first. Invalid UTF-8 is
replaced and over-long lines are truncated to the model's maximum source length, with warnings on
stderr. Input is read in chunks and each chunk is written and flushed as soon as it is done, so
`nmt translate` can sit in a pipe.
"""
from __future__ import annotations

import sys

import torch

from nmt.commands.helptext import describe
from nmt.device import resolve_device
from nmt.errors import UserError


def add_arguments(parser) -> None:
    describe(parser, __doc__)
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="checkpoint file (e.g. RUN_DIR/best.pt or an averaged one)")
    parser.add_argument("--input", metavar="FILE", help="text to translate (default: stdin)")
    parser.add_argument("--output", metavar="FILE", help="where to write (default: stdout)")
    add_decode_arguments(parser)


def add_decode_arguments(parser) -> None:
    """Decoding flags shared by translate, evaluate and bench translate (default: the config's)."""
    parser.add_argument("--beam-size", type=int, metavar="N", help="beam size (1 = greedy)")
    parser.add_argument("--nbest", type=int, metavar="N", help="hypotheses per input line")
    parser.add_argument("--batch-size", type=int, metavar="N", help="sentences per batch")
    parser.add_argument("--length-penalty", type=float, metavar="ALPHA",
                        help="GNMT length penalty alpha: score / ((5 + len) / 6) ** alpha")
    parser.add_argument("--max-src-len", type=int, metavar="N",
                        help="source subword tokens kept per line (default: the config's data.max_len)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: torch's choice; 1 is often fastest "
                             "for small batches)")


def decode_overrides(args) -> dict:
    """DecodeOptions overrides from the flags, checked before any input is read (sets --threads)."""
    for flag in ("beam_size", "nbest", "batch_size", "max_src_len"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be at least 1, got {value}")
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise UserError(f"--threads: must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if getattr(args, "length_penalty", None) is not None and args.length_penalty < 0:
        raise UserError(f"--length-penalty: must not be negative, got {args.length_penalty}")
    return {"beam_size": args.beam_size, "nbest": getattr(args, "nbest", None),
            "batch_size": args.batch_size, "length_penalty": args.length_penalty,
            "max_src_len": args.max_src_len}


def check_beam(options) -> None:
    if options.nbest > options.beam_size:
        raise UserError(f"--nbest {options.nbest} is larger than the beam size {options.beam_size}")


def run(args) -> int:
    from nmt.translation import load_translator

    overrides = decode_overrides(args)
    device = resolve_device(args.device)
    translator, _ = load_translator(args.checkpoint, device=device, **overrides)
    check_beam(translator.options)
    source = _open_input(args.input)
    target = _open_output(args.output)
    try:
        translator.translate_stream(source, target, name=args.input or "<stdin>")
    finally:
        if args.input:
            source.close()
        if args.output:
            target.close()
    return 0


def _open_input(path):
    if not path:
        return sys.stdin.buffer
    try:
        return open(path, "rb", buffering=0)
    except OSError as error:
        raise UserError(f"--input {path}: {error.strerror}") from None


def _open_output(path):
    if not path:
        if hasattr(sys.stdout, "reconfigure"):  # UTF-8 whatever the locale says
            sys.stdout.reconfigure(encoding="utf-8", newline="\n")
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8", newline="\n")
    except OSError as error:
        raise UserError(f"--output {path}: {error.strerror}") from None
