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

from nmt.arguments import add_decode_arguments, check_beam, decode_overrides, describe
from nmt.device import resolve_device
from nmt.errors import UserError


def add_arguments(parser) -> None:
    describe(parser, __doc__)
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="checkpoint file (e.g. RUN_DIR/best.pt or an averaged one)")
    parser.add_argument("--input", metavar="FILE", help="text to translate (default: stdin)")
    parser.add_argument("--output", metavar="FILE", help="where to write (default: stdout)")
    add_decode_arguments(parser)


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
