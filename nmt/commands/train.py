"""Train a model from a config (runs `nmt prepare` first when the run has no tokenizer).

Everything goes to the config's `run_dir`: config.yaml, spm/, train.log, metrics.jsonl,
tensorboard/, checkpoints/step-N.pt (last `train.keep_last`), latest.pt and best.pt (best
validation BLEU), validations/step-N.txt (each validation's hypotheses). Validation (loss, BLEU,
chrF on the `data.valid` split) decodes greedily for speed and logs `train.valid_examples`
translations; `nmt evaluate` scores with the configured beam. `--resume` continues from the newest
loadable checkpoint of the run exactly where it stopped (same batches, same random numbers).

Several processes (GPUs, or CPU processes with gloo) through torchrun:

    torchrun --nproc-per-node 4 -m nmt train CONFIG [--resume]

Every process takes a disjoint share of each global batch (`data.batch_tokens` is the global
budget, so the updates equal a single process's on the same batches), gradients are averaged by
DistributedDataParallel, validation is split across processes and combined, and only rank 0
writes checkpoints, logs and TensorBoard. `--resume` works the same way.
"""
from __future__ import annotations

import argparse

from nmt import distributed
from nmt.arguments import add_set_argument, describe
from nmt.config import Config, load_config, validate
from nmt.device import resolve_device
from nmt.errors import ConfigError, UserError
from nmt.run import train_from_config


def add_arguments(parser) -> None:
    describe(parser, __doc__)
    parser.add_argument("config", help="YAML config (see configs/reference.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the config's run_dir from its newest loadable "
                             "checkpoint (a corrupted newest one is skipped with a warning)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (log lines still go to stderr and train.log)")
    add_set_argument(parser)
    parser.add_argument("--max-epochs", type=int, metavar="E",
                        help="override train.max_epochs for this run (the config file is unchanged)")
    parser.add_argument("--max-minutes", type=_minutes_or_none, metavar="M",
                        help="override train.max_minutes (wall-clock training budget); 'none' "
                             "lifts the config's limit")


def run(args) -> int:
    config = apply_budget_overrides(load_config(args.config, args.set), max_epochs=args.max_epochs,
                                    max_minutes=args.max_minutes)
    placement, device = distributed.initialize(resolve_device(config.train.device))
    try:
        train_from_config(config, resume=args.resume, echo=placement.is_main,
                          progress=False if args.no_progress or not placement.is_main else None,
                          placement=placement, device=device)
        distributed.barrier(placement)  # no rank tears gloo down while another still uses it
    finally:
        distributed.shutdown()
    return 0


def _minutes_or_none(text: str):
    """argparse type of --max-minutes: a positive number, or 'none' (no wall-clock limit)."""
    if text.strip().lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes or 'none', got {text!r}") from None


def apply_budget_overrides(config: Config, *, max_epochs=None, max_minutes=None) -> Config:
    """The command line's budget replaces the config's (`max_minutes='none'`: no time limit)."""
    if max_epochs is not None:
        config.train.max_epochs = max_epochs
    if max_minutes is not None:
        config.train.max_minutes = None if max_minutes == "none" else max_minutes
    try:
        validate(config)
    except ConfigError as error:
        key = str(error).split(":", 1)[0].replace("train.max_", "--max-")
        raise UserError(f"{key}: {str(error).split(':', 1)[1].strip()}") from None
    return config
