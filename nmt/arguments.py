"""Command-line arguments shared by the commands (nmt.commands) and the benches (nmt.bench).

`describe` puts a module docstring's body under a subcommand's flags; `add_set_argument` is the
`--set KEY=VALUE` of every command that reads a config; `add_decode_arguments`, `decode_overrides`
and `check_beam` are the decoding flags of translate, evaluate and bench translate.
"""
from __future__ import annotations

import argparse

import torch

from nmt.errors import UserError


def describe(parser: argparse.ArgumentParser, doc: str) -> None:
    """Shows everything after the docstring's first line as the `--help` epilog, unwrapped."""
    body = (doc or "").strip().split("\n", 1)
    if len(body) == 2 and body[1].strip():
        parser.epilog = body[1].strip()
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def add_set_argument(parser, *, applies_to: str = "") -> None:
    """`--set KEY=VALUE` (repeatable): config overrides applied before validation."""
    where = f"; applies to {applies_to}" if applies_to else ""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for this run, e.g. --set train.lr=0.0005 "
                             "(dotted key, YAML value; repeatable; the config file is unchanged, "
                             f"a training run's config.yaml records the result{where})")


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
