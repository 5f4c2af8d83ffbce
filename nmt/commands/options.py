"""Command-line options shared by the commands that read a config."""
from __future__ import annotations


def add_set_argument(parser) -> None:
    """`--set KEY=VALUE` (repeatable): config overrides applied before validation."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for this run, e.g. --set train.lr=0.0005 "
                             "(dotted key, YAML value; repeatable; the config file is unchanged, "
                             "run_dir/config.yaml records the result)")
