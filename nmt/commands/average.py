"""Average the parameters of several checkpoints into one (e.g. the last N of a run)."""
from __future__ import annotations

import sys

from nmt import checkpoint as ckpt
from nmt.errors import UserError


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoints", nargs="+", metavar="CKPT",
                        help="checkpoint files to average")
    source.add_argument("--run-dir", metavar="DIR",
                        help="average the newest --last step checkpoints of this run directory")
    parser.add_argument("--last", type=int, default=None, metavar="N",
                        help="with --run-dir: how many of the newest step checkpoints (default: all kept)")
    parser.add_argument("--output", required=True, metavar="OUT",
                        help="where to write the averaged checkpoint (translate/evaluate read it; "
                             "it carries no resume state)")


def run(args) -> int:
    if args.run_dir:
        paths = ckpt.step_checkpoints(args.run_dir)
        if not paths:
            raise UserError(f"--run-dir {args.run_dir}: no step checkpoints in "
                            f"{ckpt.checkpoint_dir(args.run_dir)}")
        if args.last is not None:
            if args.last < 1:
                raise UserError(f"--last: must be at least 1, got {args.last}")
            if args.last > len(paths):
                raise UserError(f"--last {args.last}: {args.run_dir} keeps only {len(paths)} "
                                f"step checkpoints")
            paths = paths[-args.last:]
    else:
        if args.last is not None:
            raise UserError("--last: only used with --run-dir")
        paths = args.checkpoints
    averaged = ckpt.average_checkpoints(paths)
    ckpt.save_checkpoint(args.output, averaged)
    print(f"averaged {len(paths)} checkpoints into {args.output}: "
          + " ".join(str(p) for p in paths), file=sys.stderr)
    return 0
