"""Validate a config and its data, train sentencepiece into the run directory, print data counts.

`nmt prepare CONFIG` writes `{run_dir}/config.yaml` (the resolved config) and `{run_dir}/spm/`.
An existing tokenizer trained with the same settings is reused; one trained with other settings
is only replaced with `--force`, so a run directory is never silently changed under a run.
"""
from __future__ import annotations

from nmt.arguments import add_set_argument
from nmt.config import load_config
from nmt.run import prepare_run


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML config (see configs/reference.yaml)")
    add_set_argument(parser)
    parser.add_argument("--force", action="store_true",
                        help="retrain sentencepiece even if the run directory has one with other settings")


def run(args) -> int:
    config = load_config(args.config, args.set)
    prepare_run(config, force=args.force, report=print)
    return 0
