"""The `nmt` command line: one subcommand per module in `nmt.commands`.

Each command module defines `add_arguments(parser)` and `run(args) -> int | None`, and a
one-line module docstring used as its help text. User errors (`nmt.errors.UserError`) are
printed as one line on stderr with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Dict, Optional, Sequence

from nmt.errors import UserError

# subcommand name -> module; modules are imported only when the command line is parsed.
COMMANDS = {
    "prepare": "nmt.commands.prepare",
    "train": "nmt.commands.train",
    "translate": "nmt.commands.translate",
    "evaluate": "nmt.commands.evaluate",
    "average": "nmt.commands.average",
    "bench": "nmt.commands.bench",
}


def _first_line(doc: Optional[str]) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def add_module_commands(subparsers, modules: Dict[str, str], *, run_key: str) -> None:
    """One subparser per module (name -> module path); its `run` is stored under `run_key`."""
    for name, module_name in modules.items():
        module = importlib.import_module(module_name)
        help_text = _first_line(module.__doc__)
        command_parser = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(**{run_key: module.run})


def build_parser(commands: Dict[str, str] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt", description="RevNMT: translation with reversible recurrent networks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_module_commands(sub, commands, run_key="run")
    return parser


class _LevelFormatter(logging.Formatter):
    """`warning: message` for warnings and errors, the bare message for information."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes (tests and pipes swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns one; the property ignores it
        pass


_LOG_HANDLER = _StderrHandler()
_LOG_HANDLER.setFormatter(_LevelFormatter())


def configure_logging() -> None:
    """Messages of the nmt.* loggers (e.g. repaired input lines) go to stderr."""
    logger = logging.getLogger("nmt")
    if _LOG_HANDLER not in logger.handlers:
        logger.addHandler(_LOG_HANDLER)
        logger.setLevel(logging.INFO)


def main(argv: Optional[Sequence[str]] = None) -> None:
    configure_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.run(args)
    except UserError as error:
        print(f"nmt {args.command}: error: {error}", file=sys.stderr)
        sys.exit(error.exit_status)
    except KeyboardInterrupt:
        print(f"nmt {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(status or 0)
