"""Command-line options shared by the commands that read a config."""
from __future__ import annotations


def add_set_argument(parser, *, applies_to: str = "") -> None:
    """`--set KEY=VALUE` (repeatable): config overrides applied before validation."""
    where = f"; applies to {applies_to}" if applies_to else ""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for this run, e.g. --set train.lr=0.0005 "
                             "(dotted key, YAML value; repeatable; the config file is unchanged, "
                             f"a training run's config.yaml records the result{where})")
