"""Help text for subcommands: the module docstring's body, under the flags, as written."""
from __future__ import annotations

import argparse


def describe(parser: argparse.ArgumentParser, doc: str) -> None:
    """Shows everything after the docstring's first line as the `--help` epilog, unwrapped."""
    body = (doc or "").strip().split("\n", 1)
    if len(body) == 2 and body[1].strip():
        parser.epilog = body[1].strip()
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
